"""The teacher a network is distilled from: fine-tuned networks (one, or an ensemble whose logits
are averaged) run once over a seeded pool of the task's unlabelled images. Its logits are computed
once and cached, so distillation costs the student's steps only. The teacher may be slower than
the budget: it never ships.

The student sees the same (unaugmented) images the teacher saw: function matching (Beyer et al.,
CVPR 2022) asks for one view for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_with, sha256_file, sha256_json
from dery_deploy.data.task import Task


@dataclass(frozen=True)
class TeacherSummary:
    """What a run's config.json records of the teacher it distils from: its run folders' names, the key of
    its cached logits, and how many unlabelled images they cover."""

    runs: list[str]
    key: str
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Teacher:
    runs: list[str]  # run folders of the fine-tuned networks it averages
    key: str  # what it is: the runs' checkpoints, the task, the pool
    images: torch.Tensor  # uint8 (N, C, H, W): the unlabelled pool
    logits: torch.Tensor  # (N, classes): the ensemble's mean logits on it

    def describe(self) -> TeacherSummary:
        return TeacherSummary([Path(r).name for r in self.runs], self.key, len(self.images))


@torch.no_grad()
def make_teacher(
    runs: list[Path], task: Task, pool: int = 8192, seed: int = 0, cache: Path | None = None, load=None
) -> Teacher:
    """Average the logits of the fine-tuned networks in `runs` over `pool` unlabelled images.

    Args:
        load: run folder -> (model, config); `train.finetune.load_run_model` (passed in to keep imports one-way).
    """
    g = torch.Generator().manual_seed(7919 + seed)
    idx = torch.randperm(len(task.unlabelled), generator=g)[:pool].sort().values
    images = task.unlabelled.images[idx]
    key = sha256_json([[sha256_file(Path(r) / "checkpoint.safetensors") for r in runs], task.hash(), pool, seed])[:16]
    path = Path(cache) / f"teacher-{key}.safetensors" if cache else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file

        return Teacher([str(r) for r in runs], key, images, load_file(str(path))["logits"])
    total: torch.Tensor | None = None
    for r in runs:
        model, _ = load(Path(r))
        out = torch.cat([model(task.normalize(images[i : i + 512])) for i in range(0, len(images), 512)])
        total = out if total is None else total + out
    assert total is not None, "a teacher averages at least one run"
    logits = (total / len(runs)).float().contiguous()
    if path is not None:
        from safetensors.torch import save_file

        atomic_write_with(path, lambda tmp: save_file({"logits": logits}, str(tmp)))
    return Teacher([str(r) for r in runs], key, images, logits)
