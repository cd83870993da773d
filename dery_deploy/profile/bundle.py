"""Remote profiling bundles (Jetson): ONNX items + manifest + a standalone runner; and the import
of the runner's result as a profile of that device.

With `verify` the bundle also carries random mixed assemblies of the partition, exported whole like
items: the runner measures them end to end on the device, and the import fits the profile's latency
check on them (as `dery profile --verify` does on a machine that profiles itself), so plans for a
Jetson get the same measured margin as any other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from torch import nn

from dery_deploy.artifacts import atomic_write_json, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.network.items import plan_items, structure_hash
from dery_deploy.network.plan import build_net
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.items import example_input, profile_items
from dery_deploy.profile.latency_model import LatencyModel, fit_latency_check
from dery_deploy.profile.run import random_plans
from dery_deploy.profile.store import LatencyCheck, Profile, Record, VerifyRow, profile_path
from dery_deploy.runtime.devices import get_device
from dery_deploy.runtime.onnx import onnx_from_module, save_onnx

BUNDLE_SCHEMA = 1
ASSEMBLY = "assembly"  # the kind of a --verify assembly in a manifest; never a profile record


def _export_item(out: Path, i: int, key: str, kind: str, module: nn.Module, in_spec, precision: str, info) -> dict:
    """One manifest entry: the fp32 ONNX (and, for fp16, an fp16 one for TensorRT 11, which builds only strongly
    typed networks and has no --fp16; fp32 input and output, so the runner feeds both files alike)."""
    f = f"items/{i:04d}-{kind}.onnx"
    x = example_input(in_spec, 1)
    save_onnx(onnx_from_module(module, x), out / f)
    item = {
        "key": key,
        "kind": kind,
        "file": f,
        "sha256": sha256_file(out / f),
        "input_shape": list(in_spec.shape),
        "info": info,
    }
    if precision == "fp16":
        f16 = f"items/{i:04d}-{kind}.fp16.onnx"
        save_onnx(onnx_from_module(module, x, precision="fp16"), out / f16)
        item.update(file_fp16=f16, sha256_fp16=sha256_file(out / f16))
    return item


def write_bundle(
    zoo,
    spec,
    partition: Partition | None,
    dissections: dict,
    out: Path,
    batches: list[int],
    precision: str,
    num_classes: int,
    verify: int = 0,
    seed: int = 0,
) -> dict:
    """Write the bundle (module docstring): every profile item and, with `verify`, that many random mixed
    assemblies of the partition for the latency check. Returns the manifest."""
    if verify and partition is None:
        raise DeryError("--verify measures assemblies of a partition; run `dery partition` first", "profile")
    if verify and verify < 3:
        raise DeryError(f"--verify needs at least 3 assemblies to judge the latency model, got {verify}", "profile")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DeryError(f"bundle folder {out} is not empty; pick a new folder or empty it", "profile")
    (out / "items").mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    for it in profile_items(zoo, partition, dissections, num_classes):
        items.append(_export_item(out, len(items), it.key, it.kind, it.build(), it.in_spec, precision, it.info))
    if verify and partition is not None:
        for plan in random_plans(zoo, partition, verify, seed, num_classes):
            net = build_net(plan, zoo, dissections, copy_blocks=False)  # latency does not depend on weights
            info = {"plan": plan.describe(), "seams": plan.seams, "items": plan_items(plan, zoo, dissections)}
            key = f"{ASSEMBLY}|{plan.describe()}"
            items.append(_export_item(out, len(items), key, ASSEMBLY, net, zoo.input_tensor_spec, precision, info))
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "kind": "profile-bundle",
        "device": spec.id,
        "zoo": zoo.name,
        "structure_hash": structure_hash(zoo),
        "precision": precision,
        "batches": batches,
        "partition": partition.key if partition else None,
        "verify": {"n": verify, "seed": seed, "partition_key": partition.key} if verify and partition else None,
        "items": items,
    }
    atomic_write_json(out / "manifest.json", manifest)
    shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), out / "runner.py")
    return manifest


def latency_check_of(prof: Profile, assemblies: list[dict], recs: dict, verify: dict, path) -> LatencyCheck:
    """The profile's latency check from the assemblies the runner measured end to end on the device.
    The runner measures no reference workload, so item latencies stay raw (nothing to calibrate by)."""
    raw = LatencyModel(prof, "raw", 1.0, str(path))
    raw_sum = LatencyModel(prof, "raw", 1.0, str(path), subtract_overhead=False)
    raw_ctx = LatencyModel(prof, "raw", 1.0, str(path), context=True)
    rows = []
    for a in assemblies:
        r, keys = recs[a["key"]], a["info"]["items"]
        predicted, plain = round(raw.predict_ms(keys), 5), round(raw_sum.predict_ms(keys), 5)
        measured = round(r["median_ms"], 5)
        ctx = round(raw_ctx.predict_ms(keys), 5) if raw_ctx.has_context(keys) else None
        rows.append(
            VerifyRow(
                a["info"]["plan"],
                a["info"]["seams"],
                0.0,
                measured,
                r["stable"],
                predicted,
                predicted,
                measured,
                None,
                0.0,
                raw_sum_ms=plain,
                calibrated_sum_ms=plain,
                raw_context_ms=ctx,
                calibrated_context_ms=ctx,
            )
        )
    return fit_latency_check(rows, verify["seed"], verify["partition_key"])


def import_result(path: Path, root: Path) -> list[Path]:
    """Validate a runner result against the manifest it embeds and store one profile per batch."""
    res = _read_result(path)
    man = res["manifest"]
    _refuse_unfinished(path, res, man)
    spec = get_device(res["device"])
    for when in ("start", "end"):
        fp = res["fingerprint"][when]
        if not spec.matches(fp):
            raise DeryError(
                f"{path} was measured on {fp.get('gpu_name') or fp.get('cpu_model')!r}, which does not match "
                f"device {spec.id!r}; run the bundle on that device",
                "profile",
            )
    keys = {i["key"] for i in man["items"]}
    assemblies = [i for i in man["items"] if i["kind"] == ASSEMBLY]
    written = []
    for batch in man["batches"]:
        recs = _batch_results(path, res, batch, keys)
        prof = _profile_of_batch(path, res, spec, int(batch), recs)
        if man.get("verify"):
            prof.verify = latency_check_of(prof, assemblies, recs, man["verify"], path)
        written.append(
            prof.write(profile_path(root, spec.id, res["zoo"], res["backend"], res["precision"], int(batch)))
        )
    return written


def _read_result(path: Path) -> dict:
    """The runner's result file, refused unless it is whole JSON of the bundle result schema."""
    try:
        res = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DeryError(f"result file not found: {path}", "profile") from None
    except json.JSONDecodeError as e:
        raise DeryError(f"{path} is truncated or not JSON ({e.msg}); rerun the bundle runner", "profile") from None
    if res.get("kind") != "profile-bundle-result" or res.get("schema") != BUNDLE_SCHEMA:
        raise DeryError(f"{path} is not a bundle result of schema {BUNDLE_SCHEMA}", "profile")
    return res


def _refuse_unfinished(path: Path, res: dict, man: dict) -> None:
    """Refuse an interrupted run or one with failed items: rerunning the runner finishes it."""
    if res.get("complete") is False:
        raise DeryError(
            f"{path} is the result of an interrupted run; run the runner again with the same --out to finish it",
            "profile",
        )
    files = {i["key"]: i["file"] for i in man["items"]}
    failed = sorted({k for recs in res["results"].values() for k, r in recs.items() if "error" in r})
    if failed:
        raise DeryError(
            f"{path}: {len(failed)} of {len(files)} items failed on the device ("
            + ", ".join(files.get(k, k) for k in failed[:10])
            + (", ..." if len(failed) > 10 else "")
            + "); rerun the runner with the same --out to retry them (it keeps what was measured), "
            "see each item's 'error' in the result",
            "profile",
        )


def _batch_results(path: Path, res: dict, batch: int, keys: set[str]) -> dict:
    """The runner's records of one batch of the manifest, refused unless they are its items exactly."""
    recs = res["results"].get(str(batch))
    if recs is None:
        raise DeryError(f"{path} has no results for batch {batch} of its manifest", "profile")
    got = set(recs)
    if got != keys:
        extra, missing = sorted(got - keys), sorted(keys - got)
        raise DeryError(
            f"{path} items do not match the bundle manifest (batch {batch}: {len(missing)} missing, "
            f"{len(extra)} unknown, e.g. {(missing or extra)[0]!r})",
            "profile",
        )
    return recs


def _profile_of_batch(path: Path, res: dict, spec, batch: int, recs: dict) -> Profile:
    """One batch's profile of the device: the runner's item records (the assemblies are the latency check's)."""
    return Profile(
        spec.id,
        spec.name,
        {"start": res["fingerprint"]["start"], "end": res["fingerprint"]["end"]},
        res["backend"],
        res["backend_version"],
        res["precision"],
        batch,
        res["zoo"],
        res["structure_hash"],
        {k: Record.from_dict(runner_record(r)) for k, r in recs.items() if r.get("kind") != ASSEMBLY},
        imported_from={
            "file": str(path),
            "manifest_sha256": res["manifest_sha256"],
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        },
    )


def runner_record(r: dict) -> dict:
    """A record of the bundle runner (one item timed on its own, on the device, by trtexec or ONNX
    Runtime) in the profile's terms: its p90 stands in for a p99 it does not measure, and the
    uncertainty is the relative half-spread of its last three window medians."""
    w = r.get("window_medians_ms") or []
    last = w[-3:]
    spread = (max(last) - min(last)) / (2 * min(last)) if len(last) >= 2 and min(last) > 0 else 0.0
    return {"p99_ms": r.get("p90_ms"), "uncertainty": round(spread, 5), **r}
