"""One budget: assemble and select, heal the best mix, pick, export."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.assemble.candidates import DONOR_NEAR, DONOR_TRAINED_NEAR, CandidateRecord
from dery_deploy.assemble.measure import NoFinalistKeeps
from dery_deploy.assemble.stage import AssembleRequest, assemble
from dery_deploy.errors import DeryError
from dery_deploy.export.formats import EXPORT_FORMAT
from dery_deploy.network.plan import Plan, load_plan, save_plan_with_weights
from dery_deploy.pipeline.budgets import final_donors, round_up
from dery_deploy.pipeline.context import Context
from dery_deploy.pipeline.expected import put_back_heal
from dery_deploy.pipeline.pick import (
    last_rung_accuracy,
    mix_ruled_out,
    pick_triple,
    retarget,
    score_triples,
)
from dery_deploy.pipeline.records import BudgetResult, MixResult, Pick, SelectionFile
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.stages import stage_donors, stage_evaluate, stage_export, stage_finetune
from dery_deploy.train.run_folder import RunFolder
from dery_deploy.train.select import SCREEN_FOLDS, Finalist, default_folds, select
from dery_deploy.train.source import FinetuneSource

# a budget the run chose itself and its finalists then measured over is raised to the fastest finalist's
# measurement plus this much: the passes of one run were seen to disagree by up to 40% on a drifting host
REDERIVE_MARGIN = 0.05
REDERIVES = 3  # times a default budget is raised before the run says it is infeasible
INFEASIBLE_FILE = "infeasible.json"  # RUN/budget-<b>ms/: every finalist measured over it (`_reuse_infeasible`)


def rederive_budget(
    r: Run, ctx: Context, budgets: list[float], i: int, fastest_ms: float, aoti: bool, attempt: int = 0
) -> BudgetResult:
    """A default budget that the finalists' own measurement found infeasible (the profile predicted them
    within it) is raised to what they measured, said on the terminal, and assembled again; the margin
    doubles with each `attempt` (the finalists' next pass can measure slower again: seen +5% on a
    quiet 2-core VM for 0.1 ms networks). A raised budget is searched on every target: the targets left
    out of selection were judged at the budgets before it (`target_stage.py`)."""
    new = round_up(fastest_ms * (1 + REDERIVE_MARGIN * 2**attempt))
    r.say(
        f"  note: budget {budgets[i]:g} ms was chosen from the profile, but every finalist measured slower when built "
        f"(the fastest {fastest_ms:.4f} ms): the machine runs slower now than when it was profiled; raised to "
        f"{new:g} ms"
    )
    budgets[i] = new
    r.manifest.budgets = sorted(set(budgets))
    donor_ms = r.manifest.donor_latency_ms
    left = r.manifest.dominated_donors
    untrained = [n for n in final_donors(donor_ms, [new]) if n not in r.manifest.donors and n not in left]
    if untrained:  # the raised budget may pick a donor no smaller budget could: it is trained to ship first
        z, t = ctx.zoo, ctx.task
        r.manifest.donors.update(
            stage_donors(r, z, t, ctx.recipes.final, donor_ms, untrained, "final", ctx.teacher, evaluate=True)
        )
    pruning = r.manifest.target_pruning
    if pruning and pruning.dropped:
        pruning.restored_at.append(new)
        dropped = ", ".join(d.target for d in pruning.dropped)
        r.say(f"  note: {new:g} ms is searched on every target ({dropped} included)")
        ctx = replace(ctx, selected=[])
    return stage_budget(r, ctx, new, aoti=aoti)


def stage_budget(r: Run, ctx: Context, b: float, aoti: bool) -> BudgetResult:
    """One budget: candidates on every target and measured (network, target) finalists, selection by
    evidence on validation, healing of the best mixed plan with the final recipe, the pick among the
    measured (network, runtime, precision) triples, then its evaluation and exports."""
    bdir = r.budget_dir(b)
    entry = BudgetResult(b)
    sel = _selected(r, ctx, b, bdir, entry)
    if sel is None:
        return entry
    s = sel.selection
    entry.candidates, entry.finalists = sel.candidates, sel.finalists
    entry.rejected_over_budget = sel.rejected_over_budget
    entry.solver, entry.margin, entry.selection = sel.solver, sel.margin, s
    paths = {(f.plan, f.target): bdir / str(f.path) for f in sel.finalists}
    ruled_out = mix_ruled_out(r, ctx, sel) if s.best_mix and not r.opts.heal_every_mix else None
    if ruled_out and s.best_mix:  # (only a best mix is ruled out)
        entry.mix_not_healed = f"{ruled_out.rule}, at any accuracy healing could give it"
        r.say(f"  {s.best_mix} not healed: it cannot be picked ({entry.mix_not_healed}; --heal-every-mix heals it)")
        for stage in mix_stages(s.best_mix, b):
            r.record(stage, "skipped", 0.0, "selection rules the mix out")
    elif s.best_mix:
        before = healed_before(r, ctx, b, s.best_mix, paths)
        if before is not None:
            entry.mix, entry.run_mix = before
        else:
            put_back_heal(r, b)  # (where the estimate expected it ruled out, or read back)
            entry.mix = heal_best_mix(r, ctx, b, bdir, s.best_mix, paths)
            entry.run_mix = str(bdir / "mix")
        entry.mix.selection_accuracy = last_rung_accuracy(s).get(s.best_mix)
        carry_better_mix(r, entry, sel)
    triples = score_triples(r, ctx, sel, entry.mix, Path(entry.run_mix) if entry.mix and entry.run_mix else None)
    pick = ruled_out or pick_triple(triples, s)
    entry.triples = triples
    plan, run_dir = ship_pick(r, entry, pick, paths, bdir)
    timing = entry.export.timing if entry.export else None  # (None: the export failed or did not run here)
    again = retarget(pick, triples, timing.at(r.opts.percentile) if timing else None)
    if again is not None and (again.network, again.target) in paths:
        shutil.rmtree(bdir / "export", ignore_errors=True)  # a folder holds one package: the first target's goes
        plan, run_dir = ship_pick(r, entry, again, paths, bdir)
    if aoti:
        entry.aoti = stage_export(r, run_dir, "aoti", f"pick {b:g} ms", plan=plan, out=bdir / "export")
    return entry


def ship_pick(
    r: Run, entry: BudgetResult, pick: Pick, paths: dict[tuple[str, str], Path], bdir: Path
) -> tuple[Plan, Path]:
    """Export `pick` into the budget's export folder as it ships, with its accuracy and figures in `entry`."""
    entry.pick_triple = pick
    r.say(f"  pick: {pick.network} on {pick.target} ({pick.rule})")
    plan = load_plan(paths[(pick.network, pick.target)])
    fmt = EXPORT_FORMAT.get(plan.backend, "onnx")
    run_dir = take_pick(r, entry, pick.kind, plan)
    entry.plan, entry.fp32_top1 = plan, None
    entry.export_format = fmt
    entry.export_dir = str(bdir / "export")
    label = f"{pick.kind} {pick.network}"[:60]
    entry.export = stage_export(r, run_dir, fmt, label, plan=plan, out=bdir / "export", precision=plan.precision)
    int8 = entry.export.int8
    if plan.precision == "int8" and int8 is not None and int8.int8_top1 is not None:
        entry.fp32_top1, entry.top1 = entry.top1, int8.int8_top1
    entry.measured_ms = entry.export.latency_ms
    return plan, run_dir


def _selected(r: Run, ctx: Context, b: float, bdir: Path, entry: BudgetResult) -> SelectionFile | None:
    """The budget's assembly and selection (reused where its inputs hold), or None with `entry` saying why
    nothing fits: every finalist measured over it (kept for a rerun, `_reuse_infeasible`), or no assembly does."""
    key = selection_key(r, ctx)
    earlier = _reuse_infeasible(bdir, key)
    if earlier is not None:
        _infeasible(r, b, entry, earlier, f"infeasible when measured in an earlier run: {earlier}")
        return None
    try:
        return r.stage(
            f"assemble and select under {b:g} ms",
            lambda: _reuse_selection(bdir, key),
            lambda: assemble_and_select(r, ctx, b, bdir),
            lambda o: o.selection.pick,
        )
    except DeryError as e:
        if isinstance(e, NoFinalistKeeps):
            found = {"key": key, "fastest_ms": e.fastest_ms, "message": e.args[0]}
            atomic_write_json(bdir / INFEASIBLE_FILE, found)
        _infeasible(r, b, entry, e)
        return None


def _infeasible(r: Run, b: float, entry: BudgetResult, e: DeryError, reused: str = "") -> None:
    """`entry` says nothing fits `b` and why; the run records it (as reused where `reused` says from where)."""
    entry.infeasible = str(e)
    if isinstance(e, NoFinalistKeeps):
        entry.fastest_measured_ms = e.fastest_ms
    # (the failed stage left no record: `Run.stage` records a stage once it returns)
    r.record(f"assemble {b:g} ms", "reused" if reused else "infeasible", 0.0, reused or str(e))
    r.say(f"  [yellow]{e}[/]" if r.console else f"  {e}")


def take_pick(r: Run, entry: BudgetResult, kind: str, plan: Plan) -> Path:
    """The picked network's run folder, with its accuracy and size copied into `entry`: the healed best
    mix's, or the whole donor's as the run trained it."""
    if kind == "mix":
        assert entry.mix is not None and entry.run_mix is not None
        mix = entry.mix
        entry.pick_kind, entry.run = "mix", entry.run_mix
        entry.top1, entry.per_class, entry.params_m = mix.top1, mix.per_class, mix.params_m
        entry.confusion_png, entry.val_accuracy = mix.confusion_png, mix.val_accuracy
    else:
        d = r.manifest.donors[plan.blocks[0].donor]
        entry.pick_kind, entry.run = "donor", d.run
        entry.top1, entry.val_accuracy = d.top1, d.val_accuracy
        entry.params_m, entry.per_class, entry.confusion_png = d.params_m, d.per_class, d.confusion_png
    return Path(entry.run)


def selection_key(r: Run, ctx: Context) -> dict:
    """What a budget's assembly and selection depend on, beyond the budget itself."""
    return {
        "partition": ctx.part.key,
        "task": ctx.task.hash(),
        "top": r.opts.top,
        "rungs": list(ctx.recipes.rungs),
        "recipe": asdict(ctx.recipes.ce),
        "targets": [
            [m.profile.backend, m.profile.precision, m.profile.batch, m.profile.threads, len(m.profile.records)]
            for m in ctx.searched
        ],
        "percentile": ctx.model.percentile,
        "carried": ctx.carried,
        "folds": [ctx.recipes.folds or default_folds(ctx.task), SCREEN_FOLDS],
        "donor_near": [DONOR_NEAR, DONOR_TRAINED_NEAR],
        "left_out": sorted(r.manifest.dominated_donors),
        "trained": sorted(r.manifest.donors),
    }


def _reuse_infeasible(bdir: Path, key: dict) -> NoFinalistKeeps | None:
    """An earlier run's finding, for the same inputs, that every finalist measured over this budget: a rerun
    in the folder takes it (and so raises a budget it chose itself to the same figure, whose selection it
    then reuses) instead of measuring again on a machine that may run faster or slower now."""
    path = bdir / INFEASIBLE_FILE
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return NoFinalistKeeps(old["fastest_ms"], old["message"], "assemble") if old.get("key") == key else None


def _reuse_selection(bdir: Path, key: dict) -> SelectionFile | None:
    path = bdir / "selection.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return SelectionFile.from_dict(old) if old.get("key") == key else None


def assemble_and_select(r: Run, ctx: Context, b: float, bdir: Path) -> SelectionFile:
    """Candidates on every target, (network, target) finalists measured in one pass, then selection
    by evidence among the networks (training does not depend on the runtime)."""
    searched = ctx.searched
    with r.progress() as prog:
        res = assemble(
            ctx.zoo,
            ctx.part,
            ctx.dis,
            searched[0],
            ctx.task,
            AssembleRequest(
                b,
                top=r.opts.top,
                seed=r.opts.seed,
                finalists=ctx.recipes.finalists,
                carried=tuple(ctx.carried),
                left_out=tuple(sorted(r.manifest.dominated_donors)),
                trained=tuple(sorted(r.manifest.donors)),
            ),
            more_models=tuple(searched[1:]),
            fitter=ctx.fitter,
            scores=ctx.scores(),
            progress=prog,
        )
    saved, networks = [], {}
    for i, c in enumerate(res.finalists):
        path = save_plan_with_weights(c.plan, c.built, bdir / "finalists" / f"{i:02d}.json")
        saved.append({**c.to_dict(), "path": f"finalists/{i:02d}.json"})
        if c.name not in networks:
            networks[c.name] = Finalist(
                c.name,
                FinetuneSource.of_plan(c.plan, str(path.with_suffix(".safetensors").resolve())),
                c.is_donor,
                c.measured.get("latency_ms"),
            )
    sel = select(
        list(networks.values()), ctx.zoo, ctx.task, bdir / "select", ctx.recipes.ce, rungs=ctx.recipes.rungs,
        log=lambda m: r.say(m), folds=ctx.recipes.folds, reuse=r.out / "cache" / "trials",
    )  # fmt: skip
    out = SelectionFile(
        selection_key(r, ctx),
        [CandidateRecord.of(c.to_dict()) for c in res.candidates],
        [CandidateRecord.of(c) for c in saved],
        [CandidateRecord.of(c.to_dict()) for c in res.rejected],
        res.solver,
        res.margin,
        sel,
    )
    atomic_write_json(bdir / "selection.json", out.to_dict())
    return out


def mix_stages(name: str, b: float) -> tuple[str, str, str]:
    """The names of the stages `heal_best_mix` records for budget `b`'s best mix `name`: heal, evaluation, ONNX
    export (`stage_evaluate` and `stage_export` name the last two from their labels)."""
    return f"heal {name} ({b:g} ms)", f"evaluate best mix {b:g} ms", f"export onnx (best mix {b:g} ms)"


def _mix_source(name: str, paths: dict) -> tuple[Plan, FinetuneSource]:
    """The finalist `name`'s plan (on the first of its targets) and what healing it trains from: the
    adapters its budget's assembly fitted."""
    path = next(p for (n, _), p in paths.items() if n == name)
    plan = load_plan(path)
    return plan, FinetuneSource.of_plan(plan, str(path.with_suffix(".safetensors").resolve()))


def healed_before(r: Run, ctx: Context, b: float, name: str, paths: dict) -> tuple[MixResult, str] | None:
    """The best mix, and its run folder, where a smaller budget of this run healed the same network from the
    same weights (by content: each budget's assembly writes its own copy) with the same recipe, task and
    teacher: read back, not healed again (the same training gives the same network). The best mix tends to
    be one network over a run's larger budgets: on the Xeon host one was healed three times, 43 s each.
    Its heal, evaluation and export are recorded as reused; None where no smaller budget healed it."""
    _, source = _mix_source(name, paths)
    want = None
    teacher = ctx.teacher.describe() if (ctx.teacher and ctx.recipes.final.distill) else None
    for prev in r.manifest.results:
        m = prev.mix
        if m is None or m.carried_from is not None or not prev.run_mix or m.plan.describe() != name:
            continue
        cfg = RunFolder(Path(prev.run_mix)).config()
        if cfg is None or cfg.task_hash != ctx.task.hash() or cfg.recipe != asdict(ctx.recipes.final):
            continue
        if cfg.teacher != teacher:
            continue
        want = want if want is not None else source.trains()
        if cfg.source.trains() != want:
            continue
        note = f"healed at {prev.budget_ms:g} ms from the same weights: read back"
        r.say(f"  {name}: {note}")
        for stage in mix_stages(name, b):
            r.record(stage, "reused", 0.0, note)
        return replace(m, carried_from=prev.budget_ms, replaced=None), prev.run_mix
    return None


def heal_best_mix(r: Run, ctx: Context, b: float, bdir: Path, name: str, paths: dict) -> MixResult:
    """The best mixed plan healed with the final recipe (even when a donor ships: the report compares
    it with the donors trained the same way), evaluated, and exported as ONNX."""
    mix_dir = bdir / "mix"
    plan, source = _mix_source(name, paths)
    metrics = stage_finetune(
        r, mix_stages(name, b)[0], source, ctx.zoo, ctx.task, ctx.recipes.final, mix_dir, eval_phase1=True,
        teacher=ctx.teacher,
    )  # fmt: skip
    ev = stage_evaluate(r, mix_dir, ctx.task, f"best mix {b:g} ms")
    return MixResult(
        plan=plan,
        val_accuracy=metrics.val_accuracy,
        phase1_top1=metrics.phase1_test_accuracy,
        kept=metrics.kept,
        seam_matching=list(metrics.seam_matching),
        top1=ev.top1,
        per_class=ev.per_class,
        params_m=ev.params_m,
        confusion_png=ev.confusion_png,
        export=stage_export(r, mix_dir, "onnx", f"best mix {b:g} ms"),
    )


def carry_better_mix(r: Run, entry: BudgetResult, sel: SelectionFile) -> None:
    """More room never buys a worse reassembled network: where a smaller budget's healed best mix has the
    higher validation accuracy and is a finalist that measured within this budget too, it is this
    budget's best mix as well (the same network, trained the same way: reused, not retrained)."""
    kept = {f.plan for f in sel.finalists}
    assert entry.mix is not None
    here = entry.mix
    for prev in r.manifest.results:
        m = prev.mix
        if not m or prev.budget_ms >= entry.budget_ms or m.val_accuracy is None:
            continue
        name = m.plan.describe()
        if name in kept and m.val_accuracy > (here.val_accuracy or -1):
            here = replace(m, carried_from=prev.budget_ms, replaced=entry.mix.plan.describe())
            entry.run_mix = prev.run_mix
    entry.mix = here
