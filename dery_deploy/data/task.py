"""The target task's data from a `--data` spec string.

    fashion-mnist                          all 60k training images, the official 10k test set
    fashion-mnist:labels_per_class=100     a seeded 100-per-class training subset (the default task)
    fashion-mnist:test_per_class=100       a seeded subset of the test set too (quick experiments)
    fashion-mnist:path=/data/fmnist        IDX files elsewhere
    path/to/folder                         class sub-folders; train/ and test/ (or val/) inside are
                                           used as given, else a seeded 80/20 split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.errors import DeryError


@dataclass
class TaskData:
    name: str
    train_x: torch.Tensor  # preprocessed float (N, C, H, W)
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    kind: str  # fashion-mnist | folder
    warnings: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def parse_spec(spec: str) -> tuple[str, dict]:
    head, _, rest = spec.partition(":")
    opts = {}
    for part in filter(None, rest.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise DeryError(f"--data option {part!r} must be key=value (e.g. fashion-mnist:labels_per_class=100)", "data")
        opts[k.strip()] = v.strip()
    return head, opts


def load_task(spec: str, zoo, seed: int = 0) -> TaskData:
    head, opts = parse_spec(spec)
    if head == "fashion-mnist":
        from dery_deploy.data.fashion_mnist import CLASSES, load_split, per_class_subset, preprocess

        unknown = set(opts) - {"labels_per_class", "test_per_class", "path"}
        if unknown:
            raise DeryError(f"unknown fashion-mnist option(s) {sorted(unknown)}; use labels_per_class=N, "
                            "test_per_class=N, path=DIR", "data")
        if zoo.input.channels != 1:
            raise DeryError(f"zoo {zoo.name!r} takes {zoo.input.channels}-channel images; Fashion-MNIST is grey: "
                            "use an image folder", "data")
        train, test = load_split("train", opts.get("path")), load_split("test", opts.get("path"))
        for key in ("labels_per_class", "test_per_class"):
            if key not in opts:
                continue
            try:
                n = int(opts[key])
                assert n > 0
            except (ValueError, AssertionError):
                raise DeryError(f"{key} must be a positive integer, got {opts[key]!r}", "data") from None
            if key == "labels_per_class":
                train = per_class_subset(train, n, seed=0)
            else:
                test = per_class_subset(test, n, seed=0)
        pp = dict(size=zoo.input.size, mean=zoo.input.mean[0], std=zoo.input.std[0])
        return TaskData(spec, preprocess(train.images, **pp), train.labels, preprocess(test.images, **pp), test.labels,
                        list(CLASSES), "fashion-mnist", [])
    path = Path(spec)
    if not path.is_dir():
        raise DeryError(f"--data {spec!r} is neither 'fashion-mnist[:opts]' nor a folder", "data")
    return _folder_task(path, zoo, seed)


def _folder_task(path: Path, zoo, seed: int) -> TaskData:
    from dery_deploy.data.folder import image_folder, imbalance_warning

    args = (zoo.input.size, zoo.input.channels, zoo.input.mean, zoo.input.std)
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        tr, te = image_folder(path / "train", *args), image_folder(test_dir, *args)
        if tr.classes != te.classes:
            raise DeryError(f"{path}: train classes {tr.classes} differ from {test_dir.name} classes {te.classes}", "data")
        x, y = _stack(tr)
        tx, ty = _stack(te)
        warns = [w for w in (imbalance_warning(tr),) if w]
        return TaskData(str(path), x, y, tx, ty, tr.classes, "folder", warns)
    ds = image_folder(path, *args)
    if len(ds.classes) < 2:
        raise DeryError(f"{path} has {len(ds.classes)} class folder(s); a classification task needs at least 2", "data")
    x, y = _stack(ds)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    cut = max(1, int(0.8 * len(y)))
    warns = [w for w in (imbalance_warning(ds),) if w]
    return TaskData(str(path), x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]], ds.classes, "folder", warns)


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.tensor(ys)


def augment(x: torch.Tensor, g: torch.Generator, flip: bool = True, shift: int = 2) -> torch.Tensor:
    """Standard light augmentation for small images: random translation by up to `shift` px
    (reflect-free zero padding, as the images are zero-padded already) and horizontal flip."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), value=float(x.min()))
    ox, oy = torch.randint(0, 2 * shift + 1, (2,), generator=g).tolist()
    out = padded[:, :, oy:oy + x.shape[2], ox:ox + x.shape[3]]
    if flip:
        m = torch.rand(n, generator=g) < 0.5
        out = torch.where(m[:, None, None, None], out.flip(-1), out)
    return out
