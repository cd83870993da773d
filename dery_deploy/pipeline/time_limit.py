"""`dery run --time-limit MINUTES`: the run fits what it does to the time a user gives, as AutoGluon's
`time_limit` and FLAML's `time_budget` fit their searches, and says what it cut.

Three points decide. While profiling, a target searched after the first is profiled only where, taking as long
as the one before, it ends within PROFILE_SHARE of the limit (the targets are the device spec's search list,
fastest-to-profile first; a user's --targets are kept). Once the profiles have timed the machine, the estimate
of the rest (`estimate.py`) is compared with the time left, and the cuts below are made in order, each re-
estimated, until the run fits with SAFETY to spare: one selection rung and two mixed finalists, selection on
the validation split alone, the quick recipe (seam matching, distillation and teacher images halved or less),
test accuracy on a stratified fifth of the test split, one epoch per phase, no distillation (so no teacher
candidates are trained), then the middle budget only (where the run chose its budgets). What was cut is said on
the terminal, recorded in run.json (`time_limit`) and stated beside the answer. Once the teacher candidates
are trained, and again once the donors are (then only selection and budgets: `LATE_CUTS`), the rest is
estimated again at the pace the training kept and cut further where it no longer fits (`refit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dery_deploy.pipeline.budgets import final_donors, teacher_pool
from dery_deploy.pipeline.estimate import Plan, RunEstimate, minutes

PROFILE_SHARE = 0.35  # of the limit, the profiles may use before further targets are left out
SAFETY = 0.85  # the rest must fit in this share of the time left (the estimate missed by up to ~15%)


def one_fold(plan: Plan) -> Plan | None:
    """Selection decided on the validation split alone, without cross-validation."""
    if plan.folds == 1:
        return None
    return replace(plan, folds=1)


def quick_recipes(plan: Plan) -> Plan | None:
    """The quick run's recipe: one seam-matching epoch on 4096 images, distillation on 1024 an epoch from a
    teacher pool of 4096."""
    f = plan.final
    quick = replace(f, match_epochs=min(f.match_epochs, 1), match_images=min(f.match_images, 4096))
    quick = replace(quick, distill_images=min(f.distill_images, 1024))
    if quick == f and plan.teacher_images <= 4096:
        return None
    return replace(plan, final=quick, teacher_images=min(plan.teacher_images, 4096))


def one_rung(plan: Plan) -> Plan | None:
    """Selection decided at one rung (every fold), over two mixed finalists."""
    if len(plan.rungs) == 1 and plan.finalists <= 2:
        return None
    return replace(plan, rungs=plan.rungs[:1], finalists=min(plan.finalists, 2))


def test_fifth(plan: Plan) -> Plan | None:
    """Test accuracy on a stratified fifth of the test split (the networks are unchanged; each figure's
    sampling error grows, about 0.9 points at 2,000 images)."""
    return None if plan.test_fifth else replace(plan, test_fifth=True)


def no_distillation(plan: Plan) -> Plan | None:
    """The final recipe without distillation, so no teacher candidates are trained."""
    if not plan.final.distill:
        return None
    return replace(plan, final=replace(plan.final, distill=0.0))


def one_epoch_each(plan: Plan) -> Plan | None:
    """One epoch per phase for every network trained."""
    ce, f = plan.ce, plan.final
    if max(ce.epochs_adapter, ce.epochs_full, f.epochs_adapter, f.epochs_full) <= 1:
        return None
    ce = replace(ce, epochs_adapter=min(ce.epochs_adapter, 1), epochs_full=min(ce.epochs_full, 1))
    f = replace(f, epochs_adapter=min(f.epochs_adapter, 1), epochs_full=min(f.epochs_full, 1))
    return replace(plan, ce=ce, final=f)


def middle_budget(plan: Plan) -> Plan | None:
    """The middle budget only (one the run chose itself: a user's budgets are kept)."""
    if len(plan.budgets) < 2 or not plan.budgets_chosen:
        return None
    b = [sorted(plan.budgets)[len(plan.budgets) // 2]]
    return replace(
        plan, budgets=b, teacher_pool=teacher_pool(plan.donor_ms, b), final_donors=final_donors(plan.donor_ms, b)
    )


CUTS: list[tuple[str, Callable[[Plan], Plan | None]]] = [
    ("selection at one rung over two mixed finalists", one_rung),
    ("selection on the validation split alone (no cross-validation)", one_fold),
    ("the quick recipe (1 seam-matching epoch, fewer distillation images)", quick_recipes),
    ("test accuracy on a stratified fifth of the test split", test_fifth),
    ("one epoch per training phase", one_epoch_each),
    ("no distillation (no teacher trained)", no_distillation),
    ("the middle budget only", middle_budget),
]


# once the donors are trained with the final recipe and evaluated on the test split, the recipe and the test
# split stay (a pick is compared with those donors as they were trained): only selection and budgets are cut
LATE_CUTS: list[tuple[str, Callable[[Plan], Plan | None]]] = [
    (what, cut) for what, cut in CUTS if cut in (one_rung, one_fold, middle_budget)
]


def fit_to_limit(
    plan: Plan,
    estimate_of: Callable[[Plan], RunEstimate],
    limit_s: float,
    elapsed_s: float,
    allowed: list[tuple[str, Callable[[Plan], Plan | None]]] = CUTS,
) -> tuple[Plan, RunEstimate, list[str]]:
    """The plan cut (`allowed`, in order) until its estimate fits the time left, its estimate, and what was
    cut, each with the seconds it saves by the estimate."""
    est = estimate_of(plan)
    cuts = []
    for what, cut in allowed:
        if est.seconds <= SAFETY * (limit_s - elapsed_s):
            break
        smaller = cut(plan)
        if smaller is None:
            continue
        new = estimate_of(smaller)
        if new.seconds >= est.seconds:
            continue  # nothing saved (e.g. selection already on the validation split alone)
        cuts.append(f"{what} (saves about {minutes(est.seconds - new.seconds)})")
        plan, est = smaller, new
    return plan, est, cuts


def paced(plan: Plan, pace: float) -> Plan:
    """The plan with its training seconds per image scaled by `pace`: how long the stages trained so far
    took against their estimate."""
    return replace(
        plan,
        step_s={n: s * pace for n, s in plan.step_s.items()},
        distill_s={n: s * pace for n, s in plan.distill_s.items()},
    )


def refit(
    plan: Plan,
    estimate_of: Callable[[Plan], RunEstimate],
    limit_s: float,
    elapsed_s: float,
    pace: float,
    allowed: list[tuple[str, Callable[[Plan], Plan | None]]] = CUTS,
) -> tuple[Plan, RunEstimate, list[str]]:
    """Once some of the run has trained (the teacher candidates; the donors): what is left of the plan
    re-estimated at the pace the training kept (`paced`; never faster than estimated) and cut further
    (`allowed`) where it no longer fits the time left (short runs' training took 1.5-1.8x its estimate, on
    this machine and on it made 4-6x slower). `estimate_of` gives the rest of the run from there. Returns
    the plan (its own seconds, not paced), its paced estimate and the cuts, as `fit_to_limit`."""
    pace = max(pace, 1.0)
    kept, est, cuts = fit_to_limit(paced(plan, pace), estimate_of, limit_s, elapsed_s, allowed)
    return replace(kept, step_s=plan.step_s, distill_s=plan.distill_s), est, cuts


def over_limit(minutes_: float | None, estimated_s: float | None, budgets_chosen: bool = False) -> str:
    """The sentence for a run whose estimate after every cut is still over its limit, or empty: it goes on
    (its budgets are the user's and its recipe is cut as far as it goes) and says so, rather than
    promising a time it will not keep (a three-budget run at 100 labels per class under --time-limit 30
    was estimated at 75 min after its cuts and took 57 min)."""
    if not minutes_ or not estimated_s or estimated_s <= 60 * minutes_:
        return ""
    fewer = "" if budgets_chosen else "fewer --budgets (or none: the run then keeps only the middle one), or "
    return (
        f"after every cut the run is estimated at {minutes(estimated_s)}, over the {minutes_:g}-min limit: it goes "
        f"on, and {fewer}a longer limit fits it"
    )


def keeps_profiling(limit_s: float | None, elapsed_s: float, last_s: float) -> bool:
    """Whether a further target's profile, taking as long as the last one did (`last_s`), ends within
    PROFILE_SHARE of the limit (module docstring)."""
    return limit_s is None or elapsed_s + last_s <= PROFILE_SHARE * limit_s
