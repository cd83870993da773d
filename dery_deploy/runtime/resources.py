"""What a measurement shares the machine with and what it costs besides time, read from Linux /proc
(nothing elsewhere): the CPU time other processes take while a pass times (`MachineLoad`, which the
harness turns into a pass's busy flag), and how far a call raises this process's resident memory
(`rss_rise_mb`, an item's peak memory).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

MIN_LOAD_S = 1.0  # the shortest timed pass whose other-process load is read (tick resolution)


class MachineLoad:
    """CPU time the rest of the machine takes between `start()` and `stop()`, in cores (Linux /proc/stat
    less this process's own user and system time, all its threads included)."""

    def __init__(self) -> None:
        self._t0: tuple[float, float, float] | None = None

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        tick = os.sysconf("SC_CLK_TCK")
        own = os.times()
        busy = (user + nice + system + irq + softirq + steal) / tick
        return time.perf_counter(), busy, own.user + own.system

    def start(self) -> None:
        self._t0 = self._read()

    def stop(self) -> float | None:
        t1 = self._read()
        if self._t0 is None or t1 is None or t1[0] <= self._t0[0]:
            return None
        wall = t1[0] - self._t0[0]
        if wall < MIN_LOAD_S:  # /proc/stat and os.times count 10 ms ticks: a short pass cannot tell
            return None
        others = (t1[1] - self._t0[1]) - (t1[2] - self._t0[2])
        return round(max(0.0, others) / wall, 3)


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
