"""Ship a family: several trained path networks that share blocks, in one folder with each weight once.

Each path is exported to ONNX as a single package's graph is (`runtime.onnx.onnx_from_module`, the
TorchScript exporter at opset 17, constant folding on), fp32 at batch 1, static. Every initializer of
every graph is then moved into the one `weights.bin`, keyed by the sha256 of its bytes: a block two paths
share is the same tensors in PyTorch, so after export (BatchNorm folded into Conv, names generated per
graph) it is the same bytes, stored once. Each graph keeps only (location, offset, length) per initializer
(ONNX external data, which ONNX Runtime and OpenVINO read). Then each path is checked against PyTorch
(parity), and all paths are timed in one interleaved pass by the code `dery bench` runs
(`deploy.family_bench`), on the files as shipped. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dery_deploy import __version__
from dery_deploy.artifacts import atomic_write_bytes, sha256_file
from dery_deploy.data.task import Task
from dery_deploy.deploy.bench import WARMUP_S
from dery_deploy.deploy.family import load_family
from dery_deploy.deploy.family_bench import MEASURED_IN, STATISTIC, judge_family
from dery_deploy.deploy.family_info import FAMILY_FILE, WEIGHTS_FILE, FamilyInfo, FamilyPath, WeightsFile
from dery_deploy.deploy.info import Budget, Latency, ModelInput, Runtime
from dery_deploy.deploy.machine import fingerprint
from dery_deploy.deploy.settings import onnxruntime_session, onnxruntime_settings
from dery_deploy.errors import DeryError
from dery_deploy.export.package import preprocess_of
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.onnx import onnx_from_module

PARITY_TOL = 1e-4  # max |ONNX Runtime - PyTorch| a path may show on the check batch
PARITY_IMAGES = 8
ALIGN = 64  # each tensor starts at a multiple of this in the weights file


@dataclass
class FamilyMember:
    """One trained path to ship: its network and the plan it was built from (its budget, percentile,
    target) with the test top-1 its training measured."""

    net: nn.Module
    plan: Plan
    top1: float | None


class SharedWeights:
    """The weights file being built: each distinct tensor once, at an aligned offset."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.tensors: dict[str, list[int]] = {}  # sha256 -> [offset, length]

    def add(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.tensors:
            self.blob += bytes(-len(self.blob) % ALIGN)
            self.tensors[digest] = [len(self.blob), len(data)]
            self.blob += data
        return digest

    def externalise(self, model) -> tuple[list[str], int]:
        """Move every initializer of `model` (an onnx ModelProto, changed in place) into the file: its
        bytes stored (once), the tensor pointing at them. Returns the digests it reads and its bytes."""
        from onnx import TensorProto, numpy_helper

        digests, total = [], 0
        for t in model.graph.initializer:
            data = t.raw_data if t.raw_data else numpy_helper.to_array(t).tobytes()
            if not data:
                continue  # an empty tensor has nothing to share
            digest = self.add(data)
            offset, length = self.tensors[digest]
            dims, name, dtype = list(t.dims), t.name, t.data_type
            t.Clear()  # drops raw_data and any typed *_data field alike
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            digests.append(digest)
            total += length
        return list(dict.fromkeys(digests)), total


def write_family(
    out: Path,
    members: list[FamilyMember],
    task: Task,
    threads: int = 1,
    calls: int | None = None,
    seconds: float | None = None,
    warmup_s: float = WARMUP_S,
) -> FamilyInfo:
    """Export `members` as a family into `out` (module docstring), measured in one interleaved pass.

    Raises:
        DeryError: a member without a budget, plans of different targets, or a path whose ONNX output
            differs from its network's by more than PARITY_TOL.
    """
    _check_members(members)
    out = Path(out)
    x = task.x("test")[:PARITY_IMAGES].float()
    graphs = [_exported(m.net, x[:1]) for m in members]
    store = SharedWeights()
    reads = [store.externalise(g) for g in graphs]
    atomic_write_bytes(out / WEIGHTS_FILE, bytes(store.blob))
    paths = []
    for i, (m, g, (digests, nbytes)) in enumerate(zip(members, graphs, reads)):
        model = atomic_write_bytes(out / f"path-{i}.onnx", g.SerializeToString())
        paths.append(_path_record(i, m, model, digests, nbytes, threads, task))
        paths[-1].parity_max_abs = _parity(model, m.net, x, paths[-1])
    info = FamilyInfo(
        paths=paths,
        weights=WeightsFile(
            WEIGHTS_FILE,
            sha256_file(out / WEIGHTS_FILE),
            len(store.blob),
            sum(n for _, n in reads),
            store.tensors,
        ),
        input=ModelInput("x", task.input.channels, task.input.size, task.input.size),
        preprocess=preprocess_of(task),
        output="y",
        classes=list(task.classes),
        fingerprint=fingerprint("cpu"),
        measured_in=MEASURED_IN,
        made_by=f"dery_deploy {__version__}",
    )
    info.write(out / FAMILY_FILE)
    return measure_family(out, calls, seconds, warmup_s)


def _check_members(members: list[FamilyMember]) -> None:
    if not members:
        raise DeryError("a family needs at least one path", "export")
    for m in members:
        if m.plan.budget is None or not m.plan.budget.latency_ms:
            raise DeryError(
                f"path {m.plan.describe()} has no latency budget: a family path is one per budget", "export"
            )
    if len({(m.plan.backend or "onnxruntime", m.plan.precision, m.plan.batch) for m in members}) > 1:
        raise DeryError("a family's paths share one target (ONNX Runtime fp32 batch 1); these plans differ", "export")


def _exported(net: nn.Module, example: torch.Tensor):
    import onnx

    return onnx.load_from_string(onnx_from_module(net.eval(), example, dynamic_batch=False))


def _path_record(
    i: int, m: FamilyMember, model: Path, digests: list[str], nbytes: int, threads: int, task: Task
) -> FamilyPath:
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(model), full_check=True)  # by path: the checker follows the external data
    budget = m.plan.budget
    assert budget is not None  # `_check_members`
    return FamilyPath(
        name=f"path-{i}",
        model=model.name,
        model_sha256=sha256_file(model),
        plan=m.plan.describe(),
        budget=Budget(float(budget.latency_ms), int(budget.percentile or 50)),
        runtime=Runtime(
            "onnxruntime",
            onnxruntime.__version__.split("-")[0],
            "fp32",
            1,
            threads,
            onnxruntime_settings(threads),
            "cpu",
        ),
        accuracy={"top1": m.top1, "split": "test", "images": len(task.test), "task": task.kind},
        parity_max_abs=-1.0,  # set once the written graph is checked (`_parity`)
        weight_bytes=nbytes,
        tensors=digests,
    )


def _parity(model: Path, net: nn.Module, x: torch.Tensor, p: FamilyPath) -> float:
    """max |ONNX Runtime - PyTorch| of the graph as written (reading the weights file by its offsets), on
    `x` one image a call, with the path's own session settings.

    Raises:
        DeryError: over PARITY_TOL.
    """
    sess = onnxruntime_session(model, p.runtime.session)
    got = np.concatenate([sess.run(None, {"x": x[i : i + 1].numpy()})[0] for i in range(len(x))])
    with torch.inference_mode():
        want = net.eval()(x).numpy()
    diff = round(float(np.abs(got - want).max()), 8)
    if not diff <= PARITY_TOL:
        raise DeryError(
            f"{model} ({p.plan}) differs from its network by {diff:.2e} > {PARITY_TOL:g}: not shipped as this path",
            "export",
        )
    return diff


def measure_family(out: Path, calls: int | None = None, seconds: float | None = None, warmup_s: float = WARMUP_S):
    """Time every path of the family in `out` in one interleaved pass and record it in family.json."""
    family = load_family(out)
    results = family.measure(calls, seconds, warmup_s=warmup_s)
    verdict = judge_family({p.name: family.info.as_package(p) for p in family.paths}, results)
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    for p in family.paths:
        r = results[p.name]
        p.latency = Latency(
            r.p50_ms, r.p90_ms, r.p99_ms, r.calls, r.standard_error, r.noise, STATISTIC, MEASURED_IN, when
        )
        p.budget.verdict = verdict.verdicts[p.name].line
    family.info.fingerprint = results[family.paths[0].name].fingerprint
    family.info.write(out / FAMILY_FILE)
    return family.info
