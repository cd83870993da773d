import json
import subprocess
import sys

import pytest

from dery_deploy.train.select import Finalist, Trial, decide, paired_noise, schedule, study_name


def _t(name, rung, acc, correct="1" * 10):
    return Trial(name, rung, acc, correct, 1.0, "here")


def test_successive_halving_keeps_the_best_of_each_kind():
    fs = [Finalist(f"m{i}", {}, False) for i in range(5)] + [Finalist("d0", {}, True), Finalist("d1", {}, True)]
    assert schedule(fs, {}) == [(f.name, 0) for f in fs]  # rung 1 waits for rung 0
    done = {(f.name, 0): _t(f.name, 0, acc) for f, acc in zip(fs, [90, 80, 70, 60, 50, 40, 45])}
    work = schedule(fs, done, rungs=(1, 2), eta=2)
    rung1 = sorted(n for n, r in work if r == 1)
    # the top half (4 of 7) by validation, plus the best donor (d1, 45%) kept alive for the comparison
    assert rung1 == ["d1", "m0", "m1", "m2", "m3"]


def test_paired_noise_is_twice_the_standard_error_of_the_difference():
    assert paired_noise("1111", "1111") == 0.0
    a, b = "1" * 90 + "0" * 10, "1" * 80 + "0" * 20  # b's errors include all of a's: 10 discordant images
    assert paired_noise(a, b) == pytest.approx(2 * 100 * (10 - 100 / 100) ** 0.5 / 100)


def test_pick_is_the_donor_unless_the_mix_wins_beyond_the_noise():
    fs = [Finalist("mix", {}, False), Finalist("donor", {}, True)]
    n = 200
    donor = "1" * 160 + "0" * 40
    close = "1" * 162 + "0" * 38  # +1 point, 2 discordant images: within the noise
    far = "1" * 190 + "0" * 10  # +15 points
    sel = decide(fs, {("mix", 0): _t("mix", 0, 81.0, close), ("donor", 0): _t("donor", 0, 80.0, donor)}, (1,), "s", "m")
    assert sel.pick == "donor" and "within the noise" in sel.rule
    tie = decide(fs, {("mix", 0): _t("mix", 0, 80.0, donor), ("donor", 0): _t("donor", 0, 80.0, donor)}, (1,), "s", "m")
    assert tie.pick == "donor" and tie.rule == "the best donor: the best mixed plan ties it on validation"
    sel = decide(fs, {("mix", 0): _t("mix", 0, 95.0, far), ("donor", 0): _t("donor", 0, 80.0, donor)}, (1,), "s", "m")
    assert sel.pick == "mix" and sel.difference == 15.0 and sel.noise < 15
    only = decide(fs[:1], {("mix", 0): _t("mix", 0, 50.0, "1" * (n // 2) + "0" * (n // 2))}, (1,), "s", "m")
    assert only.pick == "mix" and "no donor fits" in only.rule


def test_processes_planning_the_same_finalists_share_one_study(tiny_ws):
    """Two `dery assemble --storage` processes measure their finalists differently, time the solver
    differently and keep the adapter weights at their own paths: the study is still the same one."""
    from dery_deploy.assemble.candidates import donor_plan
    from dery_deploy.data.task import load_task
    from dery_deploy.train.recipe import Recipe

    task = load_task("fashion-mnist:labels_per_class=10,test_per_class=10", tiny_ws.zoo.input)

    def finalists(measured_ms, solver_s, where, donor="res"):
        p = donor_plan(tiny_ws.zoo, tiny_ws.partition, donor, task.num_classes).to_dict()
        p |= {"measured": {"median_ms": measured_ms}, "solver": {"seconds_top": solver_s}}
        return [Finalist(donor, {"plan": p, "adapter_weights": f"{where}/00.safetensors"}, True, measured_ms)]

    here = study_name(task, finalists(0.101, 0.2, "/a"), (1, 2), 2, Recipe())
    assert here == study_name(task, finalists(0.107, 0.9, "/b"), (1, 2), 2, Recipe())
    assert here != study_name(task, finalists(0.101, 0.2, "/a", donor="cnx"), (1, 2), 2, Recipe())
    assert here != study_name(task, finalists(0.101, 0.2, "/a"), (1, 2), 2, Recipe(seed=1))


SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.conftest import TinyWorkspace
from dery_deploy.data.task import load_task
from dery_deploy.assemble.candidates import donor_plan
from dery_deploy.partition.stage import Partition
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select import Finalist, select
from dery_deploy.zoo import get_zoo
zoo = get_zoo({zoo!r})
part = Partition.read({part!r})
task = load_task("fashion-mnist:labels_per_class=10,test_per_class=10", zoo.input)
fs = []
for name in ("res", "cnx", "vit"):
    p = donor_plan(zoo, part, name, task.num_classes)
    fs.append(Finalist(p.describe(), {{"plan": p.to_dict()}}, True))
sel = select(fs, zoo, task, Path({out!r}), Recipe(epochs_adapter=1, epochs_full=1, head_init="random"),
             storage={storage!r}, rungs=(1, 1), poll_s=0.2)
print(json.dumps(sel.to_dict()))
"""


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_ws, tmp_path):
    """Two processes running the same selection against one SQLite file split the trials: every
    (finalist, rung) is trained once in all, and both end with the same pick."""
    from tests.conftest import ROOT, TINY_ZOO

    storage = f"sqlite:///{tmp_path / 'select.db'}"
    code = SCRIPT.format(
        root=str(ROOT), zoo=str(TINY_ZOO), part=str(tiny_ws.partition_path), out=str(tmp_path / "sel"), storage=storage
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert a["pick"] == b["pick"] and a["storage"] == storage
    trials = {(t["finalist"], t["rung"]): t["worker"] for t in a["trials"]}
    assert len(trials) == len(a["trials"])  # no (finalist, rung) trained twice
    assert {r for _, r in trials} == {0, 1} and len([k for k in trials if k[1] == 0]) == 3
    import optuna

    study = optuna.load_study(study_name=a["study"], storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(trials)
