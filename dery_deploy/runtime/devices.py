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

from dery_deploy.deploy.machine import cpu_model
from dery_deploy.errors import DeryError
from dery_deploy.runtime.target import Target

KINDS = ("cpu", "cuda", "jetson")
ALL_CORES = "all"  # in a spec's `threads`: every core this process may use


def every_core() -> int:
    """The cores this process may run on (its affinity, which taskset and containers narrow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (macOS): every core the machine has
        return os.cpu_count() or 1


def thread_counts_of(value) -> tuple[tuple[int | str, ...], str | None]:
    """A spec's `threads` (null, a count, or a list of counts and `all`) as a tuple, and what is wrong with
    it (None: nothing)."""
    if value is None:
        return (), None
    items = value if isinstance(value, list) else [value]
    bad = [v for v in items if v != ALL_CORES and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1)]
    if bad or not items:
        return (), (
            f"threads: expected a positive integer, {ALL_CORES!r} or a list of them, got {value!r}"
            + (f" ({bad[0]!r} is neither)" if bad and isinstance(value, list) else "")
        )
    return tuple(items), None


def devices_dir() -> Path:
    """$DERY_DEVICES, else ./devices, else the devices/ folder shipped beside the package."""
    for p in (os.environ.get("DERY_DEVICES"), "devices", Path(__file__).resolve().parents[2] / "devices"):
        if p and Path(p).is_dir() and any(Path(p).glob("*.yaml")):
            return Path(p)
    raise DeryError("no devices/ folder found; set DERY_DEVICES to a folder of device YAML files", "device")


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
    # CPU thread counts the runtimes compute with on this device, each searched as a target of its own and
    # shipped with the pick (`all`: every core this process may use); empty: the runtime's default, where
    # the CPU does not do the work
    threads: tuple[int | str, ...] = ()
    # backend/precision combinations `dery run` searches by default (empty: the default backend and
    # precision only); runtime and precision are part of the answer
    search: tuple[str, ...] = ()

    def targets(self) -> list[str]:
        """The backend/precision combinations searched by default."""
        return list(self.search) or [str(Target(self.default_backend, self.default_precision))]

    def thread_counts(self) -> list[int | None]:
        """The thread counts searched, `all` read as the cores this process may use and repeats dropped (on
        a 1-core machine `[1, all]` is `[1]`); `[None]` where the spec lists none (the runtime's default)."""
        counts: list[int | None] = [every_core() if n == ALL_CORES else int(n) for n in self.threads]
        return list(dict.fromkeys(counts)) or [None]

    @property
    def default_threads(self) -> int | None:
        """The count a single measurement uses where no --threads names one: the first the spec lists."""
        return self.thread_counts()[0]

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
        raise DeryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})", "device") from None
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
    for t in d.get("search") or []:
        try:
            listed = Target.parse(t).backend in (d.get("backends") or [])
        except DeryError:
            listed = False
        if not listed:
            errors.append(f"search: {t!r} is not backend/precision of a listed backend")
    threads, bad_threads = thread_counts_of(d.get("threads"))
    if bad_threads:
        errors.append(bad_threads)
    if isinstance(d.get("kind"), str) and d["kind"] not in KINDS:
        errors.append(f"kind: {d['kind']!r} not in {KINDS}")
    if errors:
        raise DeryError(f"{path}: " + "; ".join(errors), "device")
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
        threads=threads,
        search=tuple(d.get("search") or ()),
    )


def list_devices() -> list[DeviceSpec]:
    return [load_device(p) for p in sorted(devices_dir().glob("*.yaml"))]


def get_device(device_id: str) -> DeviceSpec:
    specs = list_devices()
    for s in specs:
        if s.id == device_id:
            return s
    raise DeryError(
        f"Unknown device {device_id!r}. Known devices: {', '.join(s.id for s in specs)}. Run `dery devices`.", "device"
    )


def _uuid_hex(u) -> str:
    """A GPU UUID without its "GPU-" / "MIG-" prefix, lower case: torch writes none, NVML writes one."""
    s = _s(u).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if s.startswith(prefix):
            return s[len(prefix) :]
    return s


def torch_gpu_identity(index: int | None = None) -> dict | None:
    """UUID and PCI bus id of torch's CUDA device `index` (its current one when None); None when torch has no CUDA.

    torch numbers devices after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, NVML by its own order, so the
    same GPU has different indices in the two; UUID and PCI bus id are what both agree on.
    """
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        i = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(i)
    except Exception:  # noqa: BLE001 - a broken CUDA install reads as "no CUDA", as torch.cuda.is_available() does
        return None
    uuid = getattr(props, "uuid", None)
    # recent torch exposes the PCI location as three integers; NVML wants "domain:bus:device.function" in hex
    domain, bus, dev = (getattr(props, a, None) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    pci = None if None in (domain, bus, dev) else f"{domain:08x}:{bus:02x}:{dev:02x}.0"
    return {
        "index": i,
        "uuid": _uuid_hex(uuid) if uuid is not None else None,
        "pci_bus_id": pci,
        "name": props.name,
        "memory_mb": props.total_memory // 2**20,
    }


def _nvml_handle(pynvml, index: int | None, ident: dict | None):
    """The NVML handle of the GPU torch calls `index` and how it was found (uuid, pci, nvml-index), or None."""
    if ident is None:  # torch has no CUDA here: NVML's own numbering is all there is
        return pynvml.nvmlDeviceGetHandleByIndex(index or 0), "nvml-index"
    if ident["uuid"]:
        for prefix in ("GPU-", "MIG-"):  # a MIG instance's UUID carries MIG-, a whole GPU's GPU-
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(prefix + ident["uuid"]), "uuid"
            except pynvml.NVMLError:
                pass
    if ident["pci_bus_id"]:
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(ident["pci_bus_id"]), "pci"
        except pynvml.NVMLError:
            pass
    # older NVML builds spell UUIDs differently: compare every device's UUID without its prefix
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            if ident["uuid"] and _uuid_hex(pynvml.nvmlDeviceGetUUID(h)) == ident["uuid"]:
                return h, "uuid"
        except pynvml.NVMLError:
            continue
    return None, "unmatched"


def _optional(read, *args):
    """One NVML reading, None where the board does not report it (Jetson-like boards, MIG, some cloud GPUs)."""
    import pynvml

    try:
        return read(*args)
    except pynvml.NVMLError:
        return None


def gpu_fingerprint(index: int | None = None) -> dict | None:
    """NVML reading of one GPU (name, driver, clocks, temperature, power, memory); None without NVML.

    `index` is torch's CUDA device number (default: its current device), matched to NVML by UUID or PCI bus id;
    without CUDA in torch it is NVML's own index (default 0). Name and memory are required; every other reading
    is None where the board does not report it.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no GPU
        return None
    try:
        ident = torch_gpu_identity(index)
        try:
            h, matched_by = _nvml_handle(pynvml, index, ident)
        except pynvml.NVMLError:  # nvmlDeviceGetHandleByIndex on a missing index: no such GPU here
            return None
        if h is None:
            # torch sees a GPU that NVML cannot place (e.g. a vGPU without UUID lookups): say so rather than
            # describe whatever NVML lists first; the name and memory come from CUDA itself
            assert ident is not None
            return {
                "kind": "cuda",
                "gpu_name": ident["name"],
                "driver": _optional(lambda: _s(pynvml.nvmlSystemGetDriverVersion())),
                "memory_mb": ident["memory_mb"],
                "sm_clock_mhz": None,
                "max_sm_clock_mhz": None,
                "temperature_c": None,
                "power_w": None,
                "nvml_match": matched_by,
            }
        try:
            name = _s(pynvml.nvmlDeviceGetName(h))
            memory_mb = pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20
        except pynvml.NVMLError as e:
            raise DeryError(f"NVML found the GPU but could not read its name and memory ({e})", "device") from None
        power = _optional(pynvml.nvmlDeviceGetPowerUsage, h)
        return {
            "kind": "cuda",
            "gpu_name": name,
            "driver": _optional(lambda: _s(pynvml.nvmlSystemGetDriverVersion())),
            "memory_mb": memory_mb,
            "sm_clock_mhz": _optional(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "max_sm_clock_mhz": _optional(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
            "temperature_c": _optional(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            "power_w": None if power is None else round(power / 1000, 1),
            "nvml_match": matched_by,
        }
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


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
                "device",
            )
        return fp
    if kind == "jetson":
        raise DeryError(
            "Jetson devices are profiled remotely: use `dery profile --device ID --bundle DIR`, run "
            "the bundle's runner on the Jetson, then `dery profile --import RESULT.json`",
            "device",
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
