"""Compile and verify: ONNX (ONNX Runtime), OpenVINO IR, TensorRT engines, AOTInductor packages,
edge bundles.

Every export writes `report-<format>.json` (`export.report`): parity against PyTorch on the task's test
images (`export.checks`: an INT8 artifact is held to its top-1 change on the whole test split instead),
the artifact's latency measured here, and the budget check (`export.verdict`). Over budget fails unless
allowed. One exporter per format (`export.formats`); `export_run` is the short driver: resolve the inputs,
export, judge, write the report, enforce.
"""

from __future__ import annotations

from pathlib import Path

from dery_deploy.artifacts import make_output_dir
from dery_deploy.data.task import Task, load_task
from dery_deploy.errors import DeryError
from dery_deploy.export.bundle import BundleReport, jetson_bundle
from dery_deploy.export.checks import PARITY_IMAGES
from dery_deploy.export.formats import PRECISIONS, Exporter, ExportJob, get_exporter
from dery_deploy.export.package import check_one_package, write_package
from dery_deploy.export.report import ExportReport, WrittenReport, report_path, write_bundle_report
from dery_deploy.export.verdict import budget_check
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.devices import DeviceSpec, get_device
from dery_deploy.runtime.quantize import CALIBRATION_IMAGES
from dery_deploy.train.finetune import load_run_model
from dery_deploy.zoo.load import get_zoo


def export_precision(fmt: str, precision: str | None, plan: Plan | None, spec: DeviceSpec | None) -> str:
    """The precision to export: the one asked for, else the plan's, else the device's default; a
    plan's precision the format does not have (fp16 planned, ONNX for the CPU) falls back to fp32."""
    allowed = PRECISIONS[fmt]
    if precision is not None:
        if precision not in allowed:
            known = sorted({p for ps in PRECISIONS.values() for p in ps})
            if precision not in known:
                raise DeryError(f"--precision must be one of {', '.join(known)}, got {precision!r}", "export")
            others = [f for f, ps in PRECISIONS.items() if precision in ps]
            raise DeryError(
                f"--format {fmt} exports {' or '.join(allowed)}, not {precision}; for {precision} use --format "
                f"{' or '.join(others)}",
                "export",
            )
        return precision
    prec = (plan.precision if plan else None) or (spec.default_precision if spec else "fp32")
    return prec if prec in allowed else "fp32"


def shipped_top1(rep: ExportReport, out: Path, task: Task, threads: int | None) -> float | None:
    """The artifact's own test top-1 (%): measured by the INT8 check, else run here on the test split
    (ONNX Runtime and OpenVINO files); None for an fp32 / fp16 engine (its parity is what is checked)."""
    return get_exporter(rep.format).shipped_top1(rep, out, task, threads)


def resolve(
    run: Path, fmt: str, precision: str | None, device: str | None, out: Path | None, plan: Plan | None
) -> ExportJob:
    """The run's network, the plan it is held to, and what the file is made and measured as: the precision,
    the plan's batch, thread count and percentile, the task's parity images."""
    model, cfg = load_run_model(run)
    zoo = get_zoo(cfg.zoo_ref)
    plan = plan or cfg.plan
    spec = get_device(device) if device else (get_device(plan.device) if plan and plan.device else None)
    prec = export_precision(fmt, precision, plan, spec)
    batch = int(plan.batch) if plan else 1
    threads = plan.threads if plan else (spec.default_threads if spec else None)
    percentile = int(plan.budget.percentile or 50) if plan and plan.budget else 50
    seed = cfg.seed
    task = load_task(cfg.data, zoo.input, seed=seed)
    x = task.x("test")[:PARITY_IMAGES].contiguous()
    folder = Path(out or Path(run) / "export")
    return ExportJob(model, x, folder, prec, batch, threads, percentile, task, seed, spec, plan)


def ship_bundle(job: ExportJob, fmt: str, plan: Plan | None, bundle: Path, force: bool) -> BundleReport:
    """An edge bundle instead of an engine: the ONNX and the scripts that build and check it on the device."""
    spec = job.spec
    if fmt != "tensorrt" or spec is None or spec.kind != "jetson":
        raise DeryError("--bundle is for `--format tensorrt --device <jetson id>`", "export")
    if bundle.exists() and any(bundle.iterdir()) and not force:
        raise DeryError(f"bundle folder {bundle} exists; pass --force or choose another", "export")
    calibration = job.task.unlabelled_images(CALIBRATION_IMAGES, job.seed) if job.precision == "int8" else None
    shipped = jetson_bundle(job.model, job.x, spec, bundle, job.precision, job.batch, plan, calibration=calibration)
    write_bundle_report(bundle, shipped)
    return shipped


def judge(rep: ExportReport, exporter: Exporter, job: ExportJob, plan: Plan | None, replace: bool = False) -> None:
    """Hold a measured artifact to the plan's budget, and write its package (deploy.json) beside it
    (`replace`: in place of another artifact's package in the folder)."""
    measured = rep.measurement
    if measured is None:  # it did not run here: nothing to judge or ship
        return
    ran_with = job.threads if rep.device == "cpu" else (plan.threads if plan else None)
    rep.budget = budget_check(plan, measured, rep.device, rep.precision, rep.batch, ran_with)
    if exporter.packaged:
        top1 = exporter.shipped_top1(rep, job.out, job.task, job.threads)
        write_package(job.out, rep, job.task, plan, measured, job.threads, top1, replace=replace)


def enforce(
    rep: ExportReport, exporter: Exporter, out: Path, plan: Plan | None, allow_over_budget: bool, accept_int8_loss: bool
) -> None:
    """Fail an artifact whose outputs or accuracy are off, or that is over budget (unless allowed)."""
    fmt, par, see = rep.format, rep.parity, report_path(out, rep.format)
    if par is not None and not par.ok and rep.precision == "int8" and not accept_int8_loss:
        assert rep.int8 is not None and rep.int8.int8_top1_change is not None
        raise DeryError(
            f"{fmt} int8 accuracy: top-1 {rep.int8.int8_top1:.2f}% against fp32 {rep.int8.fp32_top1:.2f}% on "
            f"{par.images} test images, {rep.int8.int8_top1_change:+.2f} points (tolerance "
            f"-{par.tolerance:g}); ship --precision fp32, see {see}",
            "export",
        )
    if par is not None and not par.ok and rep.precision != "int8":
        raise DeryError(
            f"{fmt} parity failed: max |diff| {par.max_abs_diff:.3g} (tolerance {par.tolerance:g}), top-1 "
            f"agreement {100 * par.top1_agreement:.1f}%; see {see}",
            "export",
        )
    if rep.budget and rep.budget.over and not allow_over_budget:
        planned = plan.backend if plan else None
        if exporter.backend == planned:
            fix = "re-assemble under a lower budget"
        else:  # another runtime than the one the plan was measured with: a lower budget would not help
            fix = (
                f"the plan was measured with {planned}, and the {fmt} runtime is slower here: ship the plan's "
                f"format, or profile with the {fmt} runtime's backend and re-assemble"
            )
        raise DeryError(
            f"{rep.budget.line()}; the {fmt} artifact does not keep the budget: {fix}, or pass --allow-over-budget "
            "to accept it",
            "export",
        )


def export_run(
    run: Path,
    fmt: str,
    precision: str | None,
    device: str | None,
    out: Path | None,
    bundle: Path | None,
    allow_over_budget: bool,
    force: bool,
    plan: Plan | None = None,
    accept_int8_loss: bool = False,
) -> WrittenReport | BundleReport:
    """Export a fine-tuned run, check parity, measure, and hold the artifact to the plan's budget.

    Args:
        plan: the plan the artifact must keep (default: the run's own); a donor run picked as a
            budget's plan is held to that plan's budget.
        accept_int8_loss: record an INT8 artifact's test accuracy change instead of failing beyond the
            tolerance (`dery run`, whose pick already weighed the INT8 change on validation).

    Returns:
        the report as written (`report-<format>.json`), or an edge bundle's report (`bundle` given).
    """
    exporter = get_exporter(fmt)
    if precision is not None:
        export_precision(fmt, precision, None, None)  # a precision the format lacks: said before any work
    job = resolve(run, fmt, precision, device, out, plan)
    plan = job.plan
    if bundle is not None:
        return ship_bundle(job, fmt, plan, bundle, force)
    exporter.refuse(job.spec)  # (TensorRT for a Jetson: said how to build it there)
    if device and job.spec is not None and job.spec.kind == "jetson":  # it cannot be built or measured here
        raise DeryError(
            f"--device {device} is an edge device: add --bundle DIR (with --format tensorrt) to write the ONNX and "
            "the scripts that build and check it there",
            "export",
        )
    artifact = job.out / exporter.artifact(job.precision)
    if artifact.exists() and not force:
        raise DeryError(f"{artifact} exists; pass --force to overwrite it", "export")
    if exporter.packaged:  # a folder is one package: refused before any file of the new one is written
        check_one_package(job.out, fmt, artifact.name, replace=force)
    make_output_dir(job.out, "output folder", "export")
    rep = exporter.export(job)
    judge(rep, exporter, job, plan, replace=force)
    written = rep.write(job.out, run)
    enforce(rep, exporter, job.out, plan, allow_over_budget, accept_int8_loss)
    return written
