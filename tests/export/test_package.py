"""The package's deploy.json follows the run's final pass: a later measurement of the same file replaces
the recorded latency and verdict, and the package still loads."""

import shutil

import dery_deploy
from dery_deploy.deploy.info import FILE, DeployInfo
from dery_deploy.export.formats.aoti import AotiPackage
from dery_deploy.export.formats.onnx_family import OnnxFile, OpenVinoFile
from dery_deploy.export.formats.tensorrt import EngineFile
from dery_deploy.export.package import refresh_latency, session_settings, timed_beside
from dery_deploy.runtime.harness import Measurement


def test_final_pass_figure_replaces_the_exports(shipped, tmp_path):
    pkg = shutil.copytree(shipped["onnx"], tmp_path / "pkg")
    # the quiet-window estimates (0.5 / 0.6 / 0.7) rank; the figures over all calls are what the package states
    every, se = {"p50": 0.52, "p90": 0.65, "p99": 0.8}, {"p50": 0.011, "p90": 0.016, "p99": 0.031}
    m = Measurement(0.5, 0.6, 0.7, 0.01, 3000, 30, True, 0.02, [], {"p90": 0.015, "p99": 0.03}, every, se)
    refresh_latency(pkg, m, "budget 50 ms at p90: measured 0.6 ms -> within budget", "the run's final pass", 0.21)
    info = DeployInfo.read(pkg / FILE)
    assert (info.latency.p50_ms, info.latency.p90_ms, info.latency.calls) == (0.52, 0.65, 3000)
    assert info.latency.standard_error == se and info.latency.reference_ms == 0.21
    assert info.latency.measured_in == "the run's final pass" and info.budget.verdict.endswith("within budget")
    assert dery_deploy.load(pkg).classes == info.classes


def test_an_engines_session_is_the_shapes_it_was_built_for():
    """deploy.json's `runtime.session` for a TensorRT engine: its input shapes, in this order, read from the
    engine's record (no TensorRT needed to check what the package writes)."""
    engine = EngineFile(
        "model.engine.json", "10.3", "gpu", "fp16", "x", "y", [1, 1, 32, 32], [8, 1, 32, 32], [64, 1, 32, 32], "ab", 1.0
    )
    settings = session_settings("tensorrt", None, engine)
    assert list(settings) == ["min_shape", "opt_shape", "max_shape"]
    assert settings["opt_shape"] == [8, 1, 32, 32] and settings["max_shape"] == [64, 1, 32, 32]
    assert session_settings("onnx", 2, None)["intra_op_num_threads"] == 2
    assert session_settings("openvino", 3, None)["INFERENCE_NUM_THREADS"] == 3


def test_the_machines_load_while_timed_comes_from_the_files_that_record_it():
    assert timed_beside(OnnxFile(1, "ab", 10, 17, True, 0.5, 0.21, 0.3)) == (0.21, 0.3)
    assert timed_beside(OpenVinoFile(1, "model.bin", "ab", "cd", 10, True, 0.5, 0.22, None)) == (0.22, None)
    assert timed_beside(AotiPackage("ab", 10, "2.9", 1.0, True, 0.1)) == (None, None)
    assert timed_beside(None) == (None, None)
