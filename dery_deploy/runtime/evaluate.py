"""Top-1 of an artifact (an ONNX run by ONNX Runtime or OpenVINO, or an OpenVINO IR) on a task's
split, and its change against the fp32 PyTorch network on the same images.

This is how an INT8 artifact's accuracy is measured, never assumed: max-abs parity says nothing
about INT8 (its logits move by design), and the same QDQ file can lose different amounts on
different runtimes. Selection calls `artifact_accuracy` on the validation split; the export report
calls `accuracy_change` on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError

EVAL_BATCH = 256
RUNTIMES = ("onnxruntime", "openvino")

Logits = Callable[[torch.Tensor], np.ndarray]


def artifact_runner(artifact: bytes | str | Path, runtime: str = "onnxruntime", threads: int | None = None) -> Logits:
    """A function from a batch of normalised images to the artifact's logits, on the CPU.

    Args:
        artifact: ONNX bytes, or an .onnx file (either runtime) or an OpenVINO .xml (openvino).
        runtime: onnxruntime or openvino.
        threads: CPU threads (None: torch's count); accuracy does not depend on them.
    """
    if runtime not in RUNTIMES:
        raise DeryError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}", "export")
    if isinstance(artifact, (str, Path)) and not Path(artifact).is_file():
        raise DeryError(f"artifact {artifact} not found", "export")
    if runtime == "onnxruntime":
        if isinstance(artifact, (str, Path)) and Path(artifact).suffix != ".onnx":
            raise DeryError(f"ONNX Runtime runs .onnx files, not {Path(artifact).name}; use runtime openvino", "export")
        from dery_deploy.runtime.backends.onnxruntime import OnnxRuntime

        sess = OnnxRuntime.session(artifact if isinstance(artifact, bytes) else str(artifact), "cpu", threads)
        return lambda x: sess.run(None, {"x": np.ascontiguousarray(x.float().numpy())})[0]
    from dery_deploy.runtime.openvino import compile_model

    compiled = compile_model(artifact, threads, any_batch=True)  # any chunk size (a shipped IR's batch is static)
    return lambda x: compiled(np.ascontiguousarray(x.float().numpy()))[0]


def logits_in_batches(fn: Logits, x: torch.Tensor, batch: int = EVAL_BATCH) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch].contiguous())) for i in range(0, len(x), batch)])


def artifact_accuracy(
    artifact: bytes | str | Path,
    task: Task,
    split: str = "val",
    runtime: str = "onnxruntime",
    threads: int | None = None,
) -> tuple[float, torch.Tensor]:
    """Top-1 (%) of the artifact on the task's `split` (val / test), and its predictions.

    For an INT8 finalist: `artifact_accuracy(qdq_bytes, task, "val", "openvino")`, with `qdq_bytes`
    from `runtime.quantize.qdq_from_module(net, task.unlabelled_images(CALIBRATION_IMAGES))`.
    """
    preds = torch.from_numpy(logits_in_batches(artifact_runner(artifact, runtime, threads), task.x(split)).argmax(1))
    return 100.0 * float((preds == task.y(split)).float().mean()), preds


@dataclass(frozen=True)
class AccuracyChange:
    """An artifact's top-1 against the fp32 PyTorch network's on the same images of a split (points), the
    change with its paired standard error, and how often the two predict the same class; `target` names
    the runtime and precision where a run caches it."""

    split: str
    images: int
    top1: float
    fp32_top1: float
    top1_change: float
    top1_agreement: float
    change_se: float
    target: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.target is None:
            del d["target"]
        return d


@torch.inference_mode()
def accuracy_change(model: nn.Module, logits: Logits, x: torch.Tensor, y: torch.Tensor, split: str) -> AccuracyChange:
    """Top-1 of an artifact (its `logits` function) and of the fp32 PyTorch `model` on the same
    images, in points, with the change's paired standard error (the images are shared, so the
    noise is that of the per-image differences, not of two independent accuracies).

    Returns:
        the artifact's top-1, the fp32 network's, the change and its standard error (points), and the two
        networks' agreement.
    """
    model = model.float().cpu().eval()
    ref = torch.cat([model(x[i : i + EVAL_BATCH]).argmax(1) for i in range(0, len(x), EVAL_BATCH)])
    got = torch.from_numpy(logits_in_batches(logits, x).argmax(1))
    right, ref_right = (got == y).float(), (ref == y).float()
    diff = right - ref_right
    n = len(y)
    se = float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    return AccuracyChange(
        split=split,
        images=n,
        top1=round(100 * float(right.mean()), 3),
        fp32_top1=round(100 * float(ref_right.mean()), 3),
        top1_change=round(100 * float(diff.mean()), 3),
        top1_agreement=round(float((got == ref).float().mean()), 5),
        change_se=round(100 * se, 3),
    )
