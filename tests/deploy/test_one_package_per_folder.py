"""A folder is one package (`export/package.py`): a second format exported into a folder that holds
another artifact's package is refused in one line, and that package's deploy.json is left as it was."""

import shutil

import pytest

import dery_deploy
from dery_deploy.deploy.info import FILE
from dery_deploy.errors import DeryError
from dery_deploy.export.package import check_one_package
from tests.deploy.packages import tiny_onnx, write_package


def test_another_artifacts_package_is_refused_unless_replaced(tmp_path):
    pkg = write_package(tmp_path / "pkg", "model.onnx", tiny_onnx())
    with pytest.raises(DeryError, match=r"already holds the onnxruntime fp32 package of model\.onnx") as e:
        check_one_package(pkg, "openvino", "model.xml")
    assert "--out DIR" in str(e.value) and "--force" in str(e.value) and "\n" not in str(e.value)
    assert check_one_package(pkg, "onnx", "model.onnx") is None  # the same artifact again: its own package
    note = check_one_package(pkg, "openvino", "model.xml", replace=True)
    assert note is not None and "model.onnx" in note and "now describes model.xml" in note


def test_a_folder_without_an_intact_other_package_takes_the_new_one(tmp_path):
    assert check_one_package(tmp_path, "onnx", "model.onnx") is None  # no deploy.json
    gone = write_package(tmp_path / "gone", "model.onnx", tiny_onnx())
    (gone / "model.onnx").unlink()  # nothing left that its deploy.json could load
    assert check_one_package(gone, "openvino", "model.xml") is None
    damaged = write_package(tmp_path / "damaged", "model.onnx", tiny_onnx())
    (damaged / FILE).write_text("{")
    assert check_one_package(damaged, "openvino", "model.xml") is None


def test_exporting_openvino_into_an_onnx_package_keeps_its_deploy_json(shipped, tmp_path):
    from dery_deploy.export.stage import export_run

    pkg = shutil.copytree(shipped["onnx"], tmp_path / "pkg")
    before = (pkg / FILE).read_bytes()
    run = shipped["onnx"].parent / "run"
    with pytest.raises(DeryError, match="already holds the onnxruntime fp32 package of model.onnx"):
        export_run(run, "openvino", "fp32", None, pkg, None, allow_over_budget=True, force=False)
    assert (pkg / FILE).read_bytes() == before
    assert dery_deploy.load(pkg).info.runtime.name == "onnxruntime"
