"""INT8 by static post-training quantization: one QDQ ONNX per network, which ONNX Runtime and
OpenVINO run on CPUs and TensorRT builds into an engine (explicit quantization) on NVIDIA GPUs.

`onnxruntime.quantization.quantize_static` writes it. Its options, and why (measured with ONNX
Runtime 1.32 and OpenVINO 2026.4 on the six donors of the embedded `fashion` zoo, 512 unlabelled
calibration images, top-1 agreement with fp32 on 1000 test images):

- QDQ format, signed int8, symmetric (zero point 0) for activations and weights, biases kept fp32:
  the only form TensorRT takes (symmetric INT8 Q/DQ; no INT32 bias dequantisation). ONNX Runtime
  and OpenVINO run it as it is, so all three serve the same file.
- Weights per output channel: depthwise and SE convolutions have channels of very different ranges.
- Q/DQ on the inputs of weighted ops only (Conv, Gemm, MatMul), not on their outputs: NVIDIA's
  recommended placement, and the one OpenVINO computes correctly. With Q/DQ on Conv outputs too
  (ONNX Runtime's default), OpenVINO 2026.4 gets a Concat of a quantized and a fp32 tensor wrong
  (ViT's class token): the ViT donor agreed with fp32 on 45% of the images on OpenVINO (97% on
  ONNX Runtime), mobilevit on 77%; with Q/DQ on inputs only, 97.5% and 96%.
- Attention's activation-by-activation MatMuls are quantized too: with them fp32 the ViT donor
  agreed on 98.4% instead of 97.4%, but mobilevit ran 1.4x slower at batch 32 on OpenVINO.
- MinMax calibration: the calibrator keeps only each tensor's minimum and maximum per batch.
  Percentile (99.999) agreed with fp32 0.5-0.9 points more often on average, but ONNX Runtime
  holds every calibrated activation of every image in memory for it (4.3 GB for the ViT donor at
  32 px with 512 images; a 224 px network would not fit). The accuracy of what ships is measured
  anyway, never assumed.

The price is ONNX Runtime's speed: its x86 kernels fuse only DQ->Conv->Q into integer convolutions,
so it runs this file mostly as dequantised fp32, slower than the fp32 model (resnet10t at batch 32:
12.3 ms against 3.4 ms fp32; OpenVINO runs the same file in 1.4 ms). Its own x86 recipe (unsigned
asymmetric activations, Q/DQ on outputs too) ran resnet10t in 2.0 ms, but TensorRT cannot take it
and OpenVINO ran it slower than this one (mnv3 1.9 ms against 1.2). Which runtime and precision
ship is decided by measurement, so a slow combination is simply not chosen.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime.onnx import onnx_from_module

CALIBRATION_IMAGES = 512  # unlabelled task images a shipped network is calibrated on
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
_BATCH = 32  # calibration images per inference


def _reader(images: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (images[i : i + batch] for i in range(0, len(images), batch))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"x": np.ascontiguousarray(x, dtype=np.float32)}

    return Reader()


def qdq_from_onnx(onnx_bytes: bytes, calibration: torch.Tensor | np.ndarray) -> bytes:
    """The QDQ INT8 form of an fp32 ONNX model with input `x` (see the module docstring).

    Args:
        calibration: inputs the activation ranges are taken from (N, ...), normalised like the
            model's input. Latency does not depend on them, so profiling may pass its example input;
            what ships is calibrated on the task's unlabelled images.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    # the calibration sessions the quantizer opens log graph clean-ups as warnings on the user's terminal;
    # nothing in them is for the user to act on (3: errors only)
    onnxruntime.set_default_logger_severity(3)

    images = calibration.detach().float().cpu().numpy() if isinstance(calibration, torch.Tensor) else calibration
    if len(images) == 0:
        raise DeryError("INT8 calibration needs at least one image; the task has none to calibrate on", "export")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer reports progress through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="dery-qdq.") as tmp:
            src, pre, out = Path(tmp) / "model.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
            src.write_bytes(onnx_bytes)
            # shape inference and ONNX-standard graph cleanup, the quantizer's recommended first step
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(out),
                _reader(images, _BATCH),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(WEIGHTED_OPS),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
                },
            )
            return out.read_bytes()
    finally:
        logging.getLogger().setLevel(quiet)


def qdq_from_module(module: nn.Module, calibration: torch.Tensor) -> bytes:
    """Export `module` (fp32, dynamic batch) and quantize it, calibrated on `calibration` (see `qdq_from_onnx`)."""
    return qdq_from_onnx(onnx_from_module(module, calibration[:1].float().cpu()), calibration)


def quantized_ops(onnx_bytes: bytes) -> dict[str, int]:
    """How many weighted ops a model has, and how many of them take INT8 weights (through a DequantizeLinear)."""
    import onnx

    g = onnx.load_from_string(onnx_bytes).graph
    dequantized = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in g.node if n.op_type in WEIGHTED_OPS]
    return {
        "weighted": len(weighted),
        "quantized": sum(1 for n in weighted if len(n.input) > 1 and n.input[1] in dequantized),
    }
