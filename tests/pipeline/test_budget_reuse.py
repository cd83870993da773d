"""A rerun in the same folder takes an earlier run's finding that every finalist measured over a budget, instead
of measuring again: on a host whose speed drifts, the second measurement could decide the other way, and a budget
the run chose itself would be raised to another figure (CI saw the family test's rerun do this)."""

import json

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


def test_a_mix_a_smaller_budget_healed_from_the_same_weights_is_read_back_not_healed_again(tiny_ws, tmp_path):
    """The best mix is often one network over a run's larger budgets, each budget's assembly writing its own copy
    of the same fitted weights: the first heal is read back (its test top-1, run folder and export), and the
    budget says where it was healed; other weights, or another recipe, are healed."""
    import shutil
    from types import SimpleNamespace

    import torch

    from dery_deploy.assemble.candidates import few_seam_choices, plan_from_choice
    from dery_deploy.data.task import load_task
    from dery_deploy.network.plan import build_net, save_plan_with_weights
    from dery_deploy.train.recipe import Recipe

    task = load_task("fashion-mnist:labels_per_class=6,test_per_class=2", tiny_ws.zoo.input)
    plan = plan_from_choice(tiny_ws.zoo, tiny_ws.partition, few_seam_choices(tiny_ws.partition, 1)[0], task.num_classes)
    name = plan.describe()
    torch.manual_seed(0)
    first = save_plan_with_weights(plan, build_net(plan, tiny_ws.zoo, tiny_ws.dis), tmp_path / "b1" / "f" / "mix.json")
    copy = tmp_path / "b2" / "f" / "mix.json"
    copy.parent.mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(first.with_suffix(suffix), copy.with_suffix(suffix))
    # as assembly saves the same network's plan for a further target: without the adapter and head records
    # that `build_net` derives from its blocks (seen: a budget whose first target was that one healed again)
    saved = json.loads(copy.read_text())
    copy.write_text(json.dumps({**saved, "adapters": [], "head": {}, "backend": "openvino", "precision": "int8"}))
    recipe = Recipe(epochs_adapter=1, epochs_full=1, head_init="random")
    ctx = SimpleNamespace(zoo=tiny_ws.zoo, task=task, recipes=SimpleNamespace(final=recipe), teacher=None)
    r = a_run(tmp_path)
    healed = budget.heal_best_mix(r, ctx, 0.1, tmp_path / "b1", name, {(name, "onnxruntime/fp32/t1"): first})
    r.manifest.results.append(BudgetResult(0.1, mix=healed, run_mix=str(tmp_path / "b1" / "mix")))

    found = budget.healed_before(r, ctx, 0.2, name, {(name, "openvino/int8/t1"): copy})
    assert found is not None
    mix, run_mix = found
    assert run_mix == str(tmp_path / "b1" / "mix") and (mix.top1, mix.val_accuracy) == (
        healed.top1,
        healed.val_accuracy,
    )
    assert mix.carried_from == 0.1 and mix.export == healed.export
    reused = [(s.stage, s.status) for s in r.manifest.stages if "0.2 ms" in s.stage]
    assert reused == [
        (f"heal {name} (0.2 ms)", "reused"),
        ("evaluate best mix 0.2 ms", "reused"),
        ("export onnx (best mix 0.2 ms)", "reused"),
    ]
    assert "healed at 0.1 ms" in r.manifest.stages[-1].note
    assert not (tmp_path / "b2" / "mix").exists()
    # other weights under the same name, or another recipe: healed
    other = tmp_path / "b3" / "f" / "mix.json"
    torch.manual_seed(1)
    save_plan_with_weights(plan, build_net(plan, tiny_ws.zoo, tiny_ws.dis), other)
    assert budget.healed_before(r, ctx, 0.3, name, {(name, "t"): other}) is None
    ctx.recipes.final = Recipe(**{**recipe.__dict__, "seed": 1})
    assert budget.healed_before(r, ctx, 0.3, name, {(name, "t"): copy}) is None


def test_budget_folders_of_an_earlier_run_with_other_budgets_are_set_aside_and_taken_back(tmp_path):
    """A rerun in the same folder with other budgets left the first run's packages beside its own, so that
    `budget-*/export` listed both (a new user's trial); they are set aside, and a run that asks for one of
    those budgets again takes its folder back (its stages are reused where they still match)."""
    out = tmp_path / "run"
    for b in ("0.0871", "0.102"):
        (out / f"budget-{b}ms" / "export").mkdir(parents=True)
        (out / f"budget-{b}ms" / "export" / "deploy.json").write_text("{}")
    r = a_run(tmp_path)
    assert r.budget_dir(0.102) == out / "budget-0.102ms"
    assert r.set_aside_earlier() == ["budget-0.0871ms"]
    assert sorted(p.name for p in out.glob("budget-*")) == ["budget-0.102ms"]
    assert (out / "earlier" / "budget-0.0871ms" / "export" / "deploy.json").is_file()
    again = a_run(tmp_path)
    assert again.budget_dir(0.0871) == out / "budget-0.0871ms" and (out / "budget-0.0871ms" / "export").is_dir()
    assert again.set_aside_earlier() == ["budget-0.102ms"]
    assert not (out / "earlier" / "budget-0.0871ms").exists()
