"""The measurement harness: warm up, then time in windows until three consecutive window medians
agree within a tolerance (stable), or a cap is reached (marked unstable).

Per-call samples are needed for medians and p90 across windows, so each call is timed on its own:
CUDA events around each call on a GPU (device time, no host sync inside the window), and
`time.perf_counter_ns` on a CPU, where the call itself is synchronous.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class Measurement:
    median_ms: float
    p90_ms: float
    runs: int
    stable: bool
    windows: int
    window_medians_ms: list[float]
    peak_memory_mb: float | None = None

    @property
    def noise(self) -> float:
        return window_noise(self.window_medians_ms)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window_medians_ms"] = [round(v, 5) for v in d["window_medians_ms"]]
        return d


def window_noise(window_medians: list[float]) -> float:
    """Relative half-spread of the last three window medians: the measurement's own noise, the only
    allowance a budget check grants."""
    w = window_medians[-3:]
    return (max(w) - min(w)) / (2 * min(w)) if len(w) >= 2 and min(w) > 0 else 0.0


def _p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def time_calls(fn: Callable[[], object], n: int, cuda: bool, stream=None) -> list[float]:
    """n per-call latencies in ms. On CUDA the events are recorded on `stream` (the one `fn` enqueues
    its work on; torch's current stream when None)."""
    if cuda:
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


def measure(
    fn: Callable[[], object],
    cuda: bool = False,
    warmup_s: float = 0.1,
    window_s: float = 0.05,
    min_window_runs: int = 5,
    tol: float = 0.03,
    max_windows: int = 25,
    max_s: float = 5.0,
    stream=None,
) -> Measurement:
    """Time `fn` until stable. Window size adapts so a window lasts about `window_s`.

    Args:
        tol: three consecutive window medians must lie within (1 + tol) of each other.
        max_windows / max_s: cap; the record is then marked unstable.
    """
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    first = time_calls(fn, 1, cuda, stream)[0]
    while time.perf_counter() - t0 < warmup_s:
        time_calls(fn, max(1, int(warmup_s / max(first, 1e-3) / 1e3 / 4) or 1), cuda, stream)
    per_call = statistics.median(time_calls(fn, 3, cuda, stream))
    runs = max(min_window_runs, int(window_s * 1e3 / max(per_call, 1e-4)))
    medians, samples = [], []
    stable = False
    t1 = time.perf_counter()
    while len(medians) < max_windows and time.perf_counter() - t1 < max_s:
        xs = time_calls(fn, runs, cuda, stream)
        samples.append(xs)
        medians.append(statistics.median(xs))
        if len(medians) >= 3:
            last = medians[-3:]
            if max(last) <= min(last) * (1 + tol):
                stable = True
                break
    tail = [x for w in samples[-3:] for x in w]
    return Measurement(statistics.median(tail), _p90(tail), sum(len(w) for w in samples), stable, len(medians), medians)


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _trim_heap() -> None:
    """Hand freed heap back to the OS (glibc malloc_trim), so that what a call allocates next shows
    as resident memory instead of silently reusing pages the process already holds."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_rise_mb(fn: Callable[[], object]) -> float:
    """How far one call raises the process's peak resident memory over its current RSS, in MB
    (Linux: VmHWM, reset through /proc/self/clear_refs), after the freed heap is handed back to the
    OS, so the call's allocations count like in a fresh process."""
    _trim_heap()
    before = rss_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        fn()
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(0.0, int(line.split()[1]) / 1024 - before)
    except OSError:
        pass
    fn()
    return max(0.0, rss_mb() - before)
