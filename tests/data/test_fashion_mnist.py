import gzip
import shutil

import pytest
import torch

from dery_deploy.data.fashion_mnist import DEBIAN_DIR, find_root, load_split, per_class_subset, preprocess, to_input
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


def test_to_input_pads_like_preprocess_and_resizes():
    imgs = load_split("test").images[:8]
    u8 = to_input(imgs)
    assert u8.shape == (8, 1, 32, 32) and u8.dtype == torch.uint8
    assert torch.allclose(((u8.float() / 255) - 0.2190) / 0.3318, preprocess(imgs), atol=1e-6)
    assert to_input(imgs, 64).shape == (8, 1, 64, 64)


def test_reads_uncompressed_files_from_explicit_path(tmp_path):
    for f in DEBIAN_DIR.glob("*.gz"):
        with gzip.open(f) as src, open(tmp_path / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert find_root(tmp_path) == tmp_path


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("dery_deploy.data.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    monkeypatch.delenv("DERY_DATA", raising=False)
    with pytest.raises(DeryError, match="apt-get install -y dataset-fashion-mnist"):
        find_root()


def test_wrong_dery_data_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("DERY_DATA", str(tmp_path / "empty"))
    with pytest.raises(
        DeryError, match=r"DERY_DATA=.*empty does not hold the four Fashion-MNIST IDX files.*unset DERY_DATA"
    ):
        find_root()
