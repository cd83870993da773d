"""`dery bench FAMILY`: every path of a shipped family measured in one pass, as a user runs it
(subprocesses): a table or JSON, each path judged by the one rule, the exit code the worst path's."""

import json
import shutil

from dery_deploy.deploy.family_info import FAMILY_FILE
from tests.conftest import run_dery


def test_bench_measures_every_path_and_exits_0_within_budgets(shipped_family):
    proc = run_dery("bench", str(shipped_family.folder), "--calls", "100", "--seconds", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]  # the progress bar leaves a blank
    assert lines[0].split()[:2] == ["path", "budget"]
    for name, plan in (("path-0", "resnet10t_tops[0:3]"), ("path-1", "mnv3_rot[0:1] > resnet10t_tops[1:5]")):
        row = next(line for line in lines if line.startswith(name + " "))
        assert " yes " in row and row.endswith(plan)
        assert any(line.startswith(f"{name}: within budget: p50") for line in lines)


def test_bench_exits_2_when_a_path_is_over_its_budget(shipped_family, tmp_path):
    folder = tmp_path / "family"
    shutil.copytree(shipped_family.folder, folder)
    data = json.loads((folder / FAMILY_FILE).read_text())
    data["paths"][2]["budget"]["latency_ms"] = 0.001  # no network runs in a microsecond
    (folder / FAMILY_FILE).write_text(json.dumps(data))
    proc = run_dery("bench", str(folder), "--calls", "100", "--seconds", "0.2", "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["exit_code"] == 2 and [r["path"] for r in out["paths"]] == ["path-0", "path-1", "path-2"]
    within = {r["path"]: r["within"] for r in out["paths"]}
    assert within == {"path-0": True, "path-1": True, "path-2": False}
    assert out["paths"][2]["verdict"].startswith("OVER BUDGET by")
    assert all(r["calls"] >= 100 and 0 < r["p50_ms"] <= r["p99_ms"] for r in out["paths"])
