"""`dery predict` and `dery bench` on shipped packages, as a user runs them (subprocesses)."""

import json
import shutil

import numpy as np
import pytest
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
    # no classes to print is a mistake, said in one line (it printed one class)
    assert_one_line_error(
        run_dery("predict", str(shipped["onnx"]), str(tmp_path), "--top-k", "0"), "--top-k must be >= 1"
    )


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
    # the shipped reference workload was timed among the calls: the figure is related to the machine's speed
    assert out["reference_ms"] > 0 and np.isfinite(out["machine_speed_change"] + out["relative_p50_change"])


def test_bench_refuses_too_few_calls_for_a_tail_percentile(shipped):
    assert_one_line_error(run_dery("bench", str(shipped["onnx"]), "--calls", "100"), "1024 calls")


# `dery bench`'s exit codes, on small hand-written packages (no training): 0 within budget or measured
# only, 2 over budget, 3 undecided, 1 a user error in one line
FAST = ("--calls", "200", "--seconds", "0.2")


def _tiny(folder, budget_ms=None):
    from tests.deploy.packages import tiny_onnx, write_package

    return write_package(folder, "model.onnx", tiny_onnx(), budget_ms=budget_ms)


@pytest.mark.parametrize(
    "budget_ms,code,needle",
    [(1e6, 0, "within budget"), (None, 0, "measured only"), (1e-6, 2, "OVER BUDGET by")],
    ids=["within", "measured only", "over"],
)
def test_bench_exit_code_says_the_verdict(tmp_path, budget_ms, code, needle):
    proc = run_dery("bench", str(_tiny(tmp_path / "pkg", budget_ms)), *FAST)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert needle in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{pkg}/nowhere"], "package folder not found"),
        (["{pkg}/model.onnx"], "is a file, not a package folder"),
        (["{damaged}"], "deploy.json"),
        (["{pkg}", "--percentile", "70"], "--percentile must be 50, 90 or 99"),
        (["{pkg}", "--calls", "abc"], "'abc'"),
        (["{pkg}", "--calls", "0"], "--calls must be at least"),
        (["{pkg}", "--seconds", "inf"], "--seconds must be between 0 and 3600"),
        (["{pkg}", "--seconds", "nan"], "--seconds must be between 0 and 3600"),
        (["{pkg}", "--bogus"], "No such option: --bogus"),
        ([], "Missing argument"),
    ],
    ids=[
        *("no package", "a file", "damaged package", "bad percentile", "bad calls", "no calls", "endless seconds"),
        *("NaN seconds", "unknown option", "no argument"),
    ],
)
def test_bench_exits_1_on_a_user_error_in_one_line(tmp_path, args, needle):
    pkg = _tiny(tmp_path / "pkg", 1e6)
    damaged = shutil.copytree(pkg, tmp_path / "damaged")
    (damaged / FILE).write_text((damaged / FILE).read_text()[:100])
    proc = run_dery("bench", *[a.format(pkg=pkg, damaged=damaged) for a in args])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_one_line_error(proc, needle)


def _wide(monkeypatch, se: float, p50_ms: float | None = None):
    """Every round measured for real, its standard error then reported as `se` (a machine too noisy
    for a verdict; and its p50 as `p50_ms` where given), and the rounds counted."""
    from dery_deploy.deploy import bench

    rounds, real = [], bench.PackageBench.round

    def round_(self, progress=None):
        res = real(self, progress)
        rounds.append(res.calls)
        res.standard_error = {k: se for k in res.standard_error}
        res.p50_ms = res.p50_ms if p50_ms is None else p50_ms
        return res

    monkeypatch.setattr(bench.PackageBench, "round", round_)
    return rounds


def test_bench_exits_3_when_the_standard_error_stays_above_the_cap(monkeypatch, tmp_path, capsys):
    from dery_deploy.cli.main import cli
    from dery_deploy.deploy.bench import MAX_ALLOWANCE, MAX_ROUNDS

    pkg = _tiny(tmp_path / "pkg", 0.05)
    rounds = _wide(monkeypatch, 5 * MAX_ALLOWANCE, p50_ms=0.05)  # the budget, within its own (wide) error
    assert cli(["bench", str(pkg), *FAST, "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"].startswith("undecided") and out["exit_code"] == 3
    assert out["rounds"] == MAX_ROUNDS == len(rounds)


def test_bench_pools_the_rounds_calls_instead_of_measuring_again(monkeypatch, tmp_path, capsys):
    from dery_deploy.cli.main import cli
    from dery_deploy.deploy import bench

    builds = []
    real_open = bench.open_session
    monkeypatch.setattr(bench, "open_session", lambda *a: builds.append(a) or real_open(*a))
    rounds = _wide(monkeypatch, 5 * bench.MAX_ALLOWANCE)
    assert cli(["bench", str(_tiny(tmp_path / "pkg", 1e6)), *FAST, "--json"]) == 0  # far within: decided
    out = json.loads(capsys.readouterr().out)
    # three rounds, one session: each round's result covers its calls and every earlier round's
    assert out["rounds"] == bench.MAX_ROUNDS and len(builds) == 1
    assert rounds[0] >= 200 and rounds[1] >= rounds[0] + 200 and out["calls"] == rounds[2] >= rounds[1] + 200


def test_a_round_adds_its_calls_to_the_earlier_rounds(tmp_path):
    from dery_deploy.deploy.bench import PackageBench

    b = PackageBench(_tiny(tmp_path / "pkg"), calls=100, seconds=0.0)
    first = b.round()
    kept = list(b.samples)
    second = b.round()
    assert first.calls == len(kept) >= 100 and second.calls == len(b.samples) >= first.calls + 100
    assert b.samples[: first.calls] == kept and second.max_ms == round(max(b.samples), 5)


def test_the_reference_workload_runs_among_the_packages_calls_not_around_them():
    from dery_deploy.deploy.base import CHUNK
    from dery_deploy.deploy.bench import REFERENCE_CHUNK, interleaved

    order: list[str] = []

    def timer(name, ms):
        return lambda n: order.extend([name] * n) or [ms] * n

    calls, ref = interleaved(timer("package", 0.1), timer("reference", 0.2), 3 * CHUNK, 0.0, None)
    assert calls == [0.1] * 3 * CHUNK and ref == [0.2] * 3 * REFERENCE_CHUNK
    # every chunk of the package's calls is followed by the reference's, so both see the same seconds
    assert order == (["package"] * CHUNK + ["reference"] * REFERENCE_CHUNK) * 3
    assert interleaved(timer("package", 0.1), None, CHUNK, 0.0, None)[1] == []


def test_over_only_because_the_machine_runs_slower_is_undecided(tmp_path):
    """The run's rule in `dery bench`: a figure over the budget that is within it once divided by the machine's
    slowdown (the reference workload against when the package was measured) is undecided, exit 3; one still
    over at the recorded speed is over."""
    from dataclasses import replace

    from dery_deploy.deploy.bench import BenchResult
    from dery_deploy.deploy.machine import fingerprint

    info = DeployInfo.read(_tiny(tmp_path / "pkg", budget_ms=0.0617) / FILE)
    info.latency = replace(info.latency, p50_ms=0.0571, reference_ms=0.100)
    se = {"p50": 0.009, "p90": 0.04, "p99": 0.1}
    now = BenchResult(0.0685, 0.08, 0.1, 0.07, 0.5, 3000, 5.0, se, 0.01, fingerprint("cpu"), "onnxruntime", 2, {},
                      reference_ms=0.1227)  # fmt: skip
    v = judge(info, now)
    assert v.undecided and v.exit_code == 3 and "22.7% slower" in v.line and "0.0558 ms, within" in v.line
    # the same figure with the machine at its recorded speed, or slowed too little to explain it: over
    assert judge(info, replace(now, reference_ms=0.100)).exit_code == 2
    assert judge(info, replace(now, reference_ms=0.104)).over


def test_a_budget_folder_the_run_did_not_make_is_answered_with_those_it_did(tmp_path):
    """The README's examples name a budget; a run chooses its own: the error lists the run's packages."""
    pkg = _tiny(tmp_path / "run" / "budget-0.102ms" / "export", 1e6)
    proc = run_dery("bench", str(tmp_path / "run" / "budget-0.3ms" / "export"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_one_line_error(proc, f"the packages in {tmp_path / 'run'}: {pkg}")
