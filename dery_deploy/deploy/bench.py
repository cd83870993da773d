"""`dery bench`: a shipped package measured on the machine at hand, as trtexec and OpenVINO's
benchmark_app measure a file, and its budget judged where that machine is the one it was measured on.

The measurement (`measure_package`): the package's session built with its recorded settings, one
seeded input batch of the package's shape bound, WARMUP_S of calls to warm up, then back-to-back calls
until both the call count and the duration are reached; at p90 and p99 at least 1024 calls (MLPerf's
single-stream query count) over at least TAIL_MIN_S seconds. Every call is kept: the latency at a
percentile is that per-call percentile over all calls (what a user measures), its standard error comes
from a moving-block bootstrap over BLOCKS consecutive stretches of calls (neighbouring calls are not
independent on a drifting machine), and the noise index says how much slower the typical stretch ran
than the quiet ones. The machine's speed is read while the package runs: REFERENCE_CHUNK calls of the
shipped reference workload after every CHUNK of the package's (as the run's own pass interleaves them),
not before and after them (on an Intel Xeon host neither placement tracked that host's drift within
3%: `scripts/bench_reference_placement.py`).

The verdict (`judge`): only where this machine's fingerprint (CPU model and core count, or GPU name)
equals the package's; the allowance is the standard error capped at MAX_ALLOWANCE. A measurement whose
standard error stays above the cap after MAX_ROUNDS rounds is undecided, never passed on a wider one. A
figure over the budget only because the machine runs slower than when the package was measured (divided by
the reference workload's slowdown it is within) is undecided too, as the run's final pass judges it
(`export.verdict.relate_to_machine`): a package measured 0.0571 ms in its run read 0.0685 ms in `dery bench`
minutes later while the reference ran 22.7% slower (-2.1% related to it), and was called over its 0.0617 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dery_deploy.deploy.base import CHUNK, Timer
from dery_deploy.deploy.info import REFERENCE_MODEL, DeployInfo, read_package
from dery_deploy.deploy.machine import fingerprint, same_machine
from dery_deploy.deploy.sessions import open_session
from dery_deploy.errors import DeryError

WARMUP_S = 1.0
DEFAULT_CALLS = 3000
DEFAULT_SECONDS = 5.0
TAIL_MIN_CALLS = 1024
TAIL_MIN_S = 2.0
BLOCKS = 20
BOOTSTRAP = 300
MAX_ALLOWANCE = 0.02
MAX_ROUNDS = 3
REFERENCE_CHUNK = 8  # the reference workload's calls after each CHUNK of the package's


@dataclass
class BenchResult:
    """Per-call latencies (ms) of one steady-state run of a package on this machine."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    calls: int
    seconds: float
    standard_error: dict[str, float]  # relative, per percentile
    noise: float
    fingerprint: dict
    runtime: str
    batch: int
    settings: dict  # what the runtime reports it uses, read back after building
    # the shipped reference workload's per-call median among the calls: the machine's speed meanwhile
    reference_ms: float | None = None

    def relative_to(self, info: DeployInfo) -> tuple[float, float] | None:
        """(how much slower the machine runs than when the package was measured, how much slower the
        package's p50 is once that is divided out), relative; None where either reference is missing."""
        rec = info.latency
        if self.reference_ms is None or rec is None or not rec.reference_ms:
            return None
        speed = self.reference_ms / rec.reference_ms
        return speed - 1, self.p50_ms / rec.p50_ms / speed - 1

    def at(self, percentile: int) -> tuple[float, float]:
        return getattr(self, f"p{percentile}_ms"), self.standard_error[f"p{percentile}"]

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(samples: np.ndarray, rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float], float]:
    """Percentiles over all calls, their relative block-bootstrap standard errors, and the noise index."""
    qs = (50, 90, 99)
    est = {q: float(np.percentile(samples, q)) for q in qs}
    blocks = np.array_split(samples, min(BLOCKS, len(samples)))
    idx = rng.integers(0, len(blocks), size=(BOOTSTRAP, len(blocks)))
    boot = np.array([np.percentile(np.concatenate([blocks[i] for i in row]), qs) for row in idx])
    se = {q: float(boot[:, k].std() / max(est[q], 1e-12)) for k, q in enumerate(qs)}
    medians = np.array([np.median(b) for b in blocks])
    noise = max(0.0, float(np.median(medians) / max(np.percentile(medians, 25), 1e-12) - 1))
    return est, se, noise


def back_to_back(timer: Timer, min_calls: int, min_s: float, tick) -> list[float]:
    """Back-to-back calls, CHUNK at a time, until both `min_calls` and `min_s` are reached; each call's ms
    as the session times it (`Session.timer`)."""
    return interleaved(timer, None, min_calls, min_s, tick)[0]


def interleaved(
    timer: Timer, reference: Timer | None, min_calls: int, min_s: float, tick
) -> tuple[list[float], list[float]]:
    """`back_to_back`'s calls with REFERENCE_CHUNK calls of `reference` after each CHUNK of them: (the
    calls' ms, the reference's ms), both taken over the same seconds."""
    out: list[float] = []
    ref: list[float] = []
    t_start = time.perf_counter()
    while len(out) < min_calls or time.perf_counter() - t_start < min_s:
        out += timer(CHUNK)
        if reference is not None:
            ref += reference(REFERENCE_CHUNK)
        if tick is not None:
            tick(len(out), time.perf_counter() - t_start)
    return out, ref


MAX_SECONDS = 3600.0  # a round's seconds a user may ask for (an hour; infinity would never end)


def requirements(percentile: int, calls: int | None, seconds: float | None) -> tuple[int, float]:
    """(calls, seconds) of one round, refusing fewer than a tail percentile needs."""
    if percentile not in (50, 90, 99):
        raise DeryError(f"--percentile must be 50, 90 or 99 (of single calls), got {percentile}", "bench")
    n, s = DEFAULT_CALLS if calls is None else calls, DEFAULT_SECONDS if seconds is None else seconds
    if not 0 <= s <= MAX_SECONDS:  # (a NaN fails this too)
        raise DeryError(f"--seconds must be between 0 and {MAX_SECONDS:g} (seconds per round), got {s:g}", "bench")
    if percentile != 50 and (n < TAIL_MIN_CALLS or s < TAIL_MIN_S):
        raise DeryError(
            f"p{percentile} needs at least {TAIL_MIN_CALLS} calls over at least {TAIL_MIN_S:g} s (MLPerf "
            f"single-stream); got --calls {n} --seconds {s:g}",
            "bench",
        )
    if n < BLOCKS or s < 0:
        raise DeryError(f"--calls must be at least {BLOCKS} and --seconds at least 0, got {n} and {s:g}", "bench")
    return n, s


class PackageBench:
    """One package on this machine, measured in rounds whose calls are pooled (module docstring): the
    session is built and warmed up once, and each `round` adds its calls to the earlier rounds' calls,
    so a round taken because the standard error was too wide narrows it instead of starting over."""

    def __init__(
        self,
        package: str | Path,
        percentile: int | None = None,
        calls: int | None = None,
        seconds: float | None = None,
    ):
        self.info = info = read_package(package)
        budget_q = info.budget.percentile if info.budget else 50
        self.calls, self.seconds = requirements(max(percentile or budget_q, budget_q), calls, seconds)
        folder = Path(package) if Path(package).is_dir() else Path(package).parent
        self.session = open_session(info, folder)
        i = info.input
        x = np.random.default_rng(0).standard_normal((info.runtime.batch, i.channels, i.height, i.width), np.float32)
        self.timer = self.session.timer(np.ascontiguousarray(x))
        self.reference = reference_call(info, folder)
        self.samples: list[float] = []  # every timed call of every round, in order (ms)
        self.reference_samples: list[float] = []
        self.rounds = 0
        self.t0 = 0.0

    def round(self, progress: Callable[[int, float], None] | None = None) -> BenchResult:
        """One more round of at least `calls` calls over `seconds`, interleaved with the reference
        workload's; the result over every call of every round so far."""
        if self.rounds == 0:
            back_to_back(self.timer, 50, WARMUP_S, None)  # caches, thread pools and the runtime's lazy initialisation
            if self.reference is not None:
                back_to_back(self.reference, 50, WARMUP_S / 4, None)
            self.t0 = time.perf_counter()
        tick = None if progress is None else _offset(progress, len(self.samples))
        calls, reference = interleaved(self.timer, self.reference, self.calls, self.seconds, tick)
        self.samples += calls
        self.reference_samples += reference
        self.rounds += 1
        res = result_of(np.asarray(self.samples), time.perf_counter() - self.t0, self.info, self.session.effective())
        res.reference_ms = round(float(np.median(self.reference_samples)), 5) if self.reference_samples else None
        return res


def precise(bench: PackageBench, percentile: int, progress: Callable[[int, float], None] | None = None) -> BenchResult:
    """Rounds of `bench` until the standard error at `percentile` is within MAX_ALLOWANCE or MAX_ROUNDS rounds
    ran (each round's calls pooled with the earlier rounds', the same session, no new warm-up): what a verdict
    needs before it may call a figure undecided. `dery bench` and the run's look at a shipped package use it."""
    res = bench.round(progress)
    while res.at(percentile)[1] > MAX_ALLOWANCE and bench.rounds < MAX_ROUNDS:
        res = bench.round(progress)
    return res


def _offset(progress: Callable[[int, float], None], done: int) -> Callable[[int, float], None]:
    """A progress callback counting the calls of earlier rounds too."""
    return lambda n, s: progress(done + n, s)


def measure_package(
    package: str | Path,
    percentile: int | None = None,
    calls: int | None = None,
    seconds: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    rounds: int = 1,
) -> BenchResult:
    """Measure a package in this process (module docstring): `rounds` rounds of `calls` calls over
    `seconds`, pooled. `percentile` (default: the package's budget's) sets the minimum calls."""
    bench = PackageBench(package, percentile, calls, seconds)
    for _ in range(rounds):
        res = bench.round(progress)
    return res


def reference_call(info: DeployInfo, folder: Path) -> Timer | None:
    """The timed calls of the shipped reference workload (`REFERENCE_MODEL`) with the package's runtime and
    settings, or None for a package without one."""
    if REFERENCE_MODEL not in info.files:
        return None
    probe = replace(info, model=REFERENCE_MODEL, input=replace(info.input, channels=16, height=32, width=32))
    probe.runtime = replace(info.runtime, batch=1)
    x = np.random.default_rng(0).standard_normal((1, 16, 32, 32), np.float32)
    return open_session(probe, folder).timer(x)


def result_of(samples: np.ndarray, seconds: float, info: DeployInfo, settings: dict) -> BenchResult:
    est, se, noise = summarise(samples, np.random.default_rng(0))
    return BenchResult(
        round(est[50], 5),
        round(est[90], 5),
        round(est[99], 5),
        round(float(samples.mean()), 5),
        round(float(samples.max()), 5),
        len(samples),
        round(seconds, 2),
        {f"p{q}": round(v, 5) for q, v in se.items()},
        round(noise, 5),
        fingerprint(info.runtime.device),
        info.runtime.name,
        info.runtime.batch,
        settings,
    )


@dataclass
class Verdict:
    judged: bool
    line: str
    over: bool = False
    undecided: bool = False

    @property
    def exit_code(self) -> int:
        return 2 if self.over else (3 if self.undecided else 0)


def within_budget(value: float, budget: float, se: float) -> bool | None:
    """The one rule: within when value <= budget * (1 + se); a standard error above MAX_ALLOWANCE decides
    only a value that is over or under the budget by more than that error, and leaves the rest undecided."""
    limit = budget * (1 + se)
    if se <= MAX_ALLOWANCE or value > limit or value * (1 + se) <= budget:
        return value <= limit
    return None


def judge(info: DeployInfo, res: BenchResult) -> Verdict:
    """The package's budget at its percentile against this measurement (module docstring)."""
    if info.budget is None:
        return Verdict(False, "the package has no latency budget: measured only, nothing judged")
    if not same_machine(info.fingerprint, res.fingerprint):
        return Verdict(
            False,
            f"nothing judged: this machine ({describe_machine(res.fingerprint)}) is not the one the package was "
            f"measured on ({describe_machine(info.fingerprint)}); its budget holds there",
        )
    q, b = info.budget.percentile, info.budget.latency_ms
    value, se = res.at(q)
    at = f"p{q} {value:.4f} ms"
    within = within_budget(value, b, se)
    if within is None:
        return Verdict(
            True,
            f"undecided: {at} has a standard error of {100 * se:.1f}%, above the {100 * MAX_ALLOWANCE:.0f}% the "
            "verdict allows; rerun on a quieter machine or with more --calls / --seconds",
            undecided=True,
        )
    limit = b * (1 + se)
    if within:
        return Verdict(True, f"within budget: {at} against {b:g} ms (allowance ±{100 * se:.1f}%, its standard error)")
    rel = res.relative_to(info)
    if rel is not None and rel[0] > 0 and within_budget(value / (1 + rel[0]), b, se):
        # the run's rule (`export.verdict.relate_to_machine`): over only because the machine runs slower
        return Verdict(
            True,
            f"undecided: {at} is {100 * (value / b - 1):.1f}% over {b:g} ms, but this machine runs "
            f"{100 * rel[0]:.1f}% slower than when the package was measured (its reference workload), and at that "
            f"speed the figure is {value / (1 + rel[0]):.4f} ms, within: the machine changed, not the network; "
            "rerun when it is back to speed",
            undecided=True,
        )
    return Verdict(
        True,
        f"OVER BUDGET by {100 * (value / b - 1):.1f}%: {at} against {b:g} ms (limit {limit:.4f} ms with its "
        f"standard error ±{100 * se:.1f}%)",
        over=True,
    )


def describe_machine(fp: dict) -> str:
    if fp.get("kind") == "cuda":
        return str(fp.get("gpu_name"))
    return f"{fp.get('cpu_model')}, {fp.get('cores')} cores"
