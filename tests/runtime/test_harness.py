import time
from dataclasses import replace

import pytest
import torch

from dery_deploy.runtime.harness import TimingOptions, measure, measure_interleaved


def spin(ms: float) -> None:
    """Busy-wait `ms` milliseconds (sleep's wake-up latency would blur sub-millisecond differences)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def test_known_duration_is_measured_at_three_percentiles():
    m = measure(lambda: spin(0.5), opts=TimingOptions(min_windows=6))
    assert 0.49 <= m.median_ms <= 0.6
    assert m.median_ms <= m.p90_ms <= m.p99_ms
    assert m.windows >= 6 and m.runs >= 30 and m.uncertainty < 0.05


def test_matmul_faster_than_bigger_matmul():
    a, b = torch.randn(64, 64), torch.randn(256, 256)
    small = measure(lambda: a @ a, threads=1)
    big = measure(lambda: b @ b, threads=1)
    assert big.median_ms > 4 * small.median_ms


def test_drift_during_a_pass_hits_every_item_alike():
    # the "machine" runs 2x slower from the 9th round of 20 on; item B costs twice item A
    speed = {"factor": 1.0}

    def after_round(done: int, planned: int) -> None:
        speed["factor"] = 2.0 if done >= 16 else 1.0

    res, summary = measure_interleaved(
        {
            "a": (lambda: spin(0.1 * speed["factor"]), False, None),
            "b": (lambda: spin(0.2 * speed["factor"]), False, None),
        },
        TimingOptions(min_windows=20, window_s=0.005, target=0.5),
        progress=after_round,
    )
    assert res["b"].median_ms / res["a"].median_ms == pytest.approx(2.0, rel=0.06)
    assert res["a"].median_ms < 0.12  # the quiet windows, not the slow majority
    assert summary.items == 2 and summary.noise_index > 0.5  # the slow windows show as noise


def test_a_pass_asked_to_last_keeps_every_item_in_the_rounds_until_then():
    # the "machine" runs 1.5x slower from 0.3 s on: a pass of 3 windows alone would end before that, in
    # one spell; asked to last 0.6 s, every item keeps its turn and sees both
    t0 = time.perf_counter()

    def factor() -> float:
        return 1.5 if time.perf_counter() - t0 > 0.3 else 1.0

    res, summary = measure_interleaved(
        {
            "a": (lambda: spin(0.1 * factor()), False, None),
            "b": (lambda: spin(0.2 * factor()), False, None),
        },
        TimingOptions(min_windows=3, window_s=0.005, target=0.5, max_s=0, min_s=0.6),
    )
    assert summary.seconds >= 0.6
    for m in res.values():
        assert m.windows > 20
        assert max(m.window_medians_ms) > 1.35 * min(m.window_medians_ms)
    assert abs(res["a"].windows - res["b"].windows) <= 1


def test_disturbed_windows_are_ignored_and_counted_as_noise():
    calls = {"n": 0}

    def sometimes_disturbed():
        calls["n"] += 1
        spin(0.3 if (calls["n"] // 10) % 3 == 0 else 0.1)  # every third window of 10 calls runs 3x slower

    m = measure(sometimes_disturbed, opts=TimingOptions(min_windows=12, window_s=0.001, max_s=0.5))
    assert m.median_ms == pytest.approx(0.1, rel=0.15)
    assert m.noise > 0.1 or m.median_ms < 0.12


def test_an_item_that_never_settles_is_marked_unstable_after_bounded_extra_windows():
    import random

    rng = random.Random(0)
    level = {"v": 1.0, "n": 0}

    def erratic():
        level["n"] += 1
        if level["n"] % 5 == 0:
            level["v"] = rng.uniform(1.0, 3.0)  # a new speed every 5 calls: windows disagree widely
        spin(0.05 * level["v"])

    t = time.perf_counter()
    m = measure(erratic, opts=TimingOptions(min_windows=5, window_s=0.0002, target=0.001, max_s=0.3))
    assert not m.stable and m.uncertainty > 0.001
    assert m.windows > 5  # it was given more windows first
    assert time.perf_counter() - t < 3.0


def test_uncertain_items_get_more_windows_than_settled_ones():
    import random

    rng = random.Random(1)
    res, _ = measure_interleaved(
        {
            "steady": (lambda: spin(0.05), False, None),
            "jumpy": (lambda: spin(0.05 * rng.choice((1.0, 1.0, 4.0))), False, None),
        },
        TimingOptions(min_windows=6, window_s=0.0003, target=0.02, max_s=0.5),
    )
    assert res["jumpy"].windows > res["steady"].windows


def test_onnxruntime_items_measure_a_fresh_sessions_memory():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_module

    big = torch.nn.Linear(4096, 4096)  # 64 MB of fp32 weights
    m = measure_module(get_backend("onnxruntime", threads=1), big, torch.randn(1, 4096), "fp32", "cpu")
    assert 40 < m.peak_memory_mb < 400 and m.timing.median_ms > 0
    eager = measure_module(get_backend("torch-eager"), big, torch.randn(1, 4096), "fp32", "cpu")
    assert eager.peak_memory_mb is None  # not measurable apart from the process: None, not a fake 0


def test_measure_modules_carries_the_reference_of_the_same_pass():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_modules

    lin = torch.nn.Linear(64, 64)
    out, passes = measure_modules(
        get_backend("onnxruntime", threads=1),
        {"a": lambda: (lin, torch.randn(1, 64)), "b": lambda: (torch.nn.Sequential(lin, lin), torch.randn(1, 64))},
        "fp32",
        "cpu",
        TimingOptions(min_windows=5),
        reference_batch=1,
    )
    assert set(out) == {"a", "b"} and len(passes) == 1 and passes[0].items == 3 and passes[0].threads == 1
    assert out["a"].calibration_ms == out["b"].calibration_ms > 0


class Rejected(torch.nn.Module):
    """An item the backend cannot build: its graph fails to trace (as a capture may reject an attention block)."""

    def forward(self, x):
        return x @ torch.ones(7, 3)  # x is [1, 64]: a real shape error, raised inside the backend's export


def test_one_item_the_backend_rejects_is_recorded_and_the_pass_goes_on():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_modules

    lin = torch.nn.Linear(64, 64)
    builds = {
        "a": lambda: (lin, torch.randn(1, 64)),
        "bad": lambda: (Rejected(), torch.randn(1, 64)),
        "b": lambda: (torch.nn.Sequential(lin, lin), torch.randn(1, 64)),
    }
    be = get_backend("onnxruntime", threads=1)
    failed: dict[str, str] = {}
    out, [summary] = measure_modules(be, builds, "fp32", "cpu", TimingOptions(min_windows=3, max_s=0.0), failed=failed)
    assert set(out) == {"a", "b"} and summary.items == 2 and all(m.timing.median_ms > 0 for m in out.values())
    assert list(failed) == ["bad"] and "cannot be multiplied" in failed["bad"], failed
    # without a place to record it, the error ends the pass
    with pytest.raises(Exception, match="cannot be multiplied"):
        measure_modules(be, builds, "fp32", "cpu", TimingOptions(min_windows=3, max_s=0.0))


@pytest.mark.gpu
def test_cuda_events_and_allocator_peak_including_capture():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_module

    x = torch.randn(2048, 2048, device="cuda")
    m = measure(lambda: x @ x, cuda=True)
    assert m.median_ms > 0 and m.stable
    lin = torch.nn.Linear(4096, 4096)
    g = measure_module(get_backend("torch-cudagraph"), lin, torch.randn(256, 4096), "fp16", "cuda")
    assert g.peak_memory_mb >= 30  # weights (32 MB in fp16) and the captured graph's pool


def test_one_pass_compares_runtimes_and_precisions_of_the_same_network():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_across

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    builds = {
        f"{b}/{p}": (get_backend(b, threads=1), p, lambda: (net, x))
        for b, p in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "int8"))
    }
    out, passes = measure_across(builds, "cpu", TimingOptions(min_windows=5, max_s=0.5))
    assert len(passes) == 1 and passes[0].items == 3  # one interleaved pass over all three
    assert all(out[k].timing.median_ms > 0 and out[k].peak_memory_mb is not None for k in builds)


def test_the_promise_is_the_percentile_over_all_calls_not_the_quiet_windows():
    """What a budget is judged by is what a user measures with the file alone: every call counts, the
    disturbed windows too (one window in three runs 3x slower: its calls raise the p90 over all calls)."""
    calls = {"n": 0}

    def sometimes_disturbed():
        calls["n"] += 1
        spin(0.3 if (calls["n"] // 10) % 3 == 0 else 0.1)

    m = measure(sometimes_disturbed, opts=TimingOptions(min_windows=12, window_s=0.001, max_s=0.5, statistic="all"))
    assert m.p90_ms == pytest.approx(0.1, rel=0.2)  # the quiet windows hide the slow third
    assert m.promise_at(90) == pytest.approx(0.3, rel=0.2)  # over all calls it is the slow calls' figure
    assert m.promise_at(50) == pytest.approx(0.1, rel=0.2)
    assert 0 < m.promise_uncertainty_at(50) < 0.5 and m.all_calls_ms.keys() == {"p50", "p90", "p99"}


def test_a_promise_pass_rewarms_each_item_before_its_window_as_a_run_alone_would_be():
    """After the other items ran, an item's first calls are slow (caches); a run of the file alone never
    sees that. Here the first 4 calls after a switch cost 3x: without the per-window warm-up they are a
    fifth of a 20-call window and the p90 over all calls is theirs; a promise's pass calls them untimed."""
    state = {"last": None, "since": 0}

    def item(name: str, ms: float):
        def call():
            state["since"] = state["since"] + 1 if state["last"] == name else 0
            state["last"] = name
            spin(3 * ms if state["since"] < 4 else ms)

        return call

    def p90s(opts: TimingOptions) -> dict[str, float]:
        res, _ = measure_interleaved({k: (item(k, ms), False, None) for k, ms in (("a", 0.1), ("b", 0.2))}, opts)
        return {k: m.promise_at(90) for k, m in res.items()}

    base = TimingOptions(min_windows=12, window_s=0.002, max_s=0, statistic="all")
    cold = p90s(base)
    assert cold["a"] == pytest.approx(0.3, rel=0.2) and cold["b"] == pytest.approx(0.6, rel=0.2)
    promised = TimingOptions.for_budget(50)
    assert promised.warm_s > 0
    warm = p90s(replace(base, warm_s=promised.warm_s))
    assert warm["a"] == pytest.approx(0.1, rel=0.2) and warm["b"] == pytest.approx(0.2, rel=0.2)


def test_all_calls_percentile_and_its_bootstrap_error_are_those_of_the_pooled_calls():
    import numpy as np

    from dery_deploy.runtime.harness import _all_calls

    rng = np.random.default_rng(0)
    steady = [rng.normal(1.0, 0.01, 200) for _ in range(20)]
    est, rel = _all_calls(steady, np.random.default_rng(1))
    assert est[50] == pytest.approx(float(np.percentile(np.concatenate(steady), 50)))
    assert rel[50] < 0.005  # windows alike: the pooled median is pinned down
    drifting = [rng.normal(1.0 + 0.2 * (i % 2), 0.01, 200) for i in range(20)]  # every other window 20% slower
    assert _all_calls(drifting, np.random.default_rng(1))[1][50] > 5 * rel[50]


def test_a_pass_during_which_another_process_computes_is_flagged_busy():
    import subprocess
    import sys

    hog = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 4\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.2)
        _, summary = measure_interleaved(  # 1.5 s of timing: a pass shorter than 1 s says nothing of load
            {"a": (lambda: spin(0.2), False, None)}, TimingOptions(min_windows=300, window_s=0.005, max_s=0)
        )
    finally:
        hog.kill()
        hog.wait()
    # the other process took most of a core while the pass timed (the pass's own core is not counted)
    assert summary.other_load_cores is not None and summary.other_load_cores > 0.3, summary
    assert summary.busy and "busy machine" in summary.line()


def test_a_tiny_items_window_holds_a_bounded_number_of_calls_and_a_slow_items_lasts_the_window():
    """A window of a 0.005 ms item would hold 800 calls in 4 ms; it holds `WINDOW_CALLS` times the calls its
    percentile needs, and is that much shorter. An item whose calls fill the window is unchanged."""
    from dery_deploy.runtime.harness import WINDOW_CALLS

    opts = TimingOptions(min_windows=4, window_s=0.004, max_s=0)
    res, _ = measure_interleaved(
        {"tiny": (lambda: spin(0.005), False, None), "slow": (lambda: spin(0.2), False, None)}, opts
    )
    assert res["tiny"].runs == 4 * WINDOW_CALLS * opts.min_calls()
    assert 4 * 15 <= res["slow"].runs <= 4 * 20  # 4 ms of 0.2 ms calls (20), less the clock's overhead
    p99 = replace(opts, percentile=99)
    res, _ = measure_interleaved({"tiny": (lambda: spin(0.005), False, None)}, p99)
    # at p99 the cap is 2500 calls: a window lasts its 4 ms (about 800 calls, less the clock's overhead)
    assert 4 * 600 <= res["tiny"].runs <= 4 * 800
