"""A rerun in the same folder takes an earlier run's finding that every finalist measured over a budget, instead
of measuring again: on a host whose speed drifts, the second measurement could decide the other way, and a budget
the run chose itself would be raised to another figure (CI saw the family test's rerun do this)."""

from dery_deploy.assemble.measure import NoFinalistKeeps
from dery_deploy.pipeline import budget
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.records import BudgetResult
from dery_deploy.pipeline.runner import Run

MESSAGE = "no finalist keeps 0.13 ms when measured on cpu: the fastest, a, runs in 0.1432 ms (predicted 0.1200 ms)"


def a_run(tmp_path) -> Run:
    opts = RunOptions(out=str(tmp_path / "run"))
    r = Run(opts)
    r.manifest = RunManifest("tiny", "h", "cpu", "onnxruntime", "fp32", opts)
    return r


def test_a_budget_found_infeasible_when_measured_is_taken_from_the_folder_by_a_rerun(tmp_path, monkeypatch):
    key = {"partition": "p", "targets": [["onnxruntime", "fp32", 1, 1, 40]]}
    monkeypatch.setattr(budget, "selection_key", lambda r, ctx: key)
    measured: list[float] = []

    def measure_finalists(r, ctx, b, bdir):  # the finalists' pass: every one over the budget
        measured.append(b)
        raise NoFinalistKeeps(0.1432, MESSAGE, "assemble")

    monkeypatch.setattr(budget, "assemble_and_select", measure_finalists)
    bdir = tmp_path / "run" / "budget-0.13ms"
    first, again = BudgetResult(0.13), BudgetResult(0.13)
    r = a_run(tmp_path)
    assert budget._selected(r, None, 0.13, bdir, first) is None
    rerun = a_run(tmp_path)
    assert budget._selected(rerun, None, 0.13, bdir, again) is None
    assert measured == [0.13]  # measured once; the rerun read what it found, and says so
    assert [(s.stage, s.status) for s in r.manifest.stages] == [("assemble 0.13 ms", "infeasible")]
    assert [(s.stage, s.status) for s in rerun.manifest.stages] == [("assemble 0.13 ms", "reused")]
    assert "infeasible when measured in an earlier run" in rerun.manifest.stages[0].note
    assert (
        (first.fastest_measured_ms, first.infeasible)
        == (again.fastest_measured_ms, again.infeasible)
        == (
            0.1432,
            f"[assemble] {MESSAGE}",
        )
    )
    # other inputs (here another profile) are measured again
    key["targets"] = [["onnxruntime", "fp32", 1, 1, 41]]
    other = BudgetResult(0.13)
    assert budget._selected(a_run(tmp_path), None, 0.13, bdir, other) is None and measured == [0.13, 0.13]
