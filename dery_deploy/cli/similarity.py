"""`dery similarity`: CKA between the unit boundaries of every pair of donors, cached.

Examples:
    dery similarity --zoo fashion
    dery similarity --zoo my_zoo.yaml --probe-data ~/images/unlabelled
    dery similarity --zoo fashion --show resnet10t_tops vit_tops --png docs/cka.png
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.artifacts import cache_root
from dery_deploy.cli.common import Listing, console, progress_bar, show_notes
from dery_deploy.errors import DeryError
from dery_deploy.similarity.compute import compute_similarity, heatmap_png
from dery_deploy.zoo.load import get_zoo

PROBE_DATA_HELP = (
    "images to probe with: a folder (any layout; its train/ when it has one) or a --data spec (its "
    "unlabelled images); default: Fashion-MNIST for 1-channel zoos"
)


def similarity(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    probe: int = typer.Option(512, "--probe", help="probe images (a seeded sample, capped by what the data holds)"),
    seed: int = typer.Option(0, "--seed", help="probe sampling seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    batch: int = typer.Option(128, "--batch", help="mini-batch of the CKA estimator"),
    probe_data: str | None = typer.Option(None, "--probe-data", "--data", help=PROBE_DATA_HELP),
    show: tuple[str, str] | None = typer.Option(None, "--show", help="print donor A x donor B and plot it"),
    png: Path | None = typer.Option(None, "--png", help="heat-map path for --show"),
    as_json: bool = typer.Option(False, "--json", help="print the result (and --show's matrix) as JSON"),
    cache: Path | None = typer.Option(None, "--cache", help="cache folder (default $DERY_CACHE or .dery_cache)"),
) -> None:
    """Compute what is missing of the similarity cache and reuse the rest."""
    z = get_zoo(zoo)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DeryError(f"--device must be cpu or cuda, got {device!r}", "similarity")
    if batch < 4:
        raise DeryError(f"--batch must be at least 4 (unbiased HSIC), got {batch}", "similarity")
    if show:
        z.donor(show[0]), z.donor(show[1])
    with progress_bar() as prog:
        sim, stats = compute_similarity(z, probe, seed, device, batch, cache, probe_data, prog)
    show_notes(sim.notes)
    result = {
        "zoo": z.name,
        "key": sim.key,
        "pairs": stats.pairs,
        "computed": stats.computed,
        "reused": stats.reused,
        "seconds": stats.seconds,
        "probe_images": stats.probe_images,
    }
    if show:
        a, b = show
        m = sim.matrix(a, b)
        out = png or (cache or cache_root()) / z.name / f"cka-{a}-{b}.png"
        heatmap_png(sim, z, a, b, Path(out))
        result.update({"show": [a, b], "matrix": m.tolist(), "png": str(out)})
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"similarity of zoo [bold]{z.name}[/]: {stats.pairs} donor pairs, {stats.computed} computed, "
        f"{stats.reused} reused from cache, {stats.probe_images} probe images, {stats.seconds:.1f} s (key {sim.key})"
    )
    if show:
        listing = Listing(
            f"CKA by boundary (0 = input): rows {a}, columns {b}",
            "row",
            *[str(j) for j in range(m.shape[1])],
            numbers=tuple(str(j) for j in range(m.shape[1])),
        )
        for i in range(m.shape[0]):
            listing.add(row=str(i), **{str(j): f"{v:.2f}" for j, v in enumerate(m[i].tolist())})
        listing.show()
        console.print(f"heat-map written to {result['png']}")


def register(app: typer.Typer) -> None:
    app.command("similarity")(similarity)
