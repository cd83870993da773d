"""What the backends that run an exported ONNX share: the export (and for int8 the QDQ quantization)
of an item, before each compiles or loads it its own way (`runner_from_onnx`)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.quantize import qdq_from_onnx


class OnnxBackend(Backend, ABC):
    """A backend that runs the item's ONNX export: fp32, or the QDQ INT8 file calibrated on the example."""

    def prepare(self, module, example, precision, device) -> Runner:
        """Export (and for int8 quantize), then the backend's runner for it."""
        t0 = time.perf_counter()
        data = self.onnx_bytes(module, example, precision)
        return self.runner_from_onnx(data, example.float().cpu(), device, t0)

    def onnx_bytes(self, module, example, precision) -> bytes:
        """The ONNX this backend runs for `module`: fp32, or QDQ INT8 calibrated on `example` (latency
        does not depend on the ranges)."""
        x = example.float().cpu()
        data = onnx_from_module(own_copy(module, "cpu", torch.float32), x)
        return qdq_from_onnx(data, x) if precision == "int8" else data

    @abstractmethod
    def runner_from_onnx(
        self, data: bytes, example: torch.Tensor, device: str = "cpu", t0: float | None = None
    ) -> Runner:
        """A runner of the ONNX `data` bound to `example`."""
