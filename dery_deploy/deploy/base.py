"""The thin base every package session shares (`deploy.sessions`, `deploy.engine`)."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dery_deploy.deploy.info import DeployInfo

CHUNK = 64  # calls timed back to back between two looks at the clock (and the progress bar)
Timer = Callable[[int], list[float]]  # n -> the latencies (ms) of n back-to-back calls


class Session(abc.ABC):
    """The thin base: `run` a batch, `bind` one for timing, and what the runtime was really given."""

    def __init__(self, info: DeployInfo, folder: Path):
        self.info, self.folder = info, folder

    @abc.abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """The package's logits for one float32 NCHW batch of exactly the package's batch."""

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        """A zero-argument call that runs `x` (kept alive by the closure), for back-to-back timing."""
        return lambda: self.run(x)

    def timer(self, x: np.ndarray) -> Timer:
        """n back-to-back calls of `x`, each timed as the export timed this runtime: here the host's clock
        around each call (a CPU runtime returns when its output is ready)."""
        call = self.bind(x)

        def timed(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                call()
                out.append((time.perf_counter_ns() - t0) / 1e6)
            return out

        return timed

    def effective(self) -> dict:
        """Settings read back from the runtime after building (what it actually uses)."""
        return {}
