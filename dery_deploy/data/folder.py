"""Image folders: `root/<class>/<image>` for labelled images, any layout for unlabelled ones.

Every image is read with Pillow, converted to the zoo's channel count, resized (shorter side) and
centre-cropped to the zoo's input size, and kept as uint8. What was converted is said in a note,
never done silently; what cannot be used (no class folders, an empty class, an unreadable file,
images of another channel count than the zoo's) is a clear error naming the path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.errors import DeryError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow modes by the channel count they carry (palette and CMYK images are colour images)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class Labelled:
    classes: list[str]
    images: torch.Tensor  # uint8 (N, C, S, S)
    labels: torch.Tensor  # int64 (N,)


def _images_in(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def has_class_layout(path: Path) -> bool:
    """Does `path` hold class sub-folders (or train/ and test/ with them)?"""
    subs = [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []
    return bool(subs) and not any(p.suffix.lower() in EXTENSIONS for p in path.iterdir() if p.is_file())


def read_labelled(path: Path, input, notes: list[str]) -> Labelled:
    """Images of `path/<class>/...` (sorted class names), shaped for `input`."""
    if not path.is_dir():
        raise DeryError(f"data folder not found: {path}", "data")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if not class_dirs:
        what = f"{len(loose)} images but no class sub-folders" if loose else "no class sub-folders"
        raise DeryError(
            f"{path} has {what}; expected {path}/<class>/<image>.png|jpg (or train/ and test/ "
            "holding such class folders)",
            "data",
        )
    files, labels = [], []
    for c, d in enumerate(class_dirs):
        imgs = _images_in(d)
        if not imgs:
            raise DeryError(
                f"class folder {d} holds no images ({', '.join(EXTENSIONS)}); remove it or add images", "data"
            )
        files += imgs
        labels += [c] * len(imgs)
    if loose:
        notes.append(f"{len(loose)} images directly in {path} (outside any class folder) were ignored")
    images = _read(files, input, notes, str(path))
    return Labelled([d.name for d in class_dirs], images, torch.tensor(labels, dtype=torch.long))


def read_unlabelled(path: Path, input, notes: list[str]) -> torch.Tensor:
    """Every image under `path` (its train/ when it has one), shaped for `input`."""
    if not path.is_dir():
        raise DeryError(f"image folder not found: {path}", "data")
    root = path / "train" if (path / "train").is_dir() else path
    files = _images_in(root)
    if not files:
        raise DeryError(f"{root} holds no images ({', '.join(EXTENSIONS)})", "data")
    if root != path:
        notes.append(f"unlabelled images taken from {root} (test images are never used for fitting)")
    return _read(files, input, notes, str(root))


def _read(files: list[Path], input, notes: list[str], where: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    want = "L" if input.channels == 1 else "RGB"
    if input.channels not in (1, 3):
        raise DeryError(f"image folders give 1- or 3-channel images; the zoo takes {input.channels} channels", "data")
    out = torch.empty((len(files), input.channels, input.size, input.size), dtype=torch.uint8)
    modes: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                modes[im.mode] += 1
                sizes[im.size] += 1
                im = im.convert(want)
                im = TF.center_crop(TF.resize(im, input.size), input.size)
                out[i] = TF.pil_to_tensor(im)
        except (UnidentifiedImageError, OSError) as e:
            raise DeryError(
                f"cannot read image {f} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); remove or replace it",
                "data",
            ) from None
    grey = sum(n for m, n in modes.items() if m in GREY_MODES)
    colour = len(files) - grey
    native = 1 if grey > colour else 3
    if native != input.channels:
        raise DeryError(
            f"the images in {where} are {'grey (1-channel)' if native == 1 else 'colour (3-channel)'} "
            f"({dict(modes)}), but the zoo takes {input.channels}-channel input; use a zoo whose "
            f"input.channels is {native}, or convert the images",
            "data",
        )
    other = {m: n for m, n in modes.items() if m != want}
    if other:
        notes.append(f"{where}: converted {sum(other.values())} images of mode(s) {sorted(other)} to {want}")
    if len(sizes) > 1 or next(iter(sizes)) != (input.size, input.size):
        shown = ", ".join(f"{w}x{h}" for (w, h), _ in sizes.most_common(3)) + (" ..." if len(sizes) > 3 else "")
        notes.append(
            f"{where}: {len(files)} images of {len(sizes)} size(s) ({shown}) resized and centre-cropped "
            f"to {input.size}x{input.size}"
        )
    return out


def imbalance_note(classes: list[str], labels: torch.Tensor, ratio: float = 5.0) -> str | None:
    """A line for the user when the largest class outnumbers the smallest by more than `ratio`."""
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    lo, hi = min(counts), max(counts)
    if lo == 0 or hi / lo > ratio:
        small, big = classes[counts.index(lo)], classes[counts.index(hi)]
        return (
            f"class imbalance: {big!r} has {hi} images, {small!r} has {lo}; accuracy will favour the large "
            "classes (consider balancing, and read the per-class accuracy)"
        )
    return None
