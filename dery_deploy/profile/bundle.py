"""Remote profiling bundles (Jetson): ONNX items + manifest + a standalone runner; and the import
of the runner's result as a profile of that device."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.network.items import structure_hash
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.items import example_input, profile_items
from dery_deploy.profile.store import Profile, Record, profile_path
from dery_deploy.runtime.devices import get_device
from dery_deploy.runtime.onnx import onnx_from_module, save_onnx

BUNDLE_SCHEMA = 1


def write_bundle(
    zoo,
    spec,
    partition: Partition | None,
    dissections: dict,
    out: Path,
    batches: list[int],
    precision: str,
    num_classes: int,
) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DeryError(f"bundle folder {out} is not empty; pick a new folder or empty it", "profile")
    (out / "items").mkdir(parents=True, exist_ok=True)
    items = []
    for i, it in enumerate(profile_items(zoo, partition, dissections, num_classes)):
        f = f"items/{i:04d}-{it.kind}.onnx"
        module, x = it.build(), example_input(it.in_spec, 1)
        save_onnx(onnx_from_module(module, x), out / f)
        item = {
            "key": it.key,
            "kind": it.kind,
            "file": f,
            "sha256": sha256_file(out / f),
            "input_shape": list(it.in_spec.shape),
            "info": it.info,
        }
        if precision == "fp16":
            # TensorRT 11 builds only strongly typed networks (trtexec has no --fp16): an fp16 engine needs
            # the precision in the ONNX itself; fp32 input and output, so the runner feeds it as the fp32 file
            f16 = f"items/{i:04d}-{it.kind}.fp16.onnx"
            save_onnx(onnx_from_module(module, x, precision="fp16"), out / f16)
            item.update(file_fp16=f16, sha256_fp16=sha256_file(out / f16))
        items.append(item)
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "kind": "profile-bundle",
        "device": spec.id,
        "zoo": zoo.name,
        "structure_hash": structure_hash(zoo),
        "precision": precision,
        "batches": batches,
        "items": items,
    }
    atomic_write_json(out / "manifest.json", manifest)
    shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), out / "runner.py")
    return manifest


def import_result(path: Path, root: Path) -> list[Path]:
    """Validate a runner result against the manifest it embeds and store one profile per batch."""
    try:
        res = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DeryError(f"result file not found: {path}", "profile") from None
    except json.JSONDecodeError as e:
        raise DeryError(f"{path} is truncated or not JSON ({e.msg}); rerun the bundle runner", "profile") from None
    if res.get("kind") != "profile-bundle-result" or res.get("schema") != BUNDLE_SCHEMA:
        raise DeryError(f"{path} is not a bundle result of schema {BUNDLE_SCHEMA}", "profile")
    man = res["manifest"]
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
    written = []
    for batch in man["batches"]:
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
        prof = Profile(
            spec.id,
            spec.name,
            {"start": res["fingerprint"]["start"], "end": res["fingerprint"]["end"]},
            res["backend"],
            res["backend_version"],
            res["precision"],
            int(batch),
            res["zoo"],
            res["structure_hash"],
            {k: Record.from_dict(runner_record(r)) for k, r in recs.items()},
            imported_from={
                "file": str(path),
                "manifest_sha256": res["manifest_sha256"],
                "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            },
        )
        written.append(
            prof.write(profile_path(root, spec.id, res["zoo"], res["backend"], res["precision"], int(batch)))
        )
    return written


def runner_record(r: dict) -> dict:
    """A record of the bundle runner (one item timed on its own, on the device, by trtexec or ONNX
    Runtime) in the profile's terms: its p90 stands in for a p99 it does not measure, and the
    uncertainty is the relative half-spread of its last three window medians."""
    w = r.get("window_medians_ms") or []
    last = w[-3:]
    spread = (max(last) - min(last)) / (2 * min(last)) if len(last) >= 2 and min(last) > 0 else 0.0
    return {"p99_ms": r.get("p90_ms"), "uncertainty": round(spread, 5), **r}
