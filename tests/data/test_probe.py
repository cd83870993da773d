import pytest
import torch

from dery_deploy.data.probe import probe_images
from dery_deploy.data.task import InputSpec
from dery_deploy.errors import DeryError
from tests.conftest import write_folder

RGB32 = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_probe_images_from_a_folder_use_its_train_split_and_are_capped(tmp_path):
    root = write_folder(tmp_path / "task")
    x, h, notes = probe_images(str(root), RGB32, 500)
    assert x.shape == (30, 3, 32, 32)  # the train images only: test images never enter the probe
    assert any("capped at the 30 images" in n for n in notes)
    x2, h2, _ = probe_images(str(root), RGB32, 500)
    assert h == h2 and torch.equal(x, x2)
    with pytest.raises(DeryError, match="pass --probe-data FOLDER"):
        probe_images(None, RGB32, 10)
