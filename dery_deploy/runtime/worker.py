"""A measurement worker: model files timed in a process of their own, which loads only the runtimes
of its items (no torch, no training state, no other stage's sessions or thread pools).

Why: a latency the tool decides or promises with must be the latency the file has where it runs.
Timed inside `dery run`'s own process, after training and beside every other runtime's sessions,
the same file measured 0.548 ms where a fresh process measured 0.32 ms minutes later (issue 26's
evidence, an Intel Xeon VM). The worker is that fresh process: `FilePass` (and `measure_files`, for
files that exist already) writes a request naming a folder where each file's description appears as it
is made, runs `python -m dery_deploy.runtime.worker REQUEST RESULT`, and reads the interleaved pass back
(`harness.measure_interleaved`, the same windows, statistics and load check as every pass).

Usage (what `measure_files` runs; a person can run it too):
    python -m dery_deploy.runtime.worker request.json result.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.deploy.bench import BenchResult
from dery_deploy.deploy.settings import onnxruntime_session, onnxruntime_settings
from dery_deploy.errors import DeryError
from dery_deploy.runtime.harness import Measurement, PassSummary, TimingOptions, measure_interleaved
from dery_deploy.runtime.resources import MachineLoad, rss_rise_mb

RUNTIMES = ("onnxruntime", "openvino")
# files compiled at once before a pass (the runtimes release the GIL while they compile): OpenVINO compiled 60
# profile items in 2.6 s on two threads against 5.3 s one after another (int8; fp32 1.5 s against 3.0 s)
BUILD_THREADS = 2
# OpenVINO files are compiled and first run one at a time (`_built`): two threads calling into its Python
# bindings at once deadlocked a default run's worker for 20 min (OpenVINO 2026.4, Intel Xeon host: one thread
# inside a C++ function-local static's initialiser waiting for the GIL, the other holding the GIL and waiting
# for that static). ONNX Runtime sessions are still made two at a time.
_OPENVINO = threading.Lock()
# a worker that says nothing for this long is stuck (a native library hung), and is replaced once by a fresh
# one: it prints a line per file built, per memory figure and per round of the pass, the longest gap seen
# between them a few seconds (a round over 138 profile items, the build of one OpenVINO int8 file); the hang
# above would otherwise have held the run until the worker's whole time limit
STALL_S = 300.0
ATTEMPTS = 2  # workers started for one pass: a second stall is the error


@dataclass
class FileItem:
    """One model file to time: its runtime, the threads it computes with and its input shape."""

    key: str
    path: str  # .onnx (either runtime) or OpenVINO .xml
    runtime: str
    threads: int
    shape: list[int]

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise DeryError(f"a measurement worker runs {', '.join(RUNTIMES)}, not {self.runtime!r}")


def file_runner(item: FileItem) -> Callable[[], object]:
    """A call of `item`'s file on a fixed random input of its shape, built as it ships."""
    x = np.random.default_rng(0).standard_normal(item.shape, dtype=np.float32)
    if item.runtime == "onnxruntime":
        sess = onnxruntime_session(Path(item.path), onnxruntime_settings(item.threads))
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    from dery_deploy.runtime.openvino import compile_model

    request = compile_model(Path(item.path), item.threads, tuple(item.shape)).create_infer_request()
    return lambda: request.infer({0: x}, share_inputs=True, share_outputs=True)


@dataclass
class WorkerResult:
    """What a worker measured: per item its timing and (where asked) a fresh instance's peak memory."""

    measurements: dict[str, Measurement]
    memory_mb: dict[str, float]
    summary: PassSummary
    modules: list[str]  # the heavy libraries the measuring process had loaded (never torch)
    failed: dict[str, str]  # items whose file the runtime refused (with `keep_going`): key -> why
    stalls: int = 0  # workers replaced after STALL_S without a line (the pass is the last worker's)


def _fresh_memory_mb(item: FileItem) -> float:
    """What a deployment pays: a new session's weights, arena and first run, as a rise of peak RSS."""
    return rss_rise_mb(lambda: file_runner(item)())


def _progress_line(done: int, planned: int) -> None:
    print(f"progress {done} {planned}", flush=True)  # read by `measure_files` to move its bar


def _alive(what: str) -> None:
    print(f"alive {what}", flush=True)  # read by `measure_files`: the worker is not stuck (`STALL_S`)


def _built(item: FileItem) -> Callable[[], object]:
    with _OPENVINO if item.runtime == "openvino" else nullcontext():  # (`_OPENVINO`)
        call = file_runner(item)
        call()  # a file that loads but fails when run is caught here, not in the middle of the pass
    return call


def _arriving(stream: dict) -> Iterator[FileItem]:
    """The items of a streamed request (`FilePass`) in order, each as soon as its description is written
    (a file that could not be made is described as skipped, and left out). A line for each, and one every
    `say_s` while it waits: the caller's exports may take longer than its stall limit."""
    folder, said = Path(stream["folder"]), time.monotonic()
    for i in range(stream["count"]):
        path = folder / f"item{i}.json"
        while not path.is_file():
            if time.monotonic() - said > stream["say_s"]:
                _alive(f"waiting for item {i}")
                said = time.monotonic()
            time.sleep(0.005)
        _alive(f"item {i}")
        said = time.monotonic()
        d = json.loads(path.read_text())
        if not d.get("skipped"):
            yield FileItem(**d)


def serve(request: Path, result: Path) -> None:
    """Build every item of the request (`BUILD_THREADS` at once: nothing is timed while they compile), time
    them in one interleaved pass, write the result; a request naming a `package` is `serve_package`'s."""
    req = json.loads(request.read_text())
    if "package" in req:
        serve_package(req, result)
        return
    runners, failed = {}, {}
    with ThreadPoolExecutor(max(1, min(BUILD_THREADS, os.cpu_count() or 1))) as pool:
        # each file is built as soon as its description is written (`FilePass`)
        builds = [(it, pool.submit(_built, it)) for it in _arriving(req["stream"])]
        for it, built in builds:
            try:
                runners[it.key] = (built.result(), False, None)
                _alive(f"built {it.key}")
            except Exception as e:  # noqa: BLE001 - with keep_going one file the runtime refuses is reported
                if not req.get("keep_going"):
                    raise
                failed[it.key] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    items = [it for it, _ in builds if it.key in runners]
    memory = {}
    for it in [it for it in items if it.key in req.get("memory", [])]:
        memory[it.key] = round(_fresh_memory_mb(it), 3)
        _alive(f"memory {it.key}")
    meas, summary = measure_interleaved(runners, TimingOptions(**req["options"]), progress=_progress_line)
    counts = {it.threads for it in items}  # each session computes with its own count
    summary.threads = counts.pop() if len(counts) == 1 else None
    body = {"measurements": {k: m.to_dict() for k, m in meas.items()}, "memory_mb": memory}
    atomic_write_json(result, {**body, "summary": summary.to_dict(), "modules": _heavy(), "failed": failed})


def _heavy() -> list[str]:
    """The heavy libraries this process has loaded (a worker's result says so: never torch)."""
    return sorted(m for m in ("torch", "timm", "onnxruntime", "openvino") if m in sys.modules)


def serve_package(req: dict, result: Path) -> None:
    """`dery bench`'s measurement of a shipped package (`deploy.bench.PackageBench`: its session built from its
    recorded settings, its reference workload interleaved; rounds pooled while the standard error at the
    percentile is above the cap, as `dery bench` does before a verdict), with the CPU time other processes
    took meanwhile; written as `bench_package` reads it."""
    from dery_deploy.deploy.bench import PackageBench, precise

    bench = PackageBench(req["package"], req["percentile"], req.get("calls"), req["seconds"])
    _alive("built package")
    said = [time.monotonic()]

    def alive(calls: int, seconds: float) -> None:
        if time.monotonic() - said[0] > 1.0:
            said[0] = time.monotonic()
            _alive(f"calls {calls}")

    load = MachineLoad()
    load.start()
    res = precise(bench, req["percentile"], alive)
    atomic_write_json(result, {"bench": asdict(res), "other_load_cores": load.stop(), "modules": _heavy()})


def bench_package(
    package: Path, percentile: int, seconds: float, calls: int | None = None, timeout_s: float = 600,
    stall_s: float = STALL_S,
) -> tuple[BenchResult, float | None]:  # fmt: skip
    """A shipped package measured as `dery bench` measures it (rounds of at least `seconds`), in a fresh
    measurement worker: what a user reproduces with the package alone. Returns the result and the cores'
    worth of CPU time other processes took meanwhile (None where unreadable). A worker that stalls is
    replaced once, as `measure_files`'s.

    Raises:
        DeryError: the worker failed (its last line of error output is named), ran past `timeout_s`, or stalled
            twice.
    """
    body = {"package": str(package), "percentile": percentile, "seconds": seconds, "calls": calls}
    out = _serve_once(body, f"the package {package}", None, timeout_s, stall_s)
    return BenchResult(**out["bench"]), out["other_load_cores"]


def worker_env() -> dict[str, str]:
    """The worker imports this very package, wherever the caller found it (a source checkout run from
    another folder, or an install): its parent folder leads the worker's PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _follow(proc: subprocess.Popen, progress: Callable[[int, int], None] | None, heard: list[float]) -> None:
    """Read the worker's lines as they come (a thread: the caller waits with a timeout), each one's time
    into `heard[0]`."""
    assert proc.stdout is not None
    for line in proc.stdout:
        heard[0] = time.monotonic()
        parts = line.split()
        if progress and len(parts) == 3 and parts[0] == "progress":
            progress(int(parts[1]), int(parts[2]))


def measure_files(
    items: list[FileItem],
    opts: TimingOptions | None = None,
    memory: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 1800,
    keep_going: bool = False,
    stall_s: float = STALL_S,
) -> WorkerResult:
    """Time `items` in one interleaved pass in a fresh worker process (module docstring). A worker silent for
    `stall_s` is killed and the pass started again in a fresh one, once (`ATTEMPTS`).

    Args:
        memory: keys of the items whose fresh instance's peak memory the worker measures too.
        keep_going: a file the runtime refuses is reported in `failed` instead of failing the pass.
        progress: called with (windows done, windows planned) as the worker reports them.
    Raises:
        DeryError: the worker failed (its last line of error output is named), ran past `timeout_s`, or
            stalled in every attempt.
    """
    missing = [i.path for i in items if not Path(i.path).is_file()]
    if missing:  # before any process starts
        raise DeryError(f"no model file {missing[0]} to measure: export it again")
    with tempfile.TemporaryDirectory(prefix="dery-files-") as tmp:
        stream = FilePass(Path(tmp), len(items), opts, memory, progress, keep_going, timeout_s, stall_s)
        for i, item in enumerate(items):
            stream.add(i, item)
        return stream.result()


class FilePass:
    """`measure_files` for files still being made: the worker starts at once and builds each file as the
    caller announces it (`add(i, item)`, or `skip(i)` for one not made; i in range(count)), so that its
    compiles overlap the caller's exports, and times nothing before the last is built; then `result()`, or
    `cancel()` (the worker is killed). An OpenVINO int8 profile of the fashion zoo's 138 items had spent
    9.3 s quantizing them, then 8.4 s compiling them one after another."""

    def __init__(
        self,
        folder: Path,
        count: int,
        opts: TimingOptions | None = None,
        memory: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        keep_going: bool = False,
        timeout_s: float = 1800,
        stall_s: float = STALL_S,
    ) -> None:
        self.folder = Path(folder)
        stream = {"folder": str(self.folder), "count": count, "say_s": stall_s / 4}
        body: dict[str, Any] = {"stream": stream, "memory": memory or [], "keep_going": keep_going}
        body["options"] = asdict(opts or TimingOptions())
        self._stop = threading.Event()
        self._out: dict[str, Any] = {}
        args = (body, f"{count} files", progress, timeout_s, stall_s, self._stop)
        self._thread = threading.Thread(target=self._serve, args=args, daemon=True)
        self._thread.start()

    def _serve(self, *args) -> None:
        try:
            self._out["result"] = _serve_once(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by `result`
            self._out["error"] = e

    def add(self, index: int, item: FileItem) -> None:
        if not Path(item.path).is_file():
            raise DeryError(f"no model file {item.path} to measure: export it again")
        atomic_write_json(self.folder / f"item{index}.json", asdict(item))

    def skip(self, index: int) -> None:
        atomic_write_json(self.folder / f"item{index}.json", {"skipped": True})

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> WorkerResult:
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        out = self._out["result"]
        measurements = {k: Measurement(**v) for k, v in out["measurements"].items()}
        summary = PassSummary(**out["summary"])
        return WorkerResult(measurements, out["memory_mb"], summary, out["modules"], out["failed"], out["stalls"])


def _serve_once(
    body: dict, what: str, progress: Callable[[int, int], None] | None, timeout_s: float, stall_s: float,
    cancel: threading.Event | None = None,
) -> dict:  # fmt: skip
    """Run a worker on the request `body` and return its result (with "stalls": workers replaced); a worker
    silent for `stall_s` is killed and the request started again in a fresh one, once (`ATTEMPTS`)."""
    t0 = time.monotonic()
    for attempt in range(ATTEMPTS):
        with tempfile.TemporaryDirectory(prefix="dery-worker-") as tmp:
            req, res, err = (Path(tmp) / n for n in ("request.json", "result.json", "stderr.txt"))
            req.write_text(json.dumps(body))
            left = timeout_s - (time.monotonic() - t0)
            code = _run_worker([sys.executable, "-m", "dery_deploy.runtime.worker", str(req), str(res)], err,
                               progress, left, stall_s, cancel)  # fmt: skip
            if code is None:  # stalled: said where the run's terminal shows it, and started again
                print(f"measurement worker: nothing heard for {stall_s:g} s timing {what}; killed, "
                      "the pass starts again in a fresh worker", file=sys.stderr, flush=True)  # fmt: skip
                continue
            if code == "cancelled":
                raise DeryError(f"the measurement worker was stopped timing {what}")
            if code == "timeout":
                raise DeryError(f"the measurement worker ran past {timeout_s:g} s timing {what}")
            if code != 0 or not res.is_file():
                last = (err.read_text().strip().splitlines() or [f"exit code {code}"])[-1]
                raise DeryError(f"the measurement worker failed timing {what}: {last}")
            return {**json.loads(res.read_text()), "stalls": attempt}
    raise DeryError(
        f"the measurement worker said nothing for {stall_s:g} s timing {what}, {ATTEMPTS} times: a "
        "runtime hung building or running a file; run again, and report it if it repeats"
    )


def _run_worker(
    cmd: list[str], err: Path, progress: Callable[[int, int], None] | None, timeout_s: float, stall_s: float,
    cancel: threading.Event | None = None,
) -> int | str | None:  # fmt: skip
    """Run one worker: its exit code, "timeout" past `timeout_s`, "cancelled" once `cancel` is set, or None
    when it said nothing for `stall_s` (killed in all three cases)."""
    heard = [time.monotonic()]
    with err.open("w") as errf, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=worker_env()
    ) as proc:  # fmt: skip
        reader = threading.Thread(target=_follow, args=(proc, progress, heard), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        code: int | str | None = None
        while True:
            try:
                code = proc.wait(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                stop = cancel is not None and cancel.is_set()
                if stop or now >= deadline or now - heard[0] > stall_s:
                    code = "cancelled" if stop else "timeout" if now >= deadline else None
                    proc.kill()
                    proc.wait()
                    break
        reader.join(5)  # before the pipe closes under it (a ValueError in the thread otherwise)
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m dery_deploy.runtime.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    serve(Path(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
