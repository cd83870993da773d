"""The run's final measurement: every network the report compares, in one interleaved pass.

The shipped artifact of every budget, every fine-tuned donor and every budget's best reassembled
network, each on every target (backend/precision) the run searched, are measured together
(`runtime.harness.measure_interleaved`) with the run's batch, threads and per-call percentile, so
that drift on a shared machine cannot decide a comparison: which donors fit a budget, whether
reassembly won, which runtime is faster, the Pareto plot, and each shipped artifact against its
budget all read these numbers. A shipped artifact is timed as the file itself; on the CPU every
item is timed as a file in a measurement worker, a process that loads nothing but the runtimes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.runtime.backends import Backend, Runner
from dery_deploy.runtime.backends.onnx_based import OnnxBackend
from dery_deploy.runtime.calibration import REFERENCE_KEY, reference_item
from dery_deploy.runtime.harness import Measurement, PassSummary, TimingOptions, measure_interleaved, torch_threads
from dery_deploy.runtime.measure import isolated
from dery_deploy.runtime.worker import FileItem, measure_files
from dery_deploy.train.finetune import load_run_model


@dataclass
class Compared:
    key: str  # "<what>|<backend>/<precision>", what = donor:<name>, mix:<budget>, ship:<budget>
    run_dir: Path  # the fine-tuned run (checkpoint)
    backend: Backend
    precision: str
    artifact: Path | None = None  # the exported file as it ships (.onnx or OpenVINO .xml), where there is one


def _runner(c: Compared, example, device: str) -> Runner:
    if c.artifact is not None and c.artifact.is_file() and hasattr(c.backend, "runner_from_onnx"):
        # OpenVINO reads its IR (.xml) by path; ONNX Runtime and OpenVINO read ONNX bytes
        source = str(c.artifact) if c.artifact.suffix == ".xml" else c.artifact.read_bytes()
        return c.backend.runner_from_onnx(source, example, device)
    model, _ = load_run_model(c.run_dir)
    return c.backend.prepare(model, example, c.precision, device)


def _file_item(c: Compared, example, folder: Path, i: int) -> FileItem:
    """The file `c` runs as: its shipped artifact, or its network exported for its target."""
    path = c.artifact if c.artifact is not None and c.artifact.is_file() else None
    if path is None:
        assert isinstance(c.backend, OnnxBackend)
        model, _ = load_run_model(c.run_dir)
        path = folder / f"item{i}.onnx"
        path.write_bytes(c.backend.onnx_bytes(model, example, c.precision))
    threads = c.backend.threads or torch.get_num_threads()
    return FileItem(c.key, str(path), c.backend.name, threads, list(example.shape))


def reference_key(runtime: str, threads: int) -> str:
    """The final pass's key of the reference workload on one runtime and thread count."""
    return f"{REFERENCE_KEY}|{runtime}/t{threads}"


def _measure_in_worker(
    compared: list[Compared], example, percentile: int, progress
) -> tuple[dict[str, Measurement], PassSummary]:
    task = progress.add_task("final measurement: export", total=len(compared)) if progress else None
    with tempfile.TemporaryDirectory(prefix="dery-final-") as tmp:
        items = []
        for i, c in enumerate(compared):
            items.append(_file_item(c, example, Path(tmp), i))
            if progress:
                progress.advance(task)
        # the machine's speed as each runtime sees it: a package's figure is related to its own runtime's
        targets = {(c.backend.name, c.backend.threads or torch.get_num_threads()) for c in compared}
        for runtime, threads in sorted(targets):
            ref = reference_item(Path(tmp), runtime, threads)
            ref.key = reference_key(runtime, threads)
            items.append(ref)

        def tick(done: int, planned: int) -> None:
            if progress:
                progress.update(task, description=f"final measurement: window {done}/{planned} (measurement worker)")

        res = measure_files(items, TimingOptions.for_budget(percentile), progress=tick if progress else None)
    refs = {k: res.measurements.pop(k).promise_at(50) for k in list(res.measurements) if k.startswith(REFERENCE_KEY)}
    res.summary.references_ms = {k.removeprefix(REFERENCE_KEY + "|"): round(v, 5) for k, v in refs.items()}
    return res.measurements, res.summary


def measure_compared(
    compared: list[Compared], device: str, example, percentile: int, threads: int | None, progress=None
) -> tuple[dict[str, Measurement], PassSummary]:
    """One interleaved pass over every compared network on its target (see the module docstring); in a
    measurement worker where every target runs a file on the CPU (`runtime.worker`)."""
    if compared and all(isolated(c.backend, device) for c in compared):
        return _measure_in_worker(compared, example, percentile, progress)
    task = progress.add_task("final measurement: build", total=len(compared)) if progress else None
    runners = {}
    with torch_threads(threads):
        for c in compared:
            runners[c.key] = _runner(c, example, device)
            if progress:
                progress.advance(task)

    def tick(done: int, planned: int) -> None:
        if progress:
            progress.update(task, description=f"final measurement: window {done}/{planned}")

    return measure_interleaved(
        {k: (r.call, r.cuda, r.stream) for k, r in runners.items()},
        TimingOptions.for_budget(percentile),
        threads,
        tick if progress else None,
    )
