"""The measurement harness: many short windows, interleaved round-robin across every item of one
pass, and an estimate taken from the machine's quiet windows.

Why this shape (measured on this project's 2-core VM, `scripts/bench_repeatability.py`):
- On a shared machine the speed drifts by tens of percent within minutes, so an item timed in one
  block a minute after another is compared across that drift. Interleaving short windows of every
  item (in a seeded shuffled order, round after round) makes the drift hit all items alike.
- Another process on the machine slows some windows and not others. Each window's per-call
  percentile (median, p90, p99 of single calls) is computed, and the item's estimate is the
  `QUIET`-th percentile of those over the windows: what a request costs when the machine is not
  disturbed, which is what a dedicated deployment device sees. Medians over all calls moved by up
  to 31% between two halves of one pass; this estimate by 0.4-2%.
- The estimate's uncertainty is the bootstrap standard error over windows, relative. An item
  above the target gets more windows while the pass's time allows; if it still is, it is marked
  not stable (and reported so), never passed off as stable.
- The pass's noise index says how disturbed the machine was: the median over items of how much
  slower their typical window ran than their quiet one (0.02 = 2%, a quiet machine here).

- What a budget promises is judged by the statistic a user measures with trtexec, benchmark_app or
  MLPerf: the per-call percentile over all calls of the steady-state run (`Measurement.promise_at`),
  with its bootstrap standard error over windows. The quiet-window estimate ranks items inside a
  pass; the all-calls figure is what a user reproduces with the file alone. Such a pass starts each
  window with `WINDOW_WARM_S` of untimed calls: after its neighbours ran, an item's first calls are
  slow while its weights come back into the caches (a 0.08 ms network's first call at 2.1x its median,
  its fourth at 1.2x), which raised the interleaved p90 6-24% above the file's back-to-back p90; with
  2 ms of untimed calls the two agreed within 1% (three shipped files, 0.08-0.23 ms, AMD EPYC 2 cores).
- Load from other processes is not the device's latency: every pass reads how much CPU time the
  rest of the machine took while it timed (`/proc/stat` less this process's own, `resources.MachineLoad`),
  and a pass during which others used more than `BUSY_CORES` of a core is flagged (`PassSummary.busy`).
  Rounds in which most items ran slow at once (a machine-wide slow spell, `disturbance.py`) are left out of
  the per-call figures and counted (`Measurement.spell_windows`, `PassSummary.spell_rounds`).

Per-call samples are taken with CUDA events on a GPU (device time, no host sync inside a window)
and `time.perf_counter_ns` on a CPU, where the call itself is synchronous.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from dery_deploy.runtime.disturbance import QUIET, PassSummary, spell_masks
from dery_deploy.runtime.resources import MachineLoad

PERCENTILES = (50, 90, 99)  # of single calls: what a budget can promise (`--percentile`)
BOOTSTRAP = 200  # resamples of windows for an estimate's uncertainty
BOOTSTRAP_CALLS = 256  # calls per window the all-calls bootstrap resamples (p99 needs its tail)
# an item still short of its target is checked again once it has this share more windows than at its last
# check: it may run up to this share past the windows it needed, and the checks cost O(log windows)
RECHECK = 0.125
WINDOW_WARM_S = 0.002  # untimed calls at the start of each window of a promise's pass (module docstring)
# a window holds at most this many times the calls its percentile needs (`TimingOptions.min_calls`): a window's
# median of 125 calls of a 0.005 ms adapter is as good a sample of the machine as one of 800, and the window
# count, not its length, is what the estimate's uncertainty rests on; the 4 ms windows of a profile's tiny items
# (77 adapters and 6 heads of 138 items, 0.002-0.03 ms) were half its timed seconds
WINDOW_CALLS = 25


@dataclass
class TimingOptions:
    """How long and how finely one pass measures.

    Args:
        window_s: a window lasts about this long (per item), at least `min_calls(percentile)` calls and at most
            `WINDOW_CALLS` times that (a tiny item's window is shorter).
        min_windows: windows every item gets, interleaved round-robin.
        target: relative uncertainty an item must reach to be stable.
        max_s: timed seconds the pass may spend on top of its minimum windows to reach the target. 10 s
            buys the windows 20 s did before the uncertainty was checked less often (`RECHECK`): a 65-item
            profile pass that ran to its limit timed 105 windows/s then, 191-198 since (ONNX Runtime, the
            fashion zoo, Intel Xeon 2 cores; 3171 windows in a 16 s pass against 2899 in 27.5 s).
        min_s: wall seconds the rounds over every item last at least: a host whose speed moves in spells
            of seconds shows a short pass one spell only.
        percentile: the per-call percentile the caller will judge (more calls per window for 90 and 99).
        warm_s: untimed calls lasting about this long before each window's timed calls (its caches
            re-warmed after the other items ran): what a back-to-back run of the item alone sees.
    """

    window_s: float = 0.004
    min_windows: int = 15
    target: float = 0.01
    max_s: float = 10.0
    percentile: int = 50
    seed: int = 0
    statistic: str = "quiet"  # whose uncertainty must reach `target`: "quiet" windows, or "all" calls (a promise)
    min_s: float = 0.0  # every item keeps its turn in the rounds until the pass has lasted this long
    warm_s: float = 0.0

    def min_calls(self) -> int:
        return {50: 5, 90: 20, 99: 100}[self.percentile]

    @classmethod
    def for_budget(cls, percentile: int = 50) -> TimingOptions:
        """A budget check on what ships: p90 and p99 over at least 1024 calls (MLPerf single-stream)."""
        opts = cls(percentile=percentile, statistic="all", warm_s=WINDOW_WARM_S)
        if percentile != 50:
            opts.min_windows = max(opts.min_windows, -(-1024 // opts.min_calls()))
        return opts


@dataclass
class Measurement:
    """One item's latency in ms at the per-call median, p90 and p99, each taken over the quiet windows."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    uncertainty: float  # relative bootstrap standard error of median_ms over windows
    runs: int
    windows: int
    stable: bool  # uncertainty within the pass's target
    noise: float  # how much slower the item's typical window ran than its quiet one (relative)
    window_medians_ms: list[float] = field(default_factory=list)
    uncertainties: dict[str, float] = field(default_factory=dict)  # per percentile: "p90" -> relative
    # the per-call percentiles over all calls of the run (what trtexec / benchmark_app print) and their
    # relative standard errors ("p50", "p90", "p99"); absent in measurements recorded before they were kept
    all_calls_ms: dict[str, float] = field(default_factory=dict)
    all_calls_uncertainties: dict[str, float] = field(default_factory=dict)
    spell_windows: int = 0  # windows timed in a machine-wide slow spell, left out of all_calls_ms

    def at(self, percentile: int) -> float:
        """The quiet-window estimate at a per-call percentile (50, 90 or 99): what ranks items in a pass."""
        return {50: self.median_ms, 90: self.p90_ms, 99: self.p99_ms}[percentile]

    def uncertainty_at(self, percentile: int) -> float:
        return self.uncertainty if percentile == 50 else self.uncertainties.get(f"p{percentile}", self.uncertainty)

    def promise_at(self, percentile: int) -> float:
        """The per-call percentile over all calls: the figure a budget is judged by and a user reproduces."""
        return self.all_calls_ms.get(f"p{percentile}", self.at(percentile))

    def promise_uncertainty_at(self, percentile: int) -> float:
        return self.all_calls_uncertainties.get(f"p{percentile}", self.uncertainty_at(percentile))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window_medians_ms"] = [round(v, 5) for v in d["window_medians_ms"]]
        for k in ("median_ms", "p90_ms", "p99_ms"):
            d[k] = round(d[k], 5)
        d["uncertainty"] = round(d["uncertainty"], 5)
        d["noise"] = round(d["noise"], 5)
        d["uncertainties"] = {k: round(v, 5) for k, v in d["uncertainties"].items()}
        d["all_calls_ms"] = {k: round(v, 5) for k, v in d["all_calls_ms"].items()}
        d["all_calls_uncertainties"] = {k: round(v, 5) for k, v in d["all_calls_uncertainties"].items()}
        return d


def time_calls(fn: Callable[[], object], n: int, cuda: bool, stream=None) -> list[float]:
    """n per-call latencies in ms. On CUDA the events are recorded on `stream` (the one `fn` enqueues
    its work on; torch's current stream when None)."""
    if cuda:
        import torch  # only where CUDA is timed: a measurement worker runs without torch

        # looked up once, here: `record(None)` would look the current stream up inside every timed interval
        stream = stream if stream is not None else torch.cuda.current_stream()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record(stream)
            fn()
            e.record(stream)
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


@contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count for the duration (None: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Item:
    fn: Callable[[], object]
    cuda: bool
    stream: object | None
    calls: int = 5  # per window
    warm: int = 0  # untimed calls before each window's timed ones
    windows: list[np.ndarray] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # the round each window was timed in
    medians: list[float] = field(default_factory=list)  # each window's median call (ms)
    # each window's per-call PERCENTILES, computed once as it is timed: the pass asks for every item's
    # uncertainty after every round, and recomputing them took 2.4-14 ms per item (15-120 windows), more
    # than the round's timed calls on a 64-item pass
    per_window: list[np.ndarray] = field(default_factory=list)

    def add(self, window: np.ndarray, round_: int) -> None:
        self.windows.append(window)
        self.rounds.append(round_)
        self.per_window.append(np.percentile(window, PERCENTILES))
        self.medians.append(float(self.per_window[-1][PERCENTILES.index(50)]))


def _warm_up(it: _Item, opts: TimingOptions) -> None:
    """A few calls, then the window size that lasts about `window_s`."""
    it.fn()
    if it.cuda:
        import torch

        torch.cuda.synchronize()
    per_call = statistics.median(time_calls(it.fn, 3, it.cuda, it.stream))
    warm_calls = max(1, min(200, int(0.02 / max(per_call * 1e-3, 1e-6))))  # ~20 ms of calls (per_call is in ms)
    time_calls(it.fn, warm_calls, it.cuda, it.stream)
    per_call = statistics.median(time_calls(it.fn, 3, it.cuda, it.stream))
    lasting = int(opts.window_s * 1e3 / max(per_call, 1e-4))  # calls in `window_s`
    it.calls = max(opts.min_calls(), min(WINDOW_CALLS * opts.min_calls(), lasting))
    it.warm = math.ceil(opts.warm_s * 1e3 / max(per_call, 1e-4)) if opts.warm_s > 0 else 0


def _estimates(per_window: list[np.ndarray], rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float]]:
    """Per percentile: the quiet-window estimate and its relative bootstrap standard error, from each
    window's per-call PERCENTILES (`_Item.per_window`)."""
    windows = np.stack(per_window)  # [W, P]
    est = np.percentile(windows, QUIET, axis=0)
    if len(windows) < 3:
        return dict(zip(PERCENTILES, est.tolist())), dict.fromkeys(PERCENTILES, float("inf"))
    idx = rng.integers(0, len(windows), size=(BOOTSTRAP, len(windows)))
    boot = np.percentile(windows[idx], QUIET, axis=1)  # [B, P]
    rel = boot.std(axis=0) / np.maximum(est, 1e-12)
    return dict(zip(PERCENTILES, est.tolist())), dict(zip(PERCENTILES, rel.tolist()))


def _all_calls(windows: list[np.ndarray], rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float]]:
    """Per percentile: the per-call percentile over every call, and its relative bootstrap standard
    error (windows resampled whole, so that slow stretches of the machine count as the unit of noise)."""
    calls = np.concatenate(windows)
    est = np.percentile(calls, PERCENTILES)
    if len(windows) < 3:
        return dict(zip(PERCENTILES, est.tolist())), dict.fromkeys(PERCENTILES, float("inf"))
    idx = rng.integers(0, len(windows), size=(BOOTSTRAP, len(windows)))
    # a window's spread is known from a strided sample of its calls (a fast item's window holds a
    # thousand): the error is dominated by how windows differ, and the resampling stays small
    thin = [w[:: max(1, len(w) // BOOTSTRAP_CALLS)][:BOOTSTRAP_CALLS] for w in windows]
    if len({len(w) for w in thin}) == 1:  # one item's windows have one size: resample rows of a matrix
        boot = np.percentile(np.stack(thin)[idx].reshape(BOOTSTRAP, -1), PERCENTILES, axis=1).T
    else:
        boot = np.array([np.percentile(np.concatenate([thin[i] for i in row]), PERCENTILES) for row in idx])
    rel = boot.std(axis=0) / np.maximum(est, 1e-12)
    return dict(zip(PERCENTILES, est.tolist())), dict(zip(PERCENTILES, rel.tolist()))


def _outside_spells(items: dict[str, _Item]) -> tuple[dict[str, list[np.ndarray]], set[int]]:
    """Per item, its windows timed outside the pass's machine-wide slow spells (`disturbance.py`), and the
    rounds left out for some item."""
    masks = spell_masks({k: it.medians for k, it in items.items()}, {k: it.rounds for k, it in items.items()})
    calm = {k: [w for w, s in zip(it.windows, masks[k]) if not s] for k, it in items.items()}
    return calm, {r for k, it in items.items() for r, s in zip(it.rounds, masks[k]) if s}


def _uncertainty(it: _Item, calm: list[np.ndarray], rng: np.random.Generator, opts: TimingOptions) -> float:
    """The relative standard error of the statistic the pass must pin down, at its percentile."""
    rel = _all_calls(calm, rng)[1] if opts.statistic == "all" else _estimates(it.per_window, rng)[1]
    return rel[opts.percentile]


def _result(it: _Item, calm: list[np.ndarray], rng: np.random.Generator, opts: TimingOptions) -> Measurement:
    est, rel = _estimates(it.per_window, rng)
    every, every_rel = _all_calls(calm, rng)
    medians = it.medians
    typical = float(np.median(medians))
    target_rel = every_rel if opts.statistic == "all" else rel
    return Measurement(
        est[50],
        est[90],
        est[99],
        rel[50],
        sum(len(w) for w in it.windows),
        len(it.windows),
        target_rel[opts.percentile] <= opts.target,
        max(0.0, typical / est[50] - 1) if est[50] > 0 else 0.0,
        medians,
        {f"p{q}": rel[q] for q in PERCENTILES if q != 50},
        {f"p{q}": every[q] for q in PERCENTILES},
        {f"p{q}": every_rel[q] for q in PERCENTILES},
        len(it.windows) - len(calm),
    )


def _extend(
    items: dict[str, _Item], opts: TimingOptions, rng: np.random.Generator, window_round: Callable[[list[str]], None]
) -> None:
    """More windows for the items whose estimate is still uncertain, while the pass's time allows; an item's
    uncertainty is computed again once it has `RECHECK` more windows than at its last check (a bootstrap per
    item per round cost more than the round's timed calls: `_Item.per_window`)."""
    t_extra = time.perf_counter()
    cap = 8 * opts.min_windows
    over, checked = list(items), dict.fromkeys(items, 0)
    while over and time.perf_counter() - t_extra < opts.max_s:
        over = [k for k in over if len(items[k].windows) < cap]
        due = [k for k in over if len(items[k].windows) >= checked[k] * (1 + RECHECK)]
        calm = _outside_spells(items)[0] if opts.statistic == "all" and due else {}
        for k in due:
            checked[k] = len(items[k].windows)
        done = {k for k in due if _uncertainty(items[k], calm.get(k, []), rng, opts) <= opts.target}
        over = [k for k in over if k not in done]
        if over:
            window_round(over)


def measure_interleaved(
    runners: Mapping[str, tuple[Callable[[], object], bool, object | None]],
    opts: TimingOptions | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Measurement], PassSummary]:
    """Measure every runner in one interleaved pass (see the module docstring).

    Args:
        runners: key -> (call, cuda, stream).
        threads: torch's intra-op threads during the pass (the backends' own are set where they are built).
        progress: called with (windows done, windows planned).
    Returns:
        key -> Measurement, and the pass's summary.
    """
    opts = opts or TimingOptions()
    rng = np.random.default_rng(opts.seed)
    order_rng = random.Random(opts.seed)
    items = {k: _Item(fn, cuda, stream) for k, (fn, cuda, stream) in runners.items()}
    t0 = time.perf_counter()
    load = MachineLoad()
    with torch_threads(threads):
        for it in items.values():
            _warm_up(it, opts)
        load.start()
        keys = list(items)
        planned = opts.min_windows * len(keys)

        def window_round(subset: list[str]) -> None:
            nonlocal planned
            planned = max(planned, sum(len(i.windows) for i in items.values()) + len(subset))
            order_rng.shuffle(subset)
            r = max((it.rounds[-1] + 1 for it in items.values() if it.rounds), default=0)
            for k in subset:
                it = items[k]
                if it.warm:
                    time_calls(it.fn, it.warm, it.cuda, it.stream)
                it.add(np.asarray(time_calls(it.fn, it.calls, it.cuda, it.stream)), r)
            if progress:
                progress(sum(len(i.windows) for i in items.values()), planned)

        t_first = time.perf_counter()
        for _ in range(opts.min_windows):
            window_round(list(keys))
        while time.perf_counter() - t_first < opts.min_s:
            window_round(list(keys))
        _extend(items, opts, rng, window_round)
    other_load = load.stop()
    calm, spells = _outside_spells(items)
    out = {k: _result(it, calm[k], rng, opts) for k, it in items.items()}
    summary = PassSummary(
        len(out),
        sum(m.windows for m in out.values()),
        round(time.perf_counter() - t0, 2),
        round(statistics.median([m.noise for m in out.values()]), 5) if out else 0.0,
        sum(not m.stable for m in out.values()),
        threads,
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        other_load,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        rounds=max((it.rounds[-1] + 1 for it in items.values() if it.rounds), default=0),
        spell_rounds=len(spells),
    )
    return out, summary


def measure(
    fn: Callable[[], object], cuda: bool = False, stream=None, opts: TimingOptions | None = None, threads=None
) -> Measurement:
    """One item on its own (a pass of one). Comparisons between items belong in one `measure_interleaved` pass."""
    return measure_interleaved({"item": (fn, cuda, stream)}, opts, threads)[0]["item"]
