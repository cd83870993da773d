"""Which machine this is, as a package records it and `dery bench` compares it: the CPU model and
core count, or the GPU's name. A device spec's pattern (`cpu` matches every CPU) says nothing about
whether two latencies are comparable; this does."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name (NVML where installed, else nvidia-smi), None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no NVML, no driver or no GPU: try the tool, else there is none
        pass
    tool = shutil.which("nvidia-smi")
    if tool:
        try:
            out = subprocess.run([tool, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
            names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
            return names[0] if names else None
        except OSError:
            return None
    return None


def fingerprint(kind: str = "cpu") -> dict:
    """This machine as a package records it: {kind: cpu, cpu_model, cores} or {kind: cuda, gpu_name}."""
    if kind == "cuda":
        return {"kind": "cuda", "gpu_name": gpu_name()}
    return {"kind": "cpu", "cpu_model": cpu_model(), "cores": os.cpu_count()}


def same_machine(recorded: dict, here: dict) -> bool:
    """Were both measured on the same kind of hardware (every identifying field equal)?"""
    keys = ("gpu_name",) if recorded.get("kind") == "cuda" else ("cpu_model", "cores")
    return recorded.get("kind") == here.get("kind") and all(recorded.get(k) == here.get(k) for k in keys)
