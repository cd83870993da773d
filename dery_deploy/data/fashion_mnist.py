"""Fashion-MNIST from its IDX files (Debian package `dataset-fashion-mnist`, `DERY_DATA`, or a path).

Images are returned as uint8 tensors (N, 28, 28) and labels as int64 (N,), in the official order
and train/test split. `preprocess` pads to 32x32 and normalises, which is the embedded zoo's input.
"""

from __future__ import annotations

import gzip
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
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "install them with `apt-get install -y dataset-fashion-mnist`, or point DERY_DATA "
    "(or --data fashion-mnist:path=DIR) at a folder holding the four IDX files"
)


def find_root(path: str | Path | None = None) -> Path:
    """The folder holding the IDX files: an explicit path, else $DERY_DATA, else the Debian location.

    An explicit setting that is wrong is an error, never a silent fall-back to another copy.
    """
    env = os.environ.get("DERY_DATA")
    explicit = path or env
    if explicit:
        where = Path(explicit).expanduser()
        what = f"path={where}" if path else f"DERY_DATA={env}"
        for sub in (where, where / "fashion-mnist"):
            if all(_idx_path(sub, stem) is not None for pair in _FILES.values() for stem in pair):
                return sub
        raise DeryError(
            f"{what} does not hold the four Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...); "
            f"point it at the folder that does{'' if path else ', or unset DERY_DATA'}",
            "data",
        )
    if _idx_path(DEBIAN_DIR, _FILES["test"][0]) is not None:
        return DEBIAN_DIR
    raise DeryError(f"Fashion-MNIST files not found in {DEBIAN_DIR}; {INSTALL_HINT}", "data")


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
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
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

    def subset(self, idx) -> Split:
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
        img_path, lbl_path = _idx_path(r, img_stem), _idx_path(r, lbl_stem)
        if img_path is None or lbl_path is None:
            raise DeryError(f"{r} lacks the {split} files; {INSTALL_HINT}", "data")
        images = torch.from_numpy(_read_idx(img_path).copy())
        labels = torch.from_numpy(_read_idx(lbl_path).astype(np.int64))
        if images.shape[0] != labels.shape[0]:
            raise DeryError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels", "data")
        _CACHE[key] = Split(images, labels)
    return _CACHE[key]


def per_class_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Deterministic, sorted indices of `per_class` examples of every class."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in sorted(set(labels.tolist())):
        idx = (labels == c).nonzero().flatten()
        if per_class > len(idx):
            raise DeryError(f"class {c} has only {len(idx)} examples, asked for {per_class} per class", "data")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def per_class_subset(split: Split, per_class: int, seed: int = 0) -> Split:
    """Deterministic sub-sample: `per_class` examples of each class."""
    return split.subset(per_class_indices(split.labels, per_class, seed))


def to_input(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (N, 28, 28) -> uint8 (N, 1, size, size): zero-padded to 32 px (the embedded zoo's input),
    then resized bilinearly where a zoo takes another size."""
    x = torch.nn.functional.pad(images.unsqueeze(1), (2, 2, 2, 2))
    if size == 32:
        return x
    y = torch.nn.functional.interpolate(
        x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return y.round().clamp(0, 255).to(torch.uint8)


def preprocess(images: torch.Tensor, size: int = 32, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, size, size): zero-pad to `size`, scale to [0, 1], normalise."""
    x = images.float().div_(255.0).unsqueeze(1)
    pad = size - x.shape[-1]
    if pad < 0:
        raise DeryError(f"input size {size} is smaller than the 28 px images", "data")
    if pad:
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return (x - mean) / std
