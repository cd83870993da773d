"""The target pool: what the program proposes for one target (backend/precision) under a budget, planned
with that target's latency model less its measured error, plus the networks carried from a smaller budget."""

from __future__ import annotations

from dataclasses import dataclass

from dery_deploy.assemble.candidates import Candidate, plan_from_description, pool_of
from dery_deploy.assemble.program import Budget, ProgramData, solve
from dery_deploy.data.task import Task
from dery_deploy.network.items import donor_key, plan_items
from dery_deploy.profile.latency_model import LatencyModel, budget_us, us_to_ms
from dery_deploy.runtime.target import Target

MAX_MARGIN = 0.15  # the most a plan is tightened for the latency model's error


def target_of(model: LatencyModel) -> str:
    """backend/precision (with /tN where the run searches several thread counts): what a profile, and so a
    latency model, measures."""
    return str(Target.of(model.profile, model.threads_named))


def planning_margin(model: LatencyModel) -> float:
    """How much a plan is tightened for the latency model's p90 under-prediction (0 without a latency check)."""
    check = model.profile.verify
    # capped: on a noisy machine one outlier of a 10-assembly check (seen: 45%) would make feasible budgets
    # infeasible; the finalists' end-to-end measurement, not the margin, is what keeps the budget
    return min(check.at(model.percentile)[3], MAX_MARGIN) if check else 0.0


def planned_budget(budget: Budget, model: LatencyModel) -> Budget:
    """The budget the program plans to on this target: the latency less `planning_margin`."""
    latency_ms = us_to_ms(budget.latency_us) / (1 + planning_margin(model))
    return Budget(budget_us(latency_ms), budget.memory_mb, budget.params)


@dataclass
class TargetPool:
    """What the program proposes for one target (backend/precision): its candidates and how it planned."""

    model: LatencyModel
    candidates: list[Candidate]
    solver: dict
    margin: float
    why_empty: str = ""


def target_pool(
    zoo,
    partition,
    dissections,
    model: LatencyModel,
    task: Task,
    data: ProgramData,
    budget: Budget,
    top: int,
    trained: frozenset[str] = frozenset(),
) -> TargetPool:
    """The program's top N under the budget less this target's planning margin, plus the donors that
    fit (`trained`: those the run trained to ship, admitted from further over) and the best one- and
    two-seam chains, all predicted with this target's latency model."""
    margin, planned = planning_margin(model), planned_budget(budget, model)
    donors = {}
    for n in zoo.donor_names:
        key = donor_key(zoo, n, task.num_classes)
        if key in model.profile.failed:  # the backend could not run it: no candidate
            continue
        params = sum(p.numel() for u in dissections[n].units for p in u.module.parameters())
        donors[n] = (model.predict_ms([key]), model.memory_mb([key]), params)
    res = solve(data, planned, top)
    solver = {
        "name": res.method,
        "status": res.status,
        "seconds_first": round(res.seconds_first, 4),
        "seconds_top": round(res.seconds, 4),
        "top": len(res.solutions),
        **res.extra,
    }
    cands = pool_of(data, partition, zoo, res.solutions, planned, budget, donors, task.num_classes, trained=trained)
    why = ""
    if not cands:
        why = res.infeasible_reason
        if margin:
            why += (
                f" (planned at {us_to_ms(planned.latency_us):g} ms: the budget less the latency model's "
                f"{100 * margin:.1f}% p90 under-prediction)"
            )
    for c in cands:
        c.target = target_of(model)
    return TargetPool(model, cands, solver, margin, why)


def carried_candidates(
    pool: TargetPool, carried: tuple[str, ...], zoo, partition, dissections, task: Task, budget: Budget
) -> list[Candidate]:
    """The carried networks this target's pool lacks, where they fit its planned budget."""
    have = {c.name for c in pool.candidates}
    out = []
    for name in carried:
        if name in have:
            continue
        plan = plan_from_description(name, zoo, partition, task.num_classes)
        if plan is None:
            continue
        keys = plan_items(plan, zoo, dissections)
        ms = pool.model.predict_ms(keys)
        if pool.model.predict_us(keys) > budget.latency_us:
            continue
        params = sum(p.numel() for b in plan.blocks for p in dissections[b.donor].block(b.start, b.end).parameters())
        c = Candidate(plan, ms, params, pool.model.memory_mb(keys), None, "carried")
        c.target = target_of(pool.model)
        out.append(c)
    return out
