"""Probe images: the unlabelled images similarity and adapter fitting are computed on, taken from a
`--data` spec, a folder of images or the embedded default, with a content hash that keys their caches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dery_deploy.data import folder
from dery_deploy.data.task import InputSpec, load_task, parse_spec
from dery_deploy.errors import DeryError


def probe_images(source: str | None, input: InputSpec, n: int, seed: int = 0) -> tuple[torch.Tensor, str, list[str]]:
    """Unlabelled probe images for similarity and adapter fitting, their content hash, and notes.

    `source` is a `--data` spec (its unlabelled images), a folder of images (any layout; its
    train/ when it has one), or None for the embedded default (Fashion-MNIST) on 1-channel zoos.
    The count is capped by what the source holds, with a note.
    """
    notes: list[str] = []
    if source is None:
        if input.channels != 1:
            raise DeryError(
                f"this zoo takes {input.channels}-channel images and the built-in probe data is "
                "Fashion-MNIST (grey): pass --probe-data FOLDER or --data FOLDER",
                "data",
            )
        source = "fashion-mnist"
    head, _ = parse_spec(source)
    if head == "fashion-mnist" or (Path(head).is_dir() and folder.has_class_layout(Path(head))):
        task = load_task(source, input, seed=0)
        pool = task.unlabelled.images
        notes += task.notes
    else:
        path = Path(head).expanduser()
        if not path.is_dir():
            raise DeryError(
                f"--probe-data {source!r} is neither 'fashion-mnist' nor an existing folder of images", "data"
            )
        pool = folder.read_unlabelled(path.resolve(), input, notes)
    if n > len(pool):
        notes.append(f"probe capped at the {len(pool)} images available (asked for {n})")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(pool), generator=g)[:n].sort().values
    images = pool[idx]
    mean = torch.tensor(input.mean).view(1, -1, 1, 1)
    std = torch.tensor(input.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std, hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16], notes
