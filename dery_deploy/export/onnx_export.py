"""ONNX from a module: the TorchScript-based exporter (fast, stable for these families), opset 17,
dynamic batch. Used for profiling items and for shipping."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def onnx_from_module(module: nn.Module, example: torch.Tensor, dynamic_batch: bool = True, opset: int = OPSET) -> bytes:
    """Serialised ONNX model with input `x` and output `y` (batch dimension dynamic by default)."""
    buf = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, do_constant_folding=True)
    return buf.getvalue()


def save_onnx(data: bytes, path: str | Path) -> Path:
    from dery_deploy.artifacts import atomic_write_bytes

    return atomic_write_bytes(path, data)
