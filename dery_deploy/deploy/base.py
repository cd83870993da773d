"""The thin base every package session shares (`deploy.sessions`, `deploy.engine`)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dery_deploy.deploy.info import DeployInfo


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

    def effective(self) -> dict:
        """Settings read back from the runtime after building (what it actually uses)."""
        return {}
