"""The run's final measurement: every network the report compares, in one interleaved pass.

The shipped artifact of every budget, every fine-tuned donor and every budget's best reassembled
network are measured together (`runtime.harness.measure_interleaved`), with the plan's backend,
precision, batch, threads and per-call percentile, so that drift on a shared machine cannot decide
a comparison: which donors fit a budget, whether reassembly won, the Pareto plot, speed-ups, and
each shipped artifact against its budget all read these numbers. Where the backend runs ONNX, the
exported file itself is what is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dery_deploy.runtime.backends import Backend, Runner
from dery_deploy.runtime.harness import Measurement, PassSummary, TimingOptions, measure_interleaved, torch_threads
from dery_deploy.train.finetune import load_run_model


@dataclass
class Compared:
    key: str  # "donor:<name>" or "mix:<budget>"
    run_dir: Path  # the fine-tuned run (checkpoint)
    artifact: Path | None = None  # the exported ONNX as it ships, where there is one


def _runner(backend: Backend, c: Compared, example, precision: str, device: str) -> Runner:
    if c.artifact is not None and c.artifact.is_file() and hasattr(backend, "runner_from_onnx"):
        return backend.runner_from_onnx(c.artifact.read_bytes(), example, device)
    model, _ = load_run_model(c.run_dir)
    return backend.prepare(model, example, precision, device)


def measure_compared(
    compared: list[Compared], backend: Backend, precision: str, device: str, example, percentile: int, progress=None
) -> tuple[dict[str, Measurement], PassSummary]:
    """One interleaved pass over every compared network (see the module docstring)."""
    task = progress.add_task("final measurement: build", total=len(compared)) if progress else None
    runners = {}
    with torch_threads(backend.threads):
        for c in compared:
            runners[c.key] = _runner(backend, c, example, precision, device)
            if progress:
                progress.advance(task)

    def tick(done: int, planned: int) -> None:
        if progress:
            progress.update(task, description=f"final measurement: window {done}/{planned}")

    return measure_interleaved(
        {k: (r.call, r.cuda, r.stream) for k, r in runners.items()},
        TimingOptions.for_budget(percentile),
        backend.threads,
        tick if progress else None,
    )
