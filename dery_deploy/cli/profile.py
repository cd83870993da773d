"""`dery profile`: measured latency and memory of every donor, block and adapter on one device.

Needs no images and no weights: before a partition exists it measures whole donors and every unit
(what a user picks a budget from); once one exists, its blocks, adapters and heads are added.

Examples:
    dery profile --zoo fashion --device cpu --backend onnxruntime --batch 1,32
    dery profile --zoo fashion --device cpu --backend openvino --precision int8 --batch 1,32
    dery profile --zoo imagenet --device h100 --backend torch-cudagraph --precision fp16 --batch 1,32
    dery profile --zoo fashion --device cpu --verify 20
    dery profile --zoo fashion --device h100 --backend torch-compile --batch 1 --donors a,b,c --verify 3
    dery profile --zoo fashion --device jetson-orin-nano --bundle jetson_bundle/ --verify 20
    python3 jetson_bundle/runner.py --bundle jetson_bundle --out result.json     # on the Jetson
    dery profile --import result.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import typer

from dery_deploy.artifacts import cache_root
from dery_deploy.cli.common import Listing, console, err_console, parse_int_list, progress_bar
from dery_deploy.data.task import load_task
from dery_deploy.errors import DeryError
from dery_deploy.network.items import donor_key
from dery_deploy.partition.stage import Partition, current_partition
from dery_deploy.profile.bundle import import_result as do_import
from dery_deploy.profile.bundle import write_bundle
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.run import PASS_ITEMS, latency_summary, resolve_backend, run_profile
from dery_deploy.profile.run import verify as run_verify
from dery_deploy.profile.store import read_profile
from dery_deploy.runtime.devices import DeviceSpec, default_device, get_device
from dery_deploy.runtime.disturbance import busy_note
from dery_deploy.zoo.load import dissect_zoo, get_zoo
from dery_deploy.zoo.spec import ZooSpec


def profile(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    device: str | None = typer.Option(None, "--device", help="device id (default: the spec this machine matches)"),
    backend: str | None = typer.Option(
        None, "--backend", help="torch-eager, torch-cudagraph, torch-compile, onnxruntime, openvino, tensorrt"
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32, fp16 or int8 (onnxruntime, openvino on CPU; tensorrt) (default: the device's)"
    ),
    batch: str = typer.Option("1", "--batch", help="batch sizes, comma-separated"),
    threads: int | None = typer.Option(
        None, "--threads", help="one CPU thread count to compute with (default: each count the device spec lists)"
    ),
    pass_items: int = typer.Option(
        PASS_ITEMS, "--pass-items", help="items per interleaved measurement pass; the profile is written after each"
    ),
    donors: str | None = typer.Option(
        None,
        "--donors",
        help="only these donors' items (comma-separated): a quick partial profile where each item compiles cold "
        "(torch-compile); --verify then checks assemblies of these donors",
    ),
    classes: int | None = typer.Option(
        None, "--classes", help="class count of the new head (default: that of --data, else 10)"
    ),
    data: str | None = typer.Option(
        None, "--data", help="task whose class count the heads get (no images are read for timing)"
    ),
    partition: Path | None = typer.Option(
        None, "--partition", help="partition.json (default: the zoo's current one, if any)"
    ),
    verify: int = typer.Option(
        0,
        "--verify",
        help="also measure N random mixed assemblies end to end (needs a partition; with --bundle, on the device)",
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the --verify assemblies"),
    bundle: Path | None = typer.Option(None, "--bundle", help="write a remote-profiling bundle (Jetson) here"),
    import_result: Path | None = typer.Option(None, "--import", help="import a bundle runner's result JSON"),
    as_json: bool = typer.Option(False, "--json", help="print the profile summary as JSON"),
    cache: Path | None = typer.Option(None, "--cache", help="artifact cache (default: $DERY_CACHE, else .dery_cache)"),
) -> None:
    """Profile donors, units or the partition's blocks, adapters and heads; resumes an interrupted run."""
    root = cache or cache_root()
    if import_result is not None:
        for path in do_import(import_result, root):
            show_import(import_result, path)
        return
    batches = parse_int_list(batch, "--batch")
    refuse_bad_counts(verify, pass_items, threads, classes)
    z = get_zoo(zoo)
    spec = get_device(device or default_device())
    if bundle is None:  # refused before any note or work; a bundle's runner picks its backend on the device
        resolve_backend(spec, backend, precision, threads)
    num_classes = classes or (load_task(data, z.input).num_classes if data else 10)
    part = current_partition(z, partition, cache, "profile", required=False)
    if verify and part is None:
        raise DeryError(
            f"--verify measures assemblies of a partition; run `dery partition --zoo {z.ref}` first", "profile"
        )
    dis = dissect_zoo(z)
    if bundle is not None:
        prec = precision or spec.default_precision
        write_device_bundle(z, spec, part, dis, bundle, batches, prec, num_classes, verify, seed)
        return
    if part is None:
        err_console.print(f"no partition of zoo {z.name} yet: measuring whole donors and every unit")
    summaries = []
    # one batch at a time, each checked before the next is measured: an interrupted run keeps the first
    # batch's latency check (batch 1 sets the margin and the headline), not only its items; each thread
    # count the device spec searches (or --threads alone) is a profile of its own, the first count's first
    for n, b in [(n, b) for n in ([threads] if threads is not None else spec.thread_counts()) for b in batches]:
        with progress_bar() as prog:
            [p] = run_profile(
                z, spec, backend, precision, [b], part, dis, root, num_classes, prog, threads=n,
                pass_items=pass_items, donors=donors.split(",") if donors else None,
            )  # fmt: skip
        check = None
        if verify and part is not None:  # part is there: --verify without a partition was refused above
            with progress_bar() as prog:
                check = run_verify(z, spec, p, part, dis, verify, seed, prog)
        summaries.append(summarise(p, z, num_classes))
        if not as_json:
            show_profile(summaries[-1])
            if check:
                console.print(f"latency model on {p.name}: {latency_summary(check)}")
    if as_json:
        print(json.dumps(summaries, indent=2))


def write_device_bundle(
    z: ZooSpec,
    spec: DeviceSpec,
    part: Partition | None,
    dis: dict,
    bundle: Path,
    batches: list[int],
    precision: str,
    num_classes: int,
    verify: int,
    seed: int,
) -> None:
    """Write a remote-profiling bundle and tell the user how to run it on the device and import its result."""
    if precision == "int8":
        raise DeryError(
            "a profiling bundle measures fp32 or fp16 engines; int8 items are not bundled yet: profile int8 on a "
            "machine with TensorRT (--backend tensorrt --precision int8), or drop --precision int8",
            "profile",
        )
    manifest = write_bundle(z, spec, part, dis, bundle, batches, precision, num_classes, verify, seed)
    assemblies = sum(i["kind"] == "assembly" for i in manifest["items"])
    console.print(
        f"bundle with {len(manifest['items']) - assemblies} items"
        + (f" and {assemblies} assemblies for the latency check" if assemblies else "")
        + f" written to {bundle}; copy it to the device and run there:\n"
        f"  python3 {bundle}/runner.py --bundle {bundle} --out result.json   (no TensorRT: --backend onnxruntime)\n"
        f"then here: dery profile --import result.json",
        soft_wrap=True,  # a command the user copies is never broken across lines, whatever the path's length
    )
    if part is None:
        err_console.print(
            f"[yellow]note:[/] zoo {z.name} has no partition yet, so this bundle holds whole donors and units "
            "only: pick a budget from them. Plans also need the partition's blocks, adapters and heads: after "
            f"`dery similarity --zoo {z.ref}` and `dery partition --zoo {z.ref}`, write a second bundle with "
            f"`dery profile --zoo {z.ref} --device {spec.id} --bundle NEW_DIR --verify 20` and run it on the "
            "device as well",
            soft_wrap=True,
        )
    elif not verify:
        err_console.print(
            "[yellow]note:[/] without --verify the imported profile has no latency check, so plans for "
            f"{spec.id} get no safety margin; --verify 20 adds 20 assemblies measured end to end on the device"
        )


def show_import(result: Path, path: Path) -> None:
    """What an import brought: items, and the latency check fitted on the device's assemblies, or why none."""
    prof = read_profile(path)
    console.print(f"imported {result} -> {path} ({len(prof.records)} items measured on {prof.device})")
    if prof.verify:
        console.print(f"latency model on {path.name}: {latency_summary(prof.verify)}")
    else:
        console.print(
            "no latency check (the bundle had no --verify assemblies): plans made with this profile get no "
            "safety margin",
            style="yellow",
        )
    if not any(r.kind in ("block", "adapter", "head") for r in prof.records.values()):
        console.print(
            "this profile holds whole donors and units only: bundle again after `dery partition` for the "
            "blocks, adapters and heads a plan needs",
            style="yellow",
        )


def refuse_bad_counts(verify: int, pass_items: int, threads: int | None, classes: int | None) -> None:
    if verify < 0:
        raise DeryError(f"--verify must be >= 0, got {verify}", "profile")
    if pass_items < 1:
        raise DeryError(f"--pass-items must be >= 1, got {pass_items}", "profile")
    if threads is not None and threads < 1:
        raise DeryError(f"--threads must be >= 1 (CPU threads to compute with), got {threads}", "profile")
    if classes is not None and classes < 2:
        raise DeryError(f"--classes must be at least 2, got {classes}", "profile")


def summarise(path: Path, zoo, num_classes: int) -> dict:
    prof = read_profile(path)
    model = LatencyModel.of(prof, str(path))
    kinds: dict[str, list] = {}
    for r in prof.records.values():
        kinds.setdefault(r.kind, []).append(r)
    donors = {}
    for n in zoo.donor_names:
        key = donor_key(zoo, n, num_classes)
        if key in prof.records:
            r = prof.records[key]
            donors[n] = {
                "latency_ms": round(model.predict_ms([key]), 5),
                "uncertainty": r.uncertainty,
                "stable": r.stable,
                "peak_memory_mb": r.peak_memory_mb,
            }
    return {
        "path": str(path),
        "device": prof.device,
        "backend": prof.backend,
        "precision": prof.precision,
        "batch": prof.batch,
        "threads": prof.threads,
        "items": {k: len(v) for k, v in kinds.items()},
        "unstable": sum(1 for r in prof.records.values() if not r.stable),
        "median_uncertainty": round(statistics.median(r.uncertainty for r in prof.records.values()), 5)
        if prof.records
        else None,
        "passes": prof.passes,
        "failed": prof.failed,
        "donors": donors,
        "verify": {k: v for k, v in prof.verify.to_dict().items() if k != "assemblies"} if prof.verify else None,
    }


def show_profile(s: dict) -> None:
    unc = s.get("median_uncertainty")
    console.print(
        f"{s['path']}: {sum(s['items'].values())} items ({', '.join(f'{n} {k}' for k, n in s['items'].items())}), "
        f"{s['unstable']} not stable" + ("" if unc is None else f", median uncertainty ±{100 * unc:.1f}%")
    )
    for key, why in s.get("failed", {}).items():
        err_console.print(f"[yellow]could not measure[/] {key}: {why} (plans will not use it)")
    for p in s.get("passes", [])[-2:]:
        console.print(
            f"  pass ({p['what']}): {p['items']} items with the reference, {p['seconds']:.1f} s, noise index "
            f"{100 * p['noise_index']:.1f}%, {p['unstable']} not stable",
            style="dim",
        )
    if busy := busy_note(s.get("passes", [])):
        err_console.print(f"[yellow]note:[/] {busy}", soft_wrap=True)
    threads = f", {s['threads']} thread" + ("" if s["threads"] == 1 else "s") if s.get("threads") else ""
    listing = Listing(
        f"donors, whole, on {s['device']} ({s['backend']} {s['precision']}, batch {s['batch']}{threads}): pick a "
        "budget from these",
        "donor",
        "latency (ms)",
        "±",
        "peak memory (MB)",
        "stable",
        ids=("donor",),
        numbers=("latency (ms)", "±", "peak memory (MB)"),
    )
    for n, d in sorted(s["donors"].items(), key=lambda kv: kv[1]["latency_ms"]):
        listing.add(
            **{
                "donor": n,
                "latency (ms)": f"{d['latency_ms']:.4f}",
                "±": f"{100 * d['uncertainty']:.1f}%",
                "peak memory (MB)": d["peak_memory_mb"],
                "stable": "yes" if d["stable"] else "NO",
            }
        )
    listing.show()


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
