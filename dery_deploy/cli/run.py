"""`dery run`: the main job on the embedded default (the Fashion-MNIST zoo on this machine).

Examples:
    dery run                         # everything, about 10 minutes on a 2-core CPU
    dery run --quick                 # one budget, short training
    dery run --budgets 0.5,1 -o runs/mine --epochs-full 10
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dery_deploy.cli.common import console, parse_float_list


def run(zoo: str = typer.Option("fashion", "--zoo"),
        device: Optional[str] = typer.Option(None, "--device", help="device id (default: this machine's)"),
        backend: Optional[str] = typer.Option(None, "--backend", help="default: the device's"),
        budgets: Optional[str] = typer.Option(None, "--budgets", help="latency budgets in ms (default: from donor latencies)"),
        data: str = typer.Option("fashion-mnist:labels_per_class=100", "--data"),
        K: int = typer.Option(4, "-K", "--sets"),
        epochs_adapter: int = typer.Option(4, "--epochs-adapter"),
        epochs_full: int = typer.Option(6, "--epochs-full"),
        top: int = typer.Option(10, "--top"),
        verify: int = typer.Option(10, "--verify"),
        quick: bool = typer.Option(False, "--quick", help="one budget, 1+2 epochs, fewer candidates (about 2 minutes)"),
        no_aoti: bool = typer.Option(False, "--no-aoti", help="skip the AOTInductor export"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("runs/default"), "-o", "--out", help="run directory (reused on rerun)")) -> None:
    """Similarity, partition, profile, then per budget assemble, fine-tune, evaluate, export; writes report.md."""
    from dery_deploy.cli.similarity import progress_bar
    from dery_deploy.pipeline import RunOptions, run as run_pipeline

    opts = RunOptions(zoo=zoo, device=device, backend=backend,
                      budgets=parse_float_list(budgets, "--budgets") if budgets else None, data=data, K=K,
                      epochs_adapter=epochs_adapter, epochs_full=epochs_full, top=top, verify=verify, aoti=not no_aoti,
                      quick=quick, seed=seed, out=str(out))
    res = run_pipeline(opts, console, progress_bar)
    console.print(f"[bold green]done[/] in {res['seconds']:.0f} s: report {out / 'report.md'} (and report.html)")
    for r in res["results"]:
        if "top1" in r:
            best_donor = r["donors_within_budget"][0] if r["donors_within_budget"] else None
            vs = (f"; best donor within budget: {best_donor} {res['donors'][best_donor]['top1']:.2f}%" if best_donor
                  else "; no donor fits this budget")
            console.print(f"  {r['budget_ms']:g} ms: reassembled {r['top1']:.2f}% at {r.get('measured_ms', 0):.4f} ms{vs}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
