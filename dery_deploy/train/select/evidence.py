"""The evidence a selection rests on and what it decides: a finalist's held-out images at a rung,
pooled over the folds it trained (`Evidence`), the paired noise of two finalists on the same images,
and the pick (`decide`) written as `Selection`, the `selection` of selection.json and plan.json (the
records are in `network.plan_records`, where the plan that embeds them can read them).

The pick is the best donor unless the best mixed plan beats it by more than the noise: twice the
standard error of the paired accuracy difference on the same images, sqrt(b + c - (b - c)^2 / n) / n
with b, c the images only one of the two gets right (a McNemar-style paired test at about 95%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dery_deploy.errors import DeryError

# the records a selection writes live beside the plan that embeds them (a plan records how it was picked)
from dery_deploy.network.plan_records import Evidence as Evidence
from dery_deploy.network.plan_records import Selection as Selection
from dery_deploy.network.plan_records import Trial as Trial
from dery_deploy.train.source import FinetuneSource


@dataclass
class Finalist:
    name: str
    source: FinetuneSource  # what finetune trains: a plan (a whole donor's too) and its adapter weights
    is_donor: bool
    measured_ms: float | None = None


def paired_noise(a: str, b: str) -> float:
    """Twice the standard error (points) of the accuracy difference of two models on the same images."""
    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    only_b = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")
    var = only_a + only_b - (only_a - only_b) ** 2 / n
    return 2 * 100 * math.sqrt(max(var, 0.0)) / n


# The pick rule and its sentences; the pipeline's `pick_triple` (pipeline/pick.py) states the same rule
# and sentences again over the measured triples: one definition is for the pipeline's owner to make
# (issue 25, point 5).
def evidence_words(folds: int) -> str:
    """Where the evidence of a pick was scored, in the words the rule prints."""
    return "on validation" if folds <= 1 else f"out of fold ({folds}-fold cross-validation)"


def pick_rule(diff: float | None, noise: float, on: str, donor: bool, mix: bool) -> tuple[str, str]:
    """The one pick rule: the best donor unless the best mixed plan beats it by more than the noise of
    their difference (`diff`, mixed minus donor, in points, `on` the evidence's words).

    Returns:
        ("mix" or "donor", the sentence that says why).
    """
    if not donor:
        return "mix", f"no donor fits the budget: the best mixed plan {on}"
    if not mix or diff is None:
        return "donor", f"no mixed plan is a finalist: the best donor {on}"
    if diff > noise:
        return "mix", f"the mixed plan beats the best donor {on} by {diff:.2f} points, more than the noise {noise:.2f}"
    if abs(diff) < 0.005:
        return "donor", f"the best donor: the best mixed plan ties it {on}"
    if diff >= -noise:
        return (
            "donor",
            f"the best donor: the best mixed plan differs by {diff:+.2f} points {on}, within the noise {noise:.2f}",
        )
    return "donor", f"the best donor: the best mixed plan is {-diff:.2f} points worse {on}"


def decide(
    finalists: list[Finalist], done: dict[tuple[str, int], Evidence], rungs, study: str, where: str
) -> Selection:
    """The pick from the evidence at the last rung: the best donor unless the best mixed plan beats it
    beyond the noise of their paired difference on the same held-out images."""
    last = len(rungs) - 1
    kinds = {f.name: f.is_donor for f in finalists}

    def best(donor: bool) -> Evidence | None:
        at = [e for (n, r), e in done.items() if r == last and kinds[n] == donor]
        return max(at, key=lambda e: (e.val_accuracy, e.finalist), default=None)

    d, m = best(True), best(False)
    trials = sorted(done.values(), key=lambda e: (e.rung, -e.val_accuracy, e.finalist))
    some = d or m
    if some is None:
        raise DeryError("selection finished without a result at its last rung", "select")
    on = evidence_words(len(some.folds))
    images = len(some.correct)

    def chosen(pick: str, rule: str, diff: float | None = None, noise: float | None = None) -> Selection:
        names = (d.finalist if d else None, m.finalist if m else None)
        return Selection(pick, rule, *names, diff, noise, trials, study, where, images=images)

    if d is None or m is None:
        return chosen(some.finalist, pick_rule(None, 0.0, on, d is not None, m is not None)[1])
    diff, noise = m.val_accuracy - d.val_accuracy, paired_noise(m.correct, d.correct)
    kind, rule = pick_rule(diff, noise, on, True, True)
    return chosen((m if kind == "mix" else d).finalist, rule, round(diff, 3), round(noise, 3))
