import json

import pytest

from dery_deploy.data.task import load_task
from dery_deploy.errors import DeryError
from dery_deploy.train.finetune import Recipe, finetune
from tests.conftest import assert_one_line_error, run_dery
from tests.train.test_finetune import tiny_plan


@pytest.fixture(scope="module")
def trained_run(tiny_ws, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    plan = tiny_plan(tiny_ws)
    plan.budget = {"latency_ms": 0.0001}  # impossible, to see the loud over-budget path
    plan.predicted = {"latency_ms": 0.00009}
    plan.device = "cpu"
    task = load_task("fashion-mnist:labels_per_class=10", tiny_ws.zoo)
    finetune({"plan": plan.to_dict()}, tiny_ws.zoo, task, Recipe(1, 0, batch=50), run, log=None, progress=False,
             test=False)
    return run


def test_onnx_export_parity_and_over_budget(trained_run):
    from dery_deploy.export.stage import export_run

    with pytest.raises(DeryError, match="OVER BUDGET"):
        export_run(trained_run, "onnx", None, None, None, None, allow_over_budget=False, force=True)
    rep = json.loads((trained_run / "export" / "report-onnx.json").read_text())
    assert rep["parity"]["images"] == 64 and rep["parity"]["max_abs_diff"] <= 1e-4 and rep["parity"]["top1_identical"]
    assert rep["budget"]["checked"] and not rep["budget"]["within_budget"]
    rep = export_run(trained_run, "onnx", None, None, None, None, allow_over_budget=True, force=True)
    assert rep["latency_ms"] > 0
    # an existing artifact is not overwritten without --force
    assert_one_line_error(run_dery("export", str(trained_run), "--format", "onnx", "--allow-over-budget"), "--force")


def test_tensorrt_without_tensorrt_says_what_to_install(trained_run):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    assert_one_line_error(run_dery("export", str(trained_run), "--format", "tensorrt"), "TensorRT is not installed")


def test_jetson_bundle(trained_run, tmp_path):
    p = run_dery("export", str(trained_run), "--format", "tensorrt", "--device", "jetson-orin-nano", "--bundle",
                 str(tmp_path / "ship"))
    assert p.returncode == 0, p.stderr
    script = (tmp_path / "ship" / "build_engine.sh").read_text()
    assert "--fp16" in script and "--minShapes=x:1x1x32x32" in script and "--saveEngine=model.engine" in script
    import onnx

    onnx.checker.check_model(onnx.load(str(tmp_path / "ship" / "model.onnx")))


@pytest.mark.slow
def test_aoti_cpu_export(trained_run):
    from dery_deploy.export.stage import export_run

    rep = export_run(trained_run, "aoti", None, None, None, None, allow_over_budget=True, force=True)
    assert rep["load_ok"] and rep["parity"]["ok"] and rep["latency_ms"] > 0


@pytest.mark.tensorrt
def test_tensorrt_engine_parity(trained_run):
    from dery_deploy.export.stage import export_run

    rep = export_run(trained_run, "tensorrt", "fp16", None, None, None, allow_over_budget=True, force=True)
    assert rep["parity"]["ok"] and (trained_run / "export" / "model.engine.json").is_file()


def test_changed_zoo_refused(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["zoo_hash"] = "f" * 16
    (run / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_dery("export", str(run), "--format", "onnx"), "weights or spec changed")


def test_plan_that_fails_to_rebuild_refused(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["source"]["plan"]["blocks"][1]["end"] = 99
    (run / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_dery("export", str(run), "--format", "onnx"), "fails to rebuild", "unit range")
