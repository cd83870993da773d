"""Image folders (`root/<class>/<image>`), read with torchvision's ImageFolder and the zoo's input spec."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dery_deploy.errors import DeryError


def image_folder(path: str | Path, size: int, channels: int, mean, std):
    """An ImageFolder resized/centre-cropped to `size` and normalised; refuses empty folders."""
    from torchvision import datasets, transforms

    path = Path(path)
    if not path.is_dir():
        raise DeryError(f"data folder not found: {path}", "data")
    tf = [transforms.Resize(size), transforms.CenterCrop(size)]
    if channels == 1:
        tf.append(transforms.Grayscale(1))
    tf += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    try:
        ds = datasets.ImageFolder(str(path), transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError) as e:
        raise DeryError(f"{path} holds no images in class sub-folders ({str(e).splitlines()[0]}); expected "
                        "FOLDER/<class>/<image>.png|jpg", "data") from None
    return ds


def class_counts(ds) -> dict[str, int]:
    counts = torch.bincount(torch.tensor(ds.targets), minlength=len(ds.classes)).tolist()
    return dict(zip(ds.classes, counts))


def imbalance_warning(ds, ratio: float = 5.0) -> str | None:
    """A line for the user when the largest class outnumbers the smallest by more than `ratio`."""
    counts = class_counts(ds)
    lo, hi = min(counts.values()), max(counts.values())
    if lo == 0 or hi / lo > ratio:
        small = min(counts, key=counts.get)
        big = max(counts, key=counts.get)
        return (f"class imbalance: {big!r} has {hi} images, {small!r} has {lo}; accuracy will favour the large "
                "classes (consider balancing or reading per-class accuracy)")
    return None


def probe_from_folder(path: str | Path, zoo, n: int, seed: int) -> tuple[torch.Tensor, str]:
    ds = image_folder(path, zoo.input.size, zoo.input.channels, zoo.input.mean, zoo.input.std)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    x = torch.stack([ds[i][0] for i in idx])
    return x, hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
