"""The QDQ INT8 ONNX: its form, that ONNX Runtime and OpenVINO both run it with the accuracy of the
fp32 network they were calibrated from, and what our code asks of TensorRT to build it (a
recording fake: it never counts as an engine having run)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime.evaluate import accuracy_change, artifact_accuracy, artifact_runner
from dery_deploy.runtime.harness import torch_threads
from dery_deploy.runtime.quantize import qdq_from_module, quantized_ops


def small_cnn(classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: per-channel weight scales matter here
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


@pytest.fixture(scope="module")
def trained_cnn(fashion_task):
    """A small CNN trained in a second on the task's 160 training images (61% test top-1); one
    thread: small batches on two threads of a busy 2-core machine took 17 s instead of 0.6."""
    torch.manual_seed(0)
    model = small_cnn()
    x, y = fashion_task.x("train"), fashion_task.y("train")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    with torch_threads(1):
        for _ in range(20):
            for i in range(0, len(x), 16):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
                opt.step()
    return model.eval()


def test_qdq_is_symmetric_int8_on_weighted_op_inputs_only():
    torch.manual_seed(0)
    model = small_cnn().eval()
    qdq = qdq_from_module(model, torch.randn(16, 1, 32, 32))
    assert quantized_ops(qdq) == {"weighted": 4, "quantized": 4}
    g = onnx.load_from_string(qdq).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w_dq = producer[n.input[1]]
        weights, scale, zero = (inits[i] for i in w_dq.input)
        # per output channel, symmetric int8 (TensorRT takes nothing else)
        assert weights.dtype == np.int8 and scale.shape == (weights.shape[0],) and not zero.any()
        # the activation input comes through Q -> DQ, signed with zero point 0
        x_dq = producer[n.input[0]]
        assert x_dq.op_type == "DequantizeLinear" and producer[x_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[x_dq.input[2]].dtype == np.int8 and inits[x_dq.input[2]] == 0
        # biases stay fp32 (TensorRT dequantises no INT32 bias)
        assert n.input[2] in inits and inits[n.input[2]].dtype == np.float32
        # no Q/DQ on the weighted op's output
        assert all(c.op_type != "QuantizeLinear" for c in g.node if n.output[0] in c.input)


def test_int8_runs_on_both_cpu_runtimes_with_the_accuracy_of_fp32(trained_cnn, fashion_task):
    task = fashion_task
    qdq = qdq_from_module(trained_cnn, task.unlabelled_images(256))
    x, y = task.x("test"), task.y("test")
    fp32_top1 = 100 * float((trained_cnn(x).argmax(1) == y).float().mean())
    assert fp32_top1 > 40  # a trained network (chance: 10%): its agreement means something
    results = {}
    for runtime in ("onnxruntime", "openvino"):
        acc = accuracy_change(trained_cnn, artifact_runner(qdq, runtime, threads=1), x, y, "test")
        assert acc.images == len(y) == 300 and acc.fp32_top1 == pytest.approx(fp32_top1, abs=1e-3)
        assert acc.top1_agreement >= 0.95, (runtime, acc)
        assert abs(acc.top1_change) <= 3.0, (runtime, acc)
        assert acc.top1_change == pytest.approx(acc.top1 - acc.fp32_top1, abs=1e-2)
        results[runtime] = artifact_runner(qdq, runtime, threads=1)(x[:64])
    # the same file on both runtimes is the same numerical model, up to integer rounding
    assert (results["onnxruntime"].argmax(1) == results["openvino"].argmax(1)).mean() >= 0.95
    # the helper selection calls: the artifact's top-1 on a split, from bytes or from a file
    top1, preds = artifact_accuracy(qdq, task, "val", "openvino")
    assert len(preds) == len(task.val) and top1 == pytest.approx(100 * float((preds == task.y("val")).float().mean()))


class ClassToken(nn.Module):
    """ViT's stem: a patch convolution whose tokens meet an fp32 class token in a Concat."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv2d(1, 32, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.token.expand(t.shape[0], -1, -1), t], 1)
        return self.head(t.mean(1))


def test_openvino_computes_the_class_token_concat_of_our_qdq_right():
    # with Q/DQ on Conv outputs too (ONNX Runtime's default) OpenVINO 2026.4 got this Concat wrong
    # (mean |error| 0.15 against ONNX Runtime's 0.007); our placement keeps both runtimes together
    model = ClassToken().eval()
    x = torch.randn(32, 1, 32, 32)
    qdq = qdq_from_module(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    errors = {rt: float(np.abs(artifact_runner(qdq, rt, 1)(x) - ref).mean()) for rt in ("onnxruntime", "openvino")}
    assert errors["openvino"] < 0.02 and errors["openvino"] < 2 * errors["onnxruntime"] + 1e-3, errors


def test_calibration_without_images_is_refused():
    with pytest.raises(DeryError, match="at least one image"):
        qdq_from_module(small_cnn().eval(), torch.zeros(0, 1, 32, 32))


def test_artifact_runner_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(DeryError, match="runtime must be one of onnxruntime, openvino"):
        artifact_runner(b"", "tensorrt")
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    with pytest.raises(DeryError, match="use runtime openvino"):
        artifact_runner(xml, "onnxruntime")


@pytest.mark.parametrize(("major", "flags"), [(10, {"INT8"}), (11, set())])
def test_int8_engine_asks_tensorrt_for_explicit_quantization(monkeypatch, major, flags):
    from dery_deploy.runtime import tensorrt as rt
    from tests.runtime.recording_tensorrt import NOT_AN_ENGINE, install

    record = install(monkeypatch, major)
    x = torch.randn(8, 1, 32, 32)
    engine, _, qdq = rt.int8_engine_from_module(small_cnn().eval(), x, (4, 1, 32, 32), max_batch=32)
    assert engine == NOT_AN_ENGINE
    # TensorRT 10: INT8 lets the Q/DQ layers run in INT8, no FP16 and no TF32 (the other layers stay fp32 as
    # measured on the CPU); TensorRT 11 is strongly typed: the Q/DQ types decide, no flag
    [(built,)] = record.of("build")
    assert set(built) == flags
    assert record.parsed == [qdq] and quantized_ops(qdq)["quantized"] == 4  # the QDQ ONNX is what TensorRT parses
    assert record.of("set_shape") == [("x", (1, 1, 32, 32), (4, 1, 32, 32), (32, 1, 32, 32))]  # tuned for batch 4
