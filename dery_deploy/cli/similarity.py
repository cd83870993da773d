"""`dery similarity`: CKA between the unit boundaries of every pair of donors, cached.

Examples:
    dery similarity --zoo fashion
    dery similarity --zoo fashion --show resnet10t_tops vit_tops --png docs/cka.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dery_deploy.cli.common import console


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)


def similarity(zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
               probe: int = typer.Option(512, "--probe", help="probe images (seeded sample of the training split)"),
               seed: int = typer.Option(0, "--seed", help="probe sampling seed"),
               device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
               batch: int = typer.Option(128, "--batch", help="mini-batch of the CKA estimator"),
               probe_data: Optional[str] = typer.Option(None, "--probe-data", help="image folder for zoos that are not 1-channel"),
               show: Optional[tuple[str, str]] = typer.Option(None, "--show", help="print donor A x donor B and plot it"),
               png: Optional[Path] = typer.Option(None, "--png", help="heat-map path for --show"),
               cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default $DERY_CACHE or .dery_cache)")) -> None:
    """Compute what is missing of the similarity cache and reuse the rest."""
    from dery_deploy.errors import DeryError
    from dery_deploy.similarity.compute import cache_root, compute_similarity, heatmap_png
    from dery_deploy.zoo.load import get_zoo

    z = get_zoo(zoo)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DeryError(f"--device must be cpu or cuda, got {device!r}", "similarity")
    if batch < 4:
        raise DeryError(f"--batch must be at least 4 (unbiased HSIC), got {batch}", "similarity")
    with progress_bar() as prog:
        sim, stats = compute_similarity(z, probe, seed, device, batch, cache, probe_data, prog)
    console.print(f"similarity of zoo [bold]{z.name}[/]: {stats['pairs']} donor pairs, {stats['computed']} computed, "
                  f"{stats['reused']} reused from cache, {stats['seconds']:.1f} s (key {sim.key})")
    if show:
        a, b = show
        z.donor(a), z.donor(b)
        m = sim.matrix(a, b)
        table = Table(f"{a} \\ {b}", *[str(j) for j in range(m.shape[1])], title="CKA by boundary (0 = input)")
        for i in range(m.shape[0]):
            table.add_row(str(i), *[f"{v:.2f}" for v in m[i].tolist()])
        console.print(table)
        out = png or (cache or cache_root()) / z.name / f"cka-{a}-{b}.png"
        heatmap_png(sim, z, a, b, Path(out))
        console.print(f"heat-map written to {out}")


def register(app: typer.Typer) -> None:
    app.command("similarity")(similarity)
