"""`dery export`: compile a fine-tuned run and verify parity and the latency budget.

Examples:
    dery export run/ --format onnx
    dery export run/ --format aoti
    dery export run/ --format tensorrt --precision fp16          # where TensorRT is installed
    dery export run/ --format tensorrt --device jetson-orin-nano --bundle ship/
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dery_deploy.cli.common import console


def export(run: Path = typer.Argument(..., help="run directory of `dery finetune`"),
           fmt: str = typer.Option("onnx", "--format", help="onnx, tensorrt or aoti"),
           precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16"),
           device: Optional[str] = typer.Option(None, "--device", help="target device id (jetson ids need --bundle)"),
           bundle: Optional[Path] = typer.Option(None, "--bundle", help="write ONNX + build script for an edge device"),
           out: Optional[Path] = typer.Option(None, "-o", "--out", help="output folder (default RUN/export)"),
           allow_over_budget: bool = typer.Option(False, "--allow-over-budget"),
           force: bool = typer.Option(False, "--force", help="overwrite existing artifacts")) -> None:
    """Export, check parity against PyTorch, measure, and compare with the plan's budget."""
    from dery_deploy.export.stage import export_run

    rep = export_run(run, fmt, precision, device, out, bundle, allow_over_budget, force)
    if rep["format"] == "tensorrt-bundle":
        console.print(f"bundle for {rep['device']} -> {rep['bundle']}: copy it to the device and run build_engine.sh")
        return
    if rep.get("load_ok") is False:
        console.print(f"[red]{rep['error']}[/]")
        raise typer.Exit(3)
    par = rep["parity"]
    console.print(f"{rep['format']}: {rep['artifact']} parity max |diff| {par['max_abs_diff']:.2e} on {par['images']} images, "
                  f"top-1 identical: {par['top1_identical']}; latency {rep['latency_ms']:.4f} ms ({rep['latency_backend']})")
    b = rep.get("budget", {})
    if b.get("checked"):
        console.print(f"budget {b['budget_ms']:g} ms: predicted {b['predicted_ms']:.4f} ms, measured {b['measured_ms']:.4f} ms "
                      f"-> {'[green]within budget[/]' if b['within_budget'] else '[red]OVER BUDGET (allowed)[/]'}")
    elif b:
        console.print(f"budget not checked: {b.get('reason')}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
