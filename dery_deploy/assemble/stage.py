"""The assemble stage: partition + similarity + profile + task + budget -> ranked candidates -> plan.

The program enumerates the top-N assemblies by its quality estimate under the budget; each
candidate is built with least-squares-initialised adapters (fitted on the task's unlabelled
images) and scored by a training-free proxy on the task's labelled training images; the best
proxy score becomes the plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dery_deploy.assemble.candidates import AdapterFitter, Candidate, plan_from_choice, score_candidates
from dery_deploy.assemble.program import Budget, ProgramData, fastest, quality_int, solve
from dery_deploy.assemble.search_optuna import optuna_search
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError
from dery_deploy.network.adapters import Adapter
from dery_deploy.network.items import adapter_key, block_key, head_key, plan_items
from dery_deploy.network.plan import AssembledNet, Plan
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.latency_model import LatencyModel, budget_us
from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.devices import get_device
from dery_deploy.similarity.compute import Similarity

# Labelled images each proxy scores on: NASWOT / ZiCo use one small batch as in their papers; the
# linear probe needs enough samples per class for its leave-one-out estimate.
PROXY_IMAGES = {"naswot": 64, "zico": 64, "probe": 500}


def program_data(
    zoo,
    partition: Partition,
    dissections: dict[str, Dissection],
    sim: Similarity,
    model: LatencyModel,
    num_classes: int,
    capacity_weight: float = 0.5,
) -> ProgramData:
    """Index the partition's blocks and adapters with their profiled cost and their quality."""
    sets = partition.sets

    def rec(key: str):
        model.require([key])
        return model.profile.records[key]

    options = [[b.donor for b in s.blocks] for s in sets]
    block_us, block_params, block_mem = [], [], []
    for s in sets:
        keys = [block_key(zoo, b.donor, b.start, b.end, dissections[b.donor].boundary_spec(b.start)) for b in s.blocks]
        block_us.append([model.cost_us(k) for k in keys])
        block_mem.append([rec(k).peak_memory_mb for k in keys])
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
                src = dissections[a.donor].boundary_spec(a.end)
                dst = dissections[b.donor].boundary_spec(b.start)
                key = adapter_key(src, dst)
                lat[(ia, ib)] = model.cost_us(key)
                mm[(ia, ib)] = rec(key).peak_memory_mb
                ps[(ia, ib)] = sum(p.numel() for p in Adapter(src, dst).parameters())
                q[(ia, ib)] = quality_int(float(sim.matrix(a.donor, b.donor)[a.end, b.start]))
        adapter_us.append(lat), adapter_params.append(ps), adapter_mem.append(mm), stitch_q.append(q)
    head_us, head_params = [], []
    for b in sets[-1].blocks:
        src = dissections[b.donor].boundary_spec(b.end)
        head_us.append(model.cost_us(head_key(src, num_classes)))
        head_params.append(src.channels * (num_classes + 2) + num_classes)
    block_q = []
    for ps in block_params:  # capacity: log parameter count, scaled to [0, 1] within the set
        logs = [torch.tensor(float(p)).log1p().item() for p in ps]
        lo, hi = min(logs), max(logs)
        block_q.append([quality_int(capacity_weight * ((v - lo) / (hi - lo) if hi > lo else 1.0)) for v in logs])
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
    )


@dataclass
class AssembleResult:
    plan: Plan
    net: AssembledNet
    candidates: list[Candidate]
    solver: dict


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
    sim: Similarity,
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
) -> AssembleResult:
    """Candidates for one budget, ranked by the proxy; the best one becomes the plan."""
    if not latency_ms > 0:
        raise DeryError(f"latency budget must be > 0 ms, got {latency_ms:g}", "assemble")
    memory_check(model, memory_mb)
    if params_m is not None and not params_m > 0:
        raise DeryError(f"--params-m must be > 0, got {params_m}", "assemble")
    data = program_data(zoo, partition, dissections, sim, model, task.num_classes)
    budget = Budget(budget_us(latency_ms), memory_mb, None if params_m is None else int(params_m * 1e6))
    fitter = fitter or AdapterFitter.for_task(dissections, task)
    images, labels = task.labelled_sample(PROXY_IMAGES.get(proxy, 64), seed=seed)
    t0 = time.perf_counter()
    if search == "cpsat":
        res = solve(data, budget, top)
        if not res.solutions:
            raise DeryError(res.infeasible_reason + "; raise the budget", "assemble")
        solver = {
            "name": res.method,
            "status": res.status,
            "seconds_first": round(res.seconds_first, 4),
            "seconds_top": round(res.seconds, 4),
            "top": len(res.solutions),
            **res.extra,
        }
        cands = [Candidate(plan_from_choice(zoo, partition, s.choice, task.num_classes), s) for s in res.solutions]
        score_candidates(cands, zoo, dissections, fitter, proxy, images, labels, progress)
    elif search == "optuna":
        cands, solver = optuna_search(
            data, zoo, partition, dissections, fitter, proxy, images, labels, budget, top, seed, task.num_classes
        )
        if not cands:
            f = fastest(data, budget)
            raise DeryError(
                f"no assembly meets {budget.describe()}"
                + (f"; the fastest assembly is predicted at {f.latency_ms:.4f} ms" if f else "")
                + "; raise the budget",
                "assemble",
            )
    else:
        raise DeryError(f"--search must be cpsat or optuna, got {search!r}", "assemble")
    seconds = time.perf_counter() - t0
    cands.sort(key=lambda c: c.proxy, reverse=True)
    best = cands[0]
    plan = best.plan
    check = model.profile.verify
    plan.predicted = {
        "latency_ms": model.predict_ms(plan_items(plan, zoo, dissections)),
        "memory_mb": best.evaluation.memory_mb,
        "params_m": round(best.evaluation.params / 1e6, 4),
        "latency_model": {
            "speed": model.speed,
            "scale": model.scale,
            "median_rel_error": check.median_abs_rel_error if check else None,
            "max_rel_error": check.max_abs_rel_error if check else None,
        },
        "reference_ms": model.reference_ms(),
    }
    prof = model.profile
    plan.device, plan.backend, plan.precision, plan.batch = prof.device, prof.backend, prof.precision, prof.batch
    plan.budget = {"latency_ms": latency_ms, "memory_mb": memory_mb, "params_m": params_m}
    plan.task = {"spec": task.spec, "hash": task.hash(), "classes": task.classes}
    plan.proxy = {"name": proxy, "score": best.proxy, "stitch_errors": [round(e, 4) for e in best.stitch_errors]}
    plan.solver = {
        **solver,
        "quality": best.evaluation.quality / 1000,
        "search_seconds": round(seconds, 3),
        "partition_key": partition.key,
    }
    return AssembleResult(plan, best.net, cands, solver)
