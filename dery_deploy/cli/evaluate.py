"""`dery evaluate`: accuracy, per-class accuracy, confusion matrix and latency of a run.

Examples:
    dery evaluate run/
    dery evaluate run_vit/ --data fashion-mnist --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.cli.common import Listing, console, show_notes
from dery_deploy.data.task import load_task
from dery_deploy.profile.run import device_for, resolve_backend
from dery_deploy.runtime.devices import get_device, this_machine
from dery_deploy.train.evaluate import evaluate_model
from dery_deploy.train.finetune import load_run_model
from dery_deploy.zoo.load import get_zoo


def evaluate(
    run: Path = typer.Argument(..., help="run directory of `dery finetune`"),
    data: str | None = typer.Option(None, "--data", help="task data (default: the run's)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Evaluate a fine-tuned plan or donor on the task's test set and measure it here."""
    model, cfg = load_run_model(run)
    zoo = get_zoo(cfg.zoo_ref)
    task = load_task(data or cfg.data, zoo.input, cfg.seed)
    task.require_classes(cfg.classes, f"run {run}", "evaluate it on data with the same classes", "evaluate")
    show_notes(task.notes)
    plan = cfg.plan
    here = {s.id: s for s in this_machine()}
    # the plan's backend where this machine is its device, else this machine's default backend
    spec = here.get(plan.device if plan else "") or (this_machine() or [get_device("cpu")])[0]
    on_plan_device = plan is not None and spec.id == plan.device
    backend, precision = resolve_backend(
        spec,
        plan.backend if plan and on_plan_device else None,
        plan.precision if plan and on_plan_device else None,
        plan.threads if plan and on_plan_device else None,
    )
    name = cfg.source.donor or "reassembled"
    res = evaluate_model(model, task, Path(run), name, latency=(backend, precision, device_for(spec)))
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    lat = res.latency
    assert lat is not None and lat.uncertainty is not None  # measured just now
    console.print(
        f"{run}: top-1 [bold]{res.top1:.2f}%[/] on {res.test_images} test images, {res.params_m:.3f} M params"
    )
    warn = "" if lat.stable else "  [yellow]UNSTABLE measurement: the machine was busy; rerun to trust it[/]"
    console.print(
        f"latency {lat.median_ms:.4f} ms (±{100 * lat.uncertainty:.1f}%; p90 {lat.p90_ms:.4f} ms), "
        f"{lat.backend} {lat.precision}, batch 1"
        + (f", {lat.threads} thread(s)" if lat.threads else "")
        + f", on {spec.id}{warn}"
    )
    listing = Listing(None, "class", "accuracy (%)", numbers=("accuracy (%)",))
    for c, a in res.per_class.items():
        listing.add(**{"class": c, "accuracy (%)": f"{a:.1f}"})
    listing.show()
    console.print(f"confusion matrix: {Path(run) / res.confusion_png}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
