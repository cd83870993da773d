"""Evaluation of a run: top-1, per-class accuracy, confusion matrix (PNG), parameters, and the
latency measured on this machine with a named backend (batch 1, same harness as profiling)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_json, atomic_write_with
from dery_deploy.data.task import Task
from dery_deploy.runtime.measure import measure_module
from dery_deploy.schema import load_dataclass
from dery_deploy.train.finetune import accuracy


@dataclass(frozen=True, kw_only=True)
class EvaluatedLatency:
    """The batch-1 latency of an evaluated network, measured here with a named backend (ms). The p99,
    uncertainty and thread count were not recorded before 2026-11-30 (None as read from such a file)."""

    median_ms: float
    p90_ms: float
    p99_ms: float | None = None
    uncertainty: float | None = None
    stable: bool
    noise: float
    backend: str
    threads: int | None = None
    precision: str
    device: str
    batch: int


@dataclass(frozen=True)
class Evaluation:
    """evaluation.json: top-1 and per-class accuracy (%) on the task's test split, the confusion matrix
    (rows: true class) and its PNG's file name beside it, parameters (M), and, where asked for, the
    latency measured here."""

    data: str
    test_images: int
    top1: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    confusion_png: str
    params_m: float
    latency: EvaluatedLatency | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.latency is None:
            del d["latency"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        return load_dataclass(cls, d)

    @classmethod
    def read(cls, path: Path) -> Evaluation:
        """A run folder's evaluation.json."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def confusion(preds: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def confusion_png(cm: torch.Tensor, classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.55 * n), dpi=120)
    norm = cm.float() / cm.sum(1, keepdim=True).clamp_min(1)
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def evaluate_model(model, task: Task, out_dir: Path, title: str, latency: tuple | None = None) -> Evaluation:
    """Top-1, per-class accuracy and the confusion matrix on the task's test split (evaluation.json,
    confusion.png); with `latency` = (backend, precision, device), the batch-1 latency measured here."""
    acc, preds = accuracy(model, task.x("test"), task.y("test"))
    cm = confusion(preds, task.y("test"), task.num_classes)
    per_class = {c: round(100.0 * float(cm[i, i]) / max(1, int(cm[i].sum())), 2) for i, c in enumerate(task.classes)}
    png = confusion_png(cm, task.classes, Path(out_dir) / "confusion.png", f"{title}: top-1 {acc:.2f}%")
    measured = None
    if latency is not None:
        backend, precision, device = latency
        m = measure_module(backend, model, task.x("test")[:1], precision, device)
        measured = EvaluatedLatency(
            median_ms=round(m.timing.median_ms, 5),
            p90_ms=round(m.timing.p90_ms, 5),
            p99_ms=round(m.timing.p99_ms, 5),
            uncertainty=round(m.timing.uncertainty, 5),
            stable=m.timing.stable,
            noise=round(m.timing.noise, 4),
            backend=backend.name,
            threads=backend.threads,
            precision=precision,
            device=device,
            batch=1,
        )
    res = Evaluation(
        data=task.spec,
        test_images=len(task.test),
        top1=round(acc, 3),
        per_class=per_class,
        confusion=cm.tolist(),
        confusion_png=png.name,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 4),
        latency=measured,
    )
    atomic_write_json(Path(out_dir) / "evaluation.json", res.to_dict())
    return res
