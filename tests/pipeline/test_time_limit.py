"""--time-limit: what a run cuts, in which order, to fit the time a user gives it."""

from dataclasses import replace

import pytest

from dery_deploy.errors import DeryError
from dery_deploy.pipeline.estimate import Plan, estimate
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.time_limit import fit_to_limit, keeps_profiling, over_limit
from dery_deploy.train.recipe import Recipe


def default_plan(chosen: bool = True) -> Plan:
    ce = Recipe(epochs_adapter=4, epochs_full=6, plateau=0.02)
    final = replace(ce, match_epochs=4, match_images=8192, distill=0.5, distill_images=4096)
    donors = {"a": 0.1, "b": 0.2, "c": 0.4}
    return Plan(
        [0.09, 0.15, 0.3], donors, ["a", "b", "c"], ["a", "b", "c"], ce, final, (1, 2), 3, 4,
        step_s={"a": 1e-3, "b": 2e-3, "c": 4e-3}, budgets_chosen=chosen,
    )  # fmt: skip


def test_nothing_is_cut_when_the_run_fits(fashion_task):
    plan = default_plan()
    full = estimate(plan, fashion_task, 0.4, 100).seconds
    kept, est, cuts = fit_to_limit(plan, lambda p: estimate(p, fashion_task, 0.4, 100), 100 + 2 * full, 100)
    assert cuts == [] and kept == plan and est.seconds == full


def test_cuts_come_in_order_until_the_estimate_fits(fashion_task):
    plan = default_plan()

    def of(p):
        return estimate(p, fashion_task, 0.4, 100)

    full = of(plan).seconds
    kept, est, cuts = fit_to_limit(plan, of, 100 + 0.5 * full, 100)
    assert cuts and cuts[0].startswith("selection at one rung") and est.seconds < full
    assert est.seconds <= 0.85 * 0.5 * full or len(cuts) == 4
    assert kept.rungs == (1,) and kept.finalists == 2
    # a limit nothing fits: every cut is made, each saving time, and the run is told its estimate
    kept, est, cuts = fit_to_limit(plan, of, 101, 100)
    assert [c.split(" (saves")[0] for c in cuts] == [
        "selection at one rung over two mixed finalists",
        "selection on the validation split alone (no cross-validation)",
        "the quick recipe (1 seam-matching epoch, fewer distillation images)",
        "test accuracy on a stratified fifth of the test split",
        "one epoch per training phase",
        "no distillation (no teacher trained)",
        "the middle budget only",
    ]
    assert kept.budgets == [0.15] and kept.final.epochs_full == 1 and kept.final.match_epochs == 1
    assert kept.teacher_images == 4096 and est.seconds < of(replace(plan, budgets=[0.15])).seconds
    # a user's budgets are never cut
    kept, est, cuts = fit_to_limit(default_plan(chosen=False), of, 101, 100)
    assert kept.budgets == [0.09, 0.15, 0.3] and len(cuts) == 6
    # still over the limit after every cut: the run says so, with the way to fit it, instead of a silent overrun
    over = over_limit(101 / 60, 100 + est.seconds)
    assert "over the 1.68333-min limit" in over and "fewer --budgets" in over and "longer limit" in over
    assert "fewer --budgets" not in over_limit(101 / 60, 100 + est.seconds, budgets_chosen=True)
    assert over_limit(30, 29 * 60) == "" and over_limit(None, 1e6) == ""


def test_without_distillation_no_teacher_candidate_is_trained_and_a_test_fifth_costs_a_fifth(fashion_task):
    from dery_deploy.pipeline.time_limit import no_distillation, test_fifth

    plan = default_plan()
    full = estimate(plan, fashion_task, 0.4, 100)
    plain = estimate(no_distillation(plan), fashion_task, 0.4, 100)
    assert any(" (ce" in p.stage for p in full.parts) and not any(" (ce" in p.stage for p in plain.parts)
    assert no_distillation(no_distillation(plan)) is None and no_distillation(plan).final.distill == 0.0

    def evaluation(p):
        return sum(q.seconds for q in estimate(p, fashion_task, 0.4, 100).parts if q.group == "evaluation")

    assert evaluation(test_fifth(plan)) == pytest.approx(evaluation(plan) / 5, rel=1e-3)
    # the task's test split, cut the same way: a stratified fifth, every class kept in proportion, said
    fifth = fashion_task.with_test_fifth()
    assert len(fifth.test) == len(fashion_task.test) // 5 and fifth.train is fashion_task.train
    counts = fifth.test.targets.bincount(minlength=10)
    assert counts.min() == counts.max() == len(fashion_task.test) // 50
    assert "a stratified fifth" in fifth.notes[-1] and fifth.hash() != fashion_task.hash()


def test_selection_on_the_validation_split_alone_saves_its_folds_and_is_skipped_where_it_saves_nothing(
    fashion_task,
):
    from dery_deploy.train.select.halving import default_folds

    def of(p):
        return estimate(p, fashion_task, 0.4, 100)

    # the first cut already made; training slow enough that the finalists' measurement pass is negligible
    plan = replace(default_plan(), rungs=(1,), finalists=2, step_s={"a": 1.0, "b": 2.0, "c": 4.0})
    assert default_folds(fashion_task) == 5
    one = replace(plan, folds=1)
    selection = sum(p.seconds for p in of(plan).parts if p.group == "selection")
    single = sum(p.seconds for p in of(one).parts if p.group == "selection")
    # five folds' trials at the last rung, each on 4/5 of train + validation, against one on train: 5x
    assert 4.5 < selection / single < 5.1
    kept, _, cuts = fit_to_limit(one, of, 101, 100)
    assert kept.folds == 1 and not any(c.startswith("selection on the validation") for c in cuts)


def test_a_further_target_is_profiled_only_while_it_fits_its_share():
    assert keeps_profiling(None, 10_000, 10_000)
    assert keeps_profiling(600, 100, 100)  # 200 s of 600: within 35%
    assert not keeps_profiling(600, 150, 100)  # 250 s would be over 210


def test_a_bad_time_limit_is_refused_before_any_work():
    with pytest.raises(DeryError, match="--time-limit must be a positive number of minutes, got -1"):
        RunOptions(time_limit=-1).check()


def test_the_rest_is_cut_again_when_the_first_trainings_ran_slower_than_estimated(fashion_task):
    from dery_deploy.pipeline.time_limit import refit

    def of(p):
        return estimate(p, fashion_task, 0.4, 100)

    plan = default_plan()
    full = of(plan).seconds
    limit = 100 + full / 0.85 + 1  # fits, just, at the estimated pace
    kept, _, cuts = refit(plan, of, limit, 100, pace=0.7)  # faster than estimated: never a reason to add
    assert cuts == [] and kept == plan
    kept, est, cuts = refit(plan, of, limit, 100, pace=2.0)
    assert cuts and cuts[0].startswith("selection at one rung") and est.seconds <= 0.85 * (limit - 100)
    # the plan keeps this machine's timed seconds; only its estimate is paced
    assert kept.step_s == plan.step_s and kept.rungs == (1,)
    assert est.seconds > of(kept).seconds


def test_once_the_donors_are_trained_only_selection_and_budgets_are_cut(fashion_task):
    from dery_deploy.pipeline.time_limit import LATE_CUTS, refit

    def of(p):
        return estimate(p, fashion_task, 0.4, 100)

    plan = default_plan()
    kept, _, cuts = refit(plan, of, 101, 100, pace=3.0, allowed=LATE_CUTS)
    assert [c.split(" (saves")[0] for c in cuts] == [
        "selection at one rung over two mixed finalists",
        "selection on the validation split alone (no cross-validation)",
        "the middle budget only",
    ]
    # the recipe the donors were trained with, and the test split they were evaluated on, stay
    assert kept.final == plan.final and kept.ce == plan.ce and not kept.test_fifth and kept.budgets == [0.15]
