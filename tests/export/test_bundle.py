"""The Jetson bundle's build_engine.sh run against stand-in `trtexec` scripts (shell scripts on PATH that
print a help text and log the command lines they get; they build nothing), and the power-state readout
that the bundle's check_engine.py shares with the profile runner. That an engine built on a Jetson runs
and keeps its budget can only be shown there (`check_engine.py`); no Jetson is lent to these sessions."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from dery_deploy.export.bundle import build_script
from dery_deploy.runtime.devices import get_device

ROOT = Path(__file__).resolve().parents[2]

BANNER = "&&&& RUNNING TensorRT.trtexec [TensorRT v{v}] # trtexec --help"
TRT10 = [
    BANNER.format(v=100300),
    "=== Build Options ===",
    "  --fp16                      Enable fp16 precision, in addition to fp32 (default = disabled)",
    "  --int8                      Enable int8 precision, in addition to fp32 (default = disabled)",
    "  --noTF32                    Disable tf32 precision (default is to enable tf32, in addition to fp32)",
    "  --stronglyTyped             Create a strongly typed network. (default = disabled)",
    "  --skipInference             Exit after the engine has been built and skip inference perf measurement",
]
# a TensorRT 11 whose help still names --fp16 (a removal note): the banner's version must decide, not the word
TRT11 = [
    BANNER.format(v=110100),
    "  --stronglyTyped             Accepted for compatibility: every network is strongly typed",
    "  --noTF32                    Disable tf32 precision",
    "  --skipInference             Exit after the engine has been built",
    "  (--fp16, --int8, --best were removed in TensorRT 11: precision comes from the ONNX)",
]
TRT85 = [  # before 8.6: --buildOnly, no --skipInference
    BANNER.format(v=8502),
    "  --fp16                      Enable fp16 precision, in addition to fp32 (default = disabled)",
    "  --buildOnly                 Exit after the engine has been built",
]
# the head is printed at once; then the stand-in pauses, so that a reader that stopped at its match has
# closed the pipe, and writes 200 more lines one by one (SIGPIPE, exit 141, under `grep -q`)
FAKE = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_LOG"
if [ "${1:-}" = --help ]; then
  cat "$FAKE_HELP"
  sleep 0.3
  for i in $(seq 200); do echo "  --option$i                 more help"; done
  exit 0
fi
for a in "$@"; do case $a in --saveEngine=*) : > "${a#--saveEngine=}" ;; esac; done
"""


def stand_in(tmp_path, help_lines):
    (tmp_path / "help.txt").write_text("\n".join(help_lines) + "\n")
    trtexec = tmp_path / "bin" / "trtexec"
    trtexec.parent.mkdir(exist_ok=True)
    trtexec.write_text(FAKE)
    trtexec.chmod(0o755)
    env = dict(os.environ, FAKE_LOG=str(tmp_path / "log.txt"), FAKE_HELP=str(tmp_path / "help.txt"))
    env["PATH"] = f"{trtexec.parent}:{env['PATH']}"
    return env


def build(tmp_path, help_lines, precision):
    """Run build_engine.sh for `precision` with a stand-in trtexec; returns the trtexec build command's arguments."""
    env = stand_in(tmp_path, help_lines)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "build_engine.sh").write_text(build_script(get_device("jetson-orin-nano"), "1x32x32", 4, 32, precision))
    p = subprocess.run(["bash", str(bundle / "build_engine.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (bundle / "model.engine").is_file() and "now run: python3 check_engine.py" in p.stdout
    calls = (tmp_path / "log.txt").read_text().splitlines()
    assert calls[0] == "--help" and len(calls) == 2, calls  # the help is read once
    return calls[1].split()


def test_the_stand_in_reproduces_the_sigpipe_of_grep_q(tmp_path):
    """The old test `trtexec --help | grep -q -- --fp16` under pipefail fails although --fp16 is there."""
    env = stand_in(tmp_path, TRT10)
    p = subprocess.run(["bash", "-c", "set -o pipefail; trtexec --help | grep -q -- --fp16"], env=env, timeout=60)
    assert p.returncode == 141


def test_fp16_on_tensorrt_10_uses_the_fp16_flag(tmp_path):
    args = build(tmp_path, TRT10, "fp16")
    assert "--onnx=model.onnx" in args and "--fp16" in args and "--skipInference" in args
    assert {"--minShapes=x:1x1x32x32", "--optShapes=x:4x1x32x32", "--maxShapes=x:32x1x32x32"} <= set(args)


def test_fp16_on_tensorrt_11_builds_the_fp16_onnx_strongly_typed(tmp_path):
    args = build(tmp_path, TRT11, "fp16")
    assert "--onnx=model-fp16.onnx" in args and "--stronglyTyped" in args and "--fp16" not in args


def test_fp32_turns_tf32_off_where_trtexec_can(tmp_path):
    args = build(tmp_path, TRT10, "fp32")
    assert "--onnx=model.onnx" in args and "--noTF32" in args and "--fp16" not in args


def test_int8_on_tensorrt_10_runs_the_qdq_layers_in_int8_and_the_rest_in_fp32(tmp_path):
    args = build(tmp_path, TRT10, "int8")
    assert "--onnx=model-int8.onnx" in args and "--int8" in args and "--noTF32" in args and "--fp16" not in args


def test_int8_on_tensorrt_11_builds_the_qdq_onnx_strongly_typed(tmp_path):
    args = build(tmp_path, TRT11, "int8")
    assert "--onnx=model-int8.onnx" in args and "--stronglyTyped" in args and "--int8" not in args


def test_old_trtexec_builds_only_with_build_only(tmp_path):
    args = build(tmp_path, TRT85, "fp16")
    assert "--buildOnly" in args and "--skipInference" not in args and "--fp16" in args


def test_missing_trtexec_is_one_clear_line(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "build_engine.sh").write_text(build_script(get_device("jetson-orin-nano"), "1x32x32", 1, 32, "fp32"))
    env = dict(os.environ, TRTEXEC=str(tmp_path / "nowhere" / "trtexec"))
    p = subprocess.run(["bash", str(bundle / "build_engine.sh")], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and p.stderr.startswith("build_engine.sh: trtexec not found") and p.stdout == ""


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_jetson(tmp_path, pinned: bool):
    """A sysfs with an Orin GPU devfreq node and an `nvpmodel` that reports MAXN_SUPER (mode 2)."""
    node = tmp_path / "sys" / "class" / "devfreq" / "17000000.gpu"
    node.mkdir(parents=True)
    (tmp_path / "sys" / "class" / "devfreq" / "3d00000.pcie").mkdir()  # another devfreq node, not the GPU
    for key, hz in (("cur", 1020000000), ("min", 1020000000 if pinned else 306000000), ("max", 1020000000)):
        (node / f"{key}_freq").write_text(f"{hz}\n")
    tool = tmp_path / "nvpmodel"
    tool.write_text("#!/bin/sh\necho 'NV Fan Mode:quiet'\necho 'NV Power Mode: MAXN_SUPER'\necho 2\n")
    tool.chmod(0o755)
    return str(tmp_path / "sys"), str(tool)


@pytest.mark.parametrize("pinned", [True, False])
def test_runner_and_check_engine_record_power_mode_and_clocks(tmp_path, pinned):
    runner = load(ROOT / "dery_deploy" / "profile" / "bundle_runner.py", "runner_under_test")
    check = load(ROOT / "dery_deploy" / "export" / "engine_check.py", "check_engine_under_test")
    sysfs, tool = fake_jetson(tmp_path, pinned)
    state = runner.power_state(sysfs=sysfs, nvpmodel=tool)
    assert state == {
        "nvpmodel": {"mode": "MAXN_SUPER", "id": 2},
        "gpu_freq_mhz": {"cur": 1020.0, "min": 1020.0 if pinned else 306.0, "max": 1020.0},
        "jetson_clocks": pinned,
    }
    assert check.power_state(sysfs=sysfs, nvpmodel=tool) == state  # the two standalone copies agree
    # not a Jetson: nothing to read, nothing invented
    empty = runner.power_state(sysfs=str(tmp_path / "none"), nvpmodel=str(tmp_path / "no-nvpmodel"))
    assert empty == {"nvpmodel": None, "gpu_freq_mhz": None, "jetson_clocks": None}
