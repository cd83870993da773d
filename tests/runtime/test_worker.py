"""The measurement worker: model files timed in a process that loads only their runtimes."""

import os
import signal
import threading
import time

import pytest
import torch
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.worker import FileItem, measure_files


def conv_net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker")
    x = torch.randn(1, 3, 32, 32)
    out = {}
    for w in (8, 64):
        p = d / f"w{w}.onnx"
        p.write_bytes(onnx_from_module(conv_net(w), x))
        out[w] = p
    return out


def test_worker_times_files_on_both_runtimes_without_torch(files):
    items = [
        FileItem("small@ort", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32]),
        FileItem("big@ort", str(files[64]), "onnxruntime", 1, [1, 3, 32, 32]),
        FileItem("big@ov", str(files[64]), "openvino", 1, [1, 3, 32, 32]),
    ]
    res = measure_files(items, TimingOptions(min_windows=6, max_s=1), memory=["big@ort"])
    m = res.measurements
    assert set(m) == {"small@ort", "big@ort", "big@ov"}
    # 64x the multiply-adds in the second conv: far slower, whatever else runs on the machine
    assert m["big@ort"].promise_at(50) > 4 * m["small@ort"].promise_at(50)
    assert m["big@ov"].runs > 0 and m["big@ov"].all_calls_ms.keys() == {"p50", "p90", "p99"}
    # the measuring process loaded the runtimes of its items and nothing of torch's
    assert "torch" not in res.modules and {"onnxruntime", "openvino"} <= set(res.modules)
    assert res.memory_mb["big@ort"] > 0 and "small@ort" not in res.memory_mb
    assert res.summary.items == 3 and res.summary.cores is not None


def test_a_missing_file_is_one_clear_error_before_any_process_starts(tmp_path):
    with pytest.raises(DeryError, match="no model file .*nothing.onnx to measure"):
        measure_files([FileItem("x", str(tmp_path / "nothing.onnx"), "onnxruntime", 1, [1, 3, 8, 8])])


def test_a_worker_that_fails_names_its_last_error_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(DeryError, match="the measurement worker failed timing 1 files: .*"):
        measure_files([FileItem("x", str(bad), "onnxruntime", 1, [1, 3, 8, 8])])


def test_an_unknown_runtime_is_refused():
    with pytest.raises(DeryError, match="not 'tensorrt'"):
        FileItem("x", "m.onnx", "tensorrt", 1, [1])


def test_a_worker_past_its_time_limit_is_stopped_with_one_clear_error(files):
    # the worker prints nothing while it starts and builds: the limit must hold without its output
    with pytest.raises(DeryError, match="the measurement worker ran past 0.2 s timing 1 files"):
        measure_files([FileItem("x", str(files[64]), "onnxruntime", 1, [1, 3, 32, 32])], timeout_s=0.2)


def test_the_worker_imports_this_package_from_any_folder(files, tmp_path, monkeypatch):
    """A script run from another folder (scripts/, a user's project) spawns a worker that still finds
    the package it was called from: its parent folder leads the worker's PYTHONPATH."""
    from pathlib import Path

    import dery_deploy
    from dery_deploy.runtime.worker import worker_env

    root = str(Path(dery_deploy.__file__).resolve().parents[1])
    assert worker_env()["PYTHONPATH"].split(os.pathsep)[0] == root
    monkeypatch.chdir(tmp_path)
    item = FileItem("small@ort", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32])
    res = measure_files([item], TimingOptions(min_windows=3, max_s=0.5))
    assert res.measurements["small@ort"].runs > 0


def _workers_of(pid: int) -> list[int]:
    """This process's measurement workers, from /proc (their parent and command line)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"dery_deploy.runtime.worker" in cmd:
            out.append(int(d))
    return out


def _stop_workers(times: int, done) -> list[int]:
    """Stops (SIGSTOP: a real hang, the process alive and silent) the first `times` workers this process
    starts, until `done` is set; returns their pids."""
    stopped: list[int] = []
    while not done.is_set() and len(stopped) < times:
        for w in _workers_of(os.getpid()):
            if w not in stopped:
                os.kill(w, signal.SIGSTOP)
                stopped.append(w)
        time.sleep(0.02)
    return stopped


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pid in /proc")
def test_a_silent_worker_is_replaced_once_and_the_pass_completes(files):
    done, stopped = threading.Event(), []
    watcher = threading.Thread(target=lambda: stopped.extend(_stop_workers(1, done)))
    watcher.start()
    try:
        res = measure_files([FileItem("x", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32])],
                            TimingOptions(min_windows=4, max_s=0.5), stall_s=10)  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert len(stopped) == 1 and res.stalls == 1
    assert res.measurements["x"].runs > 0 and res.summary.items == 1
    # the stopped worker was killed and reaped, not left behind
    assert not os.path.exists(f"/proc/{stopped[0]}") and not _workers_of(os.getpid())


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pid in /proc")
def test_a_worker_silent_every_time_is_one_clear_error(files):
    done = threading.Event()
    watcher = threading.Thread(target=_stop_workers, args=(2, done))
    watcher.start()
    try:
        with pytest.raises(DeryError, match="said nothing for 2 s timing 1 files, 2 times: a runtime hung"):
            measure_files([FileItem("x", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32])], stall_s=2)
    finally:
        done.set()
        watcher.join()


def test_a_package_is_measured_in_a_worker_as_dery_bench_measures_it(tmp_path):
    from dery_deploy.runtime.worker import bench_package
    from tests.deploy.packages import tiny_onnx, write_package

    pkg = write_package(tmp_path / "pkg", "model.onnx", tiny_onnx(), batch=1)
    res, other_load = bench_package(pkg, 90, seconds=2.0, calls=1024)
    assert res.calls >= 1024 and res.seconds >= 2.0 and res.runtime == "onnxruntime" and res.batch == 1
    assert 0 < res.p50_ms <= res.p90_ms <= res.p99_ms and set(res.standard_error) == {"p50", "p90", "p99"}
    assert res.settings["intra_op_num_threads"] == 1  # the package's recorded session, read back
    assert other_load is None or other_load >= 0


def test_a_package_the_worker_cannot_read_is_one_clear_error(tmp_path):
    from dery_deploy.runtime.worker import bench_package

    (tmp_path / "deploy.json").write_text("{}")
    with pytest.raises(DeryError, match="the measurement worker failed timing the package"):
        bench_package(tmp_path, 50, seconds=0.1)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pid in /proc")
def test_a_streamed_pass_builds_files_as_they_come_and_times_them_after_the_last(files, tmp_path):
    from dery_deploy.runtime.worker import FilePass

    stream = FilePass(tmp_path, 3, TimingOptions(min_windows=4, max_s=0.5))
    time.sleep(0.5)
    # the worker was started before any file existed, and waits for them
    assert _workers_of(os.getpid())
    stream.add(0, FileItem("small", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32]))
    stream.skip(1)  # one the caller could not make
    time.sleep(0.3)
    stream.add(2, FileItem("big", str(files[64]), "openvino", 1, [1, 3, 32, 32]))
    res = stream.result()
    assert set(res.measurements) == {"small", "big"} and res.summary.items == 2
    assert res.measurements["big"].promise_at(50) > 4 * res.measurements["small"].promise_at(50)
    assert "torch" not in res.modules and not _workers_of(os.getpid())


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pid in /proc")
def test_a_streamed_pass_the_caller_gives_up_kills_its_worker(files, tmp_path):
    from dery_deploy.runtime.worker import FilePass

    stream = FilePass(tmp_path, 2, TimingOptions(min_windows=4, max_s=0.5))
    stream.add(0, FileItem("small", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32]))
    time.sleep(0.5)
    assert _workers_of(os.getpid())
    t0 = time.monotonic()
    stream.cancel()  # item 1 never comes: the worker would wait for it
    assert time.monotonic() - t0 < 5 and not _workers_of(os.getpid())
    with pytest.raises(DeryError, match="the measurement worker was stopped timing 2 files"):
        stream.result()
    with pytest.raises(DeryError, match="no model file .*nothing.onnx to measure"):
        stream.add(1, FileItem("x", str(tmp_path / "nothing.onnx"), "onnxruntime", 1, [1, 3, 8, 8]))


def test_a_streamed_pass_whose_caller_exports_slowly_is_not_taken_for_a_stalled_worker(files, tmp_path):
    """The worker waits for the caller's exports, which may together take longer than the stall limit: it says
    so for every file and while it waits, instead of being killed and started again."""
    from dery_deploy.runtime.worker import FilePass

    stream = FilePass(tmp_path, 4, TimingOptions(min_windows=3, max_s=0.5), stall_s=2)
    stream.add(0, FileItem("a", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32]))
    time.sleep(2.5)  # one file slower than the limit
    for i in range(1, 4):  # and three more, 4 s in all
        time.sleep(0.5)
        stream.add(i, FileItem(f"{'abcd'[i]}", str(files[8]), "onnxruntime", 1, [1, 3, 32, 32]))
    res = stream.result()
    assert res.stalls == 0 and set(res.measurements) == {"a", "b", "c", "d"}
