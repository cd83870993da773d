"""A run's exports made once per process (`runtime/backends/onnx_based.export_cached`)."""

import onnx
import torch
from torch import nn

from dery_deploy.runtime.backends import onnx_based
from dery_deploy.runtime.backends.onnx_based import export_cached, export_identity


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_the_same_module_and_shape_are_exported_once_and_any_difference_is_another_export(monkeypatch):
    made = []
    real = onnx_based.onnx_from_module
    monkeypatch.setattr(onnx_based, "onnx_from_module", lambda m, x: made.append(1) or real(m, x))
    x = torch.randn(1, 1, 8, 8)
    first = export_cached(net(), x, "fp32")
    again = export_cached(net(), torch.randn(1, 1, 8, 8), "fp32")  # a fresh build, another random input
    assert again is first and len(made) == 1
    assert onnx.load_from_string(first).graph.input[0].name == "x"
    # other weights, another shape or another structure: each its own export
    assert export_identity(net(1), x, "fp32") != export_identity(net(), x, "fp32")
    assert export_identity(net(), torch.randn(2, 1, 8, 8), "fp32") != export_identity(net(), x, "fp32")
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    other.load_state_dict(net().state_dict())
    assert export_identity(other, x, "fp32") != export_identity(net(), x, "fp32")
    # int8 quantizes the fp32 export already made; its calibration input is part of what decides it
    q = export_cached(net(), x, "int8")
    assert len(made) == 1 and q != first
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(q).graph.node)
    assert export_identity(net(), x + 1, "int8") != export_identity(net(), x, "int8")


def test_the_kept_exports_stay_within_their_byte_cap(monkeypatch):
    monkeypatch.setattr(onnx_based, "_cache", type(onnx_based._cache)())
    monkeypatch.setattr(onnx_based, "_kept", {"bytes": 0})
    x = torch.randn(1, 1, 8, 8)
    size = len(export_cached(net(10), x, "fp32"))
    monkeypatch.setattr(onnx_based, "CACHE_BYTES", int(2.5 * size))
    for seed in range(11, 15):
        export_cached(net(seed), x, "fp32")
    assert len(onnx_based._cache) == 2 and sum(map(len, onnx_based._cache.values())) <= 2.5 * size
