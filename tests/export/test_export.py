import json

import pytest
import torch

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.network.plan_records import PlanBudget, Prediction
from dery_deploy.train.finetune import FinetuneSource, Recipe, finetune
from tests.conftest import assert_one_line_error, run_dery


def _plan(ws) -> Plan:
    blocks = [
        BlockRef(k, n, ws.partition.sets[k].block_of(n).start, ws.partition.sets[k].block_of(n).end)
        for k, n in enumerate(["res", "cnx", "res"])
    ]
    return Plan(ws.zoo.name, ws.zoo.hash(), blocks, 10, zoo_ref=ws.zoo.ref)


@pytest.fixture(scope="module")
def trained_run(tiny_ws, fashion_task, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    plan = _plan(tiny_ws)
    plan.budget = PlanBudget(0.0001)  # impossible, to see the loud over-budget path
    plan.predicted = Prediction(0.00009)
    plan.device, plan.backend, plan.precision, plan.batch = "cpu", "onnxruntime", "fp32", 1
    finetune(
        FinetuneSource.of_plan(plan),
        tiny_ws.zoo,
        fashion_task,
        Recipe(epochs_adapter=1, epochs_full=0, batch=50),
        run,
        log=None,
        progress=False,
        test=False,
    )
    return run


def test_onnx_export_parity_and_over_budget(trained_run):
    from dery_deploy.export.stage import export_run

    with pytest.raises(
        DeryError,
        match=r"budget 0.0001 ms: predicted 0.0001 ms, measured .* ms over all calls \(±.*%, its standard error, "
        r"the only allowance: limit .*\) -> OVER BUDGET by .*%",
    ):
        export_run(trained_run, "onnx", None, None, None, None, allow_over_budget=False, force=True)
    rep = json.loads((trained_run / "export" / "report-onnx.json").read_text())
    assert rep["parity"]["images"] == 64 and rep["parity"]["max_abs_diff"] <= 1e-4 and rep["parity"]["top1_identical"]
    assert rep["budget"]["checked"] and not rep["budget"]["within_budget"]
    # the only allowance is the measurement's noise, never the latency model's error
    assert rep["budget"]["limit_ms"] == pytest.approx(0.0001 * (1 + rep["budget"]["noise"]), rel=1e-3)
    rep = export_run(trained_run, "onnx", None, None, None, None, allow_over_budget=True, force=True).to_dict()
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


def test_tensorrt_for_a_jetson_points_to_the_bundle(trained_run):
    """An engine for a Jetson is built on the Jetson: without --bundle the user is told how, whether or not
    TensorRT is installed here."""
    assert_one_line_error(
        run_dery("export", str(trained_run), "--format", "tensorrt", "--device", "jetson-orin-nano"),
        "built on the device itself",
        "--bundle DIR",
        "build_engine.sh",
        "check_engine.py",
    )


def test_jetson_bundle(trained_run, tmp_path):
    import os
    import stat

    import numpy as np
    import onnx
    import onnxruntime as ort

    ship = tmp_path / "ship"
    p = run_dery(
        "export",
        str(trained_run),
        "--format",
        "tensorrt",
        "--device",
        "jetson-orin-nano",
        "--precision",
        "fp16",
        "--bundle",
        str(ship),
    )
    assert p.returncode == 0, p.stderr
    script = (ship / "build_engine.sh").read_text()
    assert "--fp16" in script and "model-fp16.onnx" in script  # TensorRT 10 flag, TensorRT 11 strongly typed ONNX
    assert "--minShapes=x:1x1x32x32" in script and "--saveEngine=model.engine" in script
    for f in ("model.onnx", "model-fp16.onnx"):
        onnx.checker.check_model(onnx.load(str(ship / f)))
    # a bundle is copied to another machine and user: readable by others, scripts executable
    for f in ship.iterdir():
        mode = stat.S_IMODE(os.stat(f).st_mode)
        assert mode & stat.S_IROTH, (f.name, oct(mode))
    assert os.access(ship / "build_engine.sh", os.X_OK) and os.access(ship / "check_engine.py", os.X_OK)
    rep = json.loads((ship / "report-tensorrt.json").read_text())
    assert rep["format"] == "tensorrt-bundle" and "check_engine.py" in rep["budget"]["reason"]
    assert list(rep) == ["format", "bundle", "precision", "device", "batch", "budget", "manifest", "next"]
    assert rep["bundle"] == str(ship) and rep["device"] == "jetson-orin-nano" and rep["manifest"] == "bundle.json"
    # the plan's 0.0001 ms is a CPU budget: the Jetson engine is timed there, not judged against it
    man = json.loads((ship / "bundle.json").read_text())
    assert man["budget_ms"] is None and "the plan's budget is for 'cpu'" in rep["budget"]["reason"]
    # the shipped parity pair matches the fp16 ONNX run here (what check_engine.py compares on the device)
    x = np.fromfile(ship / "parity_inputs.bin", dtype=np.float32).reshape(-1, *man["input"]["shape"])
    ref = np.fromfile(ship / "parity_logits.bin", dtype=np.float32).reshape(x.shape[0], -1)
    got = ort.InferenceSession(str(ship / "model-fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < man["parity"]["tolerance"]


def test_tensorrt_engine_is_tuned_for_the_plans_batch(monkeypatch):
    """The engine is timed and judged at the plan's batch, so it must be tuned for it (it was tuned for
    batch 1), and the sidecar must say what the builder was asked. Checked with a recording fake of
    `tensorrt` (no engine is built; `test_tensorrt_engine_parity` builds a real one where TensorRT exists)."""
    from torch import nn

    from dery_deploy.export.stage import tensorrt_engine
    from tests.runtime.recording_tensorrt import install

    record = install(monkeypatch, 10)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    parity_images = torch.randn(64, 1, 32, 32)
    _, _, _, shapes = tensorrt_engine(model, parity_images, "fp16", batch=8)
    [(_, lo, opt, hi)] = record.of("set_shape")
    assert opt == (8, 1, 32, 32) and lo == (1, 1, 32, 32) and hi == (64, 1, 32, 32)
    assert (shapes["min_shape"], shapes["opt_shape"], shapes["max_shape"]) == (list(lo), list(opt), list(hi))


@pytest.mark.slow
def test_aoti_cpu_export(trained_run):
    from dery_deploy.export.stage import export_run

    rep = export_run(trained_run, "aoti", None, None, None, None, allow_over_budget=True, force=True).to_dict()
    assert rep["load_ok"] and rep["parity"]["ok"] and rep["latency_ms"] > 0


@pytest.mark.tensorrt
def test_tensorrt_engine_parity(trained_run):
    from dery_deploy.export.stage import export_run

    rep = export_run(trained_run, "tensorrt", "fp16", None, None, None, allow_over_budget=True, force=True).to_dict()
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


def test_openvino_export_ir_parity_and_latency(trained_run):
    from dery_deploy.export.stage import export_run

    rep = export_run(trained_run, "openvino", None, None, None, None, allow_over_budget=True, force=True).to_dict()
    out = trained_run / "export"
    assert rep["artifact"] == "model.xml" and (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert rep["weights"] == "model.bin" and not list(out.glob(".model*"))  # no temporary left behind
    assert rep["parity"]["images"] == 64 and rep["parity"]["max_abs_diff"] <= 1e-4 and rep["parity"]["ok"]
    assert rep["latency_ms"] > 0 and rep["latency_backend"].startswith("OpenVINO 2")
    assert "compiled for batch 1" in rep["latency_backend"]
    # the plan's budget (0.0001 ms, fp32, batch 1, cpu) is held against the IR too: loudly over
    assert rep["budget"]["checked"] and not rep["budget"]["within_budget"]
    with pytest.raises(DeryError, match="plan was measured with onnxruntime, and the openvino runtime"):
        export_run(trained_run, "openvino", None, None, None, None, allow_over_budget=False, force=True)
    assert json.loads((out / "report-openvino.json").read_text())["format"] == "openvino"


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_export_reports_measured_test_accuracy(trained_run, fashion_task, fmt):
    from dery_deploy.export.stage import export_run
    from dery_deploy.runtime.evaluate import artifact_accuracy

    rep = export_run(trained_run, fmt, "int8", None, None, None, allow_over_budget=True, force=True).to_dict()
    out = trained_run / "export"
    assert (
        rep["precision"] == "int8" and rep["artifact"] == {"onnx": "model-int8.onnx", "openvino": "model-int8.xml"}[fmt]
    )
    # measured on the whole test split against fp32 PyTorch on the same images, never assumed
    assert rep["parity"]["images"] == len(fashion_task.test) == 300 and rep["parity"]["split"] == "test"
    assert rep["int8_top1_change"] == pytest.approx(rep["int8_top1"] - rep["fp32_top1"], abs=0.01)
    assert rep["parity"]["ok"] == (rep["int8_top1_change"] >= -rep["parity"]["tolerance"])
    assert rep["parity"]["tolerance"] >= 1.0 and 0.5 <= rep["parity"]["top1_agreement"] <= 1.0
    assert rep["calibration"] == {"images": 512, "of": "the task's unlabelled images", "seed": 0}
    assert rep["quantized_ops"]["quantized"] == rep["quantized_ops"]["weighted"] > 0
    # the reusable helper finds the same top-1 on the shipped file
    top1, _ = artifact_accuracy(
        out / rep["artifact"], fashion_task, "test", "openvino" if fmt == "openvino" else "onnxruntime"
    )
    assert top1 == pytest.approx(rep["int8_top1"], abs=1e-3)
    # the plan's budget is for fp32: an int8 artifact is timed, not judged against it
    assert not rep["budget"]["checked"] and "int8" in rep["budget"]["reason"]


def test_int8_export_refused_where_the_format_has_none(trained_run):
    assert_one_line_error(
        run_dery("export", str(trained_run), "--format", "aoti", "--precision", "int8"),
        "--format aoti exports fp32 or fp16, not int8; for int8 use --format onnx or openvino or tensorrt",
    )
    assert_one_line_error(
        run_dery("export", str(trained_run), "--format", "onnx", "--precision", "int4"), "--precision must be one of"
    )


def test_an_edge_device_without_a_bundle_is_refused_not_exported_for_this_cpu(trained_run, tmp_path):
    out = tmp_path / "pkg"
    p = run_dery("export", str(trained_run), "--device", "jetson-orin-nano", "--out", str(out))
    assert_one_line_error(p, "--device jetson-orin-nano is an edge device: add --bundle DIR")
    assert not out.exists()


def test_jetson_bundle_int8_carries_the_qdq_onnx(trained_run, tmp_path):
    import numpy as np
    import onnx

    from dery_deploy.runtime.evaluate import artifact_runner
    from dery_deploy.runtime.quantize import quantized_ops

    ship = tmp_path / "ship"
    p = run_dery(
        "export", str(trained_run), "--format", "tensorrt", "--device", "jetson-orin-nano", "--precision", "int8",
        "--bundle", str(ship),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    script = (ship / "build_engine.sh").read_text()
    # TensorRT 10 needs --int8 for the Q/DQ layers, TensorRT 11 reads the types: both from the QDQ ONNX
    # (tests/export/test_bundle.py runs both branches against stand-in trtexecs)
    assert '--onnx=model-int8.onnx --int8 "${FLAGS[@]}"' in script and '--onnx=model-int8.onnx "${FLAGS[@]}"' in script
    qdq = (ship / "model-int8.onnx").read_bytes()
    onnx.checker.check_model(onnx.load_from_string(qdq))
    assert quantized_ops(qdq)["quantized"] == quantized_ops(qdq)["weighted"] > 0
    man = json.loads((ship / "bundle.json").read_text())
    assert man["precision"] == "int8" and "model-int8.onnx" in man["files"]
    # the device holds the engine to top-1 agreement (no logit tolerance for INT8), from what the same file did here
    par = man["parity"]
    x = np.fromfile(ship / "parity_inputs.bin", dtype=np.float32).reshape(-1, *man["input"]["shape"])
    ref = np.fromfile(ship / "parity_logits.bin", dtype=np.float32).reshape(x.shape[0], -1)
    here = float((artifact_runner(qdq, "onnxruntime")(torch.from_numpy(x)).argmax(1) == ref.argmax(1)).mean())
    assert par["tolerance"] is None and par["int8_top1_agreement_here"] == pytest.approx(here, abs=1e-5)
    assert par["min_top1_agreement"] == pytest.approx(max(0.0, here - 0.05), abs=1e-5)


def _verdict_of(value_ms: float, se: float, budget_ms: float = 1.0):
    from dery_deploy.export.stage import budget_check
    from dery_deploy.runtime.harness import Measurement

    m = Measurement(0.5, 0.6, 0.7, 0.001, 1000, 20, True, 0.0, [], {}, {"p50": value_ms}, {"p50": se})
    plan = Plan("z", "h", [], 10, device="cpu", precision="fp32", batch=1, budget=PlanBudget(budget_ms, 50))
    return budget_check(plan, m, "cpu", "fp32", 1, None)


def test_the_budget_is_judged_over_all_calls_with_an_allowance_capped_at_two_percent():
    ok = _verdict_of(1.005, 0.01)  # within the measurement's own standard error
    assert ok.status == "within" and ok.measured_ms == 1.005 and "over all calls" in ok.line()
    assert _verdict_of(1.015, 0.01).over  # the quiet-window estimate (0.5 ms) is not what is judged
    noisy = _verdict_of(1.03, 0.05)  # 5% standard error: never passed on a wider allowance
    assert noisy.status == "undecided" and noisy.within_budget is None and "UNDECIDED" in noisy.line()
    assert not noisy.over and _verdict_of(1.019, 0.02).status == "within"


def test_a_noisy_measurement_still_decides_a_clear_verdict():
    """Noise above the cap leaves undecided only a value within its own standard error of the budget."""
    assert _verdict_of(10.0, 0.05).over  # ten times the budget is over however noisy
    clear = _verdict_of(0.5, 0.05)
    assert clear.status == "within" and "within budget" in clear.line()
    assert _verdict_of(0.97, 0.05).status == "undecided" and _verdict_of(1.04, 0.05).status == "undecided"
    assert _verdict_of(1.06, 0.05).over
