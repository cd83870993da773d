"""A fixed reference workload measured in every pass, so that records of different passes can be
related.

Within one pass every item is interleaved with every other (`harness.measure_interleaved`), so
drift hits all alike. A profile still gathers records from several passes (donors and units first,
the partition's blocks and adapters later, `--verify` assemblies after), minutes apart. Each pass
measures this reference workload with the same backend, and every record carries the reference's
latency in its pass (`calibration_ms`); the latency model can scale records to the profile's
median reference speed where that predicts measured assemblies better (chosen by `--verify`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dery_deploy.runtime.onnx import onnx_from_module, save_onnx
from dery_deploy.runtime.worker import FileItem

REFERENCE = "4x (conv3x3 16->16 + ReLU) on batch x 16 x 32 x 32, seed 0"
REFERENCE_KEY = "reference|" + REFERENCE


def reference_module() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(4):
        conv = nn.Conv2d(16, 16, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            assert conv.bias is not None, "nn.Conv2d has a bias by default"
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def reference_input(batch: int) -> torch.Tensor:
    return torch.randn(batch, 16, 32, 32, generator=torch.Generator().manual_seed(0))


def reference_item(folder: Path, runtime: str, threads: int) -> FileItem:
    """The reference workload at batch 1 as an ONNX file in `folder`, for a measurement worker's pass."""
    path = folder / "reference.onnx"
    if not path.is_file():
        # a static batch of 1: OpenVINO compiles a shipped file's shape as it is (`dery bench`), and its
        # dynamic-shape path runs slower
        save_onnx(onnx_from_module(reference_module(), reference_input(1), dynamic_batch=False), path)
    return FileItem(REFERENCE_KEY, str(path), runtime, threads, list(reference_input(1).shape))
