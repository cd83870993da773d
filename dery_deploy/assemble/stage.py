"""The assemble stage: partition + profile + task + budget -> candidates -> measured finalists.

1. The program (exact DP certified by CP-SAT) finds the top-N chains by the task-aware quality
   estimate (`quality.py`) under the budget less the latency model's measured error (a margin, so
   finalists rarely fail their measurement).
2. The pool adds every donor that fits (zero seams) and the best one- and two-seam chains.
3. Every candidate is built with least-squares adapters and scored by the proxy on labelled images.
4. The best by proxy (and every donor that fits) are the finalists: each is built and measured end to
   end on the plan's device with the profile's backend, precision and batch; those whose measured
   median is over the budget are dropped.
The finalists go to selection by evidence (`train/select/`); without it, the best by proxy is the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dery_deploy.assemble.candidates import (
    AdapterFitter,
    Candidate,
    plan_from_description,
    pool_of,
    score_networks,
)
from dery_deploy.assemble.program import UNAVAILABLE_US, Budget, ProgramData, fastest, quality_int, solve
from dery_deploy.assemble.quality import SEAM_POINTS, seam_errors, transferability
from dery_deploy.assemble.search_optuna import optuna_search
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError
from dery_deploy.network.adapters import Adapter
from dery_deploy.network.items import adapter_key, block_key, donor_key, head_key, plan_items
from dery_deploy.network.plan import Plan
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.latency_model import LatencyModel, budget_us, us_to_ms
from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.devices import get_device, this_machine
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.measure import measure_across
from dery_deploy.runtime.target import Target

# Labelled images each proxy scores on: NASWOT / ZiCo use one small batch as in their papers; the
# linear probe needs enough samples per class for its leave-one-out estimate.
PROXY_IMAGES = {"naswot": 64, "zico": 64, "probe": 500}
FINALISTS = 4  # mixed finalists measured (every donor that fits is a finalist too)


@dataclass
class Scores:
    """Task-aware quality terms, computed once per (task, partition): transferability of every
    (donor, boundary) and the stitch error of every seam the partition allows."""

    transfer: dict[tuple[str, int], float]
    seams: dict[tuple[str, int, str, int], float]

    @classmethod
    def compute(
        cls, dissections: dict[str, Dissection], task: Task, partition: Partition, fitter: AdapterFitter
    ) -> Scores:
        return cls(transferability(dissections, task), seam_errors(dissections, partition, fitter.features))


def program_data(
    zoo, partition: Partition, dissections: dict[str, Dissection], model: LatencyModel, num_classes: int, scores: Scores
) -> ProgramData:
    """Index the partition's blocks and adapters with their profiled cost and their quality."""
    sets, failed = partition.sets, model.profile.failed

    # an item the backend could not build or run (the profile's `failed`) is unavailable: a latency no budget
    # admits, and no memory known, so a memory budget excludes it as well
    def peak(key: str) -> float | None:
        if key in failed:
            return None
        model.require([key])
        return model.profile.records[key].peak_memory_mb

    def cost_us(key: str) -> int:
        return UNAVAILABLE_US if key in failed else model.cost_us(key)

    options = [[b.donor for b in s.blocks] for s in sets]
    block_us, block_params, block_mem = [], [], []
    for s in sets:
        keys = [block_key(zoo, b.donor, b.start, b.end, dissections[b.donor].boundary_spec(b.start)) for b in s.blocks]
        block_us.append([cost_us(k) for k in keys])
        block_mem.append([peak(k) for k in keys])
        block_params.append(
            [sum(p.numel() for p in dissections[b.donor].block(b.start, b.end).parameters()) for b in s.blocks]
        )
    adapter_us, adapter_params, adapter_mem, stitch_q = [], [], [], []
    for k in range(len(sets) - 1):
        lat, ps, mm, q = {}, {}, {}, {}
        for ia, a in enumerate(sets[k].blocks):
            for ib, b in enumerate(sets[k + 1].blocks):
                if a.donor == b.donor:
                    continue
                src, dst = dissections[a.donor].boundary_spec(a.end), dissections[b.donor].boundary_spec(b.start)
                key = adapter_key(src, dst)
                lat[(ia, ib)], mm[(ia, ib)] = cost_us(key), peak(key)
                ps[(ia, ib)] = sum(p.numel() for p in Adapter(src, dst).parameters())
                q[(ia, ib)] = quality_int(-SEAM_POINTS * scores.seams[(a.donor, a.end, b.donor, b.start)])
        adapter_us.append(lat)
        adapter_params.append(ps)
        adapter_mem.append(mm)
        stitch_q.append(q)
    head_us, head_params, end_q = [], [], []
    for b in sets[-1].blocks:
        src = dissections[b.donor].boundary_spec(b.end)
        head_us.append(cost_us(head_key(src, num_classes)))
        head_params.append(src.channels * (num_classes + 2) + num_classes)
        end_q.append(quality_int(scores.transfer[(b.donor, b.end)]))
    block_q = [[0] * len(o) for o in options]
    return ProgramData(
        options,
        block_us,
        block_params,
        block_mem,
        adapter_us,
        adapter_params,
        adapter_mem,
        head_us,
        head_params,
        model.base_us(),
        block_q,
        stitch_q,
        0,
        end_q,
    )


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


def target_of(model: LatencyModel) -> str:
    """backend/precision: what a profile, and so a latency model, measures."""
    return str(Target.of(model.profile))


def measure_finalists(
    finalists: list[Candidate], models: LatencyModel | list[LatencyModel], zoo, progress=None
) -> dict[str, dict] | str:
    """Measure every finalist (network, target) pair end to end in one interleaved pass on this machine,
    each with its target's backend, precision, batch and threads, at the models' per-call percentile.

    Returns:
        pair key (`Candidate.key`) -> its measurement, or why it could not be measured here (another device).
    """
    models = models if isinstance(models, list) else [models]
    by_target = {target_of(m): m for m in models}
    first = models[0]
    spec = get_device(first.profile.device)
    if spec.id not in {s.id for s in this_machine()}:
        return f"this machine is not {spec.id}: finalists are not measured, only predicted"
    device = "cuda" if spec.kind == "cuda" else "cpu"
    backends = {t: get_backend(m.profile.backend, m.profile.threads) for t, m in by_target.items()}
    x = torch.randn(first.profile.batch, *zoo.input_tensor_spec.shape, generator=torch.Generator().manual_seed(0))
    builds = {
        c.key: (backends[c.target or target_of(first)], (by_target.get(c.target) or first).profile.precision,
                (lambda c=c: (c.net, x)))
        for c in finalists
    }  # fmt: skip
    measured, passes = measure_across(
        builds, device, TimingOptions.for_budget(first.percentile), progress=progress, label="measure finalists"
    )
    noise_index = passes[0].noise_index if passes else None
    busy = next((p.load_line() for p in passes if p.busy), "")
    out = {}
    for c in finalists:
        m = by_target.get(c.target) or first
        t = measured[c.key].timing
        out[c.key] = {
            # admitted by the statistic the shipped file is judged by: the per-call percentile over all calls
            "latency_ms": round(t.promise_at(m.percentile), 5),
            "percentile": m.percentile,
            "uncertainty": round(t.promise_uncertainty_at(m.percentile), 5),
            "quiet_ms": round(t.at(m.percentile), 5),
            "median_ms": round(t.median_ms, 5),
            "p90_ms": round(t.p90_ms, 5),
            "p99_ms": round(t.p99_ms, 5),
            "stable": t.stable,
            "noise": round(t.noise, 4),
            "pass_noise_index": noise_index,
            "pass_busy": busy,
            "backend": m.profile.backend,
            "precision": m.profile.precision,
            "batch": m.profile.batch,
            "threads": m.profile.threads,
            "device": spec.id,
        }
    return out


class NoFinalistKeeps(DeryError):
    """Every finalist measured over the budget (its predictions were within it): `fastest_ms` is the
    fastest finalist's measurement, which a caller that chose the budget itself may re-derive it from."""

    def __init__(self, fastest_ms: float, message: str, stage: str | None = None):
        super().__init__(message, stage)
        self.fastest_ms = fastest_ms


def keeps_budget(measured: dict, latency_ms: float) -> bool:
    """The tie rule at the budget: a finalist is kept when its estimate is within the budget, even
    where the estimate is within its own uncertainty of it (`near_budget` says so)."""
    return measured["latency_ms"] <= latency_ms


def near_budget(measured: dict, latency_ms: float) -> bool:
    """Within two standard errors of the budget: a remeasurement could decide the other way."""
    return abs(measured["latency_ms"] - latency_ms) <= 2 * measured.get("uncertainty", 0.0) * latency_ms


MAX_MARGIN = 0.15  # the most a plan is tightened for the latency model's error


def _at(percentile: int) -> str:
    return "" if percentile == 50 else f" at p{percentile}"


@dataclass
class TargetPool:
    """What the program proposes for one target (backend/precision): its candidates and how it planned."""

    model: LatencyModel
    candidates: list[Candidate]
    solver: dict
    margin: float
    why_empty: str = ""


def target_pool(
    zoo, partition, dissections, model: LatencyModel, task: Task, data: ProgramData, budget: Budget, top: int
) -> TargetPool:
    """The program's top N under the budget less this target's planning margin, plus the donors that
    fit and the best one- and two-seam chains, all predicted with this target's latency model."""
    check = model.profile.verify
    # capped: on a noisy machine one outlier of a 10-assembly check (seen: 45%) would make feasible budgets
    # infeasible; the finalists' end-to-end measurement, not the margin, is what keeps the budget
    margin = min(check.at(model.percentile)[3], MAX_MARGIN) if check else 0.0
    planned = Budget(budget_us(us_to_ms(budget.latency_us) / (1 + margin)), budget.memory_mb, budget.params)
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
    cands = pool_of(data, partition, zoo, res.solutions, planned, budget, donors, task.num_classes)
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
    kept, rejected = final, []
    if not isinstance(measured, str):
        for c in final:
            c.measured = dict(measured[c.key])
            c.measured["near_budget"] = near_budget(c.measured, latency_ms)
        kept = [c for c in final if keeps_budget(c.measured, latency_ms)]
        rejected = [c for c in final if not keeps_budget(c.measured, latency_ms)]
        if not kept:
            best = min(final, key=lambda c: c.measured["latency_ms"])
            raise NoFinalistKeeps(
                best.measured["latency_ms"],
                f"no finalist keeps {latency_ms:g} ms{_at(model.percentile)} when measured on {model.profile.device}: "
                f"the fastest, {best.key}, runs in {best.measured['latency_ms']:.4f} ms (predicted "
                f"{best.predicted_ms:.4f} ms); raise the budget",
                "assemble",
            )
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
