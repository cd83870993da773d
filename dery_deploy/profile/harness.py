"""The measurement harness: warm up, then time in windows until three consecutive window medians
agree within a tolerance (stable), or a cap is reached (marked unstable).

Per-call samples are needed for medians and p90 across windows, so each call is timed on its own:
CUDA events around each call on a GPU (device time, no host sync inside the window), and
`time.perf_counter_ns` on a CPU, where the call itself is synchronous.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window_medians_ms"] = [round(v, 5) for v in d["window_medians_ms"]]
        return d


def _p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def time_calls(fn: Callable[[], object], n: int, cuda: bool) -> list[float]:
    """n per-call latencies in ms."""
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def measure(fn: Callable[[], object], cuda: bool = False, warmup_s: float = 0.1, window_s: float = 0.05,
            min_window_runs: int = 5, tol: float = 0.03, max_windows: int = 25, max_s: float = 5.0) -> Measurement:
    """Time `fn` until stable. Window size adapts so a window lasts about `window_s`.

    Args:
        tol: three consecutive window medians must lie within (1 + tol) of each other.
        max_windows / max_s: cap; the record is then marked unstable.
    """
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    first = time_calls(fn, 1, cuda)[0]
    while time.perf_counter() - t0 < warmup_s:
        time_calls(fn, max(1, int(warmup_s / max(first, 1e-3) / 1e3 / 4) or 1), cuda)
    per_call = statistics.median(time_calls(fn, 3, cuda))
    runs = max(min_window_runs, int(window_s * 1e3 / max(per_call, 1e-4)))
    medians, samples = [], []
    stable = False
    t1 = time.perf_counter()
    while len(medians) < max_windows and time.perf_counter() - t1 < max_s:
        xs = time_calls(fn, runs, cuda)
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


def peak_memory_mb(fn: Callable[[], object], cuda: bool) -> float:
    """Peak memory of one call: the CUDA allocator's peak over its baseline on a GPU; on a CPU the
    rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS."""
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
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
