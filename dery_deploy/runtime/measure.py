"""Measure one module with one backend: build it (export / compile / capture), time it until
stable, and measure its peak memory the way that backend's memory can be measured.

Memory, per backend and device:
- CUDA, torch backends: the caching allocator's peak over its baseline, reset *before* the build,
  so what CUDA-graph capture and `reduce-overhead` allocate at capture time is counted; a backend's
  shared compiler state is cleared before the baseline is read (`Backend.reset_state`).
- CUDA, other backends (TensorRT, ONNX Runtime CUDA EP): the device's free-memory drop while
  building and running (their allocators are not torch's).
- CPU, ONNX Runtime: the peak-RSS rise of creating a fresh session and running it once.
- CPU, torch backends: not measurable apart from the rest of the process (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dery_deploy.runtime.backends.base import Backend
from dery_deploy.runtime.harness import Measurement, measure


@dataclass
class ItemMeasurement:
    timing: Measurement
    peak_memory_mb: float | None
    build_s: float

    def record_fields(self) -> dict:
        return {
            "median_ms": round(self.timing.median_ms, 5),
            "p90_ms": round(self.timing.p90_ms, 5),
            "runs": self.timing.runs,
            "stable": self.timing.stable,
            "windows": self.timing.windows,
            "window_medians_ms": [round(v, 5) for v in self.timing.window_medians_ms],
            "peak_memory_mb": None if self.peak_memory_mb is None else round(self.peak_memory_mb, 3),
            "build_s": round(self.build_s, 3),
        }


def measure_module(
    backend: Backend, module: nn.Module, example: torch.Tensor, precision: str, device: str, **timing
) -> ItemMeasurement:
    """Build `module` with `backend`, time it on `example` and measure its peak memory."""
    cuda = device == "cuda"
    torch_alloc = cuda and backend.name.startswith("torch")
    # before the baseline: torch-compile's reset frees what earlier graphs (the reference workload's) held,
    # and memory freed after the baseline was read would be subtracted from this item's peak
    backend.reset_state()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        free_before = torch.cuda.mem_get_info()[0]
        torch.cuda.reset_peak_memory_stats()
    runner = backend.prepare(module, example, precision, device)
    runner.call()
    if cuda:
        torch.cuda.synchronize()
        if torch_alloc:
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = max(0.0, (free_before - torch.cuda.mem_get_info()[0]) / 2**20)
    elif runner.fresh_memory_mb is not None:
        peak = runner.fresh_memory_mb()
    else:
        peak = None
    timing_result = measure(runner.call, cuda=runner.cuda, stream=runner.stream, **timing)
    return ItemMeasurement(timing_result, peak, runner.build_s)
