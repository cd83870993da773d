import pytest
import torch
from PIL import Image

from dery_deploy.data.task import InputSpec, fold_indices, load_task
from dery_deploy.errors import DeryError
from tests.conftest import write_folder

RGB32 = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
GREY32 = InputSpec(1, 32, (0.2190,), (0.3318,))


def test_folder_task_shapes_classes_and_splits(tmp_path):
    root = write_folder(tmp_path / "task")
    t = load_task(str(root), RGB32, seed=0)
    assert t.classes == ["ant", "bee", "cat", "dog", "eel"] and t.num_classes == 5
    assert t.train.images.shape[1:] == (3, 32, 32) and t.train.images.dtype == torch.uint8
    assert len(t.train) + len(t.val) == 30 and len(t.test) == 15
    assert sorted(t.val.labels.tolist()) == [0, 1, 2, 3, 4]  # stratified: one per class (20% of 6, rounded)
    assert t.spec == str(root.resolve())  # absolute: the run can be evaluated from anywhere
    assert any("resized and centre-cropped to 32x32" in n for n in t.notes)
    assert load_task(str(root), RGB32, seed=0).hash() == t.hash() != load_task(str(root), RGB32, seed=1).hash()
    x = t.x("train")
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 3


def test_mixed_modes_are_converted_with_a_note(tmp_path):
    root = write_folder(tmp_path / "task")
    Image.open(next((root / "train" / "ant").glob("*.png"))).convert("L").save(root / "train" / "ant" / "grey.png")
    Image.new("RGBA", (20, 30), (1, 2, 3, 4)).save(root / "train" / "bee" / "alpha.png")
    t = load_task(str(root), RGB32)
    assert any("converted 2 images of mode(s) ['L', 'RGBA'] to RGB" in n for n in t.notes)
    assert len(t.train) + len(t.val) == 32


def test_unlabelled_folder_option(tmp_path):
    root = write_folder(tmp_path / "task")
    unl = tmp_path / "unl" / "deep" / "er"
    unl.mkdir(parents=True)
    for i in range(7):
        Image.new("RGB", (50, 50), (i * 30, 0, 0)).save(unl / f"{i}.jpg")
    t = load_task(f"{root}:unlabelled={tmp_path / 'unl'}", RGB32)
    assert len(t.unlabelled) == 7 and "unlabelled=" in t.spec


@pytest.mark.parametrize(
    "make,needle",
    [
        (
            lambda r: (
                (r / "a.png").parent.mkdir(parents=True, exist_ok=True) or Image.new("RGB", (8, 8)).save(r / "a.png")
            ),
            "1 images but no class sub-folders",
        ),
        (
            lambda r: write_folder(r) and __import__("shutil").rmtree(r / "test" / "eel"),
            "only in train/: ['eel'], only in test/: []",
        ),
        (lambda r: write_folder(r) and (r / "train" / "fox").mkdir(), "class folder"),
        (lambda r: write_folder(r) and __import__("shutil").rmtree(r / "test"), "has train/ but no test/"),
        (lambda r: write_folder(r, mode="L"), "are grey (1-channel)"),
        (
            lambda r: write_folder(r) and (r / "train" / "ant" / "broken.png").write_bytes(b"not a png"),
            "cannot read image",
        ),
    ],
)
def test_bad_folders_are_one_clear_error(tmp_path, make, needle):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(DeryError, match=None) as e:
        load_task(str(root), RGB32)
    assert needle in str(e.value)


def test_data_that_is_neither_a_spec_nor_a_folder(tmp_path):
    with pytest.raises(DeryError, match="neither 'fashion-mnist"):
        load_task(str(tmp_path / "nope"), RGB32)
    with pytest.raises(DeryError, match="Fashion-MNIST is 1-channel"):
        load_task("fashion-mnist", RGB32)
    with pytest.raises(DeryError, match="unknown fashion-mnist option"):
        load_task("fashion-mnist:labels=3", GREY32)


def test_fashion_task_splits():
    t = load_task("fashion-mnist:labels_per_class=20,test_per_class=30", GREY32)
    assert (len(t.train), len(t.val), len(t.test), len(t.unlabelled)) == (160, 40, 300, 59800)
    assert t.train.labels.bincount().tolist() == [16] * 10 and t.val.labels.bincount().tolist() == [4] * 10


def _rows(images: torch.Tensor) -> list[bytes]:
    return sorted(bytes(im.numpy().tobytes()) for im in images)


def test_folds_hold_out_every_labelled_image_once_stratified_and_seeded():
    t = load_task("fashion-mnist:labels_per_class=20,test_per_class=5", GREY32)
    pool = t.labelled_pool()
    folds = [t.fold(5, i) for i in range(5)]
    held = torch.cat(fold_indices(pool.targets, 5, t.seed))
    assert sorted(held.tolist()) == list(range(200))  # every labelled image held out by exactly one fold
    for f in folds:
        assert (len(f.train), len(f.val)) == (160, 40)
        assert f.val.labels.bincount().tolist() == [4] * 10  # stratified: 20 per class over 5 folds
        assert _rows(torch.cat([f.train.images, f.val.images])) == _rows(pool.images)  # train = the other folds
        assert f.test is t.test and f.unlabelled is t.unlabelled and f.input == t.input and f.classes == t.classes
    assert _rows(torch.cat([f.val.images for f in folds])) == _rows(pool.images)
    assert t.fold(5, 2).hash() == t.fold(5, 2).hash() != t.fold(5, 3).hash()
    assert not torch.equal(fold_indices(pool.targets, 5, 0)[0], fold_indices(pool.targets, 5, 1)[0])  # seeded


def test_folds_never_take_a_test_image(tmp_path):
    t = load_task(str(write_folder(tmp_path / "task")), RGB32)
    test = set(_rows(t.test.images))
    for i in range(3):
        f = t.fold(3, i)
        assert not test & set(_rows(torch.cat([f.train.images, f.val.images])))
        assert len(f.val) == 10 and f.val.labels.bincount().tolist() == [2] * 5  # 6 per class over 3 folds


def test_uneven_classes_spread_over_folds_as_evenly_as_they_allow():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 1)
    folds = fold_indices(labels, 4, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(11))
    assert sorted(len(f) for f in folds) == [2, 3, 3, 3]
    for c, n in ((0, 7), (1, 3)):
        per = [int((labels[f] == c).sum()) for f in folds]
        assert sum(per) == n and max(per) - min(per) <= 1


def test_bad_fold_counts_are_one_clear_error():
    t = load_task("fashion-mnist:labels_per_class=2,test_per_class=1", GREY32)
    with pytest.raises(DeryError, match="cross-validation needs 2 to 20 folds"):
        t.fold(1, 0)
    with pytest.raises(DeryError, match="cross-validation needs 2 to 20 folds"):
        t.fold(21, 0)
    with pytest.raises(DeryError, match="fold 5 does not exist"):
        t.fold(5, 5)
