"""What the backends that run an exported ONNX share: the export (and for int8 the QDQ quantization)
of an item, before each compiles or loads it its own way (`runner_from_onnx`).

A run exports the same items for every target it profiles (ONNX Runtime fp32 and OpenVINO fp32 run
the same file; OpenVINO int8 quantizes it), for each further thread count's screen and spell check,
and again for the latency checks and the final pass: the exports are kept for the process, keyed by
what decides them (the module's structure and weights, the example's shape, the precision, and for
int8 the calibration input), so each is made once (`export_cached`). A clean-clone quick run spent
29 s in 630 exports and 24 s in 158 quantizations (cProfile, AMD EPYC 2 cores)."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections import OrderedDict

import torch
from torch import nn

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.quantize import qdq_from_onnx

CACHE_BYTES = 768 * 2**20  # the exports kept, least recently used first out
_cache: OrderedDict[str, bytes] = OrderedDict()
_kept = {"bytes": 0}  # the kept exports' size, counted as they come and go


def _feed(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def export_identity(module: nn.Module, example: torch.Tensor, precision: str) -> str:
    """What decides an item's ONNX: the module's structure (its repr) and every tensor of its state, the
    example's shape, the precision, and for int8 the example itself (the calibration input)."""
    h = hashlib.sha1(f"{precision}|{tuple(example.shape)}|{module!r}".encode())
    for k, t in module.state_dict().items():
        h.update(k.encode())
        _feed(h, t)
    if precision == "int8":
        _feed(h, example.float())
    return h.hexdigest()


def export_cached(module: nn.Module, example: torch.Tensor, precision: str) -> bytes:
    """The ONNX of `module` at `precision` ("int8": the QDQ form calibrated on `example`), made once per
    identity (`export_identity`) in this process."""
    key = export_identity(module, example, precision)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    x = example.float().cpu()
    if precision == "int8":
        data = qdq_from_onnx(export_cached(module, example, "fp32"), x)
    else:
        data = onnx_from_module(own_copy(module, "cpu", torch.float32), x)
    _cache[key] = data
    _kept["bytes"] += len(data)
    while _kept["bytes"] > CACHE_BYTES and len(_cache) > 1:
        _kept["bytes"] -= len(_cache.popitem(last=False)[1])
    return data


class OnnxBackend(Backend, ABC):
    """A backend that runs the item's ONNX export: fp32, or the QDQ INT8 file calibrated on the example."""

    def prepare(self, module, example, precision, device) -> Runner:
        """Export (and for int8 quantize), then the backend's runner for it."""
        t0 = time.perf_counter()
        data = self.onnx_bytes(module, example, precision)
        return self.runner_from_onnx(data, example.float().cpu(), device, t0)

    def onnx_bytes(self, module, example, precision) -> bytes:
        """The ONNX this backend runs for `module`: fp32, or QDQ INT8 calibrated on `example` (latency
        does not depend on the ranges); made once per process (`export_cached`)."""
        return export_cached(module, example, precision)

    @abstractmethod
    def runner_from_onnx(
        self, data: bytes, example: torch.Tensor, device: str = "cpu", t0: float | None = None
    ) -> Runner:
        """A runner of the ONNX `data` bound to `example`."""
