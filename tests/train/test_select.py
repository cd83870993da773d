import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dery_deploy.train.select import (
    Evidence,
    Finalist,
    Trial,
    decide,
    default_folds,
    gather,
    paired_noise,
    rung_folds,
    schedule,
    study_name,
)
from dery_deploy.train.source import FinetuneSource

# schedule, decide and select's own checks never read a finalist's source
UNREAD = FinetuneSource.of_donor("res")


def _t(name, rung, acc, correct="1" * 10):
    return Evidence(name, rung, acc, correct, 1.0)


def test_successive_halving_keeps_the_best_of_each_kind():
    fs = [Finalist(n, UNREAD, n.startswith("d")) for n in ("m0", "m1", "m2", "m3", "m4", "d0", "d1")]
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
    fs = [Finalist("mix", UNREAD, False), Finalist("donor", UNREAD, True)]
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
    from dery_deploy.network.plan_records import FinalistMeasurement, PlanSolver
    from dery_deploy.train.recipe import Recipe

    task = load_task("fashion-mnist:labels_per_class=10,test_per_class=10", tiny_ws.zoo.input)

    def finalists(measured_ms, solver_s, where, donor="res"):
        p = donor_plan(tiny_ws.zoo, tiny_ws.partition, donor, task.num_classes)
        ms = measured_ms
        p.measured = FinalistMeasurement(
            ms, 50, 0.01, ms, ms, ms, ms, True, 0.01, None, "", "onnxruntime", "fp32", 1, 1, "cpu"
        )
        p.solver = PlanSolver(seconds_top=solver_s)
        return [Finalist(donor, FinetuneSource.of_plan(p, f"{where}/00.safetensors"), True, measured_ms)]

    here = study_name(task, finalists(0.101, 0.2, "/a"), (1, 2), 2, Recipe())
    assert here == study_name(task, finalists(0.107, 0.9, "/b"), (1, 2), 2, Recipe())
    assert here != study_name(task, finalists(0.101, 0.2, "/a", donor="cnx"), (1, 2), 2, Recipe())
    assert here != study_name(task, finalists(0.101, 0.2, "/a"), (1, 2), 2, Recipe(seed=1))


def test_k_fold_evidence_pools_every_held_out_image_and_decides_on_all_of_them():
    """Two finalists, 5 folds of 40 held-out images each: the mix wins 2 images per fold. On one fold
    that is +5 points within a noise of 6.9; on the 200 pooled images the same +5 points beats 3.1."""
    fs = [Finalist("mix", UNREAD, False), Finalist("donor", UNREAD, True)]
    rungs = (1, 2)
    donor_fold = "1" * 30 + "0" * 10
    mix_fold = "1" * 32 + "0" * 8
    done = {("donor", 0, 0): Trial("donor", 0, 75.0, 1.0, "w", 0, donor_fold)}
    for f in range(5):
        done[("mix", 1, f)] = Trial("mix", 1, 80.0, 1.0, "w", f, mix_fold)
        if f < 4:  # the donor's last fold is not trained yet: no evidence for it at the last rung
            done[("donor", 1, f)] = Trial("donor", 1, 75.0, 1.0, "w", f, donor_fold)
    assert rung_folds(0, rungs, 5, 1) == [0] and rung_folds(1, rungs, 5, 1) == [0, 1, 2, 3, 4]
    ev = gather(done, rungs, 5, 1)
    assert set(ev) == {("donor", 0), ("mix", 1)}
    done[("donor", 1, 4)] = Trial("donor", 1, 75.0, 1.0, "w", 4, donor_fold)
    ev = gather(done, rungs, 5, 1)
    assert ev[("mix", 1)].correct == mix_fold * 5 and ev[("mix", 1)].folds == [0, 1, 2, 3, 4]
    sel = decide(fs, ev, rungs, "s", "m")
    assert sel.pick == "mix" and sel.images == 200 and sel.difference == 5.0
    assert sel.noise == pytest.approx(paired_noise(mix_fold * 5, donor_fold * 5), abs=1e-3) == 3.082
    assert "out of fold (5-fold cross-validation)" in sel.rule
    one = decide(
        fs, {("mix", 0): _t("mix", 0, 80.0, mix_fold), ("donor", 0): _t("donor", 0, 75.0, donor_fold)}, (1,), "s", "m"
    )
    assert one.pick == "donor" and one.images == 40 and one.noise == 6.892  # the same win on one fold: within the noise


def test_cross_validation_is_the_default_only_while_the_validation_split_is_small():
    from dery_deploy.data.task import InputSpec, load_task
    from dery_deploy.errors import DeryError
    from dery_deploy.train.recipe import Recipe
    from dery_deploy.train.select import select

    grey = InputSpec(1, 32, (0.2190,), (0.3318,))
    small = load_task("fashion-mnist:labels_per_class=100,test_per_class=1", grey)
    large = load_task("fashion-mnist:labels_per_class=150,val_per_class=100,test_per_class=1", grey)
    assert (len(small.val), default_folds(small)) == (200, 5)
    assert (len(large.val), default_folds(large)) == (1000, 1)  # its noise is already a point or two
    with pytest.raises(DeryError, match="folds >= 1"):
        select([Finalist("d", UNREAD, True)], None, small, Path("unused"), Recipe(), folds=0)
    with pytest.raises(DeryError, match="2000-fold selection needs at least 2000 labelled images; the task has 1000"):
        select([Finalist("d", UNREAD, True)], None, small, Path("unused"), Recipe(), folds=2000)


def test_folds_are_part_of_the_study_name(tiny_ws):
    from dery_deploy.data.task import load_task
    from dery_deploy.train.recipe import Recipe

    task = load_task("fashion-mnist:labels_per_class=10,test_per_class=10", tiny_ws.zoo.input)
    fs = [Finalist("res", UNREAD, True)]
    names = {study_name(task, fs, (1, 2), 2, Recipe(), k, 1) for k in (1, 3, 5)}
    assert len(names) == 3 and study_name(task, fs, (1, 2), 2, Recipe(), 5, 2) not in names


@pytest.mark.slow
def test_k_fold_selection_trains_every_fold_at_the_last_rung_and_shares_seam_matching(tiny_ws, tmp_path):
    """A real selection on the tiny zoo: a whole donor and a two-donor plan, 3 folds, one screening fold.
    Every labelled image is held out once at the last rung, and the plan's seam matching (unlabelled
    images only) is done once for the three folds, which start from it."""
    import json

    import torch

    from dery_deploy.assemble.candidates import donor_plan, few_seam_choices, plan_from_choice
    from dery_deploy.data.task import load_task
    from dery_deploy.train.recipe import Recipe
    from dery_deploy.train.select import select

    task = load_task("fashion-mnist:labels_per_class=6,test_per_class=2", tiny_ws.zoo.input)
    donor = donor_plan(tiny_ws.zoo, tiny_ws.partition, "res", task.num_classes)
    mixed = plan_from_choice(
        tiny_ws.zoo, tiny_ws.partition, few_seam_choices(tiny_ws.partition, 1)[0], task.num_classes
    )
    assert mixed.seams == 1
    fs = [
        Finalist(donor.describe(), FinetuneSource.of_plan(donor), True),
        Finalist("mix", FinetuneSource.of_plan(mixed), False),
    ]
    torch.manual_seed(0)
    base = Recipe(match_epochs=1, epochs_adapter=1, epochs_full=1, head_init="random")
    sel = select(fs, tiny_ws.zoo, task, tmp_path, base, rungs=(1,), folds=3)
    assert sel.folds == 3 and sel.images == 60 == len(task.train) + len(task.val)
    assert sorted((t.finalist, t.fold) for t in sel.fold_trials) == sorted((f.name, i) for f in fs for i in range(3))
    assert all(len(e.correct) == 60 and e.folds == [0, 1, 2] for e in sel.trials)
    assert sel.noise is not None and sel.noise > 0
    mix = sorted(f.name for f in fs).index("mix")
    matched = sorted(p.name for p in tmp_path.glob("*matched*"))
    assert len(matched) == 1 and f"-{mix:02d}-rung0-matched1" in matched[0]  # the plan's, once; the donor has no seam
    for fold in range(3):
        cfg = json.loads(next(tmp_path.glob(f"*-{mix:02d}-rung0-fold{fold}")).joinpath("config.json").read_text())
        assert cfg["source"]["start_weights"].endswith(matched[0]) and cfg["recipe"]["match_epochs"] == 0


def test_a_trial_of_the_same_network_trained_the_same_way_is_read_back_not_trained_again(tiny_ws, tmp_path):
    """A run's budgets share a folder of finished trials: the network two selections both train (the best
    donor at several budgets) is trained once, with the same held-out result; a network with other start
    weights, or another recipe, is trained."""
    import torch
    from safetensors.torch import save_file

    from dery_deploy.assemble.candidates import donor_plan, few_seam_choices, plan_from_choice
    from dery_deploy.data.task import load_task
    from dery_deploy.train.recipe import Recipe
    from dery_deploy.train.select import select
    from dery_deploy.train.select.trial import REUSED

    task = load_task("fashion-mnist:labels_per_class=6,test_per_class=2", tiny_ws.zoo.input)
    donor = donor_plan(tiny_ws.zoo, tiny_ws.partition, "res", task.num_classes)
    one, two = few_seam_choices(tiny_ws.partition, 1)[:2]
    mixes = [plan_from_choice(tiny_ws.zoo, tiny_ws.partition, c, task.num_classes) for c in (one, two)]
    d = Finalist(donor.describe(), FinetuneSource.of_plan(donor), True)
    base = Recipe(match_epochs=1, epochs_adapter=1, epochs_full=1, head_init="random")
    reuse = tmp_path / "trials"

    def run(name, finalists, recipe=base):
        torch.manual_seed(0)
        return select(finalists, tiny_ws.zoo, task, tmp_path / name, recipe, rungs=(1,), folds=2, reuse=reuse)

    first = run("a", [d, Finalist(mixes[0].describe(), FinetuneSource.of_plan(mixes[0]), False)])
    assert all(t.worker != REUSED for t in first.fold_trials) and len(list(reuse.glob("*.json"))) == 4
    second = run("b", [d, Finalist(mixes[1].describe(), FinetuneSource.of_plan(mixes[1]), False)])
    by = {(t.finalist, t.fold): t for t in second.fold_trials}
    for t in first.fold_trials:
        if t.finalist == d.name:
            assert by[(t.finalist, t.fold)].worker == REUSED
            assert (by[(t.finalist, t.fold)].val_accuracy, by[(t.finalist, t.fold)].correct) == (
                t.val_accuracy,
                t.correct,
            )
    assert all(t.worker != REUSED for t in second.fold_trials if t.finalist != d.name)
    assert len(list((tmp_path / "b").glob("*-rung0-fold*/config.json"))) == 2  # the new mix's two folds only
    # other start weights: another network to train, under the same name
    from dery_deploy.network.plan import stitch_state_dict, whole_donor

    weights = tmp_path / "w.safetensors"
    save_file(
        {k: torch.zeros_like(v) for k, v in stitch_state_dict(whole_donor(donor, tiny_ws.zoo)).items()}, str(weights)
    )
    other = Finalist(d.name, FinetuneSource.of_plan(donor, str(weights)), True)
    assert all(t.worker != REUSED for t in run("c", [other]).fold_trials)
    assert all(t.worker != REUSED for t in run("d", [d], Recipe(**{**base.__dict__, "seed": 1})).fold_trials)
    # a record it cannot read (another version's fields) is trained again, and written anew
    for f in reuse.glob("*.json"):
        f.write_text('{"finalist": "res", "from": "another version"}')
    again = run("e", [d]).fold_trials
    assert all(t.worker != REUSED for t in again)
    assert [t.val_accuracy for t in again] == [t.val_accuracy for t in first.fold_trials if t.finalist == d.name]


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
from dery_deploy.train.source import FinetuneSource
from dery_deploy.zoo import get_zoo
zoo = get_zoo({zoo!r})
part = Partition.read({part!r})
task = load_task("fashion-mnist:labels_per_class=10,test_per_class=10", zoo.input)
fs = []
for name in ("res", "cnx", "vit"):
    p = donor_plan(zoo, part, name, task.num_classes)
    fs.append(Finalist(p.describe(), FinetuneSource.of_plan(p), True))
sel = select(fs, zoo, task, Path({out!r}), Recipe(epochs_adapter=1, epochs_full=1, head_init="random"),
             storage={storage!r}, rungs=(1, 1), poll_s=0.2, folds=3)
print(json.dumps(sel.to_dict()))
"""


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_ws, tmp_path):
    """Two processes running the same selection against one SQLite file split the trials: every
    (finalist, rung, fold) is trained once in all, and both end with the same pick on the same evidence."""
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
    assert a["pick"] == b["pick"] and a["storage"] == storage and a["trials"] == b["trials"]
    trials = {(t["finalist"], t["rung"], t["fold"]): t["worker"] for t in a["fold_trials"]}
    assert len(trials) == len(a["fold_trials"])  # no (finalist, rung, fold) trained twice
    assert {r for _, r, _ in trials} == {0, 1} and len([k for k in trials if k[1] == 0]) == 3  # rung 0: one fold
    last = {n for n, r, _ in trials if r == 1}
    assert {(n, f) for n, r, f in trials if r == 1} == {(n, f) for n in last for f in range(3)}
    assert a["folds"] == 3 and a["images"] == 100  # every labelled image held out once
    import optuna

    study = optuna.load_study(study_name=a["study"], storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(trials)


def test_a_dead_holders_trial_is_failed_by_its_heartbeat_and_done_by_another(tmp_path, monkeypatch):
    """A process killed while it holds a shared trial leaves it RUNNING; Optuna fails only trials with a
    heartbeat, so the holder records one: another process fails the trial after the grace period and does
    the work itself, instead of waiting for it forever."""
    import optuna

    import dery_deploy.train.select as sel

    monkeypatch.setattr(sel, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sel, "GRACE_S", 2)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    with sel._quiet_optuna():
        study, _ = sel._open_study(storage, "once-test")
        dead = study.ask()
        with sel.alive(study, dead):  # the first process claims the work, beats, then dies without telling
            dead.set_user_attr("role", "once")
    t0 = time.time()
    assert sel.shared_once(storage, "once-test", lambda: {"answer": 42}, poll_s=0.2) == {"answer": 42}
    assert time.time() - t0 < 30
    states = [t.state for t in optuna.load_study(study_name="once-test", storage=storage).get_trials()]
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states


def test_a_claim_waits_for_a_lower_trial_still_being_labelled(tmp_path):
    """Two processes share a study: A asks first (trial 0) and is still writing what work it takes when B
    (trial 1), labelled with the same work, claims. B must wait for A's label and yield; deciding at once, B
    and then A would both win and train the same fold twice (seen in CI)."""
    import threading

    from dery_deploy.train.select import quiet_optuna
    from dery_deploy.train.select.board import Liveness, RdbBoard

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    work = {"finalist": "res", "rung": 0, "fold": 1}
    with quiet_optuna():
        a_board, b_board = (RdbBoard(storage, "race", Liveness(1, 20)) for _ in range(2))
        a, b = a_board.ask(), b_board.ask()
        assert (a.number, b.number) == (0, 1)
        b_board.label(b, work)
        later = threading.Timer(0.5, a_board.label, args=(a, work))  # A's attributes land while B decides
        later.start()
        t0 = time.time()
        b_wins = b_board.claim(b, work, poll_s=0.05)
        waited = time.time() - t0
        later.join()
        assert not b_wins and 0.4 < waited < 10  # B waited for A's label, then saw A holds the work
        assert a_board.claim(a, work)  # the lower number wins
        # a lower trial labelled with other work does not hold B back
        c = b_board.ask()
        b_board.label(c, {**work, "fold": 2})
        assert b_board.claim(c, {**work, "fold": 2})


def _fake_train(finalist, rung, fold):
    """What a trained trial reports, without training: a fixed accuracy per finalist (the mixed plan `m1`
    best), 20 held-out images per fold."""
    right = {"d0": 14, "d1": 12, "m0": 10, "m1": 17, "m2": 8}[finalist.name] + rung
    return Trial(finalist.name, rung, 100 * right / 20, 0.5, "here", fold, "1" * right + "0" * (20 - right))


def test_selection_reads_back_what_it_writes():
    """selection.json's `selection` is read into the same `Selection` and written back to the same bytes."""
    from dery_deploy.train.select import MemoryBoard, Selection, run_rungs

    fs = [Finalist(n, UNREAD, n.startswith("d")) for n in ("d0", "d1", "m0", "m1", "m2")]
    done, ev = run_rungs(MemoryBoard(), fs, _fake_train, rungs=(1, 2), folds=3, screen_folds=1)
    sel = decide(fs, ev, (1, 2), "dery-select-0123456789ab", "memory")
    sel.folds, sel.fold_trials = 3, sorted(done.values(), key=lambda t: (t.rung, t.finalist, t.fold))
    d = json.loads(json.dumps(sel.to_dict()))
    assert list(d) == [
        "pick", "rule", "best_donor", "best_mix", "difference", "noise", "folds", "images", "study", "storage",
        "trials", "fold_trials",
    ]  # fmt: skip
    assert list(d["fold_trials"][0]) == ["finalist", "rung", "val_accuracy", "seconds", "worker", "fold"]
    back = Selection.from_dict(d)
    assert back.trials == sel.trials and json.dumps(back.to_dict()) == json.dumps(sel.to_dict())
    assert (d["pick"], d["images"], d["difference"]) == ("m1", 60, 15.0)


def test_the_rungs_train_each_trial_once_and_promote_the_best_of_each_kind():
    """Five finalists, two rungs, three folds at the last: rung 0 screens on fold 0 alone, the top
    half (3 of 5) and the best donor go on, and each of them trains every fold at the last rung."""
    from dery_deploy.train.select import MemoryBoard, run_rungs

    fs = [Finalist(n, UNREAD, n.startswith("d")) for n in ("d0", "d1", "m0", "m1", "m2")]
    calls, lines = [], []

    def train(f, rung, fold):
        calls.append((f.name, rung, fold))
        return _fake_train(f, rung, fold)

    board = MemoryBoard()
    done, ev = run_rungs(board, fs, train, rungs=(1, 2), folds=3, screen_folds=1, log=lines.append)
    assert calls[:5] == [(n, 0, 0) for n in ("d0", "d1", "m0", "m1", "m2")]
    assert sorted(calls[5:]) == sorted((n, 1, f) for n in ("d0", "d1", "m1") for f in range(3))
    assert len(set(calls)) == len(calls) == len(done) and [t.state for t in board.trials()] == ["complete"] * 14
    assert ev[("m1", 1)].folds == [0, 1, 2] and ev[("m1", 1)].val_accuracy == 90.0
    assert lines[0] == "  rung 0 (1 epochs) fold 1/3: d0: held out 70.00%"


@pytest.mark.parametrize("shared", [False, True])
def test_both_boards_give_a_trials_work_to_the_lowest_number(shared, tmp_path):
    from dery_deploy.train.select import Liveness, MemoryBoard, RdbBoard, quiet_optuna

    with quiet_optuna():
        board = RdbBoard(f"sqlite:///{tmp_path / 'b.db'}", "claims", Liveness(1, 2)) if shared else MemoryBoard()
        first, second = board.ask(), board.ask()
        for t in (second, first):
            t.set_user_attr("work", "a")
        assert board.claim(first, {"work": "a"}) and not board.claim(second, {"work": "a"})
        board.fail(second)
        with board.alive(first):
            first.set_user_attr("result", {"x": 1})
        board.tell(first, 1.0)
        assert [(t.number, t.state) for t in board.trials()] == [(0, "complete"), (1, "fail")]
        assert board.trials()[0].user_attrs == {"work": "a", "result": {"x": 1}}
        third = board.ask()
        third.set_user_attr("work", "a")
        assert not board.claim(third, {"work": "a"})  # done already, by the first
        assert board.where == (f"sqlite:///{tmp_path / 'b.db'}" if shared else "memory")


def test_a_second_process_on_a_shared_board_trains_nothing_already_done(tmp_path):
    """Selection run again against the study another process finished: the same evidence, no training."""
    from dery_deploy.train.select import Liveness, RdbBoard, quiet_optuna, run_rungs

    fs = [Finalist(n, UNREAD, n.startswith("d")) for n in ("d0", "m0", "m1")]
    storage = f"sqlite:///{tmp_path / 's.db'}"
    with quiet_optuna():
        done, ev = run_rungs(RdbBoard(storage, "s", Liveness(1, 2)), fs, _fake_train, rungs=(1, 2), folds=2)
        untrained = lambda *a: pytest.fail(f"trained {a} again")  # noqa: E731
        again, ev2 = run_rungs(RdbBoard(storage, "s", Liveness(1, 2)), fs, untrained, rungs=(1, 2), folds=2)
    assert again == done and ev2 == ev and len(done) == 3 + 2 * 2


def test_every_name_imported_from_the_select_package_is_there():
    """Other modules, scripts and tests import these names from `dery_deploy.train.select` (moving code
    into the package's modules must keep each one importable from there)."""
    import ast

    import dery_deploy.train.select as sel
    from tests.conftest import ROOT

    wanted = set()
    for folder in ("dery_deploy", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "dery_deploy.train.select":
                    wanted |= {a.name for a in node.names}
    assert {"Finalist", "select", "rung_recipe", "identity", "default_folds", "SCREEN_FOLDS"} <= wanted
    assert not [n for n in wanted if not hasattr(sel, n)]


def test_selection_reaches_into_no_private_attribute_of_another_object():
    """Optuna is used through its public API only (the study's storage and a trial's id are not ours)."""
    import ast

    import dery_deploy.train.select as sel

    reach = []
    for path in Path(sel.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    reach.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not reach, reach


def test_a_sources_identity_hashes_as_it_always_has():
    """The identity is hashed into study names and the finalists' measurement key: a changed hash would
    orphan every study and stored measurement. Pinned from before `identity` was typed."""
    from dery_deploy.artifacts import sha256_json
    from dery_deploy.train.select.halving import identity

    plan = {
        "blocks": [{"donor": "res", "units": [0, 3]}],
        "head": "donor",
        "predicted": {"latency_ms": 1.5},
        "budget": {"latency_ms": 2.0},
        "measured": {"median_ms": 0.1},
        "solver": {"seconds_top": 0.2},
    }
    source = {"plan": plan, "adapter_weights": "/a/00.safetensors", "zoo_ref": "fashion", "recipe": {"epochs": 3}}
    kept = identity(source)
    assert kept == {"plan": {"blocks": [{"donor": "res", "units": [0, 3]}], "head": "donor"}, "recipe": {"epochs": 3}}
    assert sha256_json(kept) == "d0cc76f53ccb1a41319b539d35e837a0c423f5a692be11227479e2660de57ac0"
