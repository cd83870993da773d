"""Device specs (`devices/<id>.yaml`) and the fingerprint of the machine we run on.

A fingerprint is what identifies hardware: the GPU name, driver, clocks, temperature and power
(via NVML, nvidia-ml-py) or the CPU model string. A profile carries the fingerprint it was
measured on; a profile whose fingerprint does not match the spec it claims is refused.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dery_deploy.errors import DeryError

KINDS = ("cpu", "cuda", "jetson")


def devices_dir() -> Path:
    """$DERY_DEVICES, else ./devices, else the devices/ folder shipped beside the package."""
    for p in (os.environ.get("DERY_DEVICES"), "devices", Path(__file__).resolve().parents[2] / "devices"):
        if p and Path(p).is_dir() and any(Path(p).glob("*.yaml")):
            return Path(p)
    raise DeryError("no devices/ folder found; set DERY_DEVICES to a folder of device YAML files", "profile")


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    name: str
    kind: str
    fingerprint: dict
    backends: tuple[str, ...]
    default_backend: str
    default_precision: str
    memory_mb: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def matches(self, fp: dict) -> bool:
        """Does a measured fingerprint belong to this spec?"""
        if fp.get("kind") != self.kind:
            return False
        for key, pattern in self.fingerprint.items():
            if key == "memory_mb_min":
                if (fp.get("memory_mb") or 0) < pattern:
                    return False
            elif key == "memory_mb_max":
                if (fp.get("memory_mb") or 0) > pattern:
                    return False
            elif not re.search(str(pattern), str(fp.get(key, ""))):
                return False
        return True


def load_device(path: Path) -> DeviceSpec:
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DeryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})", "profile") from None
    errors = []
    for key, typ in (
        ("id", str),
        ("name", str),
        ("kind", str),
        ("fingerprint", dict),
        ("backends", list),
        ("default_backend", str),
        ("default_precision", str),
    ):
        if not isinstance(d.get(key), typ):
            errors.append(f"{key}: expected {typ.__name__}, got {d.get(key)!r}")
    if isinstance(d.get("kind"), str) and d["kind"] not in KINDS:
        errors.append(f"kind: {d['kind']!r} not in {KINDS}")
    if errors:
        raise DeryError(f"{path}: " + "; ".join(errors), "profile")
    return DeviceSpec(
        d["id"],
        d["name"],
        d["kind"],
        d["fingerprint"],
        tuple(d["backends"]),
        d["default_backend"],
        d["default_precision"],
        d.get("memory_mb"),
        " ".join(str(d.get("notes", "")).split()),
    )


def list_devices() -> list[DeviceSpec]:
    return [load_device(p) for p in sorted(devices_dir().glob("*.yaml"))]


def get_device(device_id: str) -> DeviceSpec:
    specs = list_devices()
    for s in specs:
        if s.id == device_id:
            return s
    raise DeryError(
        f"Unknown device {device_id!r}. Known devices: {', '.join(s.id for s in specs)}. Run `dery devices`.", "profile"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_fingerprint(index: int = 0) -> dict | None:
    """NVML reading of one GPU (name, driver, clocks, temperature, power, memory); None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no GPU
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        fp = {
            "kind": "cuda",
            "gpu_name": name.decode() if isinstance(name, bytes) else name,
            "driver": _s(pynvml.nvmlSystemGetDriverVersion()),
            "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        }
        try:
            fp["power_w"] = round(pynvml.nvmlDeviceGetPowerUsage(h) / 1000, 1)
        except Exception:  # noqa: BLE001 - some boards do not report power
            fp["power_w"] = None
        return fp
    finally:
        pynvml.nvmlShutdown()


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def machine_fingerprint(kind: str) -> dict:
    """Fingerprint of this machine for a device kind: NVML for cuda, the CPU model for cpu."""
    if kind == "cuda":
        fp = gpu_fingerprint()
        if fp is None:
            raise DeryError(
                "this machine has no NVIDIA GPU visible through NVML (nvidia-ml-py); profile a cuda "
                "device on the machine that has it",
                "profile",
            )
        return fp
    if kind == "jetson":
        raise DeryError(
            "Jetson devices are profiled remotely: use `dery profile --device ID --bundle DIR`, run "
            "the bundle's runner on the Jetson, then `dery profile --import RESULT.json`",
            "profile",
        )
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        mem = None
    return {
        "kind": "cpu",
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "memory_mb": mem,
    }


def this_machine() -> list[DeviceSpec]:
    """The specs this machine matches (GPU specs first)."""
    found = []
    gpu = gpu_fingerprint()
    cpu = machine_fingerprint("cpu")
    for s in list_devices():
        if (gpu and s.matches(gpu)) or s.matches(cpu):
            found.append(s)
    return sorted(found, key=lambda s: s.kind != "cuda")


def default_device() -> str:
    """The id of the spec this machine matches (a GPU's first), else `cpu`."""
    found = this_machine()
    return found[0].id if found else "cpu"
