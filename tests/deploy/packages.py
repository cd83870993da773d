"""Small packages written by hand, for tests that need a package but not a trained network: a tiny
ONNX graph (global average pool, then a fixed linear layer) or a recording-fake TensorRT engine, with a
deploy.json built the way `export/package.py` builds one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dery_deploy.artifacts import sha256_file
from dery_deploy.deploy.info import FILE, Budget, DeployInfo, Latency, ModelInput, Preprocess, Runtime
from dery_deploy.deploy.machine import fingerprint
from dery_deploy.deploy.settings import onnxruntime_settings

CLASSES = [f"class {i}" for i in range(10)]


def tiny_onnx(input: str = "x", output: str = "y", channels: int = 1, classes: int = 10) -> bytes:
    """(N, C, H, W) -> (N, classes): the channel means times a fixed weight."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((channels, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [input], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], [output]),
        ],
        "tiny",
        [helper.make_tensor_value_info(input, TensorProto.FLOAT, ["n", channels, "h", "w"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_package(
    folder: Path,
    model: str,
    data: bytes,
    runtime: str = "onnxruntime",
    batch: int = 2,
    input: str = "x",
    output: str = "y",
    channels: int = 1,
    size: int = 32,
    session: dict | None = None,
    budget_ms: float | None = None,
) -> Path:
    """`folder` as a package of the one model file `model` holding `data`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / model).write_bytes(data)
    color = "L" if channels == 1 else "RGB"
    device = "cuda" if runtime == "tensorrt" else "cpu"
    if session is None:
        session = onnxruntime_settings(1) if runtime == "onnxruntime" else {}
    info = DeployInfo(
        model=model,
        files={model: sha256_file(folder / model)},
        input=ModelInput(input, channels, size, size),
        preprocess=Preprocess(color, "resize-crop", size, mean=[0.5] * channels, std=[0.25] * channels),
        output=output,
        classes=list(CLASSES),
        runtime=Runtime(runtime, "0", "fp32", batch, 1 if device == "cpu" else None, session, device),
        latency=Latency(1.0, 1.1, 1.2, 1024, {"p50": 0.01, "p90": 0.01, "p99": 0.01}, 0.0, "test", "test"),
        budget=Budget(budget_ms, 50) if budget_ms is not None else None,
        fingerprint=fingerprint(device),
        accuracy={"top1": None, "split": "test", "images": 0, "task": "test"},
    )
    info.write(folder / FILE)
    return folder
