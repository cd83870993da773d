"""ONNX from a module: the TorchScript-based exporter (fast, stable for these families), opset 17,
dynamic batch. Used for profiling items and for shipping.

`precision="fp16"` exports the network in half precision behind fp32 input and output casts: what a
strongly typed TensorRT build (TensorRT 11 has no other kind) turns into an fp16 engine, while
callers keep feeding and reading fp32.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from dery_deploy.artifacts import atomic_write_bytes

OPSET = 17


class HalfInside(nn.Module):
    """fp32 in, fp16 computation, fp32 out."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


def onnx_from_module(
    module: nn.Module, example: torch.Tensor, dynamic_batch: bool = True, opset: int = OPSET, precision: str = "fp32"
) -> bytes:
    """Serialised ONNX model with input `x` and output `y` (batch dimension dynamic by default).
    The module is not changed (fp16 exports work on a copy)."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision {precision!r}")
    if precision == "fp16":
        import copy

        module = HalfInside(copy.deepcopy(module).float())
    buf = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example.float(),),
            buf,  # type: ignore[arg-type]  # torch annotates a path only; the TorchScript exporter writes to a buffer too
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return buf.getvalue()


def save_onnx(data: bytes, path: str | Path) -> Path:
    return atomic_write_bytes(path, data)
