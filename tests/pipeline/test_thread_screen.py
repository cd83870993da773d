"""The screen a further thread count passes on its whole donors before its full profile (`pipeline/thread_screen.py`).

Figures (median ms, relative standard error, noise) are the tiny zoo's whole donors as a `dery run --quick` on this
project's 2-core VM measured them, pinned to one core while the other ran another session's benchmark
(2026-12-04): two threads of onnxruntime squeezed onto that core did not repeat; two threads of openvino ran as
one did.
"""

from dataclasses import replace

from dery_deploy.pipeline.thread_screen import SpellCheck, may_fit, screened, stretch_ratios
from dery_deploy.profile.store import Profile, Record

DONORS = ("test_resnet", "test_convnext", "test_vit")
ORT_T1 = [(0.09293, 0.00535, 0.00793), (0.14768, 0.04097, 0.01638), (0.67788, 0.00987, 0.03318)]
ORT_T2 = [(0.10055, 0.01291, 0.19431), (0.19365, 0.22756, 1.07209), (0.82699, 0.05201, 0.14658)]
OV_T1 = [(0.13114, 0.00187, 0.00454), (0.13723, 0.0027, 0.00485), (0.56248, 0.0075, 0.01636)]
OV_T2 = [(0.12938, 0.00044, 0.00129), (0.13568, 0.00228, 0.0024), (0.54381, 0.00433, 0.00685)]


def profile(
    threads: int, donors: list[tuple[float, float, float]], backend: str = "onnxruntime", names=DONORS
) -> Profile:
    records = {
        "overhead|NCHW 1x32x32 /1": Record("overhead", 0.0055, 0.006, 0.007, 0.003, 500, True, noise=0.008),
        **{
            f"donor|{name}|NCHW 1x32x32 /1|10": Record(
                "donor", ms, ms * 1.1, ms * 1.3, se, 200, True, windows=15, noise=noise, info={"donor": name}
            )
            for name, (ms, se, noise) in zip(names, donors, strict=True)
        },
    }
    return Profile("cpu", "cpu", {}, backend, "1", "fp32", 1, "tiny", "h", records, threads=threads)


def test_a_count_whose_donors_do_not_repeat_goes_no_further():
    s = screened(profile(2, ORT_T2), profile(1, ORT_T1), "onnxruntime/fp32/t2", "onnxruntime/fp32/t1")
    assert s is not None and (s.target, s.against) == ("onnxruntime/fp32/t2", "onnxruntime/fp32/t1")
    assert s.why == (
        "onnxruntime/fp32/t2 not profiled beyond its 3 whole donors: their measurements do not repeat "
        "(noise index 19.4%, above 5% and 2x onnxruntime/fp32/t1's 1.6%)"
    )


def test_a_count_slower_on_every_donor_beyond_both_errors_goes_no_further():
    # the two-thread medians and errors of onnxruntime, but timed as quietly as one thread (convnext's error
    # taken as one thread's, 4.1%: at two threads' 22.8% a measurement could still find it faster)
    quiet = [(0.10055, 0.01291, 0.00793), (0.19365, 0.04097, 0.01638), (0.82699, 0.05201, 0.03318)]
    s = screened(profile(2, quiet), profile(1, ORT_T1), "onnxruntime/fp32/t2", "onnxruntime/fp32/t1")
    assert s is not None and s.why == (
        "onnxruntime/fp32/t2 not profiled beyond its 3 whole donors: slower than onnxruntime/fp32/t1 on every one "
        "that may fit a budget (2) beyond both measurements' errors (closest: test_resnet 0.1006 ms ±1.3% vs "
        "0.0929 ms ±0.5%)"
    )
    # convnext as noisy as two threads made it: no longer surely slower, but surely faster on none either
    noisy_convnext = [quiet[0], (0.19365, 0.22756, 0.01638), quiet[2]]
    s = screened(profile(2, noisy_convnext), profile(1, ORT_T1), "t2", "t1")
    assert s is not None and "faster than t1 by at least 3% beyond both measurements' errors on none" in s.why


def test_a_count_only_as_fast_goes_no_further_and_a_faster_one_is_profiled_in_full():
    # openvino on the tiny zoo: two threads 1.2-3.3% faster than one, within 3% beyond the errors on each donor
    s = screened(profile(2, OV_T2, "openvino"), profile(1, OV_T1, "openvino"), "ov/t2", "ov/t1")
    assert s is not None and s.why == (
        "ov/t2 not profiled beyond its 3 whole donors: faster than ov/t1 by at least 3% beyond both measurements' "
        "errors on none that may fit a budget (2; best: test_resnet 0.1294 ms ±0.0% vs 0.1311 ms ±0.2%)"
    )
    faster = [(ms * 0.9, se, noise) for ms, se, noise in OV_T1]
    assert screened(profile(2, faster, "openvino"), profile(1, OV_T1, "openvino"), "ov/t2", "ov/t1") is None


def test_without_donors_in_common_nothing_is_screened():
    empty = Profile("cpu", "cpu", {}, "onnxruntime", "1", "fp32", 1, "tiny", "h", {}, threads=2)
    assert screened(empty, profile(1, ORT_T1), "t2", "t1") is None


# the embedded fashion zoo's whole donors in a clean-clone `dery run --quick` on the 2-core VM, nothing else
# running (2026-12-04, 22:36 UTC): (median ms, relative standard error, noise) at one and at two threads
FASHION = ("mnv3_rot", "convnext_lower", "tinynet_rot", "resnet10t_tops", "mobilevit_lower", "vit_tops")
ORT1 = [
    (0.112, 0.001, 0.01),
    (0.1839, 0.003, 0.01),
    (0.1845, 0.003, 0.01),
    (0.2259, 0.001, 0.01),
    (0.5115, 0.008, 0.01),
    (2.0768, 0.004, 0.01),
]
ORT2 = [
    (0.1761, 0.007, 0.01),
    (0.2591, 0.009, 0.01),
    (0.2814, 0.008, 0.01),
    (0.2429, 0.008, 0.01),
    (0.7345, 0.01, 0.01),
    (2.0298, 0.006, 0.01),
]
OV1 = [
    (0.1501, 0.002, 0.01),
    (0.2426, 0.003, 0.01),
    (0.2085, 0.008, 0.01),
    (0.2504, 0.011, 0.01),
    (0.4199, 0.011, 0.01),
    (1.9451, 0.012, 0.01),
]
OV2 = [
    (0.1953, 0.008, 0.01),
    (0.293, 0.007, 0.01),
    (0.2428, 0.006, 0.01),
    (0.1806, 0.007, 0.01),
    (0.4873, 0.009, 0.01),
    (1.2438, 0.003, 0.01),
]


def fashion(threads: int, donors) -> Profile:
    return profile(threads, donors, names=FASHION)


def test_only_the_donors_that_may_fit_a_budget_decide():
    # two threads slower on every donor but the slowest, which no budget the run chooses can fit: screened
    s = screened(fashion(2, ORT2), fashion(1, ORT1), "onnxruntime/fp32/t2", "onnxruntime/fp32/t1")
    assert s is not None and "on every one that may fit a budget (5) beyond both" in s.why
    assert "closest: resnet10t_tops 0.2429 ms" in s.why
    # a user's budget of 3 ms: the slowest donor may fit it and is not surely slower at two threads, but only
    # 2.3% faster: it gains too little to search
    s = screened(fashion(2, ORT2), fashion(1, ORT1), "t2", "t1", within_ms=3.3)
    assert s is not None and "on none that may fit a budget (6; best: vit_tops 2.0298 ms" in s.why
    # a user's budget of 0.2 ms: only the donors at most 0.22 ms at either count decide (all slower at two)
    s = screened(fashion(2, ORT2), fashion(1, ORT1), "t2", "t1", within_ms=0.22)
    assert s is not None and "(3)" in s.why
    # budgets below every donor: no donor decides, nothing is screened on speed
    assert screened(fashion(2, ORT2), fashion(1, ORT1), "t2", "t1", within_ms=0.05) is None
    # openvino at two threads ran resnet10t_tops 28% faster: a budget-sized donor faster, so it is profiled
    assert screened(fashion(2, OV2), fashion(1, OV1), "openvino/fp32/t2", "openvino/fp32/t1") is None


def test_stretch_ratios_pair_neighbouring_windows_and_cut_them_in_time_order():
    # the first count steady; the further count in a good spell, then the one-thread speed (as measured: 0.73x, 1.03x)
    first = [0.30] * 80
    extra = [0.219] * 40 + [0.309] * 40
    ratios = stretch_ratios(extra, first, 8)
    assert ratios == [0.73] * 4 + [1.03] * 4
    check = SpellCheck("resnet10t_tops", "openvino/fp32/t1", "openvino/fp32/t2", 2, ratios, 16.0)
    assert round(check.spread, 4) == 0.411 and not check.repeats
    assert check.why("openvino/fp32/t2") == (
        "openvino/fp32/t2 not searched: 2 threads do not repeat on this machine (resnet10t_tops at "
        "openvino/fp32/t2 ran 0.73-1.03x its openvino/fp32/t1 time across 8 stretches of 2 s timed in turn, a "
        "spread of 41%, above 10%)"
    )
    steady = SpellCheck("vit_tops", "a", "b", 2, stretch_ratios([0.63] * 40 + [0.65] * 40, [1.0] * 80), 16.0)
    assert steady.repeats and "0.63-0.65x" in steady.held() and "spread of 3%" in steady.held()
    assert stretch_ratios([0.5] * 3, [1.0] * 3, 8) == [0.5] * 3  # fewer windows than stretches: one per window
    # a check that held in one good spell, pooled with one a profile later that did not
    later = SpellCheck("resnet10t_tops", "openvino/fp32/t1", "openvino/fp32/t2", 2, [0.72] * 4 + [1.02] * 4, 16.0)
    good = replace(later, ratios=[0.72] * 8)
    assert good.repeats and not good.pooled(later).repeats
    both = good.pooled(later)
    assert (both.checks, len(both.ratios), both.seconds) == (2, 16, 32.0)
    said = "across 16 stretches of 2 s timed in turn in 2 passes half a minute or more apart, a spread of 42%"
    assert said in both.why("x")


def test_the_donors_that_may_fit_leave_out_the_slowest_where_the_run_chooses_budgets():
    extra, first = profile(2, OV_T2, "openvino"), profile(1, OV_T1, "openvino")
    assert [k.split("|")[1] for k in may_fit(extra, first, None)] == ["test_convnext", "test_resnet"]
    assert [k.split("|")[1] for k in may_fit(extra, first, 0.132)] == ["test_resnet"]
    assert may_fit(extra, first, 0.1) == []
