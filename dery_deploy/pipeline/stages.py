"""The run's stages around its budgets: zoo, similarity, partition, profile, fine-tune, evaluate, export,
donors; each reused when its artifact still matches."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.export.report import ExportRecord, WrittenReport, report_path
from dery_deploy.export.stage import export_run
from dery_deploy.network.plan import Plan
from dery_deploy.partition.cover_set import optimise
from dery_deploy.partition.stage import Partition, make_partition, problem_from
from dery_deploy.pipeline.records import DonorResult
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.thread_screen import DONOR
from dery_deploy.profile.run import run_profile, verify
from dery_deploy.profile.store import Profile, profile_path, read_profile
from dery_deploy.runtime.disturbance import BUSY_CORES, busy_note
from dery_deploy.runtime.evaluate import AccuracyChange
from dery_deploy.runtime.target import Target, backend_of
from dery_deploy.similarity.compute import Similarity, compute_similarity
from dery_deploy.train.evaluate import Evaluation, evaluate_model
from dery_deploy.train.finetune import finetune, load_run_model
from dery_deploy.train.run_folder import FinetuneMetrics, RunFolder
from dery_deploy.train.source import FinetuneSource
from dery_deploy.zoo.summary import DonorRow, zoo_rows


def stage_zoo(r: Run, zoo) -> list[DonorRow]:
    path = r.out / "zoo.json"

    def reuse():
        if path.is_file():
            d = json.loads(path.read_text())
            if d.get("zoo_hash") != zoo.hash():
                return None
            try:
                return [DonorRow.from_dict(row) for row in d["donors"]]
            except TypeError:  # a zoo.json of other columns: listed again
                return None
        return None

    def compute():
        rows = zoo_rows(zoo)
        atomic_write_json(path, {"zoo": zoo.name, "zoo_hash": zoo.hash(), "donors": [row.to_dict() for row in rows]})
        return rows

    return r.stage("zoo", reuse, compute)


def stage_similarity(r: Run, zoo, task: Task) -> Similarity:
    probe_source = r.opts.probe_data or task.spec
    r.say("[bold cyan]> similarity[/]" if r.console else "> similarity")
    r.current = "similarity"
    with r.progress() as prog:
        sim, st = compute_similarity(
            zoo, r.opts.probe, r.opts.seed, cache=r.cache, probe_data=probe_source, progress=prog
        )
    r.record(
        "similarity",
        "reused" if st.computed == 0 else "computed",
        st.seconds,
        f"{st.computed} of {st.pairs} donor pairs computed, {st.probe_images} probe images",
    )
    return sim


def stage_partition(r: Run, zoo, sim: Similarity, dis) -> Partition:
    path = r.out / "partition.json"

    def reuse():
        if not Partition.is_current(path):
            return None
        old = Partition.read(path)
        same = (old.zoo_hash, old.K, old.similarity_key, old.restarts, old.seed) == (
            zoo.hash(),
            r.opts.K,
            sim.key,
            r.opts.restarts,
            r.opts.seed,
        )
        return old if same else None

    def compute():
        problem = problem_from(zoo, sim, r.opts.K, 0.2, dis)
        part = make_partition(zoo, sim, problem, optimise(problem, r.opts.restarts, r.opts.seed), dis, r.opts.seed)
        part.write(path)
        return part

    return r.stage("partition", reuse, compute, lambda p: f"K={p.K}, objective {p.objective:.3f}")


def stage_profile(r: Run, zoo, spec, backend, precision, part, dis, task, target: str = "") -> Path:
    """The target's profile (`target`: its name in this run, with its thread count where it searches several)."""
    batch = r.opts.batch
    path = profile_path(r.cache, spec.id, zoo.name, backend.name, precision, batch, backend.threads)
    before = len(read_profile(path).records) if Profile.is_current(path) else 0
    t = time.time()
    threads = f", {backend.threads} thread(s)" if backend.threads else ""
    name = f"profile ({spec.id}, {backend.name} {precision}, batch {batch}{threads})"
    r.say(f"[bold cyan]> {name}[/]" if r.console else f"> {name}")
    r.current = "profile"
    with r.progress() as prog:
        run_profile(
            zoo,
            spec,
            backend.name,
            precision,
            [batch],
            part,
            dis,
            r.cache,
            task.num_classes,
            prog,
            threads=backend.threads,
            memory=False,  # no run is judged by memory: a fresh compile of every item for nothing (`run_profile`)
        )
    prof = read_profile(path)
    measured = len(prof.records) - before
    if measured and (busy := busy_note(prof.passes)):
        r.say(f"  [yellow]note:[/] {busy}" if r.console else f"  note: {busy}")
    r.record(
        f"profile {target or Target(backend.name, precision)}", "computed" if measured else "reused", time.time() - t,
        f"{measured} items measured",
    )  # fmt: skip
    return path


def stage_donor_profile(r: Run, zoo, spec, backend, precision, part, dis, task, name: str) -> Profile:
    """A further thread count's profile holding at least the per-call overhead and the whole donors, what its
    screen reads (`thread_screen.py`): the profile's first items, measured in one pass where they are missing."""
    path = profile_path(r.cache, spec.id, zoo.name, backend.name, precision, r.opts.batch, backend.threads)
    first = 1 + len(zoo.donor_names)  # the overhead item, then each whole donor (`profile.items.profile_items`)
    have = 0
    if Profile.is_current(path):
        have = sum(k.startswith((DONOR, "overhead|")) for k in read_profile(path).records)
    t = time.time()
    if have < first:
        title = f"screen {name} on its whole donors"
        r.say(f"[bold cyan]> {title}[/]" if r.console else f"> {title}")
        r.current = "profile"
        with r.progress() as prog:
            run_profile(
                zoo, spec, backend.name, precision, [r.opts.batch], part, dis, r.cache, task.num_classes, prog,
                limit=first, threads=backend.threads, memory=False,
            )  # fmt: skip
    # not named "profile ...": the time estimate reads those stages as whole profiles (`estimate.item_seconds`)
    r.record(f"screen {name} on its whole donors", "computed" if have < first else "reused", time.time() - t)
    return read_profile(path)


def check_is_current(prof: Profile, n: int, seed: int, partition_key: str) -> bool:
    """Whether the profile's latency check still stands: made with these assemblies on this partition, timed
    as a budget is judged (`measured_as`), and not before the profile held its donors' prefixes (such a check
    judged blocks alone only; checked again, a run folder from before blocks in context gets the model that
    predicts better here)."""
    v = prof.verify
    if not v or (v.n, v.seed, v.partition_key, v.measured_as) != (n, seed, partition_key, "promise"):
        return False
    return v.context_errors is not None or not any(k.startswith("prefix|") for k in prof.records)


def stage_verify(r: Run, zoo, spec, prof_file: Path, part, dis, target: str = "") -> Profile:
    def reuse():
        prof = read_profile(prof_file)
        return prof if check_is_current(prof, r.opts.verify, r.opts.seed, part.key) else None

    def compute():
        with r.progress() as prog:
            verify(zoo, spec, prof_file, part, dis, r.opts.verify, r.opts.seed, prog)
        return read_profile(prof_file)

    on = f", {target}" if target else ""
    prof = r.stage(f"latency-model check ({r.opts.verify} mixed assemblies{on})", reuse, compute)
    v = prof.verify
    if r.manifest.verify is None:  # the first target's, which the report's latency-model paragraph describes
        r.manifest.verify = v
        r.manifest.profile = str(prof_file.relative_to(r.out))
    on_target = target or prof.backend + "/" + prof.precision
    r.manifest.verify_by_target[on_target] = v
    r.manifest.profile_by_target[on_target] = str(prof_file.relative_to(r.out))
    r.say(
        f"  latency model{on}: median |error| {100 * v.median_abs_rel_error:.2f}%, max "
        f"{100 * v.max_abs_rel_error:.2f}% ({v.speed} item latencies, "
        f"{'blocks in context' if v.context else 'blocks alone'} x {v.scale:.3f})"
    )
    return prof


def made_after(path: Path, checkpoint: Path) -> bool:
    """The one reuse rule for what is computed from a run's checkpoint (an evaluation, an int8 accuracy, an
    export): `path` exists and was written no earlier than `checkpoint`, so a retrained run recomputes it."""
    return path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime


def int8_on(run_dir: Path, task: Task, target: str, threads: int | None, split: str) -> AccuracyChange:
    """The run's network as QDQ INT8 on the target's runtime against itself in fp32 on a split
    (`runtime.evaluate.accuracy_change`); cached beside the run, once for every thread count (accuracy does
    not depend on it)."""
    from dery_deploy.runtime.evaluate import accuracy_change, artifact_runner
    from dery_deploy.runtime.quantize import CALIBRATION_IMAGES, qdq_from_module

    t = Target.parse(target)
    cache = run_dir / f"int8-{split}-{t.backend}-{t.precision}.json"
    ckpt = run_dir / "checkpoint.safetensors"
    if made_after(cache, ckpt):
        return replace(AccuracyChange(**json.loads(cache.read_text())), target=target)
    model, cfg = load_run_model(run_dir)
    qdq = qdq_from_module(model, task.unlabelled_images(CALIBRATION_IMAGES, cfg.seed))
    runtime = artifact_runner(qdq, backend_of(target), threads)
    acc = replace(accuracy_change(model, runtime, task.x(split), task.y(split), split), target=target)
    atomic_write_json(cache, acc.to_dict())
    return acc


def stage_finetune(
    r: Run, name: str, source: FinetuneSource, zoo, task, recipe, run_dir: Path, eval_phase1: bool = False, teacher=None
) -> FinetuneMetrics:
    def reuse():
        if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
            return None
        cfg = RunFolder(run_dir).config()
        want = teacher.describe() if (teacher and recipe.distill) else None
        same = (
            cfg is not None
            and cfg.source == source
            and cfg.task_hash == task.hash()
            and cfg.recipe == asdict(recipe)
            and cfg.teacher == want
        )
        return FinetuneMetrics.read(run_dir / "metrics.json") if same else None

    def compute():
        # another configuration in this folder (an earlier run with other options) is replaced, not refused
        return finetune(
            source,
            zoo,
            task,
            recipe,
            run_dir,
            force=True,
            log=None,
            test=False,
            eval_phase1=eval_phase1,
            teacher=teacher,
        )

    return r.stage(name, reuse, compute, lambda m: f"validation {m.val_accuracy}%")


def stage_evaluate(r: Run, run_dir: Path, task, label: str, latency: tuple | None = None) -> Evaluation:
    """A run folder's network on the task's test split (evaluation.json, reused while newer than its
    checkpoint); its confusion PNG named by its path."""
    path = run_dir / "evaluation.json"
    ckpt = run_dir / "checkpoint.safetensors"

    def reuse():
        if made_after(path, ckpt):
            ev = Evaluation.read(path)
            return ev if (latency is None or ev.latency is not None) else None
        return None

    def compute():
        model, _ = load_run_model(run_dir)
        return evaluate_model(model, task, run_dir, label, latency=latency)

    ev: Evaluation = r.stage(f"evaluate {label}", reuse, compute)
    lat = ev.latency
    flag = "" if not lat or lat.stable else " [yellow](unstable measurement)[/]"
    r.say(
        f"  {label}: top-1 {ev.top1:.2f}%" + (f", measured {lat.median_ms:.4f} ms ({lat.backend}){flag}" if lat else "")
    )
    return replace(ev, confusion_png=str(run_dir / ev.confusion_png))


def stage_export(
    r: Run,
    run_dir: Path,
    fmt: str,
    label: str,
    plan: Plan | None = None,
    out: Path | None = None,
    precision: str | None = None,
) -> ExportRecord:
    """Export a run (into `out`, default RUN/export), held to `plan`'s budget (default the run's own plan)."""
    out = out or run_dir / "export"
    path = report_path(out, fmt)
    ckpt = run_dir / "checkpoint.safetensors"

    def reuse():
        if not made_after(path, ckpt):
            return None
        rep = json.loads(path.read_text())
        planned_ms = plan.budget.latency_ms if plan and plan.budget else None
        same_budget = (rep.get("budget") or {}).get("budget_ms") == planned_ms
        same_precision = precision is None or rep.get("precision") == precision
        return ExportRecord.of_report(rep) if (same_budget or plan is None) and same_precision else None

    def compute():
        try:
            written = export_run(
                run_dir, fmt, precision, None, out, None, allow_over_budget=True, force=True, plan=plan,
                accept_int8_loss=True,
            )  # fmt: skip
        except DeryError as e:
            return ExportRecord(fmt, error=str(e))
        assert isinstance(written, WrittenReport)  # no bundle was asked for
        # read as a reused report is read, so a computed export and a reused one record alike
        return ExportRecord.of_report(written.to_dict())

    rep = r.stage(f"export {fmt} ({label})", reuse, compute)
    if rep.parity is not None:
        b = rep.budget
        verdict = f" {b.word()}" if b is not None and b.checked else ""
        check = (
            f"int8 test top-1 {rep.int8.int8_top1:.2f}% ({rep.int8.int8_top1_change:+.2f} points vs fp32)"
            if rep.precision == "int8" and rep.int8 is not None
            else f"parity {rep.parity.max_abs_diff:.1e}"
        )
        busy = " (timed on a busy machine)" if (rep.other_load_cores or 0) > BUSY_CORES else ""
        r.say(f"  {fmt} {rep.precision or ''}: {check}, {rep.latency_ms:.4f} ms{verdict}{busy}")
    else:
        r.say(f"  {fmt}: {rep.error}")
    return rep


def stage_donors(
    r: Run,
    zoo,
    task,
    recipe,
    donor_ms: dict[str, float],
    names: list[str],
    tag: str,
    teacher=None,
    evaluate: bool = False,
) -> dict[str, DonorResult]:
    """Donors trained with `recipe` (whole, with a new classifier): teacher candidates (`ce`) or the
    baselines every pick is compared with (`final`, the same recipe as the picks)."""
    donors = {}
    for name in sorted(names, key=lambda n: (donor_ms[n], n)):
        ddir = r.out / "donors" / tag / name
        m = stage_finetune(
            r,
            f"fine-tune donor {name} ({tag}, {donor_ms[name]:.3f} ms)",
            FinetuneSource.of_donor(name, zoo.ref),
            zoo,
            task,
            recipe,
            ddir,
            teacher=teacher,
        )
        donors[name] = DonorResult(m.val_accuracy, donor_ms[name], str(ddir))
        if evaluate:
            ev = stage_evaluate(r, ddir, task, f"donor {name}")
            d = donors[name]
            d.top1, d.per_class, d.params_m, d.confusion_png = ev.top1, ev.per_class, ev.params_m, ev.confusion_png
    return donors
