"""The profile stage: measure every item on one device and backend in one interleaved pass, and
check the latency model against random mixed assemblies measured end to end (`verify`)."""

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
from dery_deploy.runtime.calibration import REFERENCE
from dery_deploy.runtime.devices import DeviceSpec, machine_fingerprint
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.measure import measure_modules

# items per interleaved pass at most: the profile is written after each, so this is what an interruption can
# lose. A profile's items are split into passes of equal size (`pass_spans`): the fashion zoo's 138 items are two
# passes of 69, not 64 + 64 + 10, each pass its own measurement worker and its own allowance of windows past the
# minimum (`TimingOptions.max_s`), which a pass of noisy items spends whole
PASS_ITEMS = 80


def pass_spans(n: int, size: int) -> list[range]:
    """`n` items in the fewest passes of at most `size` (>= 1), of equal size (within one)."""
    count = -(-n // size)
    return [range(n * i // count, n * (i + 1) // count) for i in range(count)]


def device_for(spec: DeviceSpec) -> str:
    return "cuda" if spec.kind == "cuda" else "cpu"


def resolve_backend(
    spec: DeviceSpec, backend: str | None, precision: str | None, threads: int | None = None
) -> tuple[Backend, str]:
    """The backend (computing with `threads`, default the device's) and precision to measure with."""
    name = backend or spec.default_backend
    if name not in spec.backends:
        raise DeryError(
            f"device {spec.id} does not list backend {name!r}; it supports {', '.join(spec.backends)}", "profile"
        )
    if threads is not None and threads < 1:
        raise DeryError(f"--threads must be >= 1, got {threads}", "profile")
    b = get_backend(name, threads or spec.default_threads)
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
        threads=backend.threads,
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
    threads: int | None = None,
    timing: TimingOptions | None = None,
    pass_items: int = PASS_ITEMS,
    donors: list[str] | None = None,
    memory: bool = True,
) -> list[Path]:
    """Measure every item not yet in the profile (see `profile_items`) for each batch size, in
    interleaved passes of up to `pass_items` items with the reference workload; the profile is
    written after every pass, so an interrupted run keeps the passes it finished and measures the rest.

    Without a partition, whole donors and every unit are measured: a device can be profiled from a
    zoo spec alone. A later partition's blocks, adapters and heads are added to the same file.
    `donors` limits the items to those donors' (see `profile_items`).

    memory: measure each item's peak memory (a fresh instance of it: another compile, 10 s of a quick run's
        25 s of OpenVINO profiles). False leaves it None, for a caller no memory budget judges (`dery run`);
        a later profile with memory measures the items that lack it again (`Profile.lacking_memory`).
    """
    if any(b <= 0 for b in batches):
        raise DeryError(f"--batch values must be positive, got {batches}", "profile")
    if num_classes < 2:
        raise DeryError(f"a classification head needs at least 2 classes, got {num_classes}", "profile")
    be, prec = resolve_backend(spec, backend, precision, threads)
    dev = device_for(spec)
    fp = check_machine(spec)
    items = profile_items(zoo, partition, dissections, num_classes, donors)
    paths = []
    for batch in batches:
        path = profile_path(root, spec.id, zoo.name, be.name, prec, batch, be.threads)
        prof = open_profile(path, spec, zoo, be, prec, batch, fp)
        lacking = prof.lacking_memory() if memory and not be.memory_unmeasurable(dev) else set()
        todo = [it for it in items if it.key not in prof.records or it.key in lacking][:limit]
        prof.calibration = {"reference": REFERENCE, "why": "records can be scaled to the median reference speed"}
        # a backend that times at most `max_live` items together (torch-compile) gains nothing from a longer
        # pass, and a pass is what gets written: its one cold-compiled pass of 55 items was lost whole
        size = min(pass_items, be.max_live or pass_items)
        for span in pass_spans(len(todo), size):
            chunk = todo[span.start : span.stop]
            builds = {it.key: (lambda it=it, b=batch: (it.build(), example_input(it.in_spec, b))) for it in chunk}
            failed: dict[str, str] = {}
            # a prefix only times its blocks in context; no network is built of it, so its memory is not needed
            wanted = [it.key for it in chunk if it.kind != "prefix"] if memory else []
            measured, passes = measure_modules(
                be, builds, prec, dev, timing, batch, progress, f"profile b{batch}", failed, wanted
            )
            for it in chunk:
                prof.failed.pop(it.key, None)
                if it.key in failed:
                    prof.failed[it.key] = failed[it.key]
                    continue
                m = measured[it.key]
                prof.records[it.key] = Record.from_dict({**m.record_fields(), "kind": it.kind, **it.info})
            prof.passes += [{**p.to_dict(), "what": f"{len(chunk)} items"} for p in passes]
            prof.fingerprint["end"] = machine_fingerprint(spec.kind) if spec.kind == "cuda" else fp
            prof.write(path)  # after every pass: an interrupted profile resumes after it
        if not path.exists():
            prof.write(path)
        paths.append(path)
    return paths


def random_plans(
    zoo, partition: Partition, n: int, seed: int, num_classes: int, mixed: bool = True, usable=None
) -> list[Plan]:
    """n distinct random assemblies (one block per set); mixed=True skips single-donor ones, and `usable`
    (plan -> bool) those it rejects, without changing which plans the seed draws otherwise."""
    rng = random.Random(seed)
    seen, plans = set(), []
    for _ in range(200 * n):
        choice = [rng.choice(s.blocks) for s in partition.sets]
        sig = tuple(b.donor for b in choice)
        if sig in seen or (mixed and len(set(sig)) == 1 and len(partition.sets) > 1):
            continue
        seen.add(sig)
        plan = Plan(
            zoo.name, zoo.hash(), [BlockRef(k, b.donor, b.start, b.end) for k, b in enumerate(choice)], num_classes,
            zoo_ref=zoo.ref,
        )  # fmt: skip
        if usable is not None and not usable(plan):
            continue
        plans.append(plan)
        if len(plans) == n:
            break
    return plans


def head_classes(prof: Profile) -> int:
    """The class count the profile's heads were measured for."""
    heads = [r for r in prof.records.values() if r.kind in ("head", "donor")]
    counts: set[int] = {r.info["num_classes"] for r in heads if r.info.get("num_classes") is not None}
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
    timing: TimingOptions | None = None,
):
    """Build n random mixed assemblies, measure them end to end in one interleaved pass with the
    profile's backend, and fit and check the latency model on them (see `fit_latency_check`); the
    result is stored in the profile.

    The assemblies are timed as a budget is judged (`TimingOptions.for_budget`: per-call percentiles over
    all calls, each window re-warmed), so the model is fitted to the figure that decides. Timed as profile
    items are (quiet windows, cold after the other items ran), their p90 read 1.08-1.72x their median
    against 1.02-1.09x warmed, and the model's p90 missed by up to 26% (11% warmed)."""
    if n < 3:
        raise DeryError(f"--verify needs at least 3 assemblies to judge the latency model, got {n}", "profile")
    prof = read_profile(profile_file)
    prof.check(profile_file, spec, zoo, structure_hash(zoo))
    be, prec = resolve_backend(spec, prof.backend, prof.precision, prof.threads)
    check_machine(spec)
    dev = device_for(spec)
    raw_model = LatencyModel(prof, "raw", 1.0, str(profile_file))
    # only assemblies of measured items: a profile limited to some donors (--donors), or with items its
    # backend could not build, is checked on the assemblies it can predict
    plans = random_plans(
        zoo, partition, n, seed, head_classes(prof),
        usable=lambda p: all(k in prof.records for k in plan_items(p, zoo, dissections)),
    )  # fmt: skip
    if len(plans) < 3:
        raw_model.require(plan_items(random_plans(zoo, partition, 1, seed, head_classes(prof))[0], zoo, dissections))
        raise DeryError(f"{profile_file} holds the items of {len(plans)} mixed assemblies; 3 are needed", "profile")
    x = example_input(zoo.input_tensor_spec, prof.batch)
    builds = {
        f"{i:03d}": (lambda plan=plan: (build_net(plan, zoo, dissections, copy_blocks=False), x))
        for i, plan in enumerate(plans)
    }
    failed: dict[str, str] = {}
    timing = timing or TimingOptions.for_budget(50)
    measured, passes = measure_modules(be, builds, prec, dev, timing, prof.batch, progress, "verify", failed, ())
    if len(measured) < 3:
        why = "; ".join(f"{plans[int(k)].describe()}: {w}" for k, w in failed.items()) or "too few assemblies"
        raise DeryError(f"the latency check measured {len(measured)} of {n} assemblies ({why})", "profile")
    rows = [
        verify_row(prof, str(profile_file), plan, plan_items(plan, zoo, dissections), measured[f"{i:03d}"])
        for i, plan in enumerate(plans)
        if f"{i:03d}" in measured
    ]
    check = fit_latency_check(rows, seed, partition.key)
    check.noise_index = passes[0].noise_index if passes else None
    check.measured_as = "promise" if timing.statistic == "all" and timing.warm_s > 0 else "windows"
    prof = read_profile(profile_file)
    prof.verify = check
    prof.passes += [{**p.to_dict(), "what": f"verify: {n} assemblies"} for p in passes]
    prof.write(profile_file)
    return check


def verify_row(prof: Profile, path: str, plan: Plan, keys: list[str], m) -> VerifyRow:
    """One measured assembly (`m`: its timing and calibration) beside every model's prediction of it."""

    def predict(speed: str, subtract: bool = True, context: bool = False) -> float:
        return round(
            LatencyModel(prof, speed, 1.0, path, subtract_overhead=subtract, context=context).predict_ms(keys), 5
        )

    t, calibration = m.timing, m.calibration_ms
    ref = LatencyModel(prof, "calibrated", 1.0, path).reference_ms()
    ctx = LatencyModel(prof, "raw", 1.0, path, context=True).has_context(keys)
    # the quiet-window estimate, as the items are: the per-call median over all calls of an assembly in a
    # pass of ten was tried and followed every other process's load (median |error| 17.6%, max 73%)
    median = t.median_ms
    return VerifyRow(
        plan.describe(),
        plan.seams,
        0.0,
        round(median, 5),
        t.stable,
        predict("raw"),
        predict("calibrated"),
        round(median * (ref / calibration if ref and calibration else 1.0), 5),
        None if calibration is None else round(calibration, 5),
        0.0,
        round(t.p90_ms, 5),
        round(t.p99_ms, 5),
        round(t.uncertainty, 5),
        predict("raw", subtract=False),
        predict("calibrated", subtract=False),
        predict("raw", context=True) if ctx else None,
        predict("calibrated", context=True) if ctx else None,
    )


def latency_summary(check) -> str:
    blocks = "blocks in context" if check.context else "blocks timed alone"
    both = ""
    if check.isolated_errors and check.context_errors:
        (im, ix), (cm, cx) = check.isolated_errors, check.context_errors
        both = (
            f"; blocks alone {100 * im:.2f}% / {100 * ix:.2f}%, in context {100 * cm:.2f}% / {100 * cx:.2f}% "
            "(median / max)"
        )
    return (
        f"median |error| {100 * check.median_abs_rel_error:.2f}%, max {100 * check.max_abs_rel_error:.2f}% over "
        f"{check.n} mixed assemblies ({check.speed} item latencies, {blocks}"
        f"{'' if check.subtract_overhead else ', summed as measured'} x {check.scale:.3f}; raw sum: median "
        f"{100 * check.raw_median_abs_rel_error:.2f}%, max {100 * check.raw_max_abs_rel_error:.2f}%{both})"
    )
