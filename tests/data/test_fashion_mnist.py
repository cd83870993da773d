import gzip
import shutil

import pytest
import torch

from dery_deploy.data.fashion_mnist import DEBIAN_DIR, find_root, load_split, per_class_subset, preprocess, probe_set
from dery_deploy.errors import DeryError


def test_official_split_shapes_and_counts():
    train, test = load_split("train"), load_split("test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10


def test_per_class_subset_is_deterministic_and_balanced():
    train = load_split("train")
    a, b = per_class_subset(train, 100, seed=3), per_class_subset(train, 100, seed=3)
    assert torch.equal(a.images, b.images) and a.labels.bincount().tolist() == [100] * 10
    c = per_class_subset(train, 100, seed=4)
    assert not torch.equal(a.images, c.images)


def test_preprocess_pads_and_normalises():
    x = preprocess(load_split("test").images[:2000])
    assert x.shape == (2000, 1, 32, 32)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_probe_set_seeded():
    p1, h1 = probe_set(64, seed=0)
    p2, h2 = probe_set(64, seed=0)
    _, h3 = probe_set(64, seed=1)
    assert torch.equal(p1, p2) and h1 == h2 and h1 != h3


def test_reads_uncompressed_files_from_explicit_path(tmp_path):
    for f in DEBIAN_DIR.glob("t10k-*.gz"):
        with gzip.open(f) as src, open(tmp_path / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert find_root(tmp_path) == tmp_path


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("dery_deploy.data.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    monkeypatch.delenv("DERY_DATA", raising=False)
    with pytest.raises(DeryError, match="apt-get install -y dataset-fashion-mnist"):
        find_root(tmp_path)
