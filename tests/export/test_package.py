"""The package's deploy.json follows the run's final pass: a later measurement of the same file replaces
the recorded latency and verdict, and the package still loads."""

import shutil

import dery_deploy
from dery_deploy.deploy.info import FILE, DeployInfo
from dery_deploy.export.package import refresh_latency
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
