"""`dery run`: the main job on the embedded default (the Fashion-MNIST zoo on this machine), or on
your zoo and task.

Examples:
    dery run                         # everything, about 10 minutes on a 2-core CPU
    dery run --quick                 # one budget, short training (about 2 minutes)
    dery run --budgets 0.2,0.3 -o runs/mine --epochs-full 10
    dery run --zoo my_zoo.yaml --data ~/images/task -o runs/task
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.cli.common import console, parse_float_list, progress_bar
from dery_deploy.data.task import DEFAULT_DATA
from dery_deploy.pipeline import RunOptions
from dery_deploy.pipeline import run as run_pipeline


def run(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    data: str = typer.Option(
        DEFAULT_DATA, "--data", help="your task: a folder with train/ and test/, or fashion-mnist[:options]"
    ),
    probe_data: str | None = typer.Option(
        None, "--probe-data", help="unlabelled images for similarity (default: the task's)"
    ),
    device: str | None = typer.Option(None, "--device", help="device id (default: this machine's)"),
    backend: str | None = typer.Option(None, "--backend", help="default: the device's"),
    budgets: str | None = typer.Option(None, "--budgets", help="latency budgets in ms (default: from donor latencies)"),
    K: int = typer.Option(4, "-K", "--sets", help="equivalence sets (blocks per donor)"),
    epochs_adapter: int = typer.Option(4, "--epochs-adapter"),
    epochs_full: int = typer.Option(6, "--epochs-full"),
    top: int = typer.Option(10, "--top"),
    verify: int = typer.Option(10, "--verify", help="mixed assemblies measured to check the latency model"),
    quick: bool = typer.Option(False, "--quick", help="one budget, 1+2 epochs, fewer candidates (about 2 minutes)"),
    no_aoti: bool = typer.Option(False, "--no-aoti", help="skip the AOTInductor export"),
    allow_over_budget: bool = typer.Option(
        False, "--allow-over-budget", help="finish without an error when a shipped artifact measures over its budget"
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/default"), "-o", "--out", help="run directory (reused on rerun)"),
    as_json: bool = typer.Option(False, "--json", help="print the run's results as JSON at the end"),
) -> None:
    """Similarity, partition, profile, then per budget assemble, fine-tune, evaluate, export; writes report.md."""
    opts = RunOptions(
        zoo=zoo,
        device=device,
        backend=backend,
        budgets=parse_float_list(budgets, "--budgets") if budgets else None,
        data=data,
        probe_data=probe_data,
        K=K,
        epochs_adapter=epochs_adapter,
        epochs_full=epochs_full,
        top=top,
        verify=verify,
        aoti=not no_aoti,
        allow_over_budget=allow_over_budget,
        quick=quick,
        seed=seed,
        out=str(out),
    )
    m = run_pipeline(opts, None if as_json else console, progress_bar)
    if as_json:
        print(
            json.dumps(
                {"status": m.status, "results": m.results, "donors": m.donors, "seconds": m.seconds},
                indent=2,
                default=str,
            )
        )
        return
    console.print(f"[bold green]done[/] in {m.seconds:.0f} s: report {out / 'report.md'} (and report.html)")
    for r in m.results:
        if "top1" not in r:
            console.print(f"  {r['budget_ms']:g} ms: {r.get('infeasible')}")
            continue
        best = r["donors_within_budget"][0] if r["donors_within_budget"] else None
        vs = f"best fitting donor {best} {m.donors[best]['top1']:.2f}%" if best else "no donor fits"
        mix = r.get("mix")
        reas = f"best reassembled {mix['top1']:.2f}%" if mix else "no reassembled finalist"
        console.print(
            f"  {r['budget_ms']:g} ms: shipped {r['selection']['pick']} ({r['pick_kind']}), test "
            f"{r['top1']:.2f}% at {r.get('measured_ms') or 0:.4f} ms; {reas}; {vs}"
        )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
