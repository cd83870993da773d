"""The targets a run carries into assembly and selection: every profiled one, less those the pick rule could
never choose at any budget (`pipeline/targets.py`), decided from the profiles before any budget is searched."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.assemble.pool import carried_candidates, target_of, target_pool
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.assemble.stage import AssembleRequest
from dery_deploy.data.task import Task
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.targets import TargetFigures, TargetPruning, dominated_targets
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.schema import load_dataclass


def target_figures(
    zoo, part, dis, models: list[LatencyModel], task: Task, scores: Scores, budgets: list[float], top: int
) -> list[TargetFigures]:
    """Each target's pool at each budget, as the assembly will propose it (`assemble.pool.target_pool`: the
    program's top N under the budget less the planning margin, the donors that fit, the few-seam chains),
    with each network's predicted latency there, and the target's latency check's largest error. Beside
    the pool, what a smaller budget may carry into it (`carried_candidates`): every mixed network any
    target proposed at a smaller budget that fits this target here, a superset of the finalists the run
    carries."""
    data = [program_data(zoo, part, dis, m, task.num_classes, scores) for m in models]
    pools: list[dict[float, dict[str, float]]] = [{} for _ in models]
    carried: list[dict[float, dict[str, float]]] = [{} for _ in models]
    seen: list[str] = []  # mixed networks proposed at the smaller budgets, on any target
    for b in sorted(budgets):
        budget = AssembleRequest(b, top=top).budget
        here = []
        for i, m in enumerate(models):
            pool = target_pool(zoo, part, dis, m, task, data[i], budget, top)
            extra = carried_candidates(pool, tuple(seen), zoo, part, dis, task, budget)
            pools[i][b] = {c.name: round(c.predicted_ms, 5) for c in pool.candidates}
            carried[i][b] = {c.name: round(c.predicted_ms, 5) for c in extra}
            here += [c.name for c in pool.candidates + extra if c.plan.seams]
        seen += [n for n in dict.fromkeys(here) if n not in seen]
    out = []
    for i, m in enumerate(models):
        check = m.profile.verify
        err = check.at(m.percentile)[2] if check else None
        out.append(TargetFigures(target_of(m), err, pools[i], carried=carried[i]))
    return out


def stage_targets(
    r: Run, zoo, part, dis, models: list[LatencyModel], task: Task, scores: Callable[[], Scores], budgets: list[float]
) -> list[LatencyModel]:
    """The latency models of the targets carried into selection (all with --keep-all-targets), the decision
    recorded in run.json (and targets.json, reused while its key holds) and each dropped target said once,
    with its figures."""
    names = [target_of(m) for m in models]
    if r.opts.keep_all_targets or len(models) < 2:
        r.manifest.target_pruning = TargetPruning(names, budgets=list(budgets), kept_all=r.opts.keep_all_targets)
        return models
    path = r.out / "targets.json"
    # what the decision depends on: the partition, budgets, top N, each target's profile and latency check
    key = {
        "figures": "pools and carried",  # what `target_figures` gathers (an older targets.json had pools only)
        "partition": part.key,
        "budgets": list(budgets),
        "top": r.opts.top,
        "targets": [
            [
                target_of(m),
                m.percentile,
                len(m.profile.records),
                round(sum(rec.median_ms for rec in m.profile.records.values()), 6),
                list(m.profile.verify.at(m.percentile)) if m.profile.verify else None,
            ]
            for m in models
        ],
    }

    def reuse() -> TargetPruning | None:
        if not path.is_file():
            return None
        old = json.loads(path.read_text())
        return load_dataclass(TargetPruning, old["pruning"]) if old.get("key") == key else None

    def compute() -> TargetPruning:
        sc = scores()  # the assembly needs them too: computed (and timed) as their own stage
        t = time.time()
        pruning = dominated_targets(target_figures(zoo, part, dis, models, task, sc, budgets, r.opts.top), budgets)
        pruning.seconds = round(time.time() - t, 2)
        atomic_write_json(path, {"key": key, "pruning": asdict(pruning)})
        return pruning

    def note(p: TargetPruning) -> str:
        dropped = ", ".join(d.target for d in p.dropped)
        return f"{len(p.kept)} of {len(models)} targets searched" + (
            f"; {dropped} dominated at every budget" if dropped else ""
        )

    pruning = r.stage("targets for selection", reuse, compute, note)
    r.manifest.target_pruning = pruning
    for line in pruning.lines():
        r.say(f"  [yellow]note:[/] {line}" if r.console else f"  note: {line}")
    return [m for m in models if target_of(m) in pruning.kept]
