"""`family.json`: a family of paths shipped in one folder, every weight tensor stored once.

A family is several reassembled networks (paths), one per latency budget, that share blocks. Each path
is its own ONNX graph (`path-<i>.onnx`, fp32, batch 1 static); none holds a weight: every initializer
points (ONNX external data: location, offset, length) into the one `weights.bin`, where each distinct
tensor lies once, named by the sha256 of its bytes. The ONNX export folds BatchNorm into Conv and gives
results generated names, so a name says nothing across graphs; identical bytes are one tensor, and the
reader checks every tensor's bytes against its name (`read_family`), so two paths that share a tensor are
byte-equal by construction and on every load.

Per path it records what `deploy.json` records for one package (`as_package` builds that record, so a
path runs as an ordinary `Predictor` and is benched by the same code): the plan, the runtime with every
session setting, the budget, the test top-1, its parity against PyTorch, and its latency measured in one
interleaved pass with the other paths. Paths in it are file names inside the folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from dery_deploy.artifacts import JsonArtifact, sha256_file
from dery_deploy.deploy.info import Budget, DeployInfo, Latency, ModelInput, Preprocess, Runtime
from dery_deploy.errors import DeryError
from dery_deploy.schema import load_dataclass

FAMILY_FILE = "family.json"
WEIGHTS_FILE = "weights.bin"
FIX = "copy the family again from where it was made, or rebuild it"


@dataclass
class FamilyPath:
    """One path: its graph, what it is, and how it measured."""

    name: str  # "path-0": how the family names it (budget order, fastest budget first)
    model: str  # its graph, a file name in the folder
    model_sha256: str
    plan: str  # the plan's description: donor[start:end] > ...
    budget: Budget
    runtime: Runtime
    accuracy: dict  # {"top1": %, "split": "test", "images": N, "task": kind}
    parity_max_abs: float  # max |ONNX Runtime - PyTorch| over the export's check batch
    weight_bytes: int  # its initializers' bytes: what a separate artifact of this path would hold
    tensors: list[str]  # the sha256 of every tensor it reads from the weights file
    latency: Latency | None = None  # None until the family's pass has measured it

    @property
    def top1(self) -> float:
        value = self.accuracy.get("top1")
        return float("-inf") if value is None else float(value)


@dataclass
class WeightsFile:
    """The one weights file: each distinct tensor once, at `tensors[sha256] = [offset, length]`."""

    file: str
    sha256: str
    distinct_bytes: int  # the tensors' bytes, each once
    paths_bytes: int  # the sum over paths of each path's own bytes (as separate artifacts)
    tensors: dict[str, list[int]]

    @property
    def ratio(self) -> float:
        """Distinct bytes against separate artifacts' (1.0: nothing shared)."""
        return self.distinct_bytes / max(self.paths_bytes, 1)


@dataclass
class FamilyInfo(JsonArtifact):
    """The family's `family.json` (module docstring)."""

    KIND: ClassVar[str] = "family"
    SCHEMA: ClassVar[int] = 1
    STAGE: ClassVar[str] = "deploy"
    FIX: ClassVar[str] = FIX

    paths: list[FamilyPath]
    weights: WeightsFile
    input: ModelInput
    preprocess: Preprocess
    output: str
    classes: list[str]
    fingerprint: dict  # the machine every path was measured on, as deploy.json records it
    measured_in: str = ""  # how the family's pass timed the paths
    made_by: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FamilyInfo:
        info = load_dataclass(cls, {k: v for k, v in data.items() if k not in ("kind", "schema")})
        bad = info.problems()
        if bad:
            raise ValueError("; ".join(bad))
        return info

    def problems(self) -> list[str]:
        """Every field out of range, at once (each path checked as the package it runs as)."""
        bad = [] if self.paths else ["paths is empty"]
        names = [p.name for p in self.paths]
        if len(set(names)) != len(names):
            bad.append(f"path names repeat: {names}")
        if Path(self.weights.file).name != self.weights.file:
            bad.append(f"weights file {self.weights.file!r} is not a plain name inside the folder")
        for p in self.paths:
            bad += [f"{p.name}: {b}" for b in self.as_package(p).problems()]
            missing = [t[:12] for t in p.tensors if t not in self.weights.tensors]
            if missing:
                bad.append(f"{p.name} reads tensors the weights file lacks: {missing[:3]}")
        return bad

    def path(self, name: str) -> FamilyPath:
        for p in self.paths:
            if p.name == name:
                return p
        raise DeryError(f"the family has no path {name!r}; it has {', '.join(p.name for p in self.paths)}", "deploy")

    def as_package(self, p: FamilyPath) -> DeployInfo:
        """The path as the one-package record `Predictor`, `open_session` and `dery bench` read."""
        return DeployInfo(
            model=p.model,
            files={p.model: p.model_sha256, self.weights.file: self.weights.sha256},
            input=self.input,
            preprocess=self.preprocess,
            output=self.output,
            classes=self.classes,
            runtime=p.runtime,
            latency=p.latency,
            budget=p.budget,
            fingerprint=self.fingerprint,
            accuracy=p.accuracy,
            made_by=self.made_by,
        )


def is_family(folder: str | Path) -> bool:
    return (Path(folder) / FAMILY_FILE).is_file()


def read_family(folder: str | Path) -> FamilyInfo:
    """A family's family.json, with every graph unchanged (sha256) and every tensor of the weights file
    byte-equal to the sha256 it is named by.

    Raises:
        DeryError: one line naming the missing, edited or truncated file (and the tensor) and the fix.
    """
    folder = Path(folder)
    if not (folder / FAMILY_FILE).is_file():
        raise DeryError(f"{folder} holds no {FAMILY_FILE}: not a family folder", "deploy")
    info = FamilyInfo.read(folder / FAMILY_FILE)
    for p in info.paths:
        path = folder / p.model
        if not path.is_file():
            raise DeryError(f"{path} is missing from the family; {FIX}", "deploy")
        if sha256_file(path) != p.model_sha256:
            raise DeryError(f"{path} does not match the sha256 in {FAMILY_FILE} (edited or truncated); {FIX}", "deploy")
    check_weights(folder, info)
    return info


def check_weights(folder: Path, info: FamilyInfo) -> None:
    """Every tensor's bytes hash to its name, and the file is the one recorded (sha256)."""
    w = info.weights
    path = folder / w.file
    if not path.is_file():
        raise DeryError(f"{path} is missing from the family; {FIX}", "deploy")
    with open(path, "rb") as f:
        for digest, (offset, length) in sorted(w.tensors.items(), key=lambda kv: kv[1][0]):
            f.seek(offset)
            if hashlib.sha256(f.read(length)).hexdigest() != digest:
                users = [p.name for p in info.paths if digest in p.tensors]
                raise DeryError(
                    f"{path}: the tensor at offset {offset} ({length} bytes, read by {', '.join(users)}) does not "
                    f"match its sha256 {digest[:12]} (edited or truncated); {FIX}",
                    "deploy",
                )
    if sha256_file(path) != w.sha256:
        raise DeryError(f"{path} does not match the sha256 in {FAMILY_FILE} (edited or truncated); {FIX}", "deploy")
