"""`dery run`: the main job, one function per stage, each reused when its artifact still matches.

zoo -> similarity -> partition -> profile (+ latency-model check) -> budgets from the donors'
latencies -> per budget: assemble, fine-tune, evaluate, export + parity + budget check -> donor
baselines with the same recipe -> report.md / report.html.

Everything lives in one run folder (its own cache included). A rerun with the same options reuses
every stage; a rerun with other options reuses what still matches (the same similarity, partition,
profile) and recomputes the rest; an interrupted run resumes. A failed run's manifest says which
stage failed and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json, make_output_dir
from dery_deploy.assemble.candidates import AdapterFitter
from dery_deploy.assemble.program import fastest
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.data.task import Task, load_task
from dery_deploy.errors import DeryError
from dery_deploy.network.items import donor_key
from dery_deploy.pipeline.budget import REDERIVES, rederive_budget, stage_budget
from dery_deploy.pipeline.budgets import (
    choose_budgets,
    dominated_donors,
    expected_dominated,
    expected_unhealed,
    feasible_floor,
    final_donors,
    last_block_probe,
    teacher_pool,
)
from dery_deploy.pipeline.context import Context, Recipes
from dery_deploy.pipeline.estimate import Eta, Plan, RunEstimate, estimate, make_estimate, minutes
from dery_deploy.pipeline.expected import put_back
from dery_deploy.pipeline.family import check_family_options, stage_family
from dery_deploy.pipeline.final_pass import stage_final_pass
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.records import TaskRecord, TeacherRecord, TimeLimitRecord
from dery_deploy.pipeline.runner import Run, check_run_dir
from dery_deploy.pipeline.stages import (
    stage_donors,
    stage_partition,
    stage_similarity,
    stage_zoo,
)
from dery_deploy.pipeline.target_profiles import profile_targets, target_names
from dery_deploy.pipeline.target_stage import stage_targets
from dery_deploy.pipeline.time_limit import CUTS, LATE_CUTS, fit_to_limit, over_limit, refit
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.run import resolve_backend
from dery_deploy.report.report import write_report
from dery_deploy.runtime.backends import Backend
from dery_deploy.runtime.devices import DeviceSpec, get_device, this_machine
from dery_deploy.runtime.target import Target
from dery_deploy.train.finetune import load_run_model
from dery_deploy.train.teacher import Teacher, make_teacher
from dery_deploy.zoo.load import dissect_zoo, get_zoo


def resolve_targets(spec: DeviceSpec, opts: RunOptions) -> list[tuple[Backend, str]]:
    """The targets this run searches, each a backend (computing with its thread count) and a precision:
    --targets, else --backend/--precision alone, else the device spec's `search` list; each at every count
    the spec lists (`DeviceSpec.thread_counts`; its first alone under --quick, where a further count's
    screen, spell checks and profile took 61 s of a 281 s run and were then not searched) or at --threads
    alone, unless it names its own (`/tN`); each checked to run here. Each count's targets come after the
    previous count's, so a time limit that stops profiling leaves out the extra counts first."""
    if opts.targets:
        names = opts.targets
    elif opts.backend or opts.precision:
        names = [str(Target(opts.backend or spec.default_backend, opts.precision or spec.default_precision))]
    else:
        names = spec.targets()
    asked = [Target.parse(n, "run", "--targets") for n in dict.fromkeys(names)]
    counts = [opts.threads] if opts.threads else spec.thread_counts()[: 1 if opts.quick else None]
    wanted = [
        t if t.threads else Target(t.backend, t.precision, n)
        for i, n in enumerate(counts)
        for t in asked
        if not t.threads or i == 0
    ]
    out = []
    for t in dict.fromkeys(wanted):
        out.append(resolve_backend(spec, t.backend, t.precision, t.threads))
    return out


def start_eta(
    r: Run,
    zoo,
    task: Task,
    models: list[LatencyModel],
    budgets,
    donor_ms,
    recipes: Recipes,
    searched: int = 0,
    probe: Callable[[], dict[str, float]] | None = None,
) -> tuple[list[float], Recipes]:
    """Estimate the rest of the run on this machine (`estimate.py`), fit it to --time-limit
    (`time_limit.py`), say both, and keep the whole run's line; returns the budgets and recipes to run.
    `searched`: how many targets assembly and selection search (0: every one of `models`); `probe`: each
    donor's transferability probe accuracy (called only where the estimate is made, not reused), from which
    the donors the short recipe will leave out are expected (none where every donor is trained)."""
    pool = teacher_pool(donor_ms, budgets)
    plan = Plan(
        budgets,
        donor_ms,
        pool,
        final_donors(donor_ms, budgets),
        recipes.ce,
        recipes.final,
        recipes.rungs,
        len(models),
        recipes.finalists,
        exports_per_budget=2 + int(r.opts.aoti),
        teacher_images=recipes.teacher_pool,
        budgets_chosen=not r.opts.budgets,
        searched_targets=searched or len(models),
        family=r.opts.family_training if r.opts.family else None,
        every_heal=bool(r.opts.time_limit),
    )
    path, key = r.out / "estimate.json", {**plan.key(), "time_limit": r.opts.time_limit}

    def compute() -> RunEstimate:
        if probe is not None and not r.opts.train_every_donor:
            plan.expected_left_out = expected_dominated(donor_ms, probe(), pool)
        if probe is not None and not (r.opts.heal_every_mix or r.opts.time_limit):  # a limit counts every heal
            plan.expected_unhealed = expected_unhealed(donor_ms, probe(), budgets)
        elapsed = time.time() - r.t0
        est = make_estimate(plan, zoo, task, r.manifest.stages, models, elapsed, r.opts.seed, bool(r.opts.time_limit))
        atomic_write_json(path, {"key": key, "estimate": est.to_dict()})
        return est

    t = time.time()
    est = r.stage("time estimate", lambda: RunEstimate.reuse(path, key), compute, lambda e: e.line())
    fresh = r.manifest.stages[-1].status == "computed"  # else an earlier run's, for the same plan
    plan.expected_left_out, plan.expected_unhealed = list(est.expected_left_out), list(est.expected_unhealed)
    if r.opts.time_limit:
        elapsed = time.time() - r.t0
        plan.step_s, plan.distill_s = est.step_s, est.distill_s
        plan, est, cuts = fit_to_limit(
            plan, lambda p: estimate(p, task, est.item_s, elapsed), 60 * r.opts.time_limit, elapsed
        )
        cuts = (r.manifest.time_limit.cuts if r.manifest.time_limit else []) + cuts
        r.manifest.time_limit = TimeLimitRecord(r.opts.time_limit, cuts, round(elapsed + est.seconds))
        r.say(
            f"  time limit {r.opts.time_limit:g} min: "
            + ("cut " + "; ".join(cuts) if cuts else "nothing cut")
            + f"; estimated {minutes(elapsed + est.seconds)} in all"
        )
        if over := over_limit(r.opts.time_limit, elapsed + est.seconds, plan.budgets_chosen):
            r.say(f"  [yellow]{over}[/]" if r.console else f"  {over}")
    est.made_in_s, est.this_run = round(time.time() - t, 1), fresh
    r.manifest.estimate = est
    if fresh:
        r.say(f"  {est.line()}")
    r.eta = Eta(est)
    r.fitted = (plan, est.item_s) if r.opts.time_limit else None
    return plan.budgets, Recipes.of_plan(plan, plan.teacher_images)


def refit_to_limit(
    r: Run, task: Task, budgets: list[float], recipes: Recipes, donors_done: bool = False
) -> tuple[list[float], Recipes]:
    """Under --time-limit, once the teacher candidates are trained, and again once the donors are
    (`donors_done`): the rest estimated again at the pace the training kept (`time_limit.refit`), cut further
    where it no longer fits; said, recorded, and the run's line kept on the new estimate. Returns the budgets
    and recipes to go on with."""
    if r.fitted is None or r.eta is None or r.manifest.time_limit is None or not r.opts.time_limit:
        return budgets, recipes
    plan, item_s = r.fitted
    pace, elapsed = r.eta.ratio, time.time() - r.t0

    def done(stage: str) -> bool:
        return stage.startswith(("fine-tune donor", "evaluate donor")) if donors_done else " (ce" in stage

    def rest(p: Plan) -> RunEstimate:
        e = estimate(p, task, item_s, elapsed)
        e.parts = [q for q in e.parts if not done(q.stage)]
        return e

    allowed = LATE_CUTS if donors_done else CUTS
    plan, est, cuts = refit(plan, rest, 60 * r.opts.time_limit, elapsed, pace, allowed)
    if cuts:
        tl = r.manifest.time_limit
        what = "the donors" if donors_done else "the teacher candidates"
        tl.cuts += [f"{c}, after {what} trained {pace:.1f}x slower than estimated" for c in cuts]
        tl.estimated_s = round(elapsed + est.seconds)
        r.say(f"  time limit {r.opts.time_limit:g} min: training ran {pace:.1f}x its estimate; cut " + "; ".join(cuts))
        r.eta.todo = [replace(q, seconds=q.seconds / r.eta.ratio) for q in est.parts]  # the line rescales them
    r.fitted = (plan, item_s)  # (the teacher is made: its pool stays as it was)
    return plan.budgets, Recipes.of_plan(plan, recipes.teacher_pool)


def run(opts: RunOptions, console=None, progress_factory=None) -> RunManifest:
    opts.check()
    if opts.quick:
        opts.apply_quick()
    r = Run(opts, console, progress_factory)
    zoo = get_zoo(opts.zoo)
    spec = get_device(opts.device) if opts.device else (this_machine() or [get_device("cpu")])[0]
    check_run_dir(r.out, zoo, spec.id)
    targets = resolve_targets(spec, opts)
    if opts.family:
        check_family_options([str(Target(b.name, p)) for b, p in targets], opts.budgets, opts.batch)
    backend, precision = targets[0]
    t0 = time.time()
    task = load_task(opts.data, zoo.input, opts.seed)  # a bad --data is one line and leaves no folder behind
    task_seconds = time.time() - t0
    make_output_dir(r.out, "run folder", "run")
    r.manifest = RunManifest(
        zoo.name,
        zoo.hash(),
        spec.id,
        backend.name,
        precision,
        RunOptions(**asdict(opts)),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    r.manifest.targets = target_names(targets)
    r.current = "setup"
    try:
        _run_stages(r, zoo, spec, targets, task, task_seconds)
    except BaseException as e:
        r.manifest.status = "failed" if not isinstance(e, KeyboardInterrupt) else "interrupted"
        r.manifest.failed_stage = r.current
        r.manifest.error = str(e) if isinstance(e, DeryError) else f"{type(e).__name__}: {e}"
        r.manifest.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        r.save()
        raise
    return r.manifest


def stage_teacher(r: Run, zoo, task: Task, recipes: Recipes, donor_ms, budgets: list[float]) -> Teacher | None:
    """The distillation teacher: the teacher candidates trained with the `ce` recipe, the one that validates
    best, its logits on the pool of unlabelled images; none where the final recipe does not distil."""
    if not recipes.final.distill:
        r.say("  no teacher: the final recipe does not distil")
        return None
    ce = stage_donors(r, zoo, task, recipes.ce, donor_ms, teacher_pool(donor_ms, budgets), "ce")
    name = max(ce, key=lambda n: (ce[n].val_accuracy or 0.0, n))
    teacher = make_teacher(
        [r.out / "donors" / "ce" / name], task, recipes.teacher_pool, r.opts.seed, r.cache, load_run_model
    )
    r.manifest.teacher = TeacherRecord(
        name, ce[name].val_accuracy, [Path(t).name for t in teacher.runs], teacher.key, len(teacher.images)
    )
    r.say(f"  teacher: {name} (validation {ce[name].val_accuracy:.2f}%)")
    if not r.opts.train_every_donor:
        r.manifest.dominated_donors = dominated_donors(donor_ms, {n: d.val_accuracy for n, d in ce.items()})
    return teacher


def leave_out_dominated(r: Run, donor_ms: dict[str, float], names: list[str]) -> list[str]:
    """`names` less the donors the short recipe found dominated (`budgets.dominated_donors`): each is said,
    and its final training and evaluation recorded as skipped (the run's estimate counted them)."""
    left, est = r.manifest.dominated_donors, r.manifest.estimate
    for n in [n for n in names if n not in left and est is not None and n in est.expected_left_out]:
        put_back(r, n)
    for n in [n for n in names if n in left]:
        r.say(f"  {n}: not trained with the final recipe, nor a candidate: {left[n]}")
        if est is not None and r.eta is not None:
            stages = (f"fine-tune donor {n} (final", f"evaluate donor {n}")
            est.left_out_s = round(est.left_out_s + sum(p.seconds for p in r.eta.todo if p.stage in stages), 1)
        r.record(f"fine-tune donor {n} (final, {donor_ms[n]:.3f} ms)", "skipped", 0.0, left[n])
        r.record(f"evaluate donor {n}", "skipped", 0.0, left[n])
    return [n for n in names if n not in left]


def teach_and_refit(r: Run, zoo, task: Task, recipes: Recipes, donor_ms, budgets: list[float]):
    """The teacher (`stage_teacher`); under --time-limit the rest re-estimated at the pace its candidates
    trained (`refit_to_limit`) and the test split cut where the fit says so. Returns the teacher, the
    budgets, the recipes and the task to go on with."""
    teacher = stage_teacher(r, zoo, task, recipes, donor_ms, budgets)
    if r.fitted is not None:  # the rest is refitted with the donors the short recipe did leave out
        r.fitted = (replace(r.fitted[0], expected_left_out=sorted(r.manifest.dominated_donors)), r.fitted[1])
    if teacher is not None:  # the first trainings
        budgets, recipes = refit_to_limit(r, task, budgets, recipes)
    r.manifest.budgets, r.manifest.recipe = budgets, recipes.describe()
    if recipes.test_fifth:
        task = task.with_test_fifth()
        assert r.manifest.task is not None
        r.manifest.task.summary = f"{task.summary()}; {task.notes[-1]}"
    return teacher, budgets, recipes, task


def _run_stages(r: Run, zoo, spec: DeviceSpec, targets: list[tuple[Backend, str]], task: Task, task_seconds: float):
    opts = r.opts
    r.say("[bold cyan]> task[/]" if r.console else "> task")
    r.current = "task"
    r.record("task", "loaded", task_seconds, task.summary() + "".join(f"; {n}" for n in task.notes))
    for n in task.notes:
        r.say(f"  [yellow]note:[/] {n}" if r.console else f"  note: {n}")
    r.manifest.task = TaskRecord(task.spec, task.hash(), task.classes, task.summary())
    rows = stage_zoo(r, zoo)
    dis = dissect_zoo(zoo)
    sim = stage_similarity(r, zoo, task)
    part = stage_partition(r, zoo, sim, dis)
    models = profile_targets(r, zoo, spec, targets, part, dis, task)
    backend, precision = targets[0]
    model, prof = models[0], models[0].profile
    # a donor's latency is that of its fastest target: what a budget must beat to be worth reassembling for
    donor_ms = {
        n: round(min(m.predict_ms([donor_key(zoo, n, task.num_classes)]) for m in models), 5) for n in zoo.donor_names
    }
    fitter = AdapterFitter.for_task(dis, task)
    computed: list[Scores] = []

    def scores() -> Scores:
        """The task-aware quality terms, computed the first time they are needed."""
        if not computed:
            computed.append(
                r.stage(
                    "task-aware scores (transferability, seams)",
                    lambda: None,
                    lambda: Scores.compute(dis, task, part, fitter),
                    lambda sc: f"{len(sc.transfer)} boundaries, {len(sc.seams)} seams",
                )
            )
        return computed[0]

    budgets = opts.budgets
    if not budgets:
        floor = min(feasible_floor(zoo, part, dis, m, task, scores()) for m in models)
        budgets, notes = choose_budgets(donor_ms, opts.quick and not opts.family, floor, 2 if opts.family else 1)
        for n in notes:
            r.say(f"  note: {n}")
    r.manifest.budgets, r.manifest.donor_latency_ms = budgets, donor_ms
    at = "" if opts.percentile == 50 else f" at p{opts.percentile}"
    r.say(
        f"  budgets{at}: {', '.join(f'{b:g} ms' for b in budgets)} (donors, predicted: "
        + ", ".join(f"{n} {ms:.3f}" for n, ms in sorted(donor_ms.items(), key=lambda kv: kv[1]))
        + ")"
    )
    searched = stage_targets(r, zoo, part, dis, models, task, scores, budgets)

    probe = last_block_probe(zoo, dis, scores)
    budgets, recipes = start_eta(r, zoo, task, models, budgets, donor_ms, Recipes.of(opts), len(searched), probe)
    r.manifest.budgets = budgets
    r.manifest.recipe = recipes.describe()
    teacher, budgets, recipes, task = teach_and_refit(r, zoo, task, recipes, donor_ms, budgets)
    within = leave_out_dominated(r, donor_ms, final_donors(donor_ms, budgets))
    r.manifest.donors = stage_donors(r, zoo, task, recipes.final, donor_ms, within, "final", teacher, evaluate=True)
    budgets, recipes = refit_to_limit(r, task, budgets, recipes, donors_done=True)
    r.manifest.budgets, r.manifest.recipe = budgets, recipes.describe()
    ctx = Context(zoo, spec, backend, precision, part, dis, model, task, recipes, fitter, scores, teacher, models)
    ctx.selected = searched if len(searched) < len(models) else []
    for i, b in enumerate(list(budgets)):
        aoti = opts.aoti and i == len(budgets) // 2
        res = stage_budget(r, ctx, b, aoti=aoti)
        for attempt in range(REDERIVES if not opts.budgets else 0):
            if not res.fastest_measured_ms:
                break
            res = rederive_budget(r, ctx, budgets, i, res.fastest_measured_ms, aoti, attempt)
        r.manifest.results.append(res)
        ctx.carried += [f.plan for f in res.finalists or [] if f.seams]
    r.manifest.results.sort(key=lambda res: res.budget_ms)  # as `budgets`: a raised budget may pass the next
    feasible = [res for res in r.manifest.results if res.feasible]
    if feasible:
        stage_final_pass(r, ctx)
    if opts.family:
        r.manifest.family = stage_family(r, ctx)
    r.set_aside_earlier()
    r.manifest.status = "done" if feasible else "no-feasible-budget"
    r.manifest.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    r.stage("report", lambda: None, lambda: write_report(r.out, r.manifest, zoo, sim, part, prof, rows))
    r.save()
    if not feasible:
        f = fastest(program_data(zoo, part, dis, model, task.num_classes, scores()))
        at = f"{f.latency_ms:.4f} ms" if f else "(none assembles)"
        raise DeryError(
            f"no budget was feasible on {spec.id}; the fastest assembly is predicted at {at} "
            f"(report: {r.out / 'report.md'})",
            "run",
        )
    verdicts = [(res, res.export.budget) for res in feasible if res.export and res.export.budget]
    for _, v in verdicts:
        if v.status == "undecided":
            r.say(f"  [yellow]{v.line()}[/]" if r.console else f"  {v.line()}")
    over = [(res, v) for res, v in verdicts if v.over]
    if over and not opts.allow_over_budget:
        _, worst = max(over, key=lambda rv: (rv[1].measured_ms or 0.0) / rv[0].budget_ms)
        raise DeryError(
            f"{len(over)} shipped artifact(s) over budget, e.g. {worst.line()}; "
            f"see {r.out / 'report.md'}, or pass --allow-over-budget to accept them",
            "run",
        )
