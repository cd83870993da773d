"""`dery partition`: cut every donor into K blocks forming K equivalence sets.

Example:
    dery partition --zoo fashion -K 4 --eps 0.2 --restarts 50 --seed 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dery_deploy.cli.common import console


def default_partition_path(zoo_name: str, cache: Path | None = None) -> Path:
    from dery_deploy.similarity.compute import cache_root

    return (cache or cache_root()) / zoo_name / "partition.json"


def current_partition(zoo, path: Path | None, cache: Path | None, stage: str) -> dict:
    """The partition a later stage works on: `path`, or the zoo's current one in the cache."""
    from dery_deploy.errors import DeryError
    from dery_deploy.partition.stage import load_partition

    ppath = path or default_partition_path(zoo.name, cache)
    if not Path(ppath).is_file():
        raise DeryError(f"no partition at {ppath}; run `dery partition --zoo {zoo.name}` first", stage)
    return load_partition(ppath, zoo)


def partition(zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
              K: int = typer.Option(4, "-K", "--sets", help="number of blocks per donor = equivalence sets"),
              eps: float = typer.Option(0.2, "--eps", help="block-size slack: max units <= ceil(N/K)*(1+eps)"),
              restarts: int = typer.Option(50, "--restarts", help="seeded random starts"),
              seed: int = typer.Option(0, "--seed"),
              probe: int = typer.Option(512, "--probe", help="probe images of the similarity to use"),
              probe_data: Optional[str] = typer.Option(None, "--probe-data", help="image folder for zoos that are not 1-channel"),
              method: str = typer.Option("dp", "--method", help="dp (exact re-partition) or local (paper's one-unit moves)"),
              out: Optional[Path] = typer.Option(None, "-o", "--out", help="partition.json path (default in the cache)"),
              cache: Optional[Path] = typer.Option(None, "--cache")) -> None:
    """Write partition.json and print the sets."""
    from dery_deploy.errors import DeryError
    from dery_deploy.partition.cover_set import optimise
    from dery_deploy.partition.stage import partition_record, problem_from, write_partition
    from dery_deploy.similarity.compute import compute_similarity
    from dery_deploy.zoo.load import get_zoo

    if method not in ("dp", "local"):
        raise DeryError(f"--method must be dp or local, got {method!r}", "partition")
    z = get_zoo(zoo)
    sim, _ = compute_similarity(z, probe, cache=cache, probe_data=probe_data)
    problem, dis = problem_from(z, sim, K, eps)
    result = optimise(problem, restarts, seed, method)
    rec = partition_record(z, sim, problem, result, dis, seed)
    path = out or default_partition_path(z.name, cache)
    write_partition(path, rec)
    print_partition(rec)
    console.print(f"objective {rec['objective']:.4f} ({method}, {restarts} restarts, {rec['seconds']:.2f} s) -> {path}")


def print_partition(rec: dict) -> None:
    table = Table("set", "centre", *[b["donor"] for b in rec["sets"][0]["blocks"]],
                  title=f"partition of zoo {rec['zoo']} into K={rec['K']} equivalence sets (unit ranges [start, end))")
    for s in rec["sets"]:
        cells = []
        for b in s["blocks"]:
            cells.append(f"[{b['start']},{b['end']}) {b['out']['layout']} {b['out']['channels']}"
                         f"x{b['out']['height']}\nsim {b['similarity_to_centre']:.2f}")
        table.add_row(str(s["index"]), s["centre"], *cells)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("partition")(partition)
