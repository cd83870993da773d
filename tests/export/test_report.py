"""The export report's JSON (`report-<format>.json`) keeps its keys, their order and values, and the
format table answers what the old per-format tables did. The key lists are those of reports written
before the exporters became classes (tests/export/test_export.py's run, onnx and openvino, fp32 and int8);
TensorRT's is checked against the old way of building it, since no engine is built on a CPU machine."""

import json

import pytest

from dery_deploy.errors import DeryError
from dery_deploy.export.formats import ARTIFACTS, EXPORT_FORMAT, FORMATS, PRECISIONS, RUNTIME_OF, get_exporter
from dery_deploy.export.formats.aoti import AotiLoadFailure, AotiPackage
from dery_deploy.export.formats.onnx_family import OnnxFile, OpenVinoFile
from dery_deploy.export.formats.tensorrt import SIDECAR, EngineFile, EngineSidecar
from dery_deploy.export.report import (
    Calibration,
    ExportReport,
    Int8Record,
    Parity,
    QuantizedOps,
    Timing,
    write_budget,
)
from dery_deploy.export.verdict import BudgetVerdict

COMMON = [
    "format",
    "artifact",
    "precision",
    "device",
    "batch",
    "parity",
    "latency_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_stable",
    "latency_noise",
    "latency_backend",
    "budget",
]
INT8 = [
    "calibration",
    "quantized_ops",
    "quantize_s",
    "int8_top1",
    "fp32_top1",
    "int8_top1_change",
    "int8_top1_change_se",
]
ONNX = ["threads", "sha256", "bytes", "opset", "dynamic_batch", "export_s", "reference_ms", "other_load_cores"]
OPENVINO = [
    "threads",
    "weights",
    "sha256",
    "weights_sha256",
    "bytes",
    "dynamic_batch",
    "export_s",
    "reference_ms",
    "other_load_cores",
]


def _int8() -> Int8Record:
    made = Int8Record(Calibration(512, "the task's unlabelled images", 0), QuantizedOps(27, 27), 6.59)
    return made.measured(24.667, 24.0, 0.667, 1.055)


def _int8_parity() -> Parity:
    return Parity(300, 0.6, 0.91, False, 2.11, True, "test", "top-1 change ...", "top-1 points lost ...")


def _report(fmt: str, precision: str, file, int8=None, parity=None) -> ExportReport:
    par = parity or Parity(64, 1e-6, 1.0, True, 1e-4, True)
    timing = Timing(0.7, 4.6, 22.3, True, 0.0096)
    return ExportReport(fmt, "model", precision, "cpu", 1, par, timing, "rt", BudgetVerdict(False, "r"), file, int8)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_family_reports_keep_their_keys_in_order(precision):
    int8 = _int8() if precision == "int8" else None
    par = _int8_parity() if int8 else None
    onnx = _report("onnx", precision, OnnxFile(None, "ab", 10, 17, True, 0.5, 0.01, 0.2), int8, par)
    ov = _report("openvino", precision, OpenVinoFile(2, "model.bin", "ab", "cd", 10, False, 0.5, 0.01, None), int8, par)
    first = INT8 if int8 else []
    assert list(onnx.to_dict()) == COMMON + first + ONNX
    assert list(ov.to_dict()) == COMMON + first + OPENVINO
    d = ov.to_dict()
    calibration = {"images": 512, "of": "the task's unlabelled images", "seed": 0}
    assert d["calibration"] == calibration if int8 else d["threads"] == 2
    assert d["budget"] == {**BudgetVerdict(False, "r").__dict__} and d["parity"]["images"] == (300 if int8 else 64)


def test_parity_keeps_its_two_shapes():
    assert list(Parity(64, 0.0, 1.0, True, 1e-4, True).to_dict()) == [
        "images",
        "max_abs_diff",
        "top1_agreement",
        "top1_identical",
        "tolerance",
        "ok",
    ]
    assert list(_int8_parity().to_dict()) == [
        "images",
        "split",
        "check",
        "top1_agreement",
        "top1_identical",
        "max_abs_diff",
        "tolerance",
        "tolerance_unit",
        "ok",
    ]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_an_engine_report_is_written_as_before(precision):
    """The old writer: the common fields, then `{"sidecar": ..., **sidecar, **int8, "build_s": ...}` merged
    in, the sidecar's `precision` landing on the common one (same value, same place)."""
    shapes = [1, 1, 32, 32], [8, 1, 32, 32], [64, 1, 32, 32]
    sidecar = EngineSidecar("10.9", "H200", precision, "x", "y", *shapes, "ab")
    int8 = _int8() if precision == "int8" else None
    rep = _report("tensorrt", precision, EngineFile(SIDECAR, **sidecar.__dict__, build_s=3.2), int8)
    old_sidecar = {
        "tensorrt": "10.9",
        "gpu": "H200",
        "precision": precision,
        "input": "x",
        "output": "y",
        "min_shape": shapes[0],
        "opt_shape": shapes[1],
        "max_shape": shapes[2],
        "sha256": "ab",
    }
    old_int8 = json.loads(json.dumps(_report("onnx", "int8", None, int8).to_dict()))
    old_int8 = {k: old_int8[k] for k in INT8} if int8 else {}
    old = {k: v for k, v in rep.to_dict().items() if k in COMMON}
    old.update({"sidecar": SIDECAR, **old_sidecar, **old_int8, "build_s": 3.2})
    assert json.dumps(rep.to_dict()) == json.dumps(old)
    assert list(rep.to_dict())[2] == "precision" and list(rep.to_dict())[-1] == "build_s"


def test_aoti_reports():
    failed = ExportReport("aoti", "model.pt2", "fp32", "cpu", 1, file=AotiLoadFailure(1.5, False, "it crashed"))
    d = failed.to_dict()
    assert d["parity"] == {} and d["latency_ms"] is None and d["latency_backend"] == "" and d["budget"] is None
    assert list(d) == COMMON + ["build_s", "load_ok", "error"]
    ok = _report("aoti", "fp32", AotiPackage("ab", 10, "2.14", 1.5, True, 0.2))
    assert list(ok.to_dict()) == COMMON + ["sha256", "bytes", "torch", "build_s", "load_ok", "load_s"]


def test_the_format_table_answers_the_old_tables():
    assert FORMATS == ("onnx", "openvino", "tensorrt", "aoti")
    assert PRECISIONS == {
        "onnx": ("fp32", "int8"),
        "openvino": ("fp32", "int8"),
        "tensorrt": ("fp32", "fp16", "int8"),
        "aoti": ("fp32", "fp16"),
    }
    assert ARTIFACTS == {"onnx": "model.onnx", "openvino": "model.xml", "tensorrt": "model.engine", "aoti": "model.pt2"}
    artifacts = {f: get_exporter(f).artifact("int8") for f in ("onnx", "openvino", "tensorrt")}
    assert artifacts == {"onnx": "model-int8.onnx", "openvino": "model-int8.xml", "tensorrt": "model.engine"}
    assert RUNTIME_OF == {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
    assert EXPORT_FORMAT == {b: f for f, b in RUNTIME_OF.items()}
    assert get_exporter("aoti").backend is None and not get_exporter("aoti").packaged
    with pytest.raises(DeryError, match="--format must be one of onnx, openvino, tensorrt, aoti, got 'tflite'"):
        get_exporter("tflite")


def test_the_report_is_written_once_and_its_budget_replaced_in_place(tmp_path):
    rep = _report("onnx", "fp32", OnnxFile(None, "ab", 10, 17, True, 0.5, 0.01, 0.2))
    out = tmp_path / "run" / "export"
    out.mkdir(parents=True)
    written = rep.write(out, tmp_path / "run").to_dict()
    path = out / "report-onnx.json"
    assert json.loads(path.read_text()) == written and written["run"] == ".." and list(written)[-2:] == ["run", "when"]
    later = BudgetVerdict(True, "", 1.0, None, 0.5, 0.01, 1.01, True, "cpu", measured_in="the run's final pass")
    write_budget(path, later)
    after = json.loads(path.read_text())
    assert list(after) == list(written) and after["budget"]["measured_in"] == "the run's final pass"
    assert {k: v for k, v in after.items() if k != "budget"} == {k: v for k, v in written.items() if k != "budget"}
