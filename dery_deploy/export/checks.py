"""What an exported artifact's outputs are held to, and how an INT8 artifact is made.

An fp32 / fp16 artifact is compared with the PyTorch network on the task's first test images
(max |logit difference| and top-1 agreement). An INT8 artifact (the QDQ ONNX of `runtime.quantize`,
calibrated on the task's unlabelled images) has no max-abs parity to speak of: its top-1 on the whole
test split is measured against the fp32 PyTorch network's on the same images, and the export fails when
it drops by more than `INT8_MAX_DROP` points (or twice the change's own standard error, on a small split).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from dery_deploy.data.task import Task
from dery_deploy.export.report import Calibration, Int8Record, Parity, QuantizedOps
from dery_deploy.runtime.evaluate import Logits, accuracy_change
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.quantize import CALIBRATION_IMAGES, qdq_from_module, quantized_ops

PARITY_IMAGES = 64
FP32_TOL = 1e-4
FP16_TOL = 5e-2  # max abs logit difference accepted for fp16 artifacts (logits are O(1-10))
# top-1 points an INT8 artifact may lose against fp32 on the test split; the goal for what
# ships is 0.5, this is the export's safety net (selection compares measured validation accuracy)
INT8_MAX_DROP = 1.0


def parity(ref: np.ndarray, out: np.ndarray, tol: float, min_agreement: float = 1.0) -> Parity:
    agree = float((ref.argmax(1) == out.argmax(1)).mean())
    diff = float(np.abs(ref - out).max())
    return Parity(int(ref.shape[0]), diff, agree, agree == 1.0, tol, diff <= tol and agree >= min_agreement)


def _int8_task(task: Task | None) -> Task:
    if task is None:
        raise ValueError("an INT8 export is calibrated and evaluated on the task's images: pass the task")
    return task


def int8_onnx(model: nn.Module, task: Task | None, seed: int) -> tuple[bytes, Int8Record]:
    """The network's QDQ INT8 ONNX, calibrated on the task's unlabelled images, and how it was made."""
    task = _int8_task(task)
    t0 = time.perf_counter()
    calibration = task.unlabelled_images(CALIBRATION_IMAGES, seed)
    qdq = qdq_from_module(model, calibration)
    return qdq, Int8Record(
        Calibration(len(calibration), "the task's unlabelled images", seed),
        QuantizedOps(**quantized_ops(qdq)),
        round(time.perf_counter() - t0, 2),
    )


def int8_accuracy(
    model: nn.Module, logits: Logits, x: torch.Tensor, task: Task | None, record: Int8Record
) -> tuple[Parity, Int8Record]:
    """An INT8 artifact's top-1 on the test split against the fp32 PyTorch network's (module docstring).

    Returns:
        the report's parity (top-1 change with its tolerance, the max |diff| on the parity images only
        as information) and `record` with the accuracy it measured.
    """
    task = _int8_task(task)
    acc = accuracy_change(model, logits, task.x("test"), task.y("test"), "test")
    tol = max(INT8_MAX_DROP, 2 * acc.change_se)
    with torch.inference_mode():
        diff = float(np.abs(model(x).numpy() - logits(x)).max())
    par = Parity(
        images=acc.images,
        split="test",
        check="top-1 change against fp32 PyTorch on the same images (max |diff| means nothing for INT8)",
        top1_agreement=acc.top1_agreement,
        top1_identical=acc.top1_agreement == 1.0,
        max_abs_diff=diff,
        tolerance=round(tol, 3),
        tolerance_unit=f"top-1 points lost: {INT8_MAX_DROP:g}, or twice the change's standard error if larger",
        ok=acc.top1_change >= -tol,
    )
    return par, record.measured(acc.top1, acc.fp32_top1, acc.top1_change, acc.change_se)


def exported_onnx(
    model: nn.Module, x: torch.Tensor, precision: str, task: Task | None, seed: int
) -> tuple[bytes, Int8Record | None]:
    """The ONNX an export ships from: fp32, or QDQ INT8 calibrated on the task (with its record)."""
    if precision == "int8":
        return int8_onnx(model, task, seed)
    return onnx_from_module(model, x[:1]), None


def checked_outputs(
    model: nn.Module, logits: Logits, x: torch.Tensor, precision: str, task: Task | None, int8: Int8Record | None
) -> tuple[Parity, Int8Record | None]:
    """The artifact's outputs against the network's: fp32 parity on `x`, or for INT8 the top-1 change
    on the test split (returned in the INT8 record `int8`, which `exported_onnx` made)."""
    if precision == "int8":
        assert int8 is not None, "an INT8 artifact comes with the record of its quantization"
        return int8_accuracy(model, logits, x, task, int8)
    with torch.inference_mode():
        ref = model(x).numpy()
    return parity(ref, logits(x), FP32_TOL), int8
