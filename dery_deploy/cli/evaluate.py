"""`dery evaluate`: accuracy, per-class accuracy, confusion matrix and latency of a run.

Examples:
    dery evaluate run/
    dery evaluate run_vit/ --data fashion-mnist --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dery_deploy.cli.common import console


def evaluate(run: Path = typer.Argument(..., help="run directory of `dery finetune`"),
             data: Optional[str] = typer.Option(None, "--data", help="task data (default: the run's)"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Evaluate a fine-tuned plan or donor on the task's test set."""
    from dery_deploy.data.task import load_task
    from dery_deploy.train.evaluate import evaluate_model
    from dery_deploy.train.finetune import load_run_model
    from dery_deploy.zoo.load import get_zoo

    model, cfg = load_run_model(run)
    zoo = get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    task = load_task(data or cfg["data"], zoo)
    name = cfg["source"].get("donor") or "reassembled"
    res = evaluate_model(model, task, Path(run), name)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    table = Table("class", "accuracy (%)", title=f"{run}: top-1 {res['top1']:.2f}% on {res['test_images']} images, "
                  f"{res['params_m']:.3f} M params, {res['latency_ms_torch_eager_cpu_b1']:.3f} ms (eager, b1, here)")
    for c, a in res["per_class"].items():
        table.add_row(c, f"{a:.1f}")
    console.print(table)
    console.print(f"confusion matrix: {Path(run) / res['confusion_png']}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
