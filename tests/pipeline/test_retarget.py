"""A pick whose exported file does not repeat its finalist figure ships its network on another target
(`pick.retarget`), end to end: the first package is replaced, not left beside the second."""

import json

import pytest

from tests.conftest import TINY_ZOO


@pytest.mark.slow
def test_a_pick_whose_export_runs_slower_ships_the_same_network_on_another_target(tmp_path, monkeypatch):
    import dery_deploy.pipeline.budget as budget
    from dery_deploy.pipeline import RunOptions
    from dery_deploy.pipeline import run as run_pipeline

    real = budget.retarget
    first: list[str] = []

    def slowed(pick, triples, exported_ms):
        """The machine as the AMD VM had it: the picked target's export ran 3x its finalist figure."""
        first.append(pick.target)
        return real(pick, triples, None if exported_ms is None else 3 * pick.measured_ms)

    monkeypatch.setattr(budget, "retarget", slowed)
    opts = RunOptions(
        zoo=str(TINY_ZOO), quick=True, budgets=[0.5], data="fashion-mnist:labels_per_class=20,test_per_class=30",
        verify=3, targets=["onnxruntime/fp32", "openvino/fp32"], out=str(tmp_path / "run"), allow_over_budget=True,
    )  # fmt: skip
    m = run_pipeline(opts, None, False)
    [res] = m.results
    assert res.pick_triple is not None and res.plan is not None and res.export_dir is not None
    assert res.pick_triple.target != first[0] and res.pick_triple.rule.startswith(f"{first[0]} did not repeat")
    assert res.plan.backend == res.pick_triple.target.split("/")[0]
    export = tmp_path / "run" / "budget-0.5ms" / "export"
    deploy = json.loads((export / "deploy.json").read_text())
    assert deploy["runtime"]["name"] == res.plan.backend
    # the first package is gone: a folder holds one package
    first_files = {"model.xml", "model.bin", "report-openvino.json"} if "openvino" in first[0] else {"model.onnx"}
    assert not first_files & {p.name for p in export.iterdir()}, sorted(p.name for p in export.iterdir())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "did not repeat" in report
