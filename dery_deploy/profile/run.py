"""The profile stage: measure every item on one device and backend (resumable), and check the
latency model against random mixed assemblies measured end to end (`verify`)."""

from __future__ import annotations

import random
from pathlib import Path

from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError
from dery_deploy.network.items import plan_items, structure_hash
from dery_deploy.network.plan import BlockRef, Plan, build_net
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.items import example_input, profile_items
from dery_deploy.profile.latency_model import LatencyModel, fit_latency_check
from dery_deploy.profile.store import Profile, Record, VerifyRow, profile_path, read_profile
from dery_deploy.runtime.backends import Backend, get_backend
from dery_deploy.runtime.calibration import REFERENCE, Calibrator
from dery_deploy.runtime.devices import DeviceSpec, machine_fingerprint
from dery_deploy.runtime.measure import measure_module


def device_for(spec: DeviceSpec) -> str:
    return "cuda" if spec.kind == "cuda" else "cpu"


def resolve_backend(spec: DeviceSpec, backend: str | None, precision: str | None) -> tuple[Backend, str]:
    name = backend or spec.default_backend
    if name not in spec.backends:
        raise DeryError(
            f"device {spec.id} does not list backend {name!r}; it supports {', '.join(spec.backends)}", "profile"
        )
    b = get_backend(name)
    prec = precision or spec.default_precision
    b.check(device_for(spec), prec)
    return b, prec


def check_machine(spec: DeviceSpec) -> dict:
    """This machine's fingerprint, refused unless it matches the device spec."""
    fp = machine_fingerprint(spec.kind)
    if not spec.matches(fp):
        raise DeryError(
            f"this machine ({fp.get('gpu_name') or fp.get('cpu_model')}) does not match device {spec.id!r}; "
            "run `dery devices` to see which spec it matches",
            "profile",
        )
    return fp


def open_profile(path: Path, spec: DeviceSpec, zoo, backend: Backend, precision: str, batch: int, fp: dict) -> Profile:
    """The profile at `path` to resume (checked against device, zoo and architectures), or a new one."""
    if path.exists():
        prof = read_profile(path)
        prof.check(path, spec, zoo, structure_hash(zoo))
        return prof
    return Profile(
        spec.id,
        spec.name,
        {"start": fp, "end": None},
        backend.name,
        backend.version(),
        precision,
        batch,
        zoo.name,
        structure_hash(zoo),
    )


def run_profile(
    zoo,
    spec: DeviceSpec,
    backend: str | None,
    precision: str | None,
    batches: list[int],
    partition: Partition | None,
    dissections: dict[str, Dissection],
    root: Path,
    num_classes: int,
    progress=None,
    limit: int | None = None,
) -> list[Path]:
    """Measure every item (see `profile_items`) for each batch size; resume files that hold records.

    Without a partition, whole donors and every unit are measured: a device can be profiled from a
    zoo spec alone. A later partition's blocks, adapters and heads are added to the same file.
    """
    if any(b <= 0 for b in batches):
        raise DeryError(f"--batch values must be positive, got {batches}", "profile")
    if num_classes < 2:
        raise DeryError(f"a classification head needs at least 2 classes, got {num_classes}", "profile")
    be, prec = resolve_backend(spec, backend, precision)
    dev = device_for(spec)
    fp = check_machine(spec)
    items = profile_items(zoo, partition, dissections, num_classes)
    paths = []
    for batch in batches:
        path = profile_path(root, spec.id, zoo.name, be.name, prec, batch)
        prof = open_profile(path, spec, zoo, be, prec, batch, fp)
        todo = [it for it in items if it.key not in prof.records]
        cal = Calibrator(be, prec, dev, batch) if todo else None
        prof.calibration = {"reference": REFERENCE, "why": "records can be scaled to the median reference speed"}
        task = (
            progress.add_task(f"profile b{batch}", total=len(items), completed=len(items) - len(todo))
            if progress
            else None
        )
        for n, it in enumerate(todo):
            if limit is not None and n >= limit:
                break
            if progress:
                progress.update(task, description=f"b{batch} {it.kind} {it.info.get('donor', '')}")
            calibration = cal.measure()
            m = measure_module(be, it.build(), example_input(it.in_spec, batch), prec, dev)
            prof.records[it.key] = Record.from_dict(
                {**m.record_fields(), "kind": it.kind, "calibration_ms": round(calibration, 5), **it.info}
            )
            prof.fingerprint["end"] = machine_fingerprint(spec.kind) if spec.kind == "cuda" else fp
            prof.write(path)
            if progress:
                progress.advance(task)
        if not todo and not path.exists():
            prof.write(path)
        paths.append(path)
    return paths


def random_plans(zoo, partition: Partition, n: int, seed: int, num_classes: int, mixed: bool = True) -> list[Plan]:
    """n distinct random assemblies (one block per set); mixed=True skips single-donor ones."""
    rng = random.Random(seed)
    seen, plans = set(), []
    for _ in range(200 * n):
        choice = [rng.choice(s.blocks) for s in partition.sets]
        sig = tuple(b.donor for b in choice)
        if sig in seen or (mixed and len(set(sig)) == 1 and len(partition.sets) > 1):
            continue
        seen.add(sig)
        plans.append(
            Plan(
                zoo.name,
                zoo.hash(),
                [BlockRef(k, b.donor, b.start, b.end) for k, b in enumerate(choice)],
                num_classes,
                zoo_ref=zoo.ref,
            )
        )
        if len(plans) == n:
            break
    return plans


def head_classes(prof: Profile) -> int:
    """The class count the profile's heads were measured for."""
    counts = {r.info.get("num_classes") for r in prof.records.values() if r.kind in ("head", "donor")}
    counts.discard(None)
    if not counts:
        raise DeryError("the profile has no heads yet: profile with a partition first", "profile")
    return max(counts)


def verify(
    zoo,
    spec: DeviceSpec,
    profile_file: Path,
    partition: Partition,
    dissections: dict[str, Dissection],
    n: int,
    seed: int = 0,
    progress=None,
):
    """Build n random mixed assemblies, measure each end to end with the profile's backend, and fit
    and check the latency model on them (see `fit_latency_check`); the result is stored in the profile."""
    if n < 3:
        raise DeryError(f"--verify needs at least 3 assemblies to judge the latency model, got {n}", "profile")
    prof = read_profile(profile_file)
    prof.check(profile_file, spec, zoo, structure_hash(zoo))
    be, prec = resolve_backend(spec, prof.backend, prof.precision)
    check_machine(spec)
    dev = device_for(spec)
    raw_model = LatencyModel(prof, "raw", 1.0, str(profile_file))
    cal_model = LatencyModel(prof, "calibrated", 1.0, str(profile_file))
    ref = cal_model.reference_ms()
    plans = random_plans(zoo, partition, n, seed, head_classes(prof))
    cal = Calibrator(be, prec, dev, prof.batch)
    rows = []
    task = progress.add_task("verify", total=len(plans)) if progress else None
    for plan in plans:
        net = build_net(plan, zoo, dissections, copy_blocks=False)
        keys = plan_items(plan, zoo, dissections)
        calibration = cal.measure()
        m = measure_module(be, net, example_input(zoo.input_tensor_spec, prof.batch), prec, dev)
        measured = m.timing.median_ms
        rows.append(
            VerifyRow(
                plan.describe(),
                plan.seams,
                0.0,
                round(measured, 5),
                m.timing.stable,
                round(raw_model.predict_ms(keys), 5),
                round(cal_model.predict_ms(keys), 5),
                round(measured * (ref / calibration if ref else 1.0), 5),
                round(calibration, 5),
                0.0,
            )
        )
        if progress:
            progress.advance(task)
    check = fit_latency_check(rows, seed, partition.key)
    prof = read_profile(profile_file)
    prof.verify = check
    prof.write(profile_file)
    return check


def latency_summary(check) -> str:
    return (
        f"median |error| {100 * check.median_abs_rel_error:.2f}%, max {100 * check.max_abs_rel_error:.2f}% over "
        f"{check.n} mixed assemblies ({check.speed} item latencies x {check.scale:.3f}; raw sum: median "
        f"{100 * check.raw_median_abs_rel_error:.2f}%, max {100 * check.raw_max_abs_rel_error:.2f}%)"
    )
