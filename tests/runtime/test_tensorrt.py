"""What our TensorRT code asks of TensorRT's API, checked with a recording fake (`recording_tensorrt`):
builder flags (TF32 off for fp32, FP16 only on TensorRT 10), the optimisation profile, one logger, the
enqueue's return value. None of this shows an engine working: `tests/export` has the `tensorrt`-marked
test that builds and runs a real one, skipped where TensorRT cannot be installed (as here)."""

import pytest
import torch
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime import tensorrt as ours
from tests.runtime.recording_tensorrt import NOT_AN_ENGINE, install


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.mark.parametrize("major", [10, 11])
def test_fp32_builds_clear_tf32(monkeypatch, major):
    record = install(monkeypatch, major)
    engine, _, _ = ours.engine_from_module(small_net(), torch.randn(1, 1, 32, 32), "fp32", max_batch=4)
    assert engine == NOT_AN_ENGINE
    assert record.of("clear_flag") == [("TF32",)] and record.of("set_flag") == []
    [(flags,)] = record.of("build")
    assert "TF32" not in flags


def test_fp16_on_tensorrt_10_sets_the_fp16_flag_and_keeps_tf32_for_fp32_layers(monkeypatch):
    record = install(monkeypatch, 10)
    ours.engine_from_module(small_net(), torch.randn(1, 1, 32, 32), "fp16")
    assert record.of("set_flag") == [("FP16",)] and record.of("clear_flag") == []


def test_fp16_on_tensorrt_11_has_no_precision_flag_and_parses_an_fp16_onnx(monkeypatch):
    from dery_deploy.runtime.onnx import onnx_from_module

    record = install(monkeypatch, 11)  # the fake, like TensorRT 11, has no BuilderFlag.FP16 to set
    net, x = small_net(), torch.randn(1, 1, 32, 32)
    _, _, onnx_bytes = ours.engine_from_module(net, x, "fp16")
    assert record.of("set_flag") == [] and record.of("clear_flag") == []
    assert onnx_bytes == onnx_from_module(net, x, precision="fp16")
    assert record.of("parse") == [(len(onnx_bytes),)]


def test_optimisation_profile_is_tuned_for_the_batch_asked_for(monkeypatch):
    record = install(monkeypatch, 10)
    ours.engine_from_module(small_net(), torch.randn(1, 1, 32, 32), "fp32", max_batch=32, opt_batch=8)
    assert record.of("set_shape") == [("x", (1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 32, 32))]


def test_one_logger_serves_every_builder_and_runtime(monkeypatch):
    record = install(monkeypatch, 10)
    for _ in range(2):
        ours.engine_from_module(small_net(), torch.randn(1, 1, 32, 32), "fp32")
    trt = ours.import_tensorrt()
    trt.Runtime(ours.shared_logger(trt))
    assert len(record.of("Logger")) == 1
    loggers = {id(a[0]) for a in record.of("Builder") + record.of("Runtime")}
    assert len(loggers) == 1


def test_a_failed_enqueue_is_an_error_not_a_timing(monkeypatch):
    record = install(monkeypatch, 10)
    trt = ours.import_tensorrt()
    ours.enqueue(trt.Context(), 7)
    record.enqueue_result = False
    with pytest.raises(DeryError, match="execute_async_v3 returned False"):
        ours.enqueue(trt.Context(), 7)
    assert record.of("execute_async_v3") == [(7,), (7,)]
