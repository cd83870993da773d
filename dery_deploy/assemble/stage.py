"""The assemble stage: partition + profile + task + budget -> candidates -> measured finalists.

1. The program (exact DP certified by CP-SAT) finds the top-N chains by the task-aware quality
   estimate (`quality.py`) under the budget less the latency model's measured error (a margin, so
   finalists rarely fail their measurement).
2. The pool adds every donor that fits (zero seams) and the best one- and two-seam chains (`pool.py`).
3. Every candidate is built with least-squares adapters and scored by the proxy on labelled images.
4. The best by proxy (and every donor that fits) are the finalists: each is built and measured end to
   end on the plan's device with the profile's backend, precision and batch; those whose measured
   median is over the budget are dropped (`measure.py`).
The finalists go to selection by evidence (`train/select/`); without it, the best by proxy is the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dery_deploy.assemble.candidates import AdapterFitter, Candidate, score_networks
from dery_deploy.assemble.measure import keep_within_budget, measure_finalists
from dery_deploy.assemble.pool import MAX_MARGIN, TargetPool, carried_candidates, target_of, target_pool
from dery_deploy.assemble.program import Budget, fastest
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.assemble.search_optuna import optuna_search
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError
from dery_deploy.network.items import plan_items
from dery_deploy.network.plan import Plan
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.latency_model import LatencyModel, budget_us
from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.devices import get_device

# Labelled images each proxy scores on: NASWOT / ZiCo use one small batch as in their papers; the
# linear probe needs enough samples per class for its leave-one-out estimate.
PROXY_IMAGES = {"naswot": 64, "zico": 64, "probe": 500}
FINALISTS = 4  # mixed finalists measured (every donor that fits is a finalist too)


@dataclass
class AssembleResult:
    plan: Plan  # the best finalist by proxy (selection by evidence may pick another)
    candidates: list[Candidate]
    finalists: list[Candidate]
    solver: dict
    margin: float
    rejected: list[Candidate] = field(default_factory=list)  # finalists whose measurement was over budget

    @property
    def net(self):
        return next(c.net for c in self.finalists if c.plan is self.plan)


def memory_check(model: LatencyModel, memory_mb: float | None) -> None:
    """Refuse a memory budget where the profile's backend cannot measure memory."""
    if memory_mb is None:
        return
    if not memory_mb > 0:
        raise DeryError(f"--memory-mb must be > 0, got {memory_mb}", "assemble")
    device = "cuda" if get_device(model.profile.device).kind == "cuda" else "cpu"
    why = get_backend(model.profile.backend).memory_unmeasurable(device)
    unmeasured = [k for k, r in model.profile.records.items() if r.peak_memory_mb is None]
    if why or unmeasured:
        raise DeryError(
            "--memory-mb cannot be promised with this profile: "
            + (why or f"{len(unmeasured)} items have no memory measurement"),
            "assemble",
        )


def assemble(
    zoo,
    partition: Partition,
    dissections: dict[str, Dissection],
    model: LatencyModel,
    task: Task,
    latency_ms: float,
    memory_mb: float | None = None,
    params_m: float | None = None,
    top: int = 10,
    proxy: str = "probe",
    search: str = "cpsat",
    seed: int = 0,
    progress=None,
    fitter: AdapterFitter | None = None,
    scores: Scores | None = None,
    finalists: int = FINALISTS,
    measure: bool = True,
    measurements: Callable[[list[Candidate]], dict[str, dict] | str] | None = None,
    more_models: tuple[LatencyModel, ...] = (),
    carried: tuple[str, ...] = (),
) -> AssembleResult:
    """Candidates for one budget, scored and measured (see the module docstring).

    Args:
        measurements: how the finalists are measured (default: `measure_finalists` here); a shared
            selection passes one that measures once for every process (`train.select.shared_once`).
        more_models: latency models of further targets (backend/precision) on the same device: the
            program proposes candidates for each, and a finalist is a (network, target) pair.
        carried: networks (plan descriptions) that were finalists at a smaller budget of the same run;
            they stay candidates and finalists wherever they fit, so more room never loses them.
    """
    if not latency_ms > 0:
        raise DeryError(f"latency budget must be > 0 ms, got {latency_ms:g}", "assemble")
    models = [model, *more_models]
    for m in models:
        memory_check(m, memory_mb)
    if params_m is not None and not params_m > 0:
        raise DeryError(f"--params-m must be > 0, got {params_m}", "assemble")
    if search not in ("cpsat", "optuna"):
        raise DeryError(f"--search must be cpsat or optuna, got {search!r}", "assemble")
    fitter = fitter or AdapterFitter.for_task(dissections, task)
    scores = scores or Scores.compute(dissections, task, partition, fitter)
    params = None if params_m is None else int(params_m * 1e6)
    budget = Budget(budget_us(latency_ms), memory_mb, params)
    images, labels = task.labelled_sample(PROXY_IMAGES.get(proxy, 64), seed=seed)
    t0 = time.perf_counter()
    pools = []
    for m in models:
        data = program_data(zoo, partition, dissections, m, task.num_classes, scores)
        if search == "optuna" and m is model and not more_models:
            check = m.profile.verify
            margin = min(check.at(m.percentile)[3], MAX_MARGIN) if check else 0.0
            planned = Budget(budget_us(latency_ms / (1 + margin)), memory_mb, params)
            cands, solver = optuna_search(
                data, zoo, partition, dissections, fitter, proxy, images, labels, planned, top, seed, task.num_classes
            )
            f = fastest(data, planned)
            why = (
                f"no assembly meets {planned.describe()}"
                + (f"; the fastest assembly is predicted at {f.latency_ms:.4f} ms" if f else "")
                if not cands
                else ""
            )
            for c in cands:
                c.target = target_of(m)
            pools.append(TargetPool(m, cands, solver, margin, why))
        else:
            pools.append(target_pool(zoo, partition, dissections, m, task, data, budget, top))
        pools[-1].candidates += carried_candidates(pools[-1], carried, zoo, partition, dissections, task, budget)
    cands = [c for p in pools for c in p.candidates]
    if not cands:
        raise DeryError("; ".join(dict.fromkeys(p.why_empty for p in pools)) + "; raise the budget", "assemble")
    if search == "cpsat" or more_models:
        score_networks(cands, zoo, dissections, fitter, proxy, images, labels, progress)
    seconds = time.perf_counter() - t0
    cands.sort(key=lambda c: (-c.proxy, c.name, c.target))
    ranked = list(dict.fromkeys(c.name for c in cands if not c.is_donor))
    chosen = set(ranked[:finalists]) | {n for n in carried if n in ranked}
    final = [c for c in cands if c.is_donor or c.name in chosen]
    if not measure:
        measured: dict[str, dict] | str = "measurement switched off"
    else:
        measured = (measurements or (lambda f: measure_finalists(f, models, zoo, progress)))(final)
    why_not = measured if isinstance(measured, str) else None
    kept, rejected = keep_within_budget(final, measured, latency_ms, model)
    kept.sort(key=lambda c: (-c.proxy, c.name, c.target))
    best = kept[0]
    by_target = {target_of(p.model): p for p in pools}
    for c in cands:
        pool = by_target[c.target]
        finish_plan(
            c.plan,
            c,
            pool.model,
            zoo,
            dissections,
            task,
            latency_ms,
            memory_mb,
            params_m,
            proxy,
            pool.solver,
            seconds,
            partition,
            pool.margin,
        )
    first = pools[0]
    return AssembleResult(
        best.plan,
        cands,
        kept,
        {
            **first.solver,
            "targets": {target_of(p.model): {**p.solver, "margin": p.margin} for p in pools},
            "measured": why_not or "end to end on the device, in one interleaved pass",
            "finalists": len(final),
            "rejected_over_budget": len(rejected),
            "near_budget": sorted(c.key for c in final if c.measured.get("near_budget")),
        },
        first.margin,
        rejected,
    )


def finish_plan(
    plan: Plan,
    c: Candidate,
    model: LatencyModel,
    zoo,
    dissections,
    task: Task,
    latency_ms: float,
    memory_mb,
    params_m,
    proxy: str,
    solver: dict,
    seconds: float,
    partition: Partition,
    margin: float,
) -> None:
    """Fill a candidate's plan with what it was made under: device, budget, predictions, measurement."""
    check = model.profile.verify
    prof = model.profile
    plan.predicted = {
        "latency_ms": model.predict_ms(plan_items(plan, zoo, dissections)),
        "memory_mb": c.memory_mb,
        "params_m": round(c.params / 1e6, 4),
        "latency_model": {
            "speed": model.speed,
            "scale": model.scale,
            "percentile": model.percentile,
            "median_rel_error": check.at(model.percentile)[1] if check else None,
            "max_rel_error": check.at(model.percentile)[2] if check else None,
            "planning_margin": round(margin, 4),
        },
        "reference_ms": model.reference_ms(),
    }
    plan.measured = dict(c.measured)
    plan.device, plan.backend, plan.precision, plan.batch = prof.device, prof.backend, prof.precision, prof.batch
    plan.threads = prof.threads
    plan.budget = {
        "latency_ms": latency_ms,
        "percentile": model.percentile,
        "memory_mb": memory_mb,
        "params_m": params_m,
    }
    plan.task = {"spec": task.spec, "hash": task.hash(), "classes": task.classes}
    plan.proxy = {"name": proxy, "score": c.proxy, "stitch_errors": [round(e, 4) for e in c.stitch_errors]}
    plan.solver = {
        **solver,
        "quality": c.quality,
        "origin": c.origin,
        "search_seconds": round(seconds, 3),
        "partition_key": partition.key,
    }
