"""Fashion-MNIST from its IDX files (Debian package `dataset-fashion-mnist`, `DERY_DATA`, or a path).

Images are returned as uint8 tensors (N, 28, 28) and labels as int64 (N,), in the official order
and train/test split. `preprocess` pads to 32x32 and normalises, which is the embedded zoo's input.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dery_deploy.errors import DeryError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2190, 0.3318  # train-set statistics of the zero-padded 32x32 images
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
INSTALL_HINT = ("install them with `apt-get install -y dataset-fashion-mnist`, or point DERY_DATA "
                "(or --data fashion-mnist:path=DIR) at a folder holding the four IDX files")


def find_root(path: str | Path | None = None) -> Path:
    """The folder holding the IDX files: explicit path, then $DERY_DATA, then the Debian location."""
    candidates = [Path(p) for p in (path, os.environ.get("DERY_DATA")) if p] + [DEBIAN_DIR]
    for c in candidates:
        for sub in (c, c / "fashion-mnist"):
            if _idx_path(sub, _FILES["test"][0]) is not None:
                return sub
    tried = ", ".join(str(c) for c in candidates)
    raise DeryError(f"Fashion-MNIST files not found (looked in {tried}); {INSTALL_HINT}", "data")


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DeryError(f"{path} is truncated; reinstall the data set ({INSTALL_HINT})", "data")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DeryError(f"{path} is not an IDX uint8 file", "data")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DeryError(f"{path} is truncated ({arr.size} of {int(np.prod(dims))} values)", "data")
    return arr.reshape(dims)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.images[idx], self.labels[idx])


_CACHE: dict[tuple[str, str], Split] = {}


def load_split(split: str, root: str | Path | None = None) -> Split:
    """Load the official `train` (60k) or `test` (10k) split."""
    if split not in _FILES:
        raise DeryError(f"unknown split {split!r}; use 'train' or 'test'", "data")
    r = find_root(root)
    key = (str(r), split)
    if key not in _CACHE:
        img_stem, lbl_stem = _FILES[split]
        paths = [_idx_path(r, img_stem), _idx_path(r, lbl_stem)]
        if None in paths:
            raise DeryError(f"{r} lacks the {split} files; {INSTALL_HINT}", "data")
        images = torch.from_numpy(_read_idx(paths[0]).copy())
        labels = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
        if images.shape[0] != labels.shape[0]:
            raise DeryError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels", "data")
        _CACHE[key] = Split(images, labels)
    return _CACHE[key]


def per_class_subset(split: Split, per_class: int, seed: int = 0, classes=None) -> Split:
    """Deterministic sub-sample: `per_class` examples of each class (in `classes`, default all)."""
    g = torch.Generator().manual_seed(seed)
    classes = sorted(set(split.labels.tolist())) if classes is None else list(classes)
    picks = []
    for c in classes:
        idx = (split.labels == c).nonzero().flatten()
        if per_class > len(idx):
            raise DeryError(f"class {c} has only {len(idx)} examples, asked for {per_class} per class", "data")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return split.subset(torch.cat(picks).sort().values)


def preprocess(images: torch.Tensor, size: int = 32, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, size, size): zero-pad to `size`, scale to [0, 1], normalise."""
    x = images.float().div_(255.0).unsqueeze(1)
    pad = size - x.shape[-1]
    if pad < 0:
        raise DeryError(f"input size {size} is smaller than the 28 px images", "data")
    if pad:
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return (x - mean) / std


def probe_set(n: int = 512, seed: int = 0, root: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """A seeded probe sample of `n` training images (uint8) and its content hash."""
    train = load_split("train", root)
    if not 0 < n <= len(train):
        raise DeryError(f"probe size {n} must be in 1..{len(train)}", "data")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n].sort().values
    images = train.images[idx]
    return images, hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
