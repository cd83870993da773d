"""The source tasks of the embedded Fashion-MNIST zoo: what each donor was trained on.

A source task turns a Fashion-MNIST split into (images, targets): a class subset relabelled
0..k-1 (supervised), or 4-way rotation prediction over all images (self-supervised). The
downstream task (all 10 classes) is none of them.
"""

from __future__ import annotations

import torch

from dery_deploy.data.fashion_mnist import Split, load_split, preprocess
from dery_deploy.errors import DeryError


def task_data(task: dict, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 targets of a source task on the given split.

    For rotation, the test split rotates image i by (i mod 4) quarter turns (fixed); the train
    split draws rotations from `seed`, fresh per call, so each epoch sees other rotations.
    """
    data: Split = load_split(split)
    if task["type"] == "supervised":
        classes = list(task["classes"])
        keep = torch.isin(data.labels, torch.tensor(classes))
        lut = torch.full((10,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        return data.images[keep], lut[data.labels[keep]]
    if task["type"] == "rotation":
        n = len(data)
        if split == "test":
            k = torch.arange(n) % 4
        else:
            k = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
        return rotate(data.images, k), k
    raise DeryError(f"unknown source task type {task['type']!r}", "zoo")


def rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    for r in range(1, 4):
        sel = k == r
        out[sel] = torch.rot90(images[sel], r, dims=(1, 2))
    return out


def fixed_subset(n_total: int, n: int = 1000) -> torch.Tensor:
    """The fixed test subset used to check that loaded weights reproduce the manifest accuracy."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(1234))[: min(n, n_total)].sort().values


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy in percent, eval mode, on preprocessed 32x32 inputs."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(preprocess(images[i : i + batch]))
        correct += int((logits.argmax(1) == targets[i : i + batch]).sum())
    return 100.0 * correct / max(len(images), 1)
