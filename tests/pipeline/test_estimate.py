"""The run's time estimate: the work it counts, the steps it times, and the whole run's line."""

from dataclasses import replace

import pytest
from torch import nn

from dery_deploy.deploy.bench import WARMUP_S
from dery_deploy.pipeline.estimate import (
    EVAL_SHARE,
    PAIR_ITEMS,
    PASS_ITEMS,
    REMEASURE_ITEMS,
    SUSPECT_SHARE,
    Eta,
    GroupTime,
    Part,
    Plan,
    RunEstimate,
    distill_batch,
    estimate,
    selection_trials,
    step_seconds,
    training_seconds,
)
from dery_deploy.pipeline.final_pass_file import LOOK_SECONDS, REMEASURE_SECONDS, REMEASURES
from dery_deploy.train.recipe import Recipe


def test_training_seconds_count_epochs_distillation_and_seam_matching():
    r = Recipe(epochs_adapter=3, epochs_full=2, batch=64)
    # phase 1 runs forward only through frozen blocks: a third of a step
    assert training_seconds(r, 640, False, 1e-3, 0.0) == pytest.approx((1 + 2) * 640 * 1e-3)
    d = Recipe(epochs_adapter=3, epochs_full=2, batch=64, distill=0.5, distill_images=1000, match_epochs=2)
    # 10 steps an epoch, 100 teacher images each
    assert distill_batch(d, 640) == 100 and distill_batch(r, 640) == 0
    # the teacher's images at their own (larger-batch) cost; seam matching only where there are seams, and
    # forward only (it trains the adapters alone)
    assert training_seconds(d, 640, False, 1e-3, 5e-4) == pytest.approx(3 * (640 * 1e-3 + 1000 * 5e-4))
    assert training_seconds(d, 640, True, 1e-3, 5e-4) == pytest.approx(3 * (0.64 + 0.5) + 2 * 8192 * 1e-3 / 3)


def test_selection_trials_follow_the_halving_schedule():
    assert selection_trials(4, 2, (1,), 5) == [(0, 30)]  # one rung: the last, every fold
    # screened on one fold, then the best half and the best of the other kind on five
    assert selection_trials(4, 2, (1, 2), 5) == [(0, 6), (1, 20)]
    assert selection_trials(4, 0, (1, 2), 5) == [(0, 4), (1, 10)]  # mixes alone: the best half
    assert selection_trials(2, 0, (1, 2), 1) == [(0, 2), (1, 1)]
    # two donors were finalists under a smaller budget: their first rung, and the best donor's last, are read back
    assert selection_trials(4, 2, (1, 2), 5, seen=2) == [(0, 4), (1, 15)]
    # and two of the mixes too: the best mix's last rung is read back as well
    assert selection_trials(4, 2, (1, 2), 5, seen=2, carried=2) == [(0, 2), (1, 10)]
    assert selection_trials(1, 1, (1, 2), 5, seen=1, carried=1) == [(0, 0), (1, 0)]  # nothing new: nothing trained


def test_a_training_step_is_timed_per_image(fashion_task):
    c, h, w = fashion_task.train.images.shape[1:]
    small = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 10))
    big = nn.Sequential(nn.Conv2d(c, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.Flatten())
    big.append(nn.Linear(64 * h * w, 10))
    s, b = step_seconds(small, fashion_task, 32), step_seconds(big, fashion_task, 32)
    assert 0 < s < b  # per image, the larger network's step costs more


def test_estimate_adds_up_the_rest_of_a_run(fashion_task):
    r = Recipe(epochs_adapter=1, epochs_full=2, batch=64)
    f = Recipe(epochs_adapter=1, epochs_full=2, batch=64, distill=0.5, distill_images=128)  # it distils: a teacher
    plan = Plan([0.2], {"a": 0.1, "b": 0.3}, ["a", "b"], ["a"], r, f, (1,), 2, 2, step_s={"a": 1e-3, "b": 3e-3})
    est = estimate(plan, fashion_task, item_s=0.5, after_s=100)
    names = [p.stage for p in est.parts]
    assert names[:4] == [
        "fine-tune donor a (ce",
        "fine-tune donor b (ce",
        "fine-tune donor a (final",
        "evaluate donor a",
    ]
    n = len(fashion_task.train)
    # 1 epoch of phase 1 (forward only, a third) + 2 of phase 2 over the labelled images
    assert est.parts[0].seconds == pytest.approx(7 / 3 * n * 1e-3) and est.parts[1].seconds == pytest.approx(
        7 / 3 * n * 3e-3
    )
    assert "assemble and select under" in names and names.count("export") == 2
    assert est.parts[-1].stage == "final measurement" and est.parts[-1].seconds == pytest.approx(
        (PASS_ITEMS + (2 * 2 + 1) * PAIR_ITEMS) * 0.5
        + (REMEASURE_ITEMS * 0.5 + WARMUP_S + LOOK_SECONDS)  # the one shipped package looked at alone
        + SUSPECT_SHARE * REMEASURES * (REMEASURE_ITEMS * 0.5 + WARMUP_S + REMEASURE_SECONDS)  # a suspect's share
    )
    # a network under the 0.2 ms budget costs what the donor that fits it costs (a: 1e-3 s per image);
    # under a budget no donor fits, the median over every donor's
    heal = next(p for p in est.parts if p.stage == "heal")
    assert heal.seconds == pytest.approx(training_seconds(f, n, True, 1e-3, 1e-3))
    below = estimate(replace(plan, budgets=[0.05]), fashion_task, item_s=0.5, after_s=100)
    heal = next(p for p in below.parts if p.stage == "heal")
    assert heal.seconds == pytest.approx(training_seconds(f, n, True, 2e-3, 2e-3))
    # evaluation: the test images at EVAL_SHARE of a training image
    ev = next(p for p in est.parts if p.stage == "evaluate donor a")
    assert ev.seconds == pytest.approx(len(fashion_task.test) * 1e-3 * EVAL_SHARE)
    assert est.seconds == pytest.approx(sum(est.by_group().values()))
    assert "the rest of this run: about" in est.line() and "unreliable" not in est.line()
    # steps timed while other processes computed: the line says the training times cannot be trusted
    assert "used 1.2 cores while the steps were timed" in replace(est, other_load_cores=1.2).line()
    assert "unreliable" not in replace(est, other_load_cores=0.05).line()
    # a target left out of selection (pipeline/targets.py) is not measured with the finalists: one pair less per
    # candidate (2 finalists + donor a under 0.2 ms); the final pass still measures every target
    one = estimate(replace(plan, searched_targets=1), fashion_task, item_s=0.5, after_s=100)

    def part(e, stage):
        return next(p.seconds for p in e.parts if p.stage == stage)

    select = "assemble and select under"
    assert part(est, select) - part(one, select) == pytest.approx(3 * PAIR_ITEMS * 0.5)
    assert part(one, "final measurement") == part(est, "final measurement")


def test_donors_expected_left_out_are_held_out_of_the_total_and_put_back_by_name(fashion_task):
    r = Recipe(epochs_adapter=1, epochs_full=2, batch=64)
    f = Recipe(epochs_adapter=1, epochs_full=2, batch=64, distill=0.5, distill_images=128)
    steps = {"a": 1e-3, "b": 3e-3, "c": 2e-3}
    plan = Plan([0.4], {"a": 0.1, "b": 0.3, "c": 0.2}, ["a", "b", "c"], ["a", "b", "c"], r, f, (1,), 2, 2, step_s=steps)
    full = estimate(plan, fashion_task, item_s=0.5, after_s=100)
    held = estimate(replace(plan, expected_left_out=["b", "x"]), fashion_task, item_s=0.5, after_s=100)
    b_parts = [p for p in full.parts if p.stage in ("fine-tune donor b (final", "evaluate donor b")]
    assert len(b_parts) == 2 and held.expected_left_out == ["b"]  # (x is no final donor: nothing to hold out)
    assert [p.stage for p in held.held_out] == [p.stage for p in b_parts]
    assert all(p.stage not in {q.stage for q in b_parts} for p in held.parts)
    # the total lacks b's final training and evaluation and its final-pass pairs (one per target), and b is
    # no finalist under the budget: selection trains one network less
    pairs = 2 * PAIR_ITEMS * 0.5

    def selection(e):
        return next(p.seconds for p in e.parts if p.stage == "assemble and select under")

    assert selection(full) > selection(held)
    gone = sum(p.seconds for p in b_parts) + pairs + selection(full) - selection(held)
    assert full.seconds - held.seconds == pytest.approx(gone)
    assert "not counting the final training of b, which the short recipe is expected to leave out" in held.line()
    # without distillation no short recipe runs, so nothing can be left out: nothing is held out
    plain = replace(plan, final=replace(f, distill=0.0), expected_left_out=["b"])
    assert estimate(plain, fashion_task, item_s=0.5, after_s=100).held_out == []


def test_eta_scales_what_is_left_by_how_the_finished_stages_went():
    est = RunEstimate(0.0, [Part("train a", "training", 100), Part("train b", "training", 200)], {}, 1.0)
    eta = Eta(est)
    assert eta.left_s() == 300
    assert eta.finished("train a (ce, 0.1 ms)", 150)  # took 1.5x its estimate
    # scaled by (150 + 30) / (100 + 30): a tenth of the whole estimate counts as finished on time
    assert eta.left_s() == pytest.approx(200 * 180 / 130) and not eta.finished("something else", 5)
    assert eta.record() == {"training": GroupTime(100, 150)}
    assert eta.finished("train b", 0.1, reused=True) and eta.left_s() == 0  # reused: done, not counted
    assert "so far, about 0 s left" in eta.line(60)


def test_one_short_stage_far_off_its_estimate_does_not_rescale_the_whole_run():
    # seen: an 86-minute estimate, its first 34 s part took 166 s, and the line said 412 minutes were left
    parts = [Part("fine-tune donor a (ce", "training", 34)] + [Part(f"p{i}", "training", 500) for i in range(10)]
    eta = Eta(RunEstimate(0.0, parts, {}, 1.0))
    eta.finished("fine-tune donor a (ce, 0.1 ms)", 166)
    assert 5000 < eta.left_s() < 1.3 * 5000
    for i in range(10):  # the run really is 2x slower: the scale gets there as the stages finish
        eta.finished(f"p{i}", 1000)
        if i == 4:
            assert eta.left_s() == pytest.approx(2500 * (5166 + 503.4) / (2534 + 503.4))


def test_a_family_adds_its_paths_training_and_its_pass(fashion_task):
    """--family (two budgets and more): measured untrained, trained (joint: one stage whose step costs every
    path's; frozen: one fine-tune per path), evaluated per path, written and timed in one pass."""
    from dery_deploy.deploy.bench import DEFAULT_SECONDS, WARMUP_S
    from dery_deploy.pipeline.estimate import EXPORT_ITEMS

    r = Recipe(epochs_adapter=1, epochs_full=2, batch=64)
    f = Recipe(epochs_adapter=1, epochs_full=2, batch=64, distill=0.5, distill_images=128)
    steps = {"a": 1e-3, "b": 3e-3}
    plan = Plan([0.2, 0.4], {"a": 0.1, "b": 0.3}, ["a", "b"], ["a", "b"], r, f, (1,), 1, 2, step_s=steps)
    n = len(fashion_task.train)
    plain = estimate(plan, fashion_task, item_s=0.5, after_s=0)
    joint = estimate(replace(plan, family="joint"), fashion_task, item_s=0.5, after_s=0)
    frozen = estimate(replace(plan, family="frozen"), fashion_task, item_s=0.5, after_s=0)
    added = [p for p in joint.parts if p not in plain.parts]
    assert [p.stage for p in added] == [
        "family: measure",
        "family: train",
        "evaluate family path",
        "evaluate family path",
        "write family",
    ]
    # under 0.2 ms a network costs donor a's step, under 0.4 ms the median of a's and b's: every step trains both
    assert added[1].seconds == pytest.approx(training_seconds(f, n, True, 1e-3 + 2e-3, 1e-3 + 2e-3))
    assert added[-1].seconds == pytest.approx(2 * (EXPORT_ITEMS * 0.5 + DEFAULT_SECONDS + WARMUP_S))
    tuned = [p for p in frozen.parts if p.stage == "family: fine-tune"]
    assert [p.seconds for p in tuned] == pytest.approx([training_seconds(f, n, True, s, s) for s in (1e-3, 2e-3)])
    assert joint.seconds > plain.seconds and "family" not in str(
        estimate(replace(plan, budgets=[0.2], family="joint"), fashion_task, 0.5, 0).parts
    )


def test_heals_expected_skipped_or_read_back_are_held_out(fashion_task):
    """At a budget where selection is expected to rule the mix out, its heal, evaluation and export are held out
    (three parts, in budget order), and the final pass compares no mix there. After the first budget that heals,
    a budget's best mix is expected to be that one, read back: its heal is held out alike, its mix compared."""
    r = Recipe(epochs_adapter=1, epochs_full=2, batch=64)
    plan = Plan(
        [0.15, 0.4], {"a": 0.1, "c": 0.2}, ["a", "c"], ["a", "c"], r, r, (1,), 2, 2, step_s={"a": 1e-3, "c": 2e-3}
    )
    full = estimate(plan, fashion_task, item_s=0.5, after_s=100)
    assert full.expected_unhealed == [] and full.expected_read_back == [0.4]
    assert [p.stage for p in full.held_out] == ["heal", "evaluate best mix", "export"]
    assert [p.stage for p in full.parts].count("heal") == 1
    assert full.line().endswith(
        "; not counting healing a mix again at 0.4 ms, where a smaller budget's is expected back)"
    )
    held = estimate(replace(plan, expected_unhealed=[0.4, 0.9]), fashion_task, item_s=0.5, after_s=100)
    assert held.expected_unhealed == [0.4] and held.expected_read_back == []  # (0.9 is no budget of this run)
    assert [p.stage for p in held.held_out] == ["heal", "evaluate best mix", "export"]
    assert held.held_out[0].seconds == full.held_out[0].seconds  # the 0.4 ms budget's own heal
    # exports: the pick's at each budget, the mix's only where it is healed
    assert [p.stage for p in full.parts].count("export") == [p.stage for p in held.parts].count("export")
    pairs = 2 * PAIR_ITEMS * 0.5  # the mix on each of the two targets in the final pass
    assert full.seconds - held.seconds == pytest.approx(pairs)
    assert "not counting healing a mix at 0.4 ms, where the donor the probe rates best fits (by probe" in held.line()
    both = replace(held, expected_read_back=[0.5])
    assert both.expected_line().endswith(
        "fits (by probe accuracy), nor healing a mix again at 0.5 ms, where a smaller budget's is expected back"
    )
    # the first budget ruled out: the next one heals, counted
    first = estimate(replace(plan, expected_unhealed=[0.15]), fashion_task, item_s=0.5, after_s=100)
    assert first.expected_read_back == [] and [p.stage for p in first.parts].count("heal") == 1
    # under --time-limit every heal is counted: its cuts must fit the run that heals at every budget
    limited = estimate(replace(plan, every_heal=True), fashion_task, item_s=0.5, after_s=100)
    assert limited.expected_read_back == [] and [p.stage for p in limited.parts].count("heal") == 2
