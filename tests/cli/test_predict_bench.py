"""`dery predict` and `dery bench` on shipped packages, as a user runs them (subprocesses)."""

import json
import shutil

import numpy as np
from PIL import Image

from dery_deploy.data import fashion_mnist
from dery_deploy.deploy.bench import TAIL_MIN_CALLS, judge, measure_package
from dery_deploy.deploy.info import FILE, DeployInfo
from tests.conftest import assert_one_line_error, run_dery


def test_predict_on_a_folder_prints_the_tasks_class_names(shipped, tmp_path):
    test = fashion_mnist.load_split("test")
    for i in range(5):  # the user's own images: PNG files of the data set's 28x28 grey images
        Image.fromarray(test.images[i].numpy()).save(tmp_path / f"{i}.png")
    proc = run_dery("predict", str(shipped["openvino"]), str(tmp_path), "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == [str(tmp_path / f"{i}.png") for i in range(5)]
    assert all(len(r["top"]) == 3 and {t["class"] for t in r["top"]} <= set(fashion_mnist.CLASSES) for r in rows)
    # the same as the loader on the arrays themselves
    import dery_deploy

    want = dery_deploy.load(shipped["openvino"]).predict(test.images[:5].numpy())
    assert [r["top"][0]["class"] for r in rows] == [w[0][0] for w in want]
    text = run_dery("predict", str(shipped["onnx"]), str(tmp_path / "0.png"))
    assert text.returncode == 0 and text.stdout.startswith(f"{tmp_path / '0.png'}: {want[0][0][0]} ")


def test_measure_package_takes_every_call(shipped):
    res = measure_package(shipped["onnx"], calls=TAIL_MIN_CALLS, seconds=2.0)  # the package's p90 budget
    assert res.calls >= TAIL_MIN_CALLS and res.seconds >= 2.0
    assert 0 < res.p50_ms <= res.p90_ms <= res.p99_ms <= res.max_ms and res.p50_ms <= res.mean_ms * 2
    assert res.settings["intra_op_num_threads"] == 1 and res.batch == 2
    verdict = judge(DeployInfo.read(shipped["onnx"] / FILE), res)
    assert verdict.judged  # measured here, on the machine the export measured it on


def _with_budget(src, dst, budget_ms=None, fingerprint=None):
    pkg = shutil.copytree(src, dst)
    info = DeployInfo.read(pkg / FILE)
    if budget_ms is not None:
        info.budget.latency_ms = budget_ms
    if fingerprint is not None:
        info.fingerprint = fingerprint
    info.write(pkg / FILE)
    return pkg


def test_bench_exits_2_over_a_lowered_budget(shipped, tmp_path):
    recorded = DeployInfo.read(shipped["onnx"] / FILE).latency.p90_ms
    pkg = _with_budget(shipped["onnx"], tmp_path / "pkg", budget_ms=round(recorded / 10, 6))
    proc = run_dery("bench", str(pkg), "--calls", "1024", "--seconds", "2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "OVER BUDGET by" in proc.stdout and "p90" in proc.stdout and "calls in" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_bench_judges_nothing_on_another_machine(shipped, tmp_path):
    other = {"kind": "cpu", "cpu_model": "Some Other CPU", "cores": 64}
    pkg = _with_budget(shipped["openvino"], tmp_path / "pkg", budget_ms=1e-6, fingerprint=other)
    proc = run_dery("bench", str(pkg), "--calls", "1024", "--seconds", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert not out["judged"] and "nothing judged" in out["verdict"] and "Some Other CPU, 64 cores" in out["verdict"]
    assert out["calls"] >= 1024 and out["p50_ms"] > 0 and np.isfinite(out["standard_error"]["p99"])
    # the shipped reference workload was timed around the calls: the figure is related to the machine's speed
    assert out["reference_ms"] > 0 and np.isfinite(out["machine_speed_change"] + out["relative_p50_change"])


def test_bench_refuses_too_few_calls_for_a_tail_percentile(shipped):
    assert_one_line_error(run_dery("bench", str(shipped["onnx"]), "--calls", "100"), "1024 calls")
