"""The small base every backend shares: availability with a reason, precision checks, a runner.

A backend never changes the module it is given: it works on its own copy (`own_copy`), so a
dissection's shared units stay fp32 on the CPU however an item was profiled.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from dataclasses import dataclass, field

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
    # memory of a fresh instance in MB, for backends whose memory the caller cannot observe itself
    fresh_memory_mb: Callable[[], float] | None = None
    stream: object | None = None  # the CUDA stream `call` enqueues on (None: torch's current stream)
    # what `call` reads but holds no reference to: a CUDA graph replays raw addresses of the weights it was
    # captured with, so the module they belong to must live as long as the runner (else freed memory is read)
    keeps: tuple = ()


class Backend(abc.ABC):
    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)
    # how many prepared items can be alive and timed together (None: any number); torch-compile's
    # compiler state holds only a few before it silently falls back to eager
    max_live: int | None = None

    def __init__(self, threads: int | None = None):
        # CPU threads the runtime computes with: part of what is measured and of what ships (None:
        # the library's default, on GPUs where it does not matter)
        self.threads = threads

    def reset(self) -> None:  # noqa: B027 - a hook most backends do not need
        """Clear shared compiler state before a new group of items (a no-op for most backends)."""

    def unavailable(self, device: str) -> str | None:
        """Why this backend cannot run here (with the package that would enable it), or None."""
        if device not in self.devices:
            return f"backend {self.name} runs on {', '.join(self.devices)}, not {device}"
        if device == "cuda" and not torch.cuda.is_available():
            return f"backend {self.name} needs a CUDA GPU and torch sees none on this machine"
        return None

    def version(self) -> str:
        return torch.__version__

    def memory_unmeasurable(self, device: str) -> str | None:
        """Why this backend's peak memory cannot be measured on `device`, or None when it can."""
        if device == "cpu":
            return (
                f"{self.name} on a CPU runs in the Python process's own heap, whose peak a measurement "
                "cannot separate from everything else; use --backend onnxruntime for a memory budget"
            )
        return None

    def check(self, device: str, precision: str) -> None:
        why = self.unavailable(device)
        if why:
            raise DeryError(why, "profile")
        if precision not in self.precisions or (precision == "fp16" and device == "cpu"):
            raise DeryError(
                f"backend {self.name} on {device} supports precision "
                f"{', '.join(p for p in self.precisions if not (p == 'fp16' and device == 'cpu'))}, not {precision}",
                "profile",
            )

    @abc.abstractmethod
    def prepare(self, module: nn.Module, example: torch.Tensor, precision: str, device: str) -> Runner:
        """Build the item for this backend (export / compile / capture) and return its runner."""


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def own_copy(module: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    """A private, eval-mode copy of `module` on `device` in `dtype` (the caller's module is untouched)."""
    return copy.deepcopy(module).to(device=device, dtype=dtype).eval()
