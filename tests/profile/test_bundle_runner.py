import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dery_deploy.profile.bundle import import_result, write_bundle
from dery_deploy.profile.store import read_profile
from dery_deploy.runtime.devices import get_device


def make_bundle(ws, folder, batches, precision="fp32", n_items=None):
    """A bundle of the tiny zoo; `n_items` keeps the manifest's first items only, to keep the runs short."""
    man = write_bundle(ws.zoo, get_device("cpu"), ws.partition, ws.dis, folder, batches, precision, 10)
    if n_items is not None:
        man["items"] = man["items"][:n_items]
        (folder / "manifest.json").write_text(json.dumps(man, indent=2))
    return man


def runner_cmd(bundle, out, *extra):
    # the runner is standalone: run it isolated (-I), without dery_deploy importable
    return [sys.executable, "-I", str(bundle / "runner.py"), "--bundle", str(bundle), "--out", str(out), *extra]


def run_runner(bundle, out, *extra, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        runner_cmd(bundle, out, *extra), capture_output=True, text=True, env=env, cwd=bundle.parent, timeout=timeout
    )


def ort(*extra):
    return ("--backend", "onnxruntime", "--threads", "1", *extra)


def test_onnxruntime_run_resumes_after_kill(tiny_ws, tmp_path):
    bundle = tmp_path / "bundle"
    man = make_bundle(tiny_ws, bundle, [1, 2], n_items=10)
    keys = [i["key"] for i in man["items"]]
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        runner_cmd(bundle, out, *ort()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_file() and len(json.loads(out.read_text())["results"]["1"]) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the runner finished before it could be interrupted"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = json.loads(out.read_text())  # still valid JSON: written atomically after every item
    assert partial["complete"] is False
    done = set(partial["results"]["1"])
    assert 3 <= len(done) < len(keys) and set(partial["results"]["2"]) == done  # whole items, every batch

    p = run_runner(bundle, out, *ort())
    assert p.returncode == 0, p.stderr
    assert f"resuming {out}: {len(done)} of {len(keys)} items already measured" in p.stdout
    assert p.stdout.count(" b1: ") == len(keys) - len(done)  # only the rest was measured
    full = json.loads(out.read_text())
    assert full["complete"] is True and full["failed"] == []
    assert full["fingerprint"]["start"] == partial["fingerprint"]["start"]
    for b in ("1", "2"):
        assert set(full["results"][b]) == set(keys)
        for k in done:
            assert full["results"][b][k] == partial["results"][b][k]
        assert all(r["median_ms"] > 0 and "error" not in r for r in full["results"][b].values())
    paths = import_result(out, tmp_path / "cache")
    assert sorted(read_profile(p).batch for p in paths) == [1, 2]


def test_failed_items_are_recorded_and_the_run_goes_on(tiny_ws, tmp_path):
    bundle = tmp_path / "bundle"
    man = make_bundle(tiny_ws, bundle, [1], n_items=4)
    broken, corrupt = man["items"][1], man["items"][2]
    # an item onnxruntime cannot load (the manifest agrees with the file) ...
    (bundle / broken["file"]).write_bytes(b"not an onnx model")
    broken["sha256"] = hashlib.sha256(b"not an onnx model").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(man, indent=2))
    # ... and one damaged on the way to the device (the manifest does not agree)
    (bundle / corrupt["file"]).write_bytes(b"\0" * 64)
    out = tmp_path / "result.json"

    p = run_runner(bundle, out, *ort())
    assert p.returncode != 0
    assert "2 of 4 items failed" in p.stderr and broken["file"] in p.stderr and corrupt["file"] in p.stderr
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["failed"] == sorted([broken["key"], corrupt["key"]])
    recs = res["results"]["1"]
    assert set(recs) == {i["key"] for i in man["items"]}
    assert "does not match the manifest's sha256" in recs[corrupt["key"]]["error"]
    assert recs[broken["key"]]["error"] and "median_ms" not in recs[broken["key"]]
    good = {k: r for k, r in recs.items() if "error" not in r}
    assert len(good) == 2 and all(r["median_ms"] > 0 for r in good.values())

    # a rerun keeps what was measured and retries only the failed items
    p = run_runner(bundle, out, *ort())
    assert p.returncode != 0 and "resuming" in p.stdout and "2 of 4 items already measured" in p.stdout
    again = json.loads(out.read_text())["results"]["1"]
    assert {k: again[k] for k in good} == good

    # a result of another manifest is never resumed into
    man["items"] = man["items"][:3]
    (bundle / "manifest.json").write_text(json.dumps(man, indent=2))
    p = run_runner(bundle, out, *ort())
    assert p.returncode != 0 and "another manifest" in p.stderr and "Traceback" not in p.stderr


def load_runner_module():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "dery_deploy", "profile", "bundle_runner.py")
    spec = importlib.util.spec_from_file_location("bundle_runner_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# the first lines of `trtexec --help` of TensorRT 10.3 (JetPack 6) and the precision options 11 removed
TRT10_HELP = """&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help
  --minShapes=spec  --optShapes=spec  --maxShapes=spec  --timingCacheFile=<file>  --skipInference
  --fp16  Enable fp16 precision, in addition to fp32 (default = disabled)
  --noTF32  Disable tf32 precision (default is to enable tf32, in addition to fp32)
  --stronglyTyped  Create a strongly typed network. (default = disabled)"""
TRT11_HELP = """&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec --help
  --minShapes=spec  --optShapes=spec  --maxShapes=spec  --timingCacheFile=<file>  --skipInference
  --stronglyTyped  Accepted; every network is strongly typed"""
TRT8_HELP = """&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help
  --buildOnly  Exit after the engine has been built and skip inference perf measurement (default = disabled)
  --fp16  Enable fp16 precision, in addition to fp32 (default = disabled)"""


def test_engine_plan_follows_what_trtexec_accepts():
    r = load_runner_module()
    item = {"file": "items/0001-block.onnx", "input_shape": [8, 16, 16], "sha256": "ab" * 32}
    t10, t11 = r.trtexec_features(TRT10_HELP), r.trtexec_features(TRT11_HELP)
    assert t10 == {
        "fp16": True,
        "build_only": "--skipInference",
        "no_tf32": True,
        "strongly_typed": True,
        "version": "10.3.0",
    }
    assert t11["fp16"] is False and t11["version"] == "11.0.0" and t11["strongly_typed"]
    t8 = r.trtexec_features(TRT8_HELP)
    assert (t8["fp16"], t8["build_only"], t8["version"]) == (True, "--buildOnly", "8.5.2")
    # the banner's version decides: a TensorRT 11 help text that still names --fp16 is not weakly typed
    assert r.trtexec_features(TRT11_HELP + "\n  (--fp16 was removed in 11.0)")["fp16"] is False

    plan = r.engine_plan(item, "fp16", t10, [1, 8, 32], None)
    assert plan["precision"] == "fp16" and plan["flags"] == ["--fp16"] and plan["note"] is None
    assert plan["shapes"] == {"min": 1, "opt": 1, "max": 32}
    cmd = r.build_command("trtexec", "/b", plan, item["input_shape"], "/b/e.plan", "/b/timing.cache", t10)
    assert "--timingCacheFile=/b/timing.cache" in cmd and "--skipInference" in cmd and "--fp16" in cmd
    assert {"--minShapes=x:1x8x16x16", "--optShapes=x:1x8x16x16", "--maxShapes=x:32x8x16x16"} <= set(cmd)

    # TensorRT 11: no --fp16; the fp16 ONNX where the bundle has one, else an fp32 build that says so
    plan = r.engine_plan(item, "fp16", t11, [1, 32], 32)
    assert plan["precision"] == "fp32" and "--fp16" not in plan["flags"] and "fp32 ONNX as fp32" in plan["note"]
    assert plan["shapes"]["opt"] == 32
    plan = r.engine_plan({**item, "file_fp16": "items/0001-block.fp16.onnx"}, "fp16", t11, [1, 32], None)
    assert (plan["precision"], plan["onnx"], plan["note"]) == ("fp16", "items/0001-block.fp16.onnx", None)
    assert plan["flags"] == ["--stronglyTyped"]
    # fp32 means fp32: TF32 off where trtexec has the switch (it would round fp32 layers to 10-bit mantissas)
    assert r.engine_plan(item, "fp32", t10, [1], None)["flags"] == ["--noTF32"]
    assert r.engine_plan(item, "fp32", t8, [1], None)["flags"] == []
    timed = r.time_command("trtexec", "/b/e.plan", 8, item["input_shape"], "/t/times.json")
    assert "--loadEngine=/b/e.plan" in timed and "--shapes=x:8x8x16x16" in timed


def test_without_trtexec_the_runner_names_its_onnxruntime_backend(tiny_ws, tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(tiny_ws, bundle, [1], n_items=1)
    p = run_runner(bundle, tmp_path / "result.json", "--trtexec", str(tmp_path / "no" / "trtexec"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "trtexec not found" in p.stderr and "--backend onnxruntime" in p.stderr


@pytest.mark.tensorrt
def test_trtexec_builds_each_item_once_with_one_timing_cache(tiny_ws, tmp_path):
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not os.path.exists(trtexec):
        pytest.skip("trtexec is not installed here (it ships with TensorRT's samples / JetPack, not its wheel)")
    bundle = tmp_path / "bundle"
    man = make_bundle(tiny_ws, bundle, [1, 4], precision="fp16", n_items=3)
    out = tmp_path / "result.json"
    p = run_runner(bundle, out, "--trtexec", trtexec, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["backend"] == "tensorrt" and res["backend_version"]
    assert (bundle / "timing.cache").stat().st_size > 0
    assert not list((bundle / "engines").glob("*.plan"))  # engines are removed once timed
    for b in ("1", "4"):
        assert set(res["results"][b]) == {i["key"] for i in man["items"]}
        for r in res["results"][b].values():
            assert r["median_ms"] > 0 and r["engine_batches"] == {"min": 1, "opt": 1, "max": 4}
            assert r["precision_built"] in ("fp16", "fp32") and r["build_s"] > 0
    assert res["precision"] in ("fp16", "fp32")


def test_import_refuses_a_result_with_failed_items(tiny_ws, tmp_path):
    from dery_deploy.errors import DeryError

    bundle = tmp_path / "bundle"
    man = make_bundle(tiny_ws, bundle, [1], n_items=3)
    (bundle / man["items"][1]["file"]).write_bytes(b"\0" * 64)  # damaged on its way to the device
    out = tmp_path / "result.json"
    assert run_runner(bundle, out, *ort()).returncode != 0
    with pytest.raises(DeryError, match=r"1 of 3 items failed on the device \(items/0001-"):
        import_result(out, tmp_path / "cache")
    partial = json.loads(out.read_text())
    partial["complete"] = False
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(DeryError, match="interrupted run"):
        import_result(tmp_path / "partial.json", tmp_path / "cache")


def test_fp16_bundle_carries_fp16_onnx_items(tiny_ws, tmp_path):
    import numpy as np
    import onnxruntime as ort_

    bundle = tmp_path / "bundle"
    man = make_bundle(tiny_ws, bundle, [1], precision="fp16", n_items=None)
    for item in man["items"][:3]:
        assert item["sha256_fp16"] == hashlib.sha256((bundle / item["file_fp16"]).read_bytes()).hexdigest()
        s32 = ort_.InferenceSession(str(bundle / item["file"]), providers=["CPUExecutionProvider"])
        s16 = ort_.InferenceSession(str(bundle / item["file_fp16"]), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal([2] + item["input_shape"]).astype(np.float32)
        y32, y16 = s32.run(None, {"x": x})[0], s16.run(None, {"x": x})[0]
        assert y16.dtype == np.float32  # fp32 in and out: the runner feeds both files alike
        np.testing.assert_allclose(y16, y32, rtol=0.05, atol=0.05)


# what the runner records on an 8 GB Orin Nano (JetPack 6): the result files below are measured here, with
# the runner's onnxruntime backend on this CPU, and carry this fingerprint instead of this CPU's
JETSON_FP = {"kind": "jetson", "gpu_name": "NVIDIA Jetson Orin Nano Developer Kit", "memory_mb": 7620}


def as_if_measured_on_the_jetson(result):
    res = json.loads(result.read_text())
    res["fingerprint"] = {"start": JETSON_FP, "end": JETSON_FP}
    result.write_text(json.dumps(res))


def dery_ok(*args, env=None):
    from tests.conftest import run_dery

    p = run_dery(*args, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def test_jetson_journey_bundle_verify_import_assemble(tiny_ws, tmp_path):
    """A Jetson user's route, as typed: the bundle carries the --verify assemblies, the runner measures them
    with the items, the import fits the latency check on them (plans get a margin), and `dery assemble`
    says its finalists were predicted, not measured, and where the first measurement happens."""
    from dery_deploy.profile.latency_model import LatencyModel
    from dery_deploy.profile.run import random_plans
    from tests.conftest import TINY_ZOO

    cache, bundle, result = tmp_path / "cache", tmp_path / "jb", tmp_path / "result.json"
    tiny = ("--zoo", str(TINY_ZOO), "--partition", str(tiny_ws.partition_path), "--cache", str(cache))
    p = dery_ok("profile", *tiny, "--device", "jetson-orin-nano", "--precision", "fp32", "--bundle", str(bundle),
                "--verify", "4", "--seed", "3", env={"COLUMNS": "60"})  # fmt: skip
    assert "and 4 assemblies for the latency check" in p.stdout and "--backend onnxruntime" in p.stdout
    # the command to copy stays on one line in a narrow terminal, whatever the temporary path's length
    assert f"python3 {bundle}/runner.py --bundle {bundle} --out result.json" in p.stdout
    man = json.loads((bundle / "manifest.json").read_text())
    asm = [i for i in man["items"] if i["kind"] == "assembly"]
    # the assemblies `dery profile --verify 4 --seed 3` measures on a machine that profiles itself
    plans = random_plans(tiny_ws.zoo, tiny_ws.partition, 4, 3, 10)
    assert [a["info"]["plan"] for a in asm] == [q.describe() for q in plans]
    assert man["verify"] == {"n": 4, "seed": 3, "partition_key": tiny_ws.partition.key}

    assert run_runner(bundle, result, *ort()).returncode == 0
    as_if_measured_on_the_jetson(result)
    p = dery_ok("profile", "--import", str(result), "--cache", str(cache))
    assert "latency model on" in p.stdout and "median |error|" in p.stdout
    [path] = (cache / "profiles" / "jetson-orin-nano").glob("*.json")
    prof = read_profile(path)
    assert prof.device == "jetson-orin-nano" and {r.kind for r in prof.records.values()} == {
        "overhead", "donor", "block", "adapter", "head", "prefix"
    }  # fmt: skip
    # the bundle measured every block's donor prefixes too: the check judged blocks in context beside blocks alone
    assert prof.verify.isolated_errors and prof.verify.context_errors
    measured = json.loads(result.read_text())["results"]["1"]
    raw = LatencyModel(prof, "raw")
    assert prof.verify.n == 4 and prof.verify.partition_key == tiny_ws.partition.key
    for row, a in zip(prof.verify.assemblies, asm):
        assert row.measured_ms == round(measured[a["key"]]["median_ms"], 5) > 0
        assert row.raw_predicted_ms == round(raw.predict_ms(a["info"]["items"]), 5)

    budget = 3 * max(r.median_ms for r in prof.records.values() if r.kind == "donor")
    p = dery_ok("assemble", *tiny, "--device", "jetson-orin-nano", "--backend", "onnxruntime", "--precision", "fp32",
                "--latency-ms", f"{budget:.4f}", "--no-select", "--top", "3", "-o", str(tmp_path / "plan.json"),
                "--data", "fashion-mnist:labels_per_class=20,test_per_class=30")  # fmt: skip
    out = " ".join(p.stdout.split())  # rich wraps long lines
    assert "finalist (predicted within the budget; this machine is not jetson-orin-nano" in out
    assert "check_engine.py on the device" in out and "--bundle DIR" in out
    assert "measured within the budget" not in out and "measured over the budget" not in out
    assert "no latency check" not in out  # the bundle's assemblies gave the plans their margin


def test_jetson_hints_name_the_bundle_route(tiny_ws, tmp_path):
    """A missing Jetson profile, and a bundle written before any partition, say what to do next."""
    from tests.conftest import TINY_ZOO, assert_one_line_error, run_dery

    empty = tmp_path / "empty"
    p = run_dery("assemble", "--zoo", str(TINY_ZOO), "--partition", str(tiny_ws.partition_path), "--cache",
                 str(empty), "--device", "jetson-orin-nano", "--latency-ms", "1", "-o", str(tmp_path / "p.json"),
                 "--data", "fashion-mnist:labels_per_class=20,test_per_class=30")  # fmt: skip
    assert_one_line_error(p, "--bundle DIR", "python3 DIR/runner.py", "on the jetson-orin-nano", "--import")

    p = dery_ok("profile", "--zoo", str(TINY_ZOO), "--cache", str(empty), "--device", "jetson-orin-nano",
                "--bundle", str(tmp_path / "first"))  # fmt: skip
    note = " ".join(p.stderr.split())
    assert "has no partition yet" in note and "whole donors and units only" in note
    assert "dery partition" in note and "--bundle NEW_DIR --verify 20" in note
    man = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert man["partition"] is None and {i["kind"] for i in man["items"]} == {"overhead", "donor", "unit"}
