"""`dery run --family` (issue 28): once the run's budgets are done, one path per budget
chosen together by the family program so that the paths share blocks, trained, shipped in RUN/family/ with
each tensor once, and measured in one interleaved pass.

- The family program (`assemble.family.solve_family`) over the run's feasible budgets on the run's ONNX
  Runtime fp32 profile, each budget planned with the run's own planning margin (`assemble.pool`).
- Before any training every chosen path is measured untrained in one interleaved pass on the family's target,
  and one over its budget is replaced (`family_check`: the program solved again with that budget lowered by
  the excess, at most twice, else the run's separate plan at that budget).
- Training: `--family-training joint` (option (b), the default: every path at every step, `family_joint`) or
  `frozen` (option (a), below). Measured on the fashion bench (`scripts/bench_family_run.py`, seeds 0-2),
  joint beat frozen at every budget on average, in less time.
- The largest budget's path is fine-tuned with the run's final recipe as a budget's pick is
  (`stages.stage_finetune`, reused while its configuration holds); where it is the network the run already
  healed at some budget, that trained network is reused.
- Each smaller path is built by `build_net`, takes the largest path's trained weights for every block it
  shares with it (same donor, same block range), holds those blocks frozen (`frozen_blocks` of the
  fine-tune's source: requires_grad off, BatchNorm in eval) and trains its private blocks, adapters and head
  with the same recipe and teacher. Its shared blocks are then the same bytes as the largest path's, so the
  family's writer (`export.family.write_family`) stores them once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_bytes, sha256_json
from dery_deploy.assemble.candidates import plan_from_choice
from dery_deploy.assemble.family import Family, solve_family
from dery_deploy.assemble.pool import planned_budget, planning_margin
from dery_deploy.assemble.program import Budget
from dery_deploy.assemble.program_data import program_data
from dery_deploy.deploy.family_info import FamilyInfo
from dery_deploy.errors import DeryError
from dery_deploy.export.family import FamilyMember, write_family
from dery_deploy.network.plan import AssembledNet, Plan, build_net, load_plan, save_plan_with_weights
from dery_deploy.network.plan_records import PlanBudget
from dery_deploy.pipeline.context import Context
from dery_deploy.pipeline.family_check import MAX_RESOLVES, CheckedFamily, check_paths, measure_plans, solver
from dery_deploy.pipeline.family_joint import start_path, train_joint_paths
from dery_deploy.pipeline.family_record import FamilyPathRecord, FamilyRecord
from dery_deploy.pipeline.records import BudgetResult
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.stages import stage_evaluate, stage_finetune
from dery_deploy.profile.latency_model import LatencyModel, budget_us
from dery_deploy.runtime.target import Target
from dery_deploy.train.finetune import load_run_model
from dery_deploy.train.source import FinetuneSource

FAMILY_TARGET = Target("onnxruntime", "fp32")  # the one target a family ships on (export.family)
FAMILY_DIR = "family"  # RUN/family: the shipped family
PATHS_DIR = "family-paths"  # RUN/family-paths/<budget>ms: each path's plan, start state and run folder
CHECK_FILE = "check.json"  # RUN/family-paths/check.json: the paths chosen and measured before training


def family_model(models: list[LatencyModel]) -> LatencyModel | None:
    """The run's ONNX Runtime fp32 latency model, which the family is planned and shipped on."""
    return next((m for m in models if Target.of(m.profile) == FAMILY_TARGET), None)


def stage_family(r: Run, ctx: Context) -> FamilyRecord:
    """The family of the run's feasible budgets (module docstring), recorded in run.json and said in a line."""
    r.say("[bold cyan]> family[/]" if r.console else "> family")
    r.current = "family"
    model = family_model(ctx.models)
    feasible = [res for res in r.manifest.results if res.feasible]
    note = ""
    if model is None:  # --time-limit cut its profile
        note = f"no family: this run did not profile {FAMILY_TARGET}, which a family ships on"
    elif len(feasible) < 2:
        note = f"no family: {len(feasible)} feasible budget(s); a family needs two or more"
    if model is None or note:
        r.say(f"  {note}")
        return FamilyRecord(target=str(FAMILY_TARGET), note=note)
    margin = planning_margin(model)
    data = program_data(ctx.zoo, ctx.part, ctx.dis, model, ctx.task.num_classes, ctx.scores())
    planned = [planned_budget(Budget(budget_us(res.budget_ms)), model) for res in feasible]
    saved = r.out / PATHS_DIR / CHECK_FILE, _check_key(ctx, model, planned, feasible, r.opts.percentile)
    earlier = CheckedFamily.reuse(*saved)  # an earlier run in this folder chose and measured the same paths
    fam: Family = r.stage(
        f"family program ({len(feasible)} budgets)",
        lambda: earlier.family if earlier is not None else None,
        lambda: solve_family(data, planned),
        lambda f: f"{f.status} in {f.seconds} s, stores {f.ratio:.2f}x the separate optima's parameters",
    )
    checked = _check_before_training(r, ctx, model, data, fam, planned, feasible, saved, earlier)
    fam, plans = checked.family, checked.plans
    records, members = _train_paths(r, ctx, plans, feasible)
    _before(records, checked)
    info = r.stage(
        f"write family ({len(members)} paths, one interleaved pass)",
        lambda: None,
        lambda: write_family(r.out / FAMILY_DIR, members, ctx.task, threads=model.profile.threads or 1),
        lambda i: f"{i.weights.distinct_bytes} distinct bytes of {i.weights.paths_bytes}",
    )
    loads = [p.other_load_cores for p in checked.passes if p.other_load_cores is not None]
    rec = FamilyRecord(
        str(r.out / FAMILY_DIR), str(FAMILY_TARGET), r.opts.percentile, margin, fam.delta, fam.price,
        fam.status, fam.seconds, records, info.weights.distinct_bytes, info.weights.paths_bytes,
        sum(p.separate_bytes or 0 for p in records), before_passes=len(checked.passes),
        before_other_load_cores=max(loads) if loads else None, before_notes=checked.lines,
        training=r.opts.family_training,
    )  # fmt: skip
    _measured(rec, info, r.opts.percentile)
    for p in rec.paths:
        before = f" ({p.before_ms:.4f} ± {p.before_se_ms:.4f} ms before training)" if p.before_ms is not None else ""
        top1 = f"top-1 {p.top1}% (separate {p.separate_top1}%)"
        r.say(f"  {p.name} {p.budget_ms:g} ms: {p.plan}: {top1}, {p.verdict}{before}")
    r.say(
        f"  family: {rec.distinct_bytes} distinct bytes against {rec.separate_bytes} shipped separately ({rec.ratio}x)"
    )
    return rec


def _check_before_training(
    r: Run,
    ctx: Context,
    model: LatencyModel,
    data,
    fam: Family,
    planned: list[Budget],
    feasible: list[BudgetResult],
    saved: tuple[Path, str],
    earlier: CheckedFamily | None,
) -> CheckedFamily:
    """Every chosen path measured untrained in one pass, an over-budget one replaced (`family_check`), and
    saved to `saved` (file, key); `earlier`, read from there, where a run in this folder checked the same inputs."""
    pct, threads = r.opts.percentile, model.profile.threads or 1

    def compute() -> CheckedFamily:
        checked = check_paths(
            fam,
            planned,
            [res.budget_ms for res in feasible],
            lambda choice, b: _path_plan(ctx, model, choice, b, pct),
            [res.plan for res in feasible],
            lambda plans: measure_plans(plans, ctx.zoo, ctx.dis, threads, pct),
            solver(data),
            pct,
        )  # fmt: skip
        checked.save(*saved)
        return checked

    checked = r.stage(
        f"family: measure {len(feasible)} paths before training",
        lambda: earlier,
        compute,
        lambda c: (
            f"{len(c.passes)} pass(es), {len(c.fallbacks)} fallback(s); "
            + ", ".join(f"{k.latency_ms:.4f} ± {k.se_ms:.4f} ms of {k.budget_ms:g}" for k in c.checks)
        ),
    )
    for line in checked.lines:
        r.say(f"  {line}")
    return checked


def _check_key(
    ctx: Context, model: LatencyModel, planned: list[Budget], feasible: list[BudgetResult], percentile: int
) -> str:
    """What the family program and the check before training depend on: the zoo, partition and task (the
    program's data), the profile it plans on, the planned budgets, each budget's separate plan (its fallback)
    and the statistic a path is judged by. Not the training option: both train the same paths."""
    return sha256_json(
        {
            "zoo": ctx.zoo.hash(),
            "partition": ctx.part.key,
            "task": ctx.task.hash(),
            "profile": model.profile.to_dict(),
            "planned": [[b.latency_us, b.memory_mb, b.params] for b in planned],
            "budgets": [[res.budget_ms, res.plan.describe() if res.plan else None] for res in feasible],
            "percentile": percentile,
            "max_resolves": MAX_RESOLVES,
        }
    )[:20]


def _before(records: list[FamilyPathRecord], checked: CheckedFamily) -> None:
    """Each path's figure before training into its record."""
    for i, (p, c) in enumerate(zip(records, checked.checks)):
        p.before_ms, p.before_se_ms, p.before_within = c.latency_ms, c.se_ms, c.within
        p.fallback = i in checked.fallbacks


def _path_plan(ctx: Context, model: LatencyModel, choice: tuple[int, ...], budget_ms: float, percentile: int) -> Plan:
    """A path's plan on the family's target, with its budget."""
    plan = plan_from_choice(ctx.zoo, ctx.part, choice, ctx.task.num_classes)
    plan.budget = PlanBudget(budget_ms, percentile)
    plan.device, plan.backend, plan.precision = ctx.spec.id, FAMILY_TARGET.backend, FAMILY_TARGET.precision
    plan.batch, plan.threads = model.profile.batch, model.profile.threads
    return plan


def _train_paths(
    r: Run, ctx: Context, plans: list[Plan], results: list[BudgetResult]
) -> tuple[list[FamilyPathRecord], list[FamilyMember]]:
    """The largest path first (as a pick is trained, or reused), then each smaller one on its frozen shared
    blocks; each evaluated on the test split. Returned in budget order."""
    if r.opts.family_training == "joint":
        return _joint_paths(r, ctx, plans, results)
    order = sorted(range(len(plans)), key=lambda i: -results[i].budget_ms)
    records: dict[int, FamilyPathRecord] = {}
    members: dict[int, FamilyMember] = {}
    large: tuple[Plan, AssembledNet] | None = None
    for i in order:
        plan, res = plans[i], results[i]
        frozen: list[int] = []
        if large is None:
            run_dir, trained = _train_largest(r, ctx, plan, res.budget_ms)
        elif plan.signature() == large[0].signature():  # the program chose the largest path here too
            run_dir, trained = Path(records[order[0]].run), "the largest path's network (the same plan)"
        else:
            run_dir, frozen = _train_smaller(r, ctx, plan, res.budget_ms, *large)
            trained = f"on {len(frozen)} frozen block(s) shared with the largest path" if frozen else "nothing shared"
        ev = stage_evaluate(r, run_dir, ctx.task, f"family path {res.budget_ms:g} ms")
        net, _ = load_run_model(run_dir)
        if large is None:
            assert isinstance(net, AssembledNet)  # a family path always has a new head
            large = (plan, net)
        elif frozen:
            _check_shared(net, frozen, plan, *large)
        records[i] = _path_record(i, plan, res, run_dir, trained, frozen, ev.top1)
        members[i] = FamilyMember(net, plan, ev.top1)
    return [records[i] for i in range(len(plans))], [members[i] for i in range(len(plans))]


def _joint_paths(
    r: Run, ctx: Context, plans: list[Plan], results: list[BudgetResult]
) -> tuple[list[FamilyPathRecord], list[FamilyMember]]:
    """Option (b): every path trained together (`family_joint`), each then evaluated on the test split, its
    shared blocks checked byte-equal to the first path's that holds them."""
    folders = train_joint_paths(r, ctx, plans, [res.budget_ms for res in results], r.out / PATHS_DIR)
    records: list[FamilyPathRecord] = []
    members: list[FamilyMember] = []
    holders: dict[tuple[str, int, int], torch.nn.Module] = {}
    for i, (plan, res, run_dir) in enumerate(zip(plans, results, folders)):
        ev = stage_evaluate(r, run_dir, ctx.task, f"family path {res.budget_ms:g} ms")
        net, _ = load_run_model(run_dir)
        assert isinstance(net, AssembledNet)  # a family path always has a new head
        shared = 0
        for j, b in enumerate(plan.blocks):
            k = (b.donor, b.start, b.end)
            if k in holders:
                _same_block(net.blocks[j], holders[k], plan, j)
                shared += 1
            else:
                holders[k] = net.blocks[j]
        others = len(plans) - 1
        trained = f"jointly with {others} other path(s), every path every step; {shared} block(s) shared with them"
        records.append(_path_record(i, plan, res, run_dir, trained, [], ev.top1))
        members.append(FamilyMember(net, plan, ev.top1))
    return records, members


def _same_block(block: torch.nn.Module, holder: torch.nn.Module, plan: Plan, j: int) -> None:
    """A bug check: a jointly trained path's shared block is the same tensors as the path's that holds it."""
    a, b = block.state_dict(), holder.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise RuntimeError(f"family path {plan.describe()}: shared block {j} differs from its holder's after training")


def _train_largest(r: Run, ctx: Context, plan: Plan, budget_ms: float) -> tuple[Path, str]:
    """The largest path's run folder: the run's healed best mix where it is this network, else fine-tuned
    here with the run's final recipe from its least-squares adapters, as `budget.heal_best_mix` trains."""
    name = plan.describe()
    for res in r.manifest.results:
        if res.mix is not None and res.run_mix and res.mix.plan.describe() == name:
            return Path(res.run_mix), f"reused: the run's best mix at {res.budget_ms:g} ms"
    folder = r.out / PATHS_DIR / f"{budget_ms:g}ms"
    _, source = start_path(ctx, plan, folder / "plan.json")
    stage_finetune(
        r, f"family: fine-tune {name} ({budget_ms:g} ms)", source, ctx.zoo, ctx.task, ctx.recipes.final,
        folder / "run", eval_phase1=True, teacher=ctx.teacher,
    )  # fmt: skip
    return folder / "run", "largest path, the run's recipe"


def shared_blocks(plan: Plan, large_plan: Plan) -> list[tuple[int, int]]:
    """(block of `plan`, block of `large_plan`) pairs of the same donor and the same block range."""
    where = {(b.donor, b.start, b.end): j for j, b in enumerate(large_plan.blocks)}
    return [(i, where[k]) for i, b in enumerate(plan.blocks) if (k := (b.donor, b.start, b.end)) in where]


def _train_smaller(
    r: Run, ctx: Context, plan: Plan, budget_ms: float, large_plan: Plan, large_net: AssembledNet
) -> tuple[Path, list[int]]:
    """A smaller path fine-tuned with the run's recipe from its least-squares adapters and the largest path's
    trained weights in every block it shares with it, those blocks frozen."""
    from safetensors.torch import save

    folder = r.out / PATHS_DIR / f"{budget_ms:g}ms"
    net = build_net(plan, ctx.zoo, ctx.dis)
    ctx.fitter.init(net, plan)
    assert isinstance(net, AssembledNet)
    pairs = shared_blocks(plan, large_plan)
    for i, j in pairs:
        net.blocks[i].load_state_dict(large_net.blocks[j].state_dict())
    path = save_plan_with_weights(plan, net, folder / "plan.json")
    state = save({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()})
    # named by content, so a retrained largest path makes another source (and so another fine-tune)
    start = atomic_write_bytes(folder / f"start-{hashlib.sha256(state).hexdigest()[:16]}.safetensors", state)
    frozen = [i for i, _ in pairs]
    source = FinetuneSource.of_plan(load_plan(path)).starting_from(str(start.resolve())).freezing(frozen)
    stage_finetune(
        r, f"family: fine-tune {plan.describe()} ({budget_ms:g} ms, {len(frozen)} frozen)", source, ctx.zoo,
        ctx.task, ctx.recipes.final, folder / "run", eval_phase1=True, teacher=ctx.teacher,
    )  # fmt: skip
    return folder / "run", frozen


def _check_shared(net, frozen: list[int], plan: Plan, large_plan: Plan, large_net: AssembledNet) -> None:
    """A bug check: the trained smaller path's frozen blocks are the largest path's, tensor for tensor."""
    for i, j in shared_blocks(plan, large_plan):
        a, b = net.blocks[i].state_dict(), large_net.blocks[j].state_dict()
        if i not in frozen or any(not torch.equal(a[k], b[k]) for k in a):
            raise RuntimeError(f"family path {plan.describe()}: shared block {i} changed while frozen")


def _path_record(
    i: int, plan: Plan, res: BudgetResult, run_dir: Path, trained: str, frozen: list[int], top1: float
) -> FamilyPathRecord:
    return FamilyPathRecord(
        name=f"path-{i}",
        plan=plan.describe(),
        budget_ms=res.budget_ms,
        run=str(run_dir),
        trained=trained,
        frozen_blocks=frozen,
        top1=top1,
        separate_plan=res.plan.describe() if res.plan else None,
        separate_top1=res.top1,
        separate_ms=res.measured_ms,
        separate_bytes=_shipped_bytes(res),
    )


def _shipped_bytes(res: BudgetResult) -> int | None:
    """The size of what the run ships at this budget: its exported file (and any external data beside it)."""
    if not (res.export_dir and res.export and res.export.artifact):
        return None
    p = Path(res.export_dir) / res.export.artifact
    if not p.exists():
        return None
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p, *p.parent.glob(p.name + ".data")]
    return sum(f.stat().st_size for f in files)


def _measured(rec: FamilyRecord, info: FamilyInfo, percentile: int) -> None:
    """Each path's latency at the run's percentile (± its standard error, ms) and verdict from the family's pass."""
    by_name = {p.name: p for p in info.paths}
    for p in rec.paths:
        fp = by_name[p.name]
        lat, q = fp.latency, f"p{percentile}"
        if lat is not None:
            p.latency_ms = getattr(lat, f"{q}_ms")
            p.latency_se_ms = round(p.latency_ms * lat.standard_error.get(q, 0.0), 6)
        p.verdict = fp.budget.verdict
        p.within = True if p.verdict.startswith("within") else False if p.verdict.startswith("OVER") else None


def check_family_options(targets: list[str], budgets: list[float] | None, batch: int) -> None:
    """--family's combinations, refused in one line before any work: it ships on ONNX Runtime fp32 at batch 1,
    over two or more budgets (given, or chosen by the run as a default run chooses them, --quick or not)."""
    if str(FAMILY_TARGET) not in targets:
        searched = ", ".join(targets)
        raise DeryError(f"--family ships on {FAMILY_TARGET}, which this run does not search ({searched})", "run")
    if batch != 1:
        raise DeryError(f"--family ships graphs at batch 1; this run's budgets are for batch {batch}", "run")
    if budgets is not None and len(set(budgets)) < 2:
        raise DeryError("--family needs two or more budgets: give --budgets A,B[,...]", "run")
