"""The target task: the one object every stage that touches images takes.

A `Task` holds labelled train / validation / test images, unlabelled images, the class names and
the input spec (channels, size, mean, std) the zoo's donors take. Images are kept as uint8 at the
input size and normalised per batch (`Task.normalize`), so a task of many images stays small.

The validation split is carved, seeded and stratified, out of the labelled training images. Selection
decides by k-fold cross-validation over train + validation (`Task.fold`): every labelled image is
scored once by a network that did not train on it. The test split is for reporting only and never
decides anything.

`--data` specs (one meaning on every command):

    fashion-mnist                          all 60k training images labelled, the official 10k test set
    fashion-mnist:labels_per_class=100     100 labels per class (seeded); the other train images unlabelled
    fashion-mnist:test_per_class=100       a seeded subset of the test set (quick experiments)
    fashion-mnist:val_per_class=20         validation images per class (default: 20% of the labels)
    fashion-mnist:path=/data/fmnist        IDX files elsewhere
    path/to/folder                         train/ and test/ with one sub-folder per class (val/ used when
                                           present); or class sub-folders only: a seeded 20% test split
    path/to/folder:unlabelled=DIR          ... plus a folder of unlabelled images (any layout)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dery_deploy.data import fashion_mnist, folder
from dery_deploy.errors import DeryError

DEFAULT_DATA = "fashion-mnist:labels_per_class=100"
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class InputSpec:
    """What a donor takes: `channels` x `size` x `size` images normalised by `mean` / `std`."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) at the input size, with int64 labels (None when unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        """The labels of a labelled set."""
        if self.labels is None:
            raise ValueError("an unlabelled image set has no targets")
        return self.labels

    def subset(self, idx) -> ImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[idx], None if self.labels is None else self.labels[idx])


@dataclass
class Task:
    spec: str  # the --data spec, paths made absolute: enough to load the same task again
    kind: str  # fashion-mnist | folder
    classes: list[str]
    input: InputSpec
    train: ImageSet
    val: ImageSet
    test: ImageSet
    unlabelled: ImageSet
    seed: int = 0
    notes: list[str] = field(default_factory=list)  # what a user should know (conversions, imbalance, caps)
    _hash: str | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def require_classes(self, classes: list[str] | None, what: str, fix: str, stage: str) -> None:
        """Refuse a task whose classes are not the ones `what` (a plan, a run) was made for: a head's
        outputs are class indices, so other names (or another order) would be silently mislabelled."""
        if classes and list(classes) != list(self.classes):
            raise DeryError(
                f"{what} was made for classes {_brief(classes)}, but --data {self.spec!r} has {_brief(self.classes)}; "
                + fix,
                stage,
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float, normalised by the input spec's mean and std."""
        mean = torch.tensor(self.input.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.input.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def x(self, split: str) -> torch.Tensor:
        """A whole labelled split (train / val / test) as normalised floats."""
        return self.normalize(getattr(self, split).images)

    def y(self, split: str) -> torch.Tensor:
        return getattr(self, split).targets

    def unlabelled_images(self, n: int, seed: int = 0) -> torch.Tensor:
        """A seeded sample of at most `n` unlabelled images, normalised."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.unlabelled), generator=g)[:n].sort().values
        return self.normalize(self.unlabelled.images[idx])

    def labelled_sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded sample of at most `n` labelled training images (normalised) and their labels."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train), generator=g)[:n]
        return self.normalize(self.train.images[idx]), self.train.targets[idx]

    def with_test_fifth(self) -> Task:
        """This task with its test split cut to a stratified, seeded fifth (`dery run --time-limit`), said in
        its notes."""
        keep = fold_indices(self.test.targets, 5, self.seed)[0].sort().values
        note = f"test accuracy on {len(keep)} of the {len(self.test)} test images (a stratified fifth: --time-limit)"
        return replace(self, test=self.test.subset(keep), notes=[*self.notes, note], _hash=None)

    def fold(self, k: int, i: int) -> Task:
        """The `i`-th of `k` cross-validation tasks: train and validation pooled and cut, stratified and
        seeded, into k folds; fold `i` is the validation split, the other k - 1 the train split. Test,
        unlabelled images, classes and input are this task's own (the same objects, not copies)."""
        pool = self.labelled_pool()
        held = fold_indices(pool.targets, k, self.seed)
        if not 0 <= i < k:
            raise DeryError(f"fold {i} does not exist: folds are numbered 0 to {k - 1}", "data")
        keep = torch.ones(len(pool), dtype=torch.bool)
        keep[held[i]] = False
        return Task(
            self.spec,
            self.kind,
            self.classes,
            self.input,
            pool.subset(keep.nonzero().flatten()),
            pool.subset(held[i]),
            self.test,
            self.unlabelled,
            self.seed,
            [*self.notes, f"cross-validation fold {i + 1} of {k}"],
        )

    def labelled_pool(self) -> ImageSet:
        """Every labelled image selection may use: the train split, then the validation split."""
        return ImageSet(
            torch.cat([self.train.images, self.val.images]), torch.cat([self.train.targets, self.val.targets])
        )

    def hash(self) -> str:
        """Content key of the task: every image and label, the classes and the input spec."""
        if self._hash is None:
            h = hashlib.sha256(repr((self.classes, self.input, self.seed)).encode())
            for s in (self.train, self.val, self.test, self.unlabelled):
                h.update(s.images.numpy().tobytes())
                if s.labels is not None:
                    h.update(s.labels.numpy().tobytes())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def summary(self) -> str:
        return (
            f"{self.num_classes} classes; {len(self.train)} train / {len(self.val)} validation / "
            f"{len(self.test)} test labelled images, {len(self.unlabelled)} unlabelled"
        )


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'head:key=value,key=value' -> (head, options)."""
    head, _, rest = spec.partition(":")
    opts = {}
    for part in filter(None, rest.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise DeryError(
                f"--data option {part!r} must be key=value (e.g. fashion-mnist:labels_per_class=100)", "data"
            )
        opts[k.strip()] = v.strip()
    return head, opts


def _positive_int(opts: dict, key: str) -> int | None:
    if key not in opts:
        return None
    try:
        n = int(opts[key])
    except ValueError:
        n = 0
    if n <= 0:
        raise DeryError(f"--data option {key} must be a positive integer, got {opts[key]!r}", "data")
    return n


def load_task(spec: str, input: InputSpec, seed: int = 0) -> Task:
    """The task a `--data` spec names, shaped for `input` (see the module docstring).

    Raises:
        DeryError: the spec is neither a known data set nor a folder, or the data does not fit `input`.
    """
    head, opts = parse_spec(spec)
    if head == "fashion-mnist":
        return _fashion_task(opts, input, seed)
    path = Path(head).expanduser()
    if not path.is_dir():
        raise DeryError(
            f"--data {spec!r} is neither 'fashion-mnist[:options]' nor an existing folder; pass "
            "fashion-mnist:labels_per_class=100 or a folder with train/ and test/ class sub-folders",
            "data",
        )
    return _folder_task(path.resolve(), opts, input, seed)


def _fashion_task(opts: dict, input: InputSpec, seed: int) -> Task:
    unknown = set(opts) - {"labels_per_class", "test_per_class", "val_per_class", "path"}
    if unknown:
        raise DeryError(
            f"unknown fashion-mnist option(s) {sorted(unknown)}; use labels_per_class=N, "
            "test_per_class=N, val_per_class=N, path=DIR",
            "data",
        )
    if input.channels != 1:
        raise DeryError(
            f"Fashion-MNIST is 1-channel (grey) but the zoo takes {input.channels}-channel images; "
            "pass --data with a folder of your images",
            "data",
        )
    root = fashion_mnist.find_root(opts.get("path"))
    train, test = fashion_mnist.load_split("train", root), fashion_mnist.load_split("test", root)
    labelled_idx = torch.arange(len(train))
    per_class = _positive_int(opts, "labels_per_class")
    if per_class is not None:
        labelled_idx = fashion_mnist.per_class_indices(train.labels, per_class, seed=0)
    test_per_class = _positive_int(opts, "test_per_class")
    if test_per_class is not None:
        test = test.subset(fashion_mnist.per_class_indices(test.labels, test_per_class, seed=0))
    mask = torch.ones(len(train), dtype=torch.bool)
    mask[labelled_idx] = False
    unlabelled_idx = mask.nonzero().flatten()
    if len(unlabelled_idx) == 0:  # everything is labelled: the labelled images double as unlabelled ones
        unlabelled_idx = labelled_idx
    to_input = lambda imgs: fashion_mnist.to_input(imgs, input.size)  # noqa: E731
    labelled = ImageSet(to_input(train.images[labelled_idx]), train.labels[labelled_idx])
    tr, val = split_validation(labelled, _positive_int(opts, "val_per_class"), seed)
    canon = "fashion-mnist" + "".join(
        f"{',' if i else ':'}{k}={v}"
        for i, (k, v) in enumerate(
            sorted(
                {
                    **{k: v for k, v in opts.items() if k != "path"},
                    **({"path": str(root)} if "path" in opts else {}),
                }.items()
            )
        )
    )
    return Task(
        canon,
        "fashion-mnist",
        list(fashion_mnist.CLASSES),
        input,
        tr,
        val,
        ImageSet(to_input(test.images), test.labels),
        ImageSet(to_input(train.images[unlabelled_idx])),
        seed,
    )


def split_validation(labelled: ImageSet, per_class: int | None, seed: int) -> tuple[ImageSet, ImageSet]:
    """Seeded stratified validation split: `per_class` images of every class, else 20% of each
    class (at least one where a class has two or more)."""
    g = torch.Generator().manual_seed(10_007 + seed)
    val_idx = []
    for c in labelled.targets.unique().tolist():
        idx = (labelled.targets == c).nonzero().flatten()
        n = per_class if per_class is not None else (max(1, round(VAL_FRACTION * len(idx))) if len(idx) >= 2 else 0)
        if n >= len(idx):
            raise DeryError(
                f"class {c} has {len(idx)} labelled images; a validation split of {n} per class leaves "
                "none to train on: lower val_per_class",
                "data",
            )
        val_idx.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    val = torch.cat(val_idx).sort().values if val_idx else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labelled), dtype=torch.bool)
    keep[val] = False
    return labelled.subset(keep.nonzero().flatten()), labelled.subset(val)


def fold_indices(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """Stratified seeded k-fold: the held-out indices (sorted) of each fold. Every index is held out by
    exactly one fold; every class is spread over the folds as evenly as its count allows, and so are
    the fold sizes (each class, in turn, continues the round-robin where the one before it stopped).

    Raises:
        DeryError: k < 2, or more folds than labelled images.
    """
    if k < 2 or k > len(labels):
        raise DeryError(
            f"cross-validation needs 2 to {len(labels)} folds (one per labelled image at most), got {k}", "data"
        )
    g = torch.Generator().manual_seed(20_011 + seed)
    order = torch.cat(
        [
            (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=g)]
            for c in labels.unique()
        ]
    )
    return [order[i::k].sort().values for i in range(k)]


def _folder_task(path: Path, opts: dict, input: InputSpec, seed: int) -> Task:
    unknown = set(opts) - {"unlabelled", "val_per_class"}
    if unknown:
        raise DeryError(f"unknown folder option(s) {sorted(unknown)}; use unlabelled=DIR, val_per_class=N", "data")
    notes: list[str] = []
    test_dir = path / "test"
    if (path / "train").is_dir() or test_dir.is_dir():
        if not ((path / "train").is_dir() and test_dir.is_dir()):
            have, lack = ("train", "test") if (path / "train").is_dir() else ("test", "train")
            raise DeryError(
                f"{path} has {have}/ but no {lack}/; give both train/ and test/ with the same class "
                "sub-folders, or class sub-folders alone",
                "data",
            )
        tr = folder.read_labelled(path / "train", input, notes)
        te = folder.read_labelled(test_dir, input, notes)
        if tr.classes != te.classes:
            only_tr, only_te = sorted(set(tr.classes) - set(te.classes)), sorted(set(te.classes) - set(tr.classes))
            raise DeryError(
                f"{path}: class folders differ between train/ and test/ (only in train/: {only_tr}, only "
                f"in test/: {only_te}); give both the same classes",
                "data",
            )
        classes = tr.classes
        labelled, test = ImageSet(tr.images, tr.labels), ImageSet(te.images, te.labels)
        if (path / "val").is_dir():
            va = folder.read_labelled(path / "val", input, notes)
            if va.classes != classes:
                raise DeryError(f"{path}: val/ has classes {va.classes}, train/ has {classes}", "data")
            train, val = labelled, ImageSet(va.images, va.labels)
        else:
            train, val = split_validation(labelled, _positive_int(opts, "val_per_class"), seed)
    else:
        allc = folder.read_labelled(path, input, notes)
        classes = allc.classes
        whole = ImageSet(allc.images, allc.labels)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(whole), generator=g)
        cut = max(1, int(0.8 * len(whole)))
        labelled, test = whole.subset(perm[:cut].sort().values), whole.subset(perm[cut:].sort().values)
        train, val = split_validation(labelled, _positive_int(opts, "val_per_class"), seed)
        notes.append(f"{path} has no train/ and test/: a seeded 20% of its images is the test split")
    if len(classes) < 2:
        raise DeryError(f"{path} has {len(classes)} class folder(s); a classification task needs at least 2", "data")
    warn = folder.imbalance_note(classes, labelled.targets)
    if warn:
        notes.append(warn)
    if "unlabelled" in opts:
        unl_path = Path(opts["unlabelled"]).expanduser().resolve()
        unlabelled = ImageSet(folder.read_unlabelled(unl_path, input, notes))
        opts = {**opts, "unlabelled": str(unl_path)}
    else:
        unlabelled = ImageSet(labelled.images)
    canon = str(path) + "".join(f"{',' if i else ':'}{k}={v}" for i, (k, v) in enumerate(sorted(opts.items())))
    return Task(canon, "folder", classes, input, train, val, test, unlabelled, seed, notes)


def _brief(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")
    return f"[{shown}]"
