"""The profile stage: measure every item of the current partition on one device and backend."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch

from dery_deploy.errors import DeryError
from dery_deploy.profile.backends import get_backend
from dery_deploy.profile.calibration import REFERENCE, Calibrator, reference_ms
from dery_deploy.profile.devices import machine_fingerprint
from dery_deploy.profile.harness import measure, peak_memory_mb
from dery_deploy.profile.items import donor_items, example_input, partition_items, structure_hash
from dery_deploy.profile.store import check_profile, new_profile, profile_path, read_profile, write_profile

DOWNSTREAM_CLASSES = 10


def device_for(spec) -> str:
    return "cuda" if spec.kind == "cuda" else "cpu"


def resolve_backend(spec, backend: str | None, precision: str | None):
    name = backend or spec.default_backend
    if name not in spec.backends:
        raise DeryError(f"device {spec.id} does not list backend {name!r}; it supports {', '.join(spec.backends)}", "profile")
    b = get_backend(name)
    prec = precision or spec.default_precision
    b.check(device_for(spec), prec)
    return b, prec


def measure_module(backend, module, x, precision, device) -> dict:
    runner = backend.prepare(module, x, precision, device)
    m = measure(runner.call, cuda=runner.cuda)
    rec = m.to_dict()
    rec["peak_memory_mb"] = round(peak_memory_mb(runner.call, runner.cuda), 3)
    rec["build_s"] = round(runner.build_s, 3)
    for k in ("median_ms", "p90_ms"):
        rec[k] = round(rec[k], 5)
    return rec


def run_profile(zoo, spec, backend: str | None, precision: str | None, batches: list[int], partition: dict,
                dissections: dict, root: Path, progress=None, limit: int | None = None) -> list[Path]:
    """Measure every item for each batch size; resume files that already hold records."""
    if any(b <= 0 for b in batches):
        raise DeryError(f"--batch values must be positive, got {batches}", "profile")
    be, prec = resolve_backend(spec, backend, precision)
    dev = device_for(spec)
    fp = machine_fingerprint(spec.kind)
    if not spec.matches(fp):
        raise DeryError(f"this machine ({fp.get('gpu_name') or fp.get('cpu_model')}) does not match device {spec.id!r}; "
                        "run `dery devices` to see which spec it matches", "profile")
    structure = structure_hash(zoo)
    items = partition_items(zoo, partition, dissections, DOWNSTREAM_CLASSES) + donor_items(zoo, DOWNSTREAM_CLASSES)
    paths = []
    for batch in batches:
        path = profile_path(root, spec.id, zoo.name, be.name, prec, batch)
        if path.exists():
            data = read_profile(path)
            check_profile(data, path, spec, zoo, structure)
        else:
            data = new_profile(spec, fp, zoo.name, structure, be.name, be.version(), prec, batch)
        todo = [it for it in items if it.key not in data["records"]]
        cal = Calibrator(be, prec, dev, batch) if todo else None
        data["calibration"] = {"reference": REFERENCE, "why": "records are scaled to the median reference speed"}
        task = progress.add_task(f"profile b{batch}", total=len(items), completed=len(items) - len(todo)) if progress else None
        for n, it in enumerate(todo):
            if limit is not None and n >= limit:
                break
            if progress:
                progress.update(task, description=f"b{batch} {it.kind} {it.info.get('donor', '')} {it.key.split('|', 2)[-1][:40]}")
            calibration = cal.measure()
            rec = measure_module(be, it.build(), example_input(it.in_spec, batch), prec, dev)
            rec.update({"kind": it.kind, "calibration_ms": round(calibration, 5), **it.info})
            data["records"][it.key] = rec
            data["fingerprint"]["end"] = machine_fingerprint(spec.kind) if spec.kind == "cuda" else fp
            write_profile(path, data)
            if progress:
                progress.advance(task)
        paths.append(path)
    return paths


def random_plans(zoo, partition: dict, n: int, seed: int, num_classes: int = DOWNSTREAM_CLASSES, mixed: bool = True):
    """n distinct random assemblies (one block per set); mixed=True skips single-donor ones."""
    from dery_deploy.assemble.plan import BlockRef, Plan

    rng = random.Random(seed)
    sets = partition["sets"]
    seen, plans = set(), []
    for _ in range(200 * n):
        choice = [rng.choice(s["blocks"]) for s in sets]
        sig = tuple(b["donor"] for b in choice)
        if sig in seen or (mixed and len(set(sig)) == 1 and len(sets) > 1):
            continue
        seen.add(sig)
        plans.append(Plan(zoo.name, zoo.hash(), [BlockRef(k, b["donor"], b["start"], b["end"]) for k, b in enumerate(choice)],
                          num_classes, zoo_ref=zoo.ref))
        if len(plans) == n:
            break
    return plans


def verify(zoo, spec, profile_file: Path, partition: dict, dissections: dict, n: int, seed: int = 0, progress=None) -> dict:
    """Build n random mixed assemblies, measure each end to end with the profile's backend, and
    compare with the latency model's prediction."""
    from dery_deploy.assemble.plan import build_net
    from dery_deploy.profile.latency_model import plan_items, predict

    data = read_profile(profile_file)
    check_profile(data, profile_file, spec, zoo, structure_hash(zoo))
    be, prec = resolve_backend(spec, data["backend"], data["precision"])
    dev = device_for(spec)
    rows = []
    plans = random_plans(zoo, partition, n, seed)
    cal = Calibrator(be, prec, dev, data["batch"])
    ref = reference_ms(data)
    task = progress.add_task("verify", total=len(plans)) if progress else None
    for plan in plans:
        net = build_net(plan, zoo, dissections, copy_blocks=False)
        predicted = predict(plan_items(plan, zoo, dissections), data, path=str(profile_file))
        x = example_input(zoo.input.tensor_spec(), data["batch"])
        calibration = cal.measure()
        measured = measure_module(be, net, x, prec, dev)
        normalized = measured["median_ms"] * (ref / calibration if ref else 1.0)
        err = (predicted - normalized) / normalized
        rows.append({"plan": plan.describe(), "adapters": sum(1 for a in net.adapters if not isinstance(a, torch.nn.Identity)),
                     "predicted_ms": round(predicted, 5), "measured_ms": measured["median_ms"],
                     "calibration_ms": round(calibration, 5), "measured_at_reference_speed_ms": round(normalized, 5),
                     "measured_stable": measured["stable"], "rel_error": round(err, 5),
                     "raw_rel_error": round((predicted - measured["median_ms"]) / measured["median_ms"], 5)})
        if progress:
            progress.advance(task)
    abs_err = [abs(r["rel_error"]) for r in rows]
    raw = [abs(r["raw_rel_error"]) for r in rows]
    result = {"n": len(rows), "median_abs_rel_error": round(statistics.median(abs_err), 5),
              "raw_median_abs_rel_error": round(statistics.median(raw), 5), "raw_max_abs_rel_error": round(max(raw), 5),
              "reference_ms": ref,
              "max_abs_rel_error": round(max(abs_err), 5), "mean_signed_rel_error": round(statistics.mean(r["rel_error"] for r in rows), 5),
              "seed": seed, "partition_objective": partition.get("objective"), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "assemblies": rows}
    data = read_profile(profile_file)
    data["verify"] = result
    write_profile(profile_file, data)
    return result
