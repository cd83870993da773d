"""A package's preprocessing, in NumPy: uint8 images -> the network's float NCHW input, the same
values the task's data pipeline (`data/fashion_mnist.py`, `data/folder.py`, `Task.normalize`) gave
the network in training and evaluation.

- colour: grey by Pillow's fixed-point ITU-R 601-2 luma (what `Image.convert("L")` computes), or
  grey repeated to RGB;
- fit "pad" (Fashion-MNIST): zero-padded, centred, to `pad_to` (28 -> 32 px), then, where the input
  size differs, resized with torch's antialiased bilinear filter (`fashion_mnist.to_input`), rounded;
  an image larger than `pad_to` is resized and centre-cropped instead (the task never saw one);
- fit "resize-crop" (image folders): the shorter side resized bilinearly by Pillow (torchvision's
  `resize`), then centre-cropped (torchvision's `center_crop`); Pillow is imported only here;
- (pixel / 255 - mean) / std per channel, in float32.
"""

from __future__ import annotations

import numpy as np

from dery_deploy.deploy.info import Preprocess
from dery_deploy.errors import DeryError


def as_images(images) -> list[np.ndarray]:
    """uint8 images as a list of HxWxC arrays: one HxW / HxWxC array, an NxHxW / NxHxWxC array, or a list."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            images = [images]
        elif images.ndim in (3, 4):
            images = list(images)
        else:
            raise DeryError(f"images of shape {images.shape}: give HxW, HxWxC, NxHxW or NxHxWxC uint8", "deploy")
    out = []
    for im in images:
        a = np.asarray(im)
        if a.dtype != np.uint8:
            raise DeryError(f"an image is {a.dtype}; give uint8 pixels (or a float NCHW batch already normalised)")
        out.append(a[:, :, None] if a.ndim == 2 else a)
    return out


def to_color(a: np.ndarray, color: str) -> np.ndarray:
    """HxWxC uint8 -> HxWx1 ("L") or HxWx3 ("RGB"); alpha is dropped as Pillow drops it."""
    c = a.shape[2]
    if color == "L":
        if c == 1:
            return a
        rgb = a[:, :, :3].astype(np.uint32)
        luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[:, :, None]
    return np.repeat(a, 3, axis=2) if c == 1 else a[:, :, :3]


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's antialiased bilinear resize along one axis (align_corners=False)."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle widens when shrinking: that is the antialiasing
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        t = np.clip(1 - np.abs((j - center + 0.5) / support), 0, None)
        w[i, lo:hi] = t / t.sum()
    return w


def resize_antialiased(a: np.ndarray, size: int) -> np.ndarray:
    """HxWxC uint8 -> size x size x C, bilinear with antialiasing, rounded (as `fashion_mnist.to_input`)."""
    wh, ww = _weights(a.shape[0], size), _weights(a.shape[1], size)
    y = np.einsum("ih,hwc,jw->ijc", wh, a.astype(np.float64), ww)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def resize_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size` (Pillow bilinear, as torchvision's resize), then a centred size x size crop."""
    from PIL import Image

    h, w = a.shape[:2]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    r = np.asarray(im)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    r = r[top : top + size, left : left + size]
    return r[:, :, None] if r.ndim == 2 else r


def fit(a: np.ndarray, p: Preprocess) -> np.ndarray:
    """One HxWxC uint8 image at the package's colour -> size x size x C uint8 (module docstring)."""
    h, w = a.shape[:2]
    if p.fit == "pad" and p.pad_to is not None and h <= p.pad_to and w <= p.pad_to:
        top, left = (p.pad_to - h) // 2, (p.pad_to - w) // 2
        out = np.zeros((p.pad_to, p.pad_to, a.shape[2]), np.uint8)
        out[top : top + h, left : left + w] = a
        return out if p.pad_to == p.size else resize_antialiased(out, p.size)
    return resize_crop(a, p.size)


def normalise(x: np.ndarray, p: Preprocess) -> np.ndarray:
    """uint8 NCHW -> float32 (pixel / 255 - mean) / std, as `Task.normalize` computes it."""
    mean = np.asarray(p.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(p.std, np.float32).reshape(1, -1, 1, 1)
    return (x.astype(np.float32) / np.float32(1 / p.scale) - mean) / std


def preprocess(images, p: Preprocess) -> np.ndarray:
    """uint8 images (see `as_images`) -> the network's float32 NCHW input."""
    fitted = [fit(to_color(a, p.color), p) for a in as_images(images)]
    if not fitted:
        raise DeryError("no images given", "deploy")
    return normalise(np.stack(fitted).transpose(0, 3, 1, 2), p)
