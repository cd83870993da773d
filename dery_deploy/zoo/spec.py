"""Zoo specs: the input spec plus the donors (timm architecture, kwargs, weights, source).

Validation collects every bad field and reports them together, so a user fixes a YAML in one pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import yaml

from dery_deploy.artifacts import sha256_file, sha256_json
from dery_deploy.data.task import InputSpec
from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.errors import DeryError

EMBEDDED_DIR = Path(__file__).parent / "embedded"
WEIGHT_SCHEMES = ("embedded", "file", "timm", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DonorSpec:
    name: str
    arch: str
    weights: str
    source: str
    num_classes: int
    kwargs: dict = field(default_factory=dict)

    @property
    def weights_scheme(self) -> str:
        return self.weights.split(":", 1)[0]

    @property
    def weights_ref(self) -> str:
        return self.weights.split(":", 1)[1] if ":" in self.weights else ""


@dataclass
class ZooSpec:
    name: str
    input: InputSpec
    donors: list[DonorSpec]
    description: str = ""
    root: Path | None = None  # folder the spec came from; `embedded:` and relative `file:` resolve here
    raw: dict = field(default_factory=dict)
    path: Path | None = None  # the YAML file, when loaded from one

    @property
    def input_tensor_spec(self) -> TensorSpec:
        """The spec of boundary 0: the normalised input image."""
        return TensorSpec("NCHW", self.input.channels, self.input.size, self.input.size, 0, 1.0)

    @property
    def ref(self) -> str:
        """How later artifacts find this zoo again: the embedded name, else the YAML's absolute path."""
        if self.path is None or self.path.resolve().parent.parent == EMBEDDED_DIR.resolve():
            return self.name
        return str(self.path.resolve())

    def donor(self, name: str) -> DonorSpec:
        for d in self.donors:
            if d.name == name:
                return d
        raise DeryError(
            f"Unknown donor {name!r} in zoo {self.name!r}. Known: {', '.join(self.donor_names)}. "
            f"Run `dery zoo show {self.name}`.",
            "zoo",
        )

    @property
    def donor_names(self) -> list[str]:
        return [d.name for d in self.donors]

    def hash(self) -> str:
        """Content key of the zoo: spec plus the identity of every weights file."""
        return sha256_json({"spec": self.raw, "weights": {d.name: weights_identity(self, d) for d in self.donors}})[:16]


def manifest(zoo: ZooSpec) -> dict:
    path = (zoo.root or Path(".")) / "manifest.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def weights_path(zoo: ZooSpec, donor: DonorSpec) -> Path:
    ref = Path(donor.weights_ref).expanduser()
    return ref if ref.is_absolute() else (zoo.root or Path(".")) / ref


def weights_identity(zoo: ZooSpec, donor: DonorSpec) -> str:
    """What identifies a donor's weights for cache keys, without reading large files twice."""
    if donor.weights_scheme == "embedded":
        return manifest(zoo).get("donors", {}).get(donor.name, {}).get("sha256", "missing")
    if donor.weights_scheme == "file":
        p = weights_path(zoo, donor)
        return file_hash(str(p), p.stat().st_mtime_ns) if p.is_file() else "missing"
    return donor.weights


@lru_cache(maxsize=64)
def file_hash(path: str, mtime_ns: int) -> str:
    return sha256_file(path)


def _check_type(errors: list[str], where: str, value: Any, types, what: str) -> bool:
    if (
        not isinstance(value, types)
        or isinstance(value, bool)
        and bool not in (types if isinstance(types, tuple) else (types,))
    ):
        errors.append(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
        return False
    return True


def parse_zoo(data: Any, origin: str, root: Path | None = None) -> ZooSpec:
    """Validate a zoo mapping; raise one DeryError listing every bad field."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise DeryError(f"{origin}: a zoo spec must be a mapping, got {type(data).__name__}", "zoo")
    name = data.get("name")
    if not (isinstance(name, str) and _NAME.match(name)):
        errors.append(f"name: expected a name of letters, digits, '_', '-', '.', got {name!r}")
    input_spec = _parse_input(errors, data.get("input"))
    donors = _parse_donors(errors, data.get("donors"))
    unknown = set(data) - {"schema", "name", "description", "input", "donors"}
    if unknown:
        errors.append(f"unknown top-level field(s) {sorted(unknown)}")
    if errors:  # else the name and the input are valid: the casts below say so
        raise DeryError(f"{origin}: {len(errors)} bad field(s): " + "; ".join(errors), "zoo")
    return ZooSpec(cast(str, name), cast(InputSpec, input_spec), donors, data.get("description", ""), root, data)


def _parse_input(errors: list[str], inp: Any) -> InputSpec | None:
    """The zoo's input spec, or None with what is wrong with it appended to `errors`."""
    if not _check_type(errors, "input", inp, dict, "a mapping with channels, size, mean, std"):
        return None
    ch, size, mean, std = (inp.get(k) for k in ("channels", "size", "mean", "std"))
    ok = True
    for key, v in (("channels", ch), ("size", size)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            errors.append(f"input.{key}: expected a positive integer, got {v!r}")
            ok = False
    for key, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, list) and v and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)):
            errors.append(f"input.{key}: expected a list of numbers, got {v!r}")
            ok = False
        elif isinstance(ch, int) and len(v) != ch:
            errors.append(f"input.{key}: {len(v)} values for {ch} channels")
            ok = False
    if ok and any(s <= 0 for s in std):
        errors.append(f"input.std: values must be > 0, got {std}")
        ok = False
    return InputSpec(ch, size, tuple(float(m) for m in mean), tuple(float(s) for s in std)) if ok else None


def _parse_donors(errors: list[str], raw_donors: Any) -> list[DonorSpec]:
    """The donors whose every field is valid; what is wrong with the others is appended to `errors`."""
    if not (isinstance(raw_donors, list) and raw_donors):
        errors.append(f"donors: expected a non-empty list, got {raw_donors!r}")
        return []
    seen: set = set()
    parsed = [_parse_donor(errors, i, d, seen) for i, d in enumerate(raw_donors)]
    return [d for d in parsed if d is not None]


def _parse_donor(errors: list[str], i: int, d: Any, seen: set) -> DonorSpec | None:
    """Donor `i`, or None with what is wrong with its fields appended to `errors`; its name joins `seen`."""
    if not isinstance(d, dict):
        errors.append(f"donors[{i}]: expected a mapping, got {type(d).__name__}")
        return None
    dn = d.get("name")
    where = f"donors[{i}] ({dn})" if isinstance(dn, str) else f"donors[{i}]"
    bad = len(errors)
    if not (isinstance(dn, str) and _NAME.match(dn)):
        errors.append(f"{where}.name: expected a name, got {dn!r}")
    elif dn in seen:
        errors.append(f"{where}.name: duplicate donor name")
    seen.add(dn)
    _check_type(errors, f"{where}.arch", d.get("arch"), str, "a timm architecture name")
    w = d.get("weights", "none")
    if _check_type(errors, f"{where}.weights", w, str, "'embedded:FILE', 'file:PATH', 'timm:TAG' or 'none'"):
        scheme = w.split(":", 1)[0]
        if scheme not in WEIGHT_SCHEMES or (scheme != "none" and ":" not in w) or (scheme == "none" and w != "none"):
            errors.append(f"{where}.weights: {w!r} is not 'embedded:FILE', 'file:PATH', 'timm:TAG' or 'none'")
    _check_type(errors, f"{where}.source", d.get("source", ""), str, "a text saying what it was trained on")
    nc = d.get("num_classes", 1000)
    if _check_type(errors, f"{where}.num_classes", nc, int, "a non-negative integer") and nc < 0:
        errors.append(f"{where}.num_classes: must be >= 0, got {nc}")
    kw = d.get("kwargs", {}) or {}
    _check_type(errors, f"{where}.kwargs", kw, dict, "a mapping of timm.create_model keyword arguments")
    unknown = set(d) - {"name", "arch", "kwargs", "weights", "source", "num_classes"}
    if unknown:
        errors.append(f"{where}: unknown field(s) {sorted(unknown)}")
    if len(errors) > bad:
        return None
    return DonorSpec(cast(str, dn), d["arch"], w, d.get("source", ""), nc, _tuplify(kw))  # no bad field: a valid name


def _tuplify(kw: dict) -> dict:
    """YAML lists become tuples: timm's configs expect tuples for per-stage values."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def load_zoo_file(path: str | Path) -> ZooSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DeryError(f"zoo spec not found: {path}", "zoo") from None
    except yaml.YAMLError as e:
        raise DeryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})", "zoo") from None
    zoo = parse_zoo(data, str(path), path.parent)
    zoo.path = path
    return zoo
