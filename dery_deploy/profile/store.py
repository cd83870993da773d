"""Profile JSON files: created, resumed, validated, written atomically after every record.

A profile is one (device, backend, precision, batch) for one zoo's structure. Because the whole
file is rewritten atomically after each record, an interrupted run (Ctrl-C, kill -9) leaves the
records finished so far, and the next run resumes after them.
"""

from __future__ import annotations

import json
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.errors import DeryError

SCHEMA = 1
KIND = "profile"


def profile_path(root: Path, device: str, zoo: str, backend: str, precision: str, batch: int) -> Path:
    return root / "profiles" / device / f"{zoo}-{backend}-{precision}-b{batch}.json"


def read_profile(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DeryError(f"profile not found: {path}", "profile")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeryError(f"profile {path} is truncated or corrupt ({e.msg} at line {e.lineno}); delete it and "
                        "rerun `dery profile` (finished records are lost only for this file)", "profile") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise DeryError(f"{path} is not a profile", "profile")
    if data.get("schema") != SCHEMA:
        raise DeryError(f"profile {path} has schema {data.get('schema')!r}; this version reads schema {SCHEMA}: "
                        "re-profile with this version", "profile")
    return data


def check_profile(data: dict, path, spec, zoo=None, structure: str | None = None) -> None:
    """Refuse a profile of another device, or of another zoo's architectures."""
    if data.get("device") != spec.id:
        raise DeryError(f"profile {path} is for device {data.get('device')!r}, not {spec.id!r}", "profile")
    for when in ("start", "end"):
        fp = data.get("fingerprint", {}).get(when)
        if fp is not None and not spec.matches(fp):
            what = fp.get("gpu_name") or fp.get("cpu_model")
            raise DeryError(f"profile {path} was measured on {what!r}, which does not match device spec {spec.id!r} "
                            f"({spec.fingerprint}); profile on the right machine or pick the matching --device", "profile")
    if zoo is not None and data.get("zoo") != zoo.name:
        raise DeryError(f"profile {path} is of zoo {data.get('zoo')!r}, not {zoo.name!r}", "profile")
    if structure is not None and data.get("structure_hash") != structure:
        raise DeryError(f"profile {path} was measured for other architectures of zoo {data.get('zoo')!r} "
                        f"(structure {data.get('structure_hash')} vs {structure}); re-profile", "profile")


def new_profile(spec, fingerprint: dict, zoo_name: str, structure: str, backend: str, backend_version: str, precision: str,
                batch: int) -> dict:
    return {"schema": SCHEMA, "kind": KIND, "device": spec.id, "device_name": spec.name,
            "fingerprint": {"start": fingerprint, "end": None}, "backend": backend, "backend_version": backend_version,
            "precision": precision, "batch": batch, "zoo": zoo_name, "structure_hash": structure, "records": {}}


def write_profile(path: str | Path, data: dict) -> Path:
    return atomic_write_json(path, data)
