"""`dery export`: compile a fine-tuned run, check parity, and hold it to the plan's budget.

Examples:
    dery export run/ --format onnx
    dery export run/ --format openvino --precision int8     # QDQ INT8, top-1 measured against fp32
    dery export run/ --format aoti
    dery export run/ --format tensorrt --precision fp16          # where TensorRT is installed
    dery export run/ --format tensorrt --device jetson-orin-nano --bundle ship/
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.cli.common import console, err_console
from dery_deploy.export.bundle import BundleReport
from dery_deploy.export.formats.aoti import AotiLoadFailure
from dery_deploy.export.package import timed_beside
from dery_deploy.export.stage import export_run
from dery_deploy.runtime.disturbance import BUSY_CORES


def export(
    run: Path = typer.Argument(..., help="run directory of `dery finetune`"),
    fmt: str = typer.Option("onnx", "--format", help="onnx, openvino, tensorrt or aoti"),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32, fp16 (tensorrt, aoti) or int8 (onnx, openvino, tensorrt) (default: the plan's)"
    ),
    device: str | None = typer.Option(None, "--device", help="target device id (jetson ids need --bundle)"),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="write ONNX + build and check scripts for an edge device"
    ),
    out: Path | None = typer.Option(None, "-o", "--out", help="output folder (default RUN/export)"),
    allow_over_budget: bool = typer.Option(
        False, "--allow-over-budget", help="accept an artifact slower than the budget"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite existing artifacts"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Export, check parity against PyTorch, measure, and compare with the plan's budget."""
    written = export_run(run, fmt, precision, device, out, bundle, allow_over_budget, force)
    if as_json:
        print(json.dumps(written.to_dict(), indent=2, default=str))
        return
    if isinstance(written, BundleReport):
        console.print(f"bundle for {written.device} -> {written.bundle}: {written.next}")
        return
    rep = written.report
    if isinstance(rep.file, AotiLoadFailure):
        console.print(f"[red]{rep.file.error}[/]")
        raise typer.Exit(3)
    par, timing = rep.parity, rep.timing
    assert par is not None and timing is not None  # a file that ran here: checked and timed
    flag = "" if timing.latency_stable else " [yellow](unstable measurement)[/]"
    if rep.precision == "int8":
        i8 = rep.int8
        assert i8 is not None and i8.int8_top1_change is not None and i8.int8_top1_change_se is not None
        check = (
            f"int8 top-1 {i8.int8_top1:.2f}% vs fp32 {i8.fp32_top1:.2f}% on {par.images} test images "
            f"({i8.int8_top1_change:+.2f} ± {i8.int8_top1_change_se:.2f} points)"
        )
    else:
        check = (
            f"parity max |diff| {par.max_abs_diff:.2e} on {par.images} images, top-1 identical: {par.top1_identical}"
        )
    console.print(
        f"{rep.format}: {rep.artifact} {check}; latency {timing.latency_ms:.4f} ms ({rep.latency_backend}){flag}"
    )
    _, other_load_cores = timed_beside(rep.file)
    if (other_load_cores or 0) > BUSY_CORES:
        err_console.print(
            f"[yellow]note:[/] other processes used {other_load_cores:.2f} cores while the artifact was timed: "
            "its latency is a busy machine's; measure it again with nothing else running (dery bench)",
            soft_wrap=True,
        )
    b = rep.budget
    if b is not None:
        style = {"within": "green", "over": "red", "undecided": "yellow"}.get(b.status, "dim")
        console.print(f"[{style}]{b.line()}[/]" + (" (allowed)" if b.over else ""))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
