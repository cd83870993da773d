"""Measure modules with one backend: build each (export / compile / capture), measure its peak
memory the way that backend's memory can be measured, then time them all in one interleaved pass
(`harness.measure_interleaved`), with the reference workload beside them.

Memory, per backend and device:
- CUDA, torch backends: the caching allocator's peak over its baseline, reset *before* the build,
  so what CUDA-graph capture and `reduce-overhead` allocate at capture time is counted; a backend's
  shared compiler state is cleared before a group's first baseline is read (`Backend.reset`).
- CUDA, other backends (TensorRT, ONNX Runtime CUDA EP): the device's free-memory drop while
  building and running (their allocators are not torch's).
- CPU, ONNX Runtime and OpenVINO: the peak-RSS rise of creating a fresh session and running it once.
- CPU, torch backends: not measurable apart from the rest of the process (None).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime.backends.base import Backend, Runner
from dery_deploy.runtime.backends.onnx_based import OnnxBackend
from dery_deploy.runtime.calibration import REFERENCE_KEY, reference_input, reference_module
from dery_deploy.runtime.harness import Measurement, PassSummary, TimingOptions, measure_interleaved, torch_threads
from dery_deploy.runtime.worker import FileItem, FilePass

# set to 1 to time ONNX-file runtimes inside the calling process, as before the measurement worker
# existed: kept so that what isolation changes can be measured (scripts/bench_reproduce.py)
IN_PROCESS_ENV = "DERY_MEASURE_IN_PROCESS"


def isolated(backend: Backend, device: str) -> bool:
    """Whether `backend`'s items are timed in a measurement worker (`runtime.worker`): the runtimes that
    run an exported file on the CPU. torch backends and GPUs are timed in the process that built them."""
    return device == "cpu" and isinstance(backend, OnnxBackend) and os.environ.get(IN_PROCESS_ENV) != "1"


@dataclass
class ItemMeasurement:
    timing: Measurement
    peak_memory_mb: float | None
    build_s: float
    calibration_ms: float | None = None  # the reference workload's latency in the same pass

    def record_fields(self) -> dict:
        t = self.timing.to_dict()
        return {
            **{k: t[k] for k in ("median_ms", "p90_ms", "p99_ms", "uncertainty", "runs", "stable", "windows")},
            "noise": t["noise"],
            "uncertainties": t["uncertainties"],
            "window_medians_ms": t["window_medians_ms"],
            "peak_memory_mb": None if self.peak_memory_mb is None else round(self.peak_memory_mb, 3),
            "build_s": round(self.build_s, 3),
            "calibration_ms": None if self.calibration_ms is None else round(self.calibration_ms, 5),
        }


def prepare_module(
    backend: Backend, module: nn.Module, example: torch.Tensor, precision: str, device: str
) -> tuple[Runner, float | None]:
    """Build `module` with `backend` and measure its peak memory; returns the runner and the peak in MB."""
    cuda = device == "cuda"
    torch_alloc = cuda and backend.name.startswith("torch")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        free_before = torch.cuda.mem_get_info()[0]
        torch.cuda.reset_peak_memory_stats()
    runner = backend.prepare(module, example, precision, device)
    runner.call()
    if cuda:
        torch.cuda.synchronize()
        if torch_alloc:
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = max(0.0, (free_before - torch.cuda.mem_get_info()[0]) / 2**20)
    elif runner.fresh_memory_mb is not None:
        peak = runner.fresh_memory_mb()
    else:
        peak = None
    return runner, peak


# what one pass builds: key -> a function returning (module, example input); a Mapping (read only) so
# that a dict of lambdas with default arguments (`lambda it=it: ...`) is one
Builds = Mapping[str, Callable[[], tuple[nn.Module, torch.Tensor]]]
# what `measure_across` builds: key -> (backend, precision, a function returning (module, example input))
AcrossBuilds = Mapping[str, tuple[Backend, str, Callable[[], tuple[nn.Module, torch.Tensor]]]]


def failure_text(e: BaseException) -> str:
    """One line saying why an item could not be measured."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def _prepare_group(
    backend: Backend,
    builds: Builds,
    group: list[str],
    precision: str,
    device: str,
    reference_batch,
    tick,
    failed: dict[str, str] | None = None,
) -> dict[str, tuple[Runner, float | None]]:
    prepared: dict[str, tuple[Runner, float | None]] = {}
    # compilers (inductor) fix their thread count when they build: build with the measured one
    with torch_threads(backend.threads):
        for k in group:
            try:
                module, example = builds[k]()
                prepared[k] = prepare_module(backend, module, example, precision, device)
            except Exception as e:  # noqa: BLE001 - one item a backend rejects (a capture, an export) is recorded
                if failed is None:
                    raise
                failed[k] = failure_text(e)
                if device == "cuda":
                    torch.cuda.synchronize()  # an error that poisons the CUDA context surfaces here, not later
            tick()
        if reference_batch is not None:
            ref = backend.prepare(reference_module(), reference_input(reference_batch), precision, device)
            prepared[REFERENCE_KEY] = (ref, None)
    return prepared


def measure_modules(
    backend: Backend,
    builds: Builds,
    precision: str,
    device: str,
    opts: TimingOptions | None = None,
    reference_batch: int | None = None,
    progress=None,
    label: str = "measure",
    failed: dict[str, str] | None = None,
    memory: Collection[str] | None = None,
) -> tuple[dict[str, ItemMeasurement], list[PassSummary]]:
    """Build every module, then time them in interleaved passes (one, or one per group of
    `backend.max_live` items where the backend cannot keep more alive), each with the reference
    workload at `reference_batch` (None: no reference).

    Args:
        failed: where given, an item whose build or first call raises is recorded here (key -> why) and
            left out, instead of ending the pass (and every item after it) with the error.
        memory: the keys whose fresh instance's memory a measurement worker measures (another compile of
            each; None: every item); the others get None.
    Returns:
        key -> ItemMeasurement (with the pass's reference latency), and the passes' summaries.
    """
    keys = list(builds)
    size = backend.max_live or len(keys) or 1
    groups = [keys[i : i + size] for i in range(0, len(keys), size)]
    out: dict[str, ItemMeasurement] = {}
    summaries = []
    total = len(keys) + (reference_batch is not None and isolated(backend, device))
    task = progress.add_task(f"{label}: build", total=total) if progress else None

    def built() -> None:
        if progress:
            progress.update(task, advance=1, description=f"{label}: build")

    def timed(done: int, planned: int) -> None:
        if progress:
            progress.update(task, description=f"{label}: timing window {done}/{planned}")

    if isolated(backend, device):
        worker_builds = {k: (backend, precision, builds[k]) for k in keys}
        if reference_batch is not None:
            worker_builds[REFERENCE_KEY] = (
                backend,
                precision,
                lambda: (reference_module(), reference_input(reference_batch)),
            )
        got, summary = _measure_in_worker(worker_builds, opts, built, timed if progress else None, failed, memory)
        ref_item = got.pop(REFERENCE_KEY, None)
        for m in got.values():
            m.calibration_ms = ref_item.timing.median_ms if ref_item else None
        return got, [summary]
    for group in groups:
        backend.reset()
        prepared = _prepare_group(backend, builds, group, precision, device, reference_batch, built, failed)
        timings, summary = measure_interleaved(
            {k: (r.call, r.cuda, r.stream) for k, (r, _) in prepared.items()},
            opts,
            backend.threads,
            timed if progress else None,
        )
        ref = timings.pop(REFERENCE_KEY, None)
        for k in (k for k in group if k in prepared):
            runner, peak = prepared[k]
            out[k] = ItemMeasurement(timings[k], peak, runner.build_s, ref.median_ms if ref else None)
        summaries.append(summary)
        del prepared  # free the group's sessions / graphs before the next is built
    return out, summaries


def _measure_in_worker(
    builds: dict[str, tuple[Backend, str, Callable[[], tuple[nn.Module, torch.Tensor]]]],
    opts: TimingOptions | None,
    built: Callable[[], None],
    timed: Callable[[int, int], None] | None,
    failed: dict[str, str] | None = None,
    memory: Collection[str] | None = None,
) -> tuple[dict[str, ItemMeasurement], PassSummary]:
    """Export every item to the file its runtime runs, then time the files in one interleaved pass in a
    measurement worker, which also measures the fresh-instance memory of those in `memory` (None: all).
    With `failed`, an item whose export or session fails is recorded there and left out (else the error
    ends the pass)."""
    wanted = [k for k in builds if k != REFERENCE_KEY and (memory is None or k in memory)]
    with tempfile.TemporaryDirectory(prefix="dery-items-") as tmp:
        # the worker builds each file while the next is exported (`FilePass`)
        stream = FilePass(Path(tmp), len(builds), opts, wanted, timed, keep_going=failed is not None)
        try:
            build_s = _export_files(builds, Path(tmp), stream, built, failed)
        except BaseException:
            stream.cancel()
            raise
        res = stream.result()
    if REFERENCE_KEY in res.failed:
        raise DeryError(f"the reference workload could not run: {res.failed[REFERENCE_KEY]}", "profile")
    if failed is not None:
        failed.update(res.failed)
    out = {k: ItemMeasurement(m, res.memory_mb.get(k), build_s[k]) for k, m in res.measurements.items()}
    return out, res.summary


def _export_files(builds, folder: Path, stream: FilePass, built, failed: dict[str, str] | None) -> dict[str, float]:
    """Export every item to the file its runtime runs and hand it to `stream`; returns each one's seconds.
    With `failed`, an item whose export fails is recorded there and skipped."""
    build_s = {}
    for i, (k, (backend, precision, build)) in enumerate(builds.items()):
        assert isinstance(backend, OnnxBackend)
        t0 = time.perf_counter()
        try:
            module, example = build()
            path = folder / f"item{i}.onnx"
            path.write_bytes(backend.onnx_bytes(module, example, precision))
        except Exception as e:  # noqa: BLE001 - one item the export rejects is recorded, the rest measured
            if failed is None or k == REFERENCE_KEY:
                raise
            failed[k] = failure_text(e)
            stream.skip(i)
            built()
            continue
        build_s[k] = time.perf_counter() - t0
        threads = backend.threads or torch.get_num_threads()
        stream.add(i, FileItem(k, str(path), backend.name, threads, list(example.shape)))
        built()
    return build_s


def _worker_pass(
    builds, opts, progress, label: str, memory: Collection[str] | None = None
) -> tuple[dict[str, ItemMeasurement], list[PassSummary]]:
    """`measure_across` in a measurement worker, with the same progress bar."""
    task = progress.add_task(f"{label}: build", total=len(builds)) if progress else None

    def advance() -> None:
        if progress:
            progress.update(task, advance=1)

    def tick(done: int, planned: int) -> None:
        if progress:
            progress.update(task, description=f"{label}: timing window {done}/{planned} (measurement worker)")

    got, summary = _measure_in_worker(builds, opts, advance, tick if progress else None, memory=memory)
    return got, [summary]


def measure_module(
    backend: Backend,
    module: nn.Module,
    example: torch.Tensor,
    precision: str,
    device: str,
    opts: TimingOptions | None = None,
) -> ItemMeasurement:
    """One module on its own. Numbers that are compared with each other belong in one `measure_modules` pass."""
    return measure_modules(backend, {"item": lambda: (module, example)}, precision, device, opts)[0]["item"]


def measure_across(
    builds: AcrossBuilds,
    device: str,
    opts: TimingOptions | None = None,
    progress=None,
    label: str = "measure",
    memory: Collection[str] | None = None,
) -> tuple[dict[str, ItemMeasurement], list[PassSummary]]:
    """Like `measure_modules`, for items that run on different backends or precisions (the same network
    on ONNX Runtime fp32 and OpenVINO int8, say): one interleaved pass over all of them, so that which
    runtime is faster is not decided by drift. Backends that cannot keep many items alive (`max_live`)
    are measured in passes of their own.

    Args:
        builds: key -> (backend, precision, a function returning (module, example input)).
        memory: as `measure_modules`'s.
    """
    if builds and all(isolated(v[0], device) for v in builds.values()):
        # a worker sets each file's runtime and threads in its own session: all of them share one pass
        return _worker_pass(builds, opts, progress, label, memory)
    pooled = {k: v for k, v in builds.items() if v[0].max_live is None}
    apart: AcrossBuilds = {k: v for k, v in builds.items() if v[0].max_live is not None}
    threads = {v[0].threads for v in pooled.values()}
    out: dict[str, ItemMeasurement] = {}
    summaries: list[PassSummary] = []
    if len(threads) > 1:  # one pass runs under one torch thread count: different counts are measured apart
        apart, pooled = builds, {}
    if pooled:
        task = progress.add_task(f"{label}: build", total=len(pooled)) if progress else None
        prepared: dict[str, tuple[Runner, float | None]] = {}
        for k, (backend, precision, build) in pooled.items():
            with torch_threads(backend.threads):
                module, example = build()
                prepared[k] = prepare_module(backend, module, example, precision, device)
            if progress:
                progress.update(task, advance=1)

        def timed(done: int, planned: int) -> None:
            if progress:
                progress.update(task, description=f"{label}: timing window {done}/{planned}")

        timings, summary = measure_interleaved(
            {k: (r.call, r.cuda, r.stream) for k, (r, _) in prepared.items()},
            opts,
            threads.pop(),
            timed if progress else None,
        )
        for k, (runner, peak) in prepared.items():
            out[k] = ItemMeasurement(timings[k], peak, runner.build_s)
        summaries.append(summary)
    by_backend: dict[tuple, dict] = {}
    for k, (backend, precision, build) in apart.items():
        by_backend.setdefault((id(backend), precision), {"backend": backend, "precision": precision, "builds": {}})
        by_backend[(id(backend), precision)]["builds"][k] = build
    for group in by_backend.values():
        got, passes = measure_modules(
            group["backend"], group["builds"], group["precision"], device, opts, progress=progress, label=label,
            memory=memory,
        )  # fmt: skip
        out.update(got)
        summaries += passes
    return out, summaries
