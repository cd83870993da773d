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
from pathlib import Path

import torch

from dery_deploy.assemble.candidates import AdapterFitter, Candidate, score_networks
from dery_deploy.assemble.measure import keep_within_budget, measure_finalists
from dery_deploy.assemble.pool import (
    TargetPool,
    carried_candidates,
    planned_budget,
    planning_margin,
    target_of,
    target_pool,
)
from dery_deploy.assemble.program import Budget, ProgramData, fastest
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.assemble.search_optuna import optuna_search
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError
from dery_deploy.network.items import plan_items
from dery_deploy.network.plan import Plan
from dery_deploy.network.plan_records import (
    FinalistMeasurement,
    PlanBudget,
    PlanningModel,
    PlanSolver,
    PlanTask,
    Prediction,
    ProxyScore,
)
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.latency_model import LatencyModel, budget_us
from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.devices import get_device

# Labelled images each proxy scores on: NASWOT / ZiCo use one small batch as in their papers; the
# linear probe needs enough samples per class for its leave-one-out estimate.
PROXY_IMAGES = {"naswot": 64, "zico": 64, "probe": 500}
FINALISTS = 4  # mixed finalists measured (every donor that fits is a finalist too)
# `SolverSummary.measured` where the finalists were measured here (otherwise it says why not)
MEASURED_HERE = "end to end on the device, in one interleaved pass"


@dataclass(frozen=True)
class AssembleRequest:
    """What one budget's assembly searches for: the budget, and how candidates are proposed and ranked."""

    latency_ms: float
    memory_mb: float | None = None
    params_m: float | None = None
    top: int = 10  # the program's top N, which the proxy reranks
    proxy: str = "probe"  # probe, naswot or zico
    search: str = "cpsat"  # cpsat (the program, then the proxy) or optuna (the proxy searched directly)
    seed: int = 0
    finalists: int = FINALISTS
    # networks (plan descriptions) that were finalists at a smaller budget of the same run: they stay
    # candidates and finalists wherever they fit, so more room never loses them
    carried: tuple[str, ...] = ()
    # donors that are not candidates: the run did not train them to ship (`pipeline/budgets.dominated_donors`)
    left_out: tuple[str, ...] = ()
    # donors the run trained to ship (for some budget): candidates from further over the budget, since a
    # profile that ran slow must not keep one that fits from the finalists (`candidates.DONOR_TRAINED_NEAR`)
    trained: tuple[str, ...] = ()

    @property
    def budget(self) -> Budget:
        """The budget in the program's units: integer microseconds and a parameter count."""
        params = None if self.params_m is None else int(self.params_m * 1e6)
        return Budget(budget_us(self.latency_ms), self.memory_mb, params)


@dataclass(frozen=True)
class Measuring:
    """How the finalists are measured: end to end on this machine (`measure_finalists`) unless
    `measurements` is given (a shared selection passes one that measures once for every process:
    `train.select.shared_once`); with `measure` off, they keep their predictions."""

    measurements: Callable[[list[Candidate]], dict[str, dict] | str] | None = None
    measure: bool = True

    def of(self, final: list[Candidate], models: list[LatencyModel], zoo, progress=None) -> dict[str, dict] | str:
        """Each finalist's measurement by pair key (`Candidate.key`), or why there is none."""
        if not self.measure:
            return "measurement switched off"
        return (self.measurements or (lambda f: measure_finalists(f, models, zoo, progress)))(final)


@dataclass
class SolverRun:
    """How one target's candidates were proposed: the search (`cp-sat`, `dp`, `optuna-tpe`), its status,
    its time to the first and to all solutions, how many it kept, and each search's own counts; in a
    summary's per-target entries also the planning margin it planned at."""

    name: str
    status: str
    seconds_top: float
    seconds_first: float | None = None
    top: int | None = None
    dp_seconds: float | None = None
    cp_sat_solves: int | None = None
    trials: int | None = None
    proxy_evaluations: int | None = None
    margin: float | None = None


@dataclass
class SolverSummary(SolverRun):
    """How an assembly went: the first target's search, every target's, how the finalists were measured
    (or why not), how many were kept and dropped, and which lie within their uncertainty of the budget."""

    targets: dict[str, SolverRun] = field(default_factory=dict)
    measured: str = ""
    finalists: int = 0
    rejected_over_budget: int = 0
    near_budget: list[str] = field(default_factory=list)


@dataclass
class AssembleResult:
    plan: Plan  # the best finalist by proxy (selection by evidence may pick another)
    candidates: list[Candidate]
    finalists: list[Candidate]
    solver: SolverSummary
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
    backend = get_backend(model.profile.backend)
    why = backend.memory_unmeasurable(device)
    if why:
        raise DeryError(f"--memory-mb cannot be promised with this profile: {why}", "assemble")
    unmeasured = model.profile.lacking_memory()
    if unmeasured and model.profile.imported_from:
        raise DeryError(
            f"--memory-mb cannot be promised with profile {model.path}: it was imported from a device bundle, "
            "whose runner does not measure memory; leave --memory-mb out",
            "assemble",
        )
    if unmeasured:
        path = Path(model.path)  # <cache>/profiles/<device>/<file> (`profile_path`), or a name given to the model
        root = f" --cache {path.parents[2]}" if len(path.parents) > 2 else ""
        raise DeryError(
            f"--memory-mb cannot be promised with profile {model.path}: {len(unmeasured)} items have no memory "
            f"measurement (a `dery run` profile leaves it out, as no run is judged by it); "
            f"{(model.how_to or model.profile.how_to_profile()).rstrip('`')}{root}` measures them",
            "assemble",
        )


def check_request(request: AssembleRequest, models: list[LatencyModel]) -> None:
    """Refuse a request no target can assemble for, naming the first bad value."""
    if not request.latency_ms > 0:
        raise DeryError(f"latency budget must be > 0 ms, got {request.latency_ms:g}", "assemble")
    for m in models:
        memory_check(m, request.memory_mb)
    if request.params_m is not None and not request.params_m > 0:
        raise DeryError(f"--params-m must be > 0, got {request.params_m}", "assemble")
    if request.search not in ("cpsat", "optuna"):
        raise DeryError(f"--search must be cpsat or optuna, got {request.search!r}", "assemble")


def assemble(
    zoo,
    partition: Partition,
    dissections: dict[str, Dissection],
    model: LatencyModel,
    task: Task,
    request: AssembleRequest,
    *,
    more_models: tuple[LatencyModel, ...] = (),
    fitter: AdapterFitter | None = None,
    scores: Scores | None = None,
    measuring: Measuring = Measuring(),
    progress=None,
) -> AssembleResult:
    """Candidates for one budget, scored and measured (see the module docstring).

    Args:
        more_models: latency models of further targets (backend/precision) on the same device: the
            program proposes candidates for each, and a finalist is a (network, target) pair.
        fitter, scores: what every budget of one (task, partition) shares, computed here when not given.
    """
    models = [model, *more_models]
    check_request(request, models)
    fitter = fitter or AdapterFitter.for_task(dissections, task)
    scores = scores or Scores.compute(dissections, task, partition, fitter)
    budget = request.budget
    images, labels = task.labelled_sample(PROXY_IMAGES.get(request.proxy, 64), seed=request.seed)
    # Optuna searches by the proxy itself, so it scores what it proposes; it plans for one target only,
    # and with several the program proposes for each
    by_optuna = request.search == "optuna" and not more_models
    t0 = time.perf_counter()
    pools, left = [], set(request.left_out)
    for m in models:
        data = program_data(zoo, partition, dissections, m, task.num_classes, scores)
        if by_optuna:
            pool = optuna_pool(m, data, request, zoo, partition, dissections, fitter, images, labels, task.num_classes)
        else:
            pool = target_pool(
                zoo, partition, dissections, m, task, data, budget, request.top, frozenset(request.trained)
            )
        pool.candidates += carried_candidates(pool, request.carried, zoo, partition, dissections, task, budget)
        pool.candidates = [c for c in pool.candidates if not (c.is_donor and c.plan.blocks[0].donor in left)]
        pools.append(pool)
    cands = [c for p in pools for c in p.candidates]
    if not cands:
        raise DeryError("; ".join(dict.fromkeys(p.why_empty for p in pools)) + "; raise the budget", "assemble")
    if not by_optuna:
        score_networks(cands, zoo, dissections, fitter, request.proxy, images, labels, progress)
    seconds = time.perf_counter() - t0
    cands.sort(key=by_proxy)
    final = choose_finalists(cands, request)
    measured = measuring.of(final, models, zoo, progress)
    kept, rejected = keep_within_budget(final, measured, request.latency_ms, model)
    kept.sort(key=by_proxy)
    by_target = {target_of(p.model): p for p in pools}
    for c in cands:
        finish_plan(c, by_target[c.target], request, zoo, dissections, task, partition, seconds)
    solver = solver_summary(pools, final, rejected, measured)
    return AssembleResult(kept[0].plan, cands, kept, solver, pools[0].margin, rejected)


def optuna_pool(
    model: LatencyModel,
    data: ProgramData,
    request: AssembleRequest,
    zoo,
    partition: Partition,
    dissections: dict[str, Dissection],
    fitter: AdapterFitter,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
) -> TargetPool:
    """Optuna's proposals, scored by the proxy as it searched, under the budget less the planning margin."""
    margin, planned = planning_margin(model), planned_budget(request.budget, model)
    cands, solver = optuna_search(
        data, zoo, partition, dissections, fitter, request.proxy, images, labels, planned, request.top, request.seed,
        num_classes,
    )  # fmt: skip
    f = fastest(data, planned)
    why = (
        f"no assembly meets {planned.describe()}"
        + (f"; the fastest assembly is predicted at {f.latency_ms:.4f} ms" if f else "")
        if not cands
        else ""
    )
    for c in cands:
        c.target = target_of(model)
    return TargetPool(model, cands, solver, margin, why)


def by_proxy(c: Candidate) -> tuple[float, str, str]:
    """Sort key: the best proxy score first; the name and target break ties the same way on every run."""
    return (-c.proxy, c.name, c.target)


def choose_finalists(cands: list[Candidate], request: AssembleRequest) -> list[Candidate]:
    """Every donor candidate, the best mixed networks by proxy, and the carried networks still candidates."""
    ranked = list(dict.fromkeys(c.name for c in cands if not c.is_donor))
    chosen = set(ranked[: request.finalists]) | {n for n in request.carried if n in ranked}
    return [c for c in cands if c.is_donor or c.name in chosen]


def solver_summary(
    pools: list[TargetPool], final: list[Candidate], rejected: list[Candidate], measured: dict[str, dict] | str
) -> SolverSummary:
    """How the assembly went: the first target's solver, every target's with its margin, and the measurement."""
    why_not = measured if isinstance(measured, str) else None
    return SolverSummary(
        **pools[0].solver,
        targets={target_of(p.model): SolverRun(**p.solver, margin=p.margin) for p in pools},
        measured=why_not or MEASURED_HERE,
        finalists=len(final),
        rejected_over_budget=len(rejected),
        near_budget=sorted(c.key for c in final if c.measured.get("near_budget")),
    )


def finish_plan(
    c: Candidate,
    pool: TargetPool,
    request: AssembleRequest,
    zoo,
    dissections: dict[str, Dissection],
    task: Task,
    partition: Partition,
    seconds: float,
) -> None:
    """Fill a candidate's plan with what it was made under: device, budget, predictions, measurement."""
    plan, model = c.plan, pool.model
    check = model.profile.verify
    prof = model.profile
    plan.predicted = Prediction(
        latency_ms=model.predict_ms(plan_items(plan, zoo, dissections)),
        memory_mb=c.memory_mb,
        params_m=round(c.params / 1e6, 4),
        latency_model=PlanningModel(
            speed=model.speed,
            scale=model.tail if plan.head_kind == "donor" else model.scale,  # a donor is measured whole
            percentile=model.percentile,
            median_rel_error=check.at(model.percentile)[1] if check else None,
            max_rel_error=check.at(model.percentile)[2] if check else None,
            planning_margin=round(pool.margin, 4),
        ),
        reference_ms=model.reference_ms(),
    )
    plan.measured = FinalistMeasurement(**c.measured) if c.measured else None
    plan.device, plan.backend, plan.precision, plan.batch = prof.device, prof.backend, prof.precision, prof.batch
    plan.threads = prof.threads
    plan.budget = PlanBudget(request.latency_ms, model.percentile, request.memory_mb, request.params_m)
    plan.task = PlanTask(task.spec, task.hash(), task.classes)
    plan.proxy = ProxyScore(request.proxy, c.proxy, [round(e, 4) for e in c.stitch_errors])
    plan.solver = PlanSolver(
        **pool.solver,
        quality=c.quality,
        origin=c.origin,
        search_seconds=round(seconds, 3),
        partition_key=partition.key,
    )
