"""The evidence a selection rests on and what it decides: a finalist's held-out images at a rung,
pooled over the folds it trained (`Evidence`), the paired noise of two finalists on the same images,
and the pick (`decide`) written as `Selection`, the `selection` of selection.json and plan.json.

The pick is the best donor unless the best mixed plan beats it by more than the noise: twice the
standard error of the paired accuracy difference on the same images, sqrt(b + c - (b - c)^2 / n) / n
with b, c the images only one of the two gets right (a McNemar-style paired test at about 95%).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dery_deploy.errors import DeryError


@dataclass
class Finalist:
    name: str
    source: dict  # what finetune trains: {"plan": ..., "adapter_weights": ...}
    is_donor: bool
    measured_ms: float | None = None


@dataclass
class Trial:
    """One unit of work: a finalist trained at a rung on one fold's train split, scored on its held-out images."""

    finalist: str
    rung: int
    val_accuracy: float
    seconds: float
    worker: str
    fold: int = 0
    # "0"/"1" per held-out image, for the paired test (written to the study, not to selection.json: the
    # pooled evidence has it, so a fold trial read back from there has none)
    correct: str = ""


@dataclass
class Evidence:
    """A finalist at a rung over every fold that rung trains: its accuracy on all their held-out images."""

    finalist: str
    rung: int
    val_accuracy: float  # out of fold, %
    correct: str  # "0"/"1" per held-out image, fold after fold: the same images in the same order for every finalist
    seconds: float
    folds: list[int] = field(default_factory=lambda: [0])
    workers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, trials: list[Trial]) -> Evidence:
        correct = "".join(t.correct for t in trials)
        return cls(
            trials[0].finalist,
            trials[0].rung,
            round(100 * correct.count("1") / max(1, len(correct)), 3),
            correct,
            round(sum(t.seconds for t in trials), 2),
            [t.fold for t in trials],
            sorted({t.worker for t in trials}),
        )


@dataclass
class Selection:
    pick: str  # the finalist's name
    rule: str  # why it was picked, in words
    best_donor: str | None
    best_mix: str | None
    difference: float | None  # best mix - best donor out of fold, points
    noise: float | None  # the threshold the difference had to beat, points
    trials: list[Evidence] = field(default_factory=list)  # per (finalist, rung), pooled over its folds
    study: str = ""
    storage: str = "memory"
    folds: int = 1  # k of the cross-validation the last rung decides on (1: the task's validation split)
    images: int | None = None  # held-out images the pick's comparison rests on
    fold_trials: list[Trial] = field(default_factory=list)  # every (finalist, rung, fold) trained

    def to_dict(self) -> dict[str, Any]:
        """selection.json's `selection`; its key order is not the fields' (it predates `folds` and
        `images`), and a fold trial leaves out its per-image `correct` (the pooled evidence has it)."""
        return {
            "pick": self.pick,
            "rule": self.rule,
            "best_donor": self.best_donor,
            "best_mix": self.best_mix,
            "difference": self.difference,
            "noise": self.noise,
            "folds": self.folds,
            "images": self.images,
            "study": self.study,
            "storage": self.storage,
            "trials": [asdict(t) for t in self.trials],
            "fold_trials": [{k: v for k, v in asdict(t).items() if k != "correct"} for t in self.fold_trials],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selection:
        """The inverse of `to_dict`; a fold trial read back has an empty `correct` (it was not written)."""
        return cls(
            d["pick"],
            d["rule"],
            d["best_donor"],
            d["best_mix"],
            d["difference"],
            d["noise"],
            [Evidence(**t) for t in d["trials"]],
            d["study"],
            d["storage"],
            d["folds"],
            d["images"],
            [Trial(**t) for t in d["fold_trials"]],
        )


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
