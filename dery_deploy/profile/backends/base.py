"""The small base every backend shares: availability with a reason, precision checks, a runner."""

from __future__ import annotations

import abc

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from dery_deploy.errors import DeryError


@dataclass
class Runner:
    """A prepared item: `call()` runs it once on its bound input; `run(x)` runs it on new input."""

    call: Callable[[], object]
    run: Callable[[torch.Tensor], np.ndarray]
    cuda: bool
    build_s: float = 0.0
    info: dict = field(default_factory=dict)


class Backend(abc.ABC):
    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)

    def unavailable(self, device: str) -> str | None:
        """Why this backend cannot run here (with the package that would enable it), or None."""
        if device not in self.devices:
            return f"backend {self.name} runs on {', '.join(self.devices)}, not {device}"
        if device == "cuda" and not torch.cuda.is_available():
            return f"backend {self.name} needs a CUDA GPU and torch sees none on this machine"
        return None

    def version(self) -> str:
        return torch.__version__

    def check(self, device: str, precision: str) -> None:
        why = self.unavailable(device)
        if why:
            raise DeryError(why, "profile")
        if precision not in self.precisions or (precision == "fp16" and device == "cpu"):
            raise DeryError(f"backend {self.name} on {device} supports precision "
                            f"{', '.join(p for p in self.precisions if not (p == 'fp16' and device == 'cpu'))}, not {precision}",
                            "profile")

    @abc.abstractmethod
    def prepare(self, module: nn.Module, example: torch.Tensor, precision: str, device: str) -> Runner:
        """Build the item for this backend (export / compile / capture) and return its runner."""


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16}[precision]
