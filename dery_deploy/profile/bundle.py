"""Remote profiling bundles (Jetson): ONNX items + manifest + a standalone runner; and the import
of the runner's result as a profile of that device."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.profile.devices import get_device
from dery_deploy.profile.items import donor_items, example_input, partition_items, structure_hash
from dery_deploy.profile.run import DOWNSTREAM_CLASSES
from dery_deploy.profile.store import new_profile, profile_path, write_profile

BUNDLE_SCHEMA = 1


def write_bundle(zoo, spec, partition: dict, dissections: dict, out: Path, batches: list[int], precision: str) -> dict:
    from dery_deploy.export.onnx_export import onnx_from_module, save_onnx

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DeryError(f"bundle folder {out} is not empty; pick a new folder or empty it", "profile")
    (out / "items").mkdir(parents=True, exist_ok=True)
    items = []
    for i, it in enumerate(partition_items(zoo, partition, dissections, DOWNSTREAM_CLASSES) + donor_items(zoo, DOWNSTREAM_CLASSES)):
        f = f"items/{i:04d}-{it.kind}.onnx"
        save_onnx(onnx_from_module(it.build(), example_input(it.in_spec, 1)), out / f)
        items.append({"key": it.key, "kind": it.kind, "file": f, "sha256": sha256_file(out / f),
                      "input_shape": list(it.in_spec.shape), "info": it.info})
    manifest = {"schema": BUNDLE_SCHEMA, "kind": "profile-bundle", "device": spec.id, "zoo": zoo.name,
                "structure_hash": structure_hash(zoo), "precision": precision, "batches": batches, "items": items}
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
    spec = get_device(res["device"])
    for when in ("start", "end"):
        fp = res["fingerprint"][when]
        if not spec.matches(fp):
            raise DeryError(f"{path} was measured on {fp.get('gpu_name') or fp.get('cpu_model')!r}, which does not match "
                            f"device {spec.id!r}; run the bundle on that device", "profile")
    keys = {i["key"] for i in man["items"]}
    written = []
    for batch in man["batches"]:
        recs = res["results"].get(str(batch))
        if recs is None:
            raise DeryError(f"{path} has no results for batch {batch} of its manifest", "profile")
        got = set(recs)
        if got != keys:
            extra, missing = sorted(got - keys), sorted(keys - got)
            raise DeryError(f"{path} items do not match the bundle manifest (batch {batch}: {len(missing)} missing, "
                            f"{len(extra)} unknown, e.g. {(missing or extra)[0]!r})", "profile")
        data = new_profile(spec, res["fingerprint"]["start"], res["zoo"], res["structure_hash"], res["backend"],
                           res["backend_version"], res["precision"], int(batch))
        data["fingerprint"]["end"] = res["fingerprint"]["end"]
        data["records"] = recs
        data["imported_from"] = {"file": str(path), "manifest_sha256": res["manifest_sha256"],
                                 "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
        written.append(write_profile(profile_path(root, spec.id, res["zoo"], res["backend"], res["precision"], int(batch)), data))
    return written
