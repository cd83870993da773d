"""`dery partition`: cut every donor into K blocks forming K equivalence sets.

Examples:
    dery partition --zoo fashion -K 4 --eps 0.2 --restarts 50 --seed 0
    dery partition --zoo my_zoo.yaml -K 3 --probe-data ~/images/unlabelled --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.cli.common import Listing, console, show_notes
from dery_deploy.cli.similarity import PROBE_DATA_HELP
from dery_deploy.errors import DeryError
from dery_deploy.partition.cover_set import optimise
from dery_deploy.partition.stage import Partition, default_partition_path, make_partition, problem_from
from dery_deploy.similarity.compute import compute_similarity
from dery_deploy.zoo.load import dissect_zoo, get_zoo


def partition(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    K: int = typer.Option(4, "-K", "--sets", help="number of blocks per donor = equivalence sets"),
    eps: float = typer.Option(0.2, "--eps", help="block-size slack: max units <= ceil(N/K)*(1+eps)"),
    restarts: int = typer.Option(50, "--restarts", help="seeded random starts"),
    seed: int = typer.Option(0, "--seed", help="seed of the random starts"),
    probe: int = typer.Option(512, "--probe", help="probe images of the similarity to use"),
    probe_data: str | None = typer.Option(None, "--probe-data", "--data", help=PROBE_DATA_HELP),
    method: str = typer.Option("dp", "--method", help="dp (exact re-partition) or local (paper's one-unit moves)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="partition.json path (default in the cache)"),
    as_json: bool = typer.Option(False, "--json", help="print the partition as JSON"),
    cache: Path | None = typer.Option(None, "--cache", help="artifact cache (default: $DERY_CACHE, else .dery_cache)"),
) -> None:
    """Write partition.json and print the sets."""
    if method not in ("dp", "local"):
        raise DeryError(f"--method must be dp or local, got {method!r}", "partition")
    # before the similarity, which is minutes on a new zoo and writes its cache
    for flag, value in (("-K", K), ("--restarts", restarts), ("--probe", probe)):
        if value < 1:
            raise DeryError(f"{flag} must be >= 1, got {value}", "partition")
    if not eps >= 0:
        raise DeryError(f"--eps must be >= 0 (it loosens the block-size bound), got {eps}", "partition")
    z = get_zoo(zoo)
    if out is not None:
        Partition.check_replaceable(out)
    sim, _ = compute_similarity(z, probe, cache=cache, probe_data=probe_data)
    show_notes(sim.notes)
    dis = dissect_zoo(z)
    problem = problem_from(z, sim, K, eps, dis)
    part = make_partition(z, sim, problem, optimise(problem, restarts, seed, method), dis, seed)
    path = out or default_partition_path(z, cache)
    part.write(path)
    if as_json:
        print(json.dumps({"path": str(path), **part.to_dict()}, indent=2))
        return
    print_partition(part)
    console.print(f"objective {part.objective:.4f} ({method}, {restarts} restarts, {part.seconds:.2f} s) -> {path}")


def print_partition(part) -> None:
    """One row per donor, one column per equivalence set: the unit range and its output boundary."""
    cols = [f"set {s.index}" for s in part.sets]
    listing = Listing(
        f"partition of zoo {part.zoo} into K={part.K} equivalence sets (units [start, end), then the output boundary)",
        "donor",
        *cols,
        ids=("donor",),
    )
    for d in part.sets[0].blocks:
        row = {"donor": d.donor}
        for s in part.sets:
            b = s.block_of(d.donor)
            centre = " (centre)" if s.centre == d.donor else ""
            row[f"set {s.index}"] = (
                f"[{b.start},{b.end}) {b.out_spec.layout} {b.out_spec.channels}x{b.out_spec.height}{centre}"
            )
        listing.add(**row)
    listing.show()
    console.print("(centre): the donor whose block defines the set; the others' blocks are the most similar to it")


def register(app: typer.Typer) -> None:
    app.command("partition")(partition)
