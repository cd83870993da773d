"""Which targets selection need not search: a target the pick rule could never choose at any budget.

The pick (`pick.pick_triple`) ranks a budget's measured (network, target) triples by validation accuracy,
then full precision, then measured latency. One network has one selection accuracy on every fp32 target,
so between two fp32 targets the faster one wins that network; an int8 triple's accuracy is the network's
plus its own measured change on that runtime, known only once the network is trained and quantized. So
target A is dominated by target B at a budget when every network A's pool proposes there is in B's pool
too and B's triple is sure to win it: the same accuracy and a predicted latency lower by more than both
latency checks' largest errors, or (with int8 accuracy figures) a higher accuracy. The pools are the
program's own (the same top N, donors and few-seam chains the assembly proposes), so dropping A leaves
the networks selection trains unchanged: only A's triples, which lose, are not measured. A network a
smaller budget's finalists may carry into A's pool counts as one A proposes, never as one B surely does. In doubt (no
latency check, an int8 target without its accuracy figures, a margin inside the errors) a target is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dery_deploy.runtime.target import is_int8


@dataclass(frozen=True)
class TargetFigures:
    """What the run knows of one target before selection: its pool's networks at each budget with their
    predicted latency there (ms), the latency check's largest relative error (None: unchecked), and where
    the run has them, its measured int8 accuracy change per network (points; int8 targets only)."""

    target: str
    uncertainty: float | None
    pools: dict[float, dict[str, float]]
    int8_change: dict[str, float] | None = None
    # networks a smaller budget may carry into the pool (the run carries its finalists): ones this target may
    # propose, but another target is not sure to, so they count against this target and never for it
    carried: dict[float, dict[str, float]] = field(default_factory=dict)

    def proposes(self, budget: float) -> dict[str, float]:
        """Every network this target may propose at `budget`, with its predicted latency there."""
        return {**self.carried.get(budget, {}), **self.pools.get(budget, {})}


@dataclass
class DroppedTarget:
    """A target left out of selection: by which target at each budget, and why, with the figures."""

    target: str
    by: dict[str, str]  # budget (ms, as written) -> the target that dominates it there
    why: str


@dataclass
class TargetPruning:
    """Which targets were carried into selection and which were dropped as dominated at every budget (the
    rule in `pipeline/targets.py`); `kept_all` where --keep-all-targets asked for every target."""

    kept: list[str]
    dropped: list[DroppedTarget] = field(default_factory=list)
    budgets: list[float] = field(default_factory=list)
    kept_all: bool = False
    seconds: float = 0.0
    restored_at: list[float] = field(default_factory=list)  # budgets raised during the run: every target searched

    def lines(self) -> list[str]:
        """One sentence per dropped target, as the terminal and the report say it."""
        return [d.why for d in self.dropped]


@dataclass(frozen=True)
class Win:
    """How surely B's triple beats A's for one network: `margin_ms` is A's latency at its fastest less B's
    at its slowest (both within their checks' errors), None where accuracy decided it."""

    network: str
    a_ms: float
    b_ms: float
    margin_ms: float | None


def accuracy_of(t: TargetFigures, network: str) -> float | None:
    """The pick rule's accuracy of `network` on `t`, relative to the network's fp32 selection accuracy: 0 on
    fp32, the measured int8 change (a gain counted as none, as `score_triples` does) on int8, None unknown."""
    if not is_int8(t.target):
        return 0.0
    change = (t.int8_change or {}).get(network)
    return None if change is None else min(change, 0.0)


def sure_win(b: TargetFigures, a: TargetFigures, network: str, budget: float) -> Win | None:
    """B's triple for `network` beating A's under the pick rule whatever the measurement (within the
    latency checks' errors), or None where that is not sure."""
    a_ms, b_ms = a.proposes(budget)[network], b.pools[budget][network]
    acc_a, acc_b = accuracy_of(a, network), accuracy_of(b, network)
    if acc_a is None or acc_b is None:
        return None  # an int8 accuracy the run has not measured: never decided on latency alone
    if acc_b != acc_a:
        return Win(network, a_ms, b_ms, None) if acc_b > acc_a else None
    if is_int8(a.target) != is_int8(b.target):  # equal accuracy: full precision first
        return Win(network, a_ms, b_ms, None) if is_int8(a.target) else None
    if a.uncertainty is None or b.uncertainty is None:
        return None
    margin = a_ms * (1 - a.uncertainty) - b_ms * (1 + b.uncertainty)
    return Win(network, a_ms, b_ms, margin) if margin > 0 else None


def dominance(a: TargetFigures, b: TargetFigures, budget: float) -> list[Win] | None:
    """B's sure wins over every network A proposes at `budget`, or None where A is not dominated by B there.
    A target that proposes nothing at a budget cannot be picked there: any target that proposes something
    dominates it."""
    mine, theirs = a.proposes(budget), b.pools.get(budget, {})
    if not theirs or any(n not in theirs for n in mine):
        return None
    wins = [sure_win(b, a, n, budget) for n in sorted(mine)]
    return None if any(w is None for w in wins) else [w for w in wins if w is not None]


def dominated_targets(figures: list[TargetFigures], budgets: list[float]) -> TargetPruning:
    """The targets the pick rule could never choose: dominated at every budget by a target that is kept.

    The kept set starts with the targets some budget leaves undominated and grows until every dropped
    target is dominated, at every budget, by a kept one (a target dominated only by dropped ones is kept:
    with its dominator gone it could be chosen). Dominance at one budget is transitive (pools nest, margins
    add up), so the growing is a guard, not a case seen. Order is kept as given.
    """
    names = [f.target for f in figures]
    by_name = {f.target: f for f in figures}

    def dominators(a: str, budget: float) -> list[str]:
        return [b for b in names if b != a and dominance(by_name[a], by_name[b], budget) is not None]

    doms = {a: {bu: dominators(a, bu) for bu in budgets} for a in names}
    kept = {a for a in names if not budgets or any(not ds for ds in doms[a].values())}
    changed = True
    while changed:
        changed = False
        for a in names:
            if a not in kept and any(not set(ds) & kept for ds in doms[a].values()):
                kept.add(a)
                changed = True
    dropped = []
    for a in names:
        if a in kept:
            continue
        by = {f"{bu:g}": next(b for b in doms[a][bu] if b in kept) for bu in budgets}
        dropped.append(DroppedTarget(a, by, why_dropped(by_name[a], by_name, by, budgets)))
    return TargetPruning([n for n in names if n in kept], dropped, list(budgets))


def why_dropped(a: TargetFigures, by_name: dict[str, TargetFigures], by: dict[str, str], budgets: list[float]) -> str:
    """One sentence with the figures: at each budget, the target that dominates and its closest call."""
    parts = []
    for bu in budgets:
        b = by_name[by[f"{bu:g}"]]
        wins = dominance(a, b, bu) or []
        if not wins:
            parts.append(f"at {bu:g} ms it proposes nothing, {b.target} does")
            continue
        timed = [w for w in wins if w.margin_ms is not None]
        if not timed:
            parts.append(f"at {bu:g} ms {b.target} is more accurate on all {len(wins)} networks it proposes")
            continue
        w = min(timed, key=lambda w: w.margin_ms or 0.0)
        parts.append(
            f"at {bu:g} ms {b.target} has all {len(wins)} networks it proposes, faster by more than both latency "
            f"checks' errors (closest: {w.network} {w.a_ms:.4f} ms vs {w.b_ms:.4f} ms, errors "
            f"{100 * (a.uncertainty or 0):.1f}% and {100 * (b.uncertainty or 0):.1f}%)"
        )
    return f"{a.target} not searched in selection, dominated at every budget: " + "; ".join(parts)
