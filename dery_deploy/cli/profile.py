"""`dery profile`: measured latency and memory of every block and adapter on one device.

Examples:
    dery profile --zoo fashion --device cpu --backend onnxruntime --batch 1,32
    dery profile --zoo fashion --device cpu --backend onnxruntime --batch 1 --verify 20
    dery profile --zoo fashion --device jetson-orin-nano --bundle jetson_bundle/
    dery profile --import jetson_bundle/result.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dery_deploy.cli.common import console, parse_int_list


def default_device() -> str:
    from dery_deploy.profile.devices import this_machine

    found = this_machine()
    return found[0].id if found else "cpu"


def profile(zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
            device: Optional[str] = typer.Option(None, "--device", help="device id (default: the spec this machine matches)"),
            backend: Optional[str] = typer.Option(None, "--backend", help="torch-eager, torch-cudagraph, torch-compile, onnxruntime, tensorrt"),
            precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16 (default: the device's)"),
            batch: str = typer.Option("1", "--batch", help="batch sizes, comma-separated"),
            partition: Optional[Path] = typer.Option(None, "--partition", help="partition.json (default: the zoo's current one)"),
            verify: int = typer.Option(0, "--verify", help="also measure N random mixed assemblies end to end"),
            seed: int = typer.Option(0, "--seed", help="seed of the --verify assemblies"),
            bundle: Optional[Path] = typer.Option(None, "--bundle", help="write a remote-profiling bundle (Jetson) here"),
            import_result: Optional[Path] = typer.Option(None, "--import", help="import a bundle runner's result JSON"),
            cache: Optional[Path] = typer.Option(None, "--cache")) -> None:
    """Profile blocks, adapters and heads of the current partition; resumes an interrupted run."""
    from dery_deploy.cli.partition import current_partition
    from dery_deploy.cli.similarity import progress_bar
    from dery_deploy.errors import DeryError
    from dery_deploy.partition.stage import dissect_zoo
    from dery_deploy.profile.devices import get_device
    from dery_deploy.profile.run import run_profile, verify as run_verify
    from dery_deploy.similarity.compute import cache_root
    from dery_deploy.zoo.load import get_zoo

    root = cache or cache_root()
    if import_result is not None:
        from dery_deploy.profile.bundle import import_result as do_import

        path = do_import(import_result, root)
        console.print(f"imported {import_result} -> {path}")
        return
    batches = parse_int_list(batch, "--batch")
    if verify < 0:
        raise DeryError(f"--verify must be >= 0, got {verify}", "profile")
    z = get_zoo(zoo)
    spec = get_device(device or default_device())
    part = current_partition(z, partition, cache, "profile")
    dis = dissect_zoo(z)
    if bundle is not None:
        from dery_deploy.profile.bundle import write_bundle

        manifest = write_bundle(z, spec, part, dis, bundle, batches, precision or spec.default_precision)
        console.print(f"bundle with {len(manifest['items'])} items written to {bundle}; on the device run:\n"
                      f"  python3 {bundle}/runner.py --bundle {bundle} --out result.json\n"
                      f"then here: dery profile --import result.json")
        return
    with progress_bar() as prog:
        paths = run_profile(z, spec, backend, precision, batches, part, dis, root, prog)
    for p in paths:
        show_profile(p)
    if verify:
        for p in paths:
            with progress_bar() as prog:
                res = run_verify(z, spec, p, part, dis, verify, seed, prog)
            console.print(f"latency model on {p.name}: median |error| {100 * res['median_abs_rel_error']:.2f}%, max "
                          f"{100 * res['max_abs_rel_error']:.2f}% over {res['n']} mixed assemblies")


def show_profile(path: Path) -> None:
    from dery_deploy.profile.store import read_profile

    data = read_profile(path)
    recs = data["records"]
    by_kind = {}
    for r in recs.values():
        by_kind.setdefault(r["kind"], []).append(r)
    table = Table("kind", "items", "median ms (min..max)", "unstable", title=f"{path} ({data['backend']} {data['precision']} b{data['batch']})")
    for kind, rs in sorted(by_kind.items()):
        ms = [r["median_ms"] for r in rs]
        table.add_row(kind, str(len(rs)), f"{sum(ms) / len(ms):.4f} ({min(ms):.4f}..{max(ms):.4f})",
                      str(sum(1 for r in rs if not r["stable"])))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
