import os

import pytest
import torch

from dery_deploy.errors import DeryError
from dery_deploy.runtime.devices import (
    KINDS,
    _optional,
    _uuid_hex,
    cpu_model,
    default_device,
    get_device,
    gpu_fingerprint,
    list_devices,
    load_device,
    machine_fingerprint,
    this_machine,
    torch_gpu_identity,
)


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # noqa: BLE001 - no package, no driver, no GPU
        return False


def test_shipped_device_specs_load_and_are_consistent():
    specs = {s.id: s for s in list_devices()}
    assert {"cpu", "h100", "h200", "jetson-orin-nano", "jetson-agx-orin"} <= set(specs)
    for s in specs.values():
        assert s.kind in KINDS
        assert s.default_backend in s.backends, s.id
        assert s.default_precision in ("fp32", "fp16"), s.id
    assert specs["h200"].kind == "cuda" and specs["jetson-orin-nano"].kind == "jetson"


def test_specs_match_the_fingerprints_they_claim():
    h100, h200, nano, agx = (get_device(i) for i in ("h100", "h200", "jetson-orin-nano", "jetson-agx-orin"))
    h200_fp = {"kind": "cuda", "gpu_name": "NVIDIA H200", "memory_mb": 143771, "sm_clock_mhz": None}
    assert h200.matches(h200_fp) and not h100.matches(h200_fp)
    # a reading NVML could not make (None) does not stop the spec from matching on name and memory
    assert h100.matches({"kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "temperature_c": None})
    orin_8gb = {"kind": "jetson", "gpu_name": "NVIDIA Jetson Orin Nano Developer Kit", "memory_mb": 7620}
    orin_64gb = {"kind": "jetson", "gpu_name": "Jetson AGX Orin", "memory_mb": 62800}
    assert nano.matches(orin_8gb) and not agx.matches(orin_8gb)
    assert agx.matches(orin_64gb) and not nano.matches(orin_64gb)
    assert not h200.matches({"kind": "cpu", "cpu_model": "NVIDIA H200"})


@pytest.mark.parametrize(
    "model,memory_mb,spec",
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", 7620, "jetson-orin-nano"),
        ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", 7620, "jetson-orin-nano"),
        ("NVIDIA Jetson AGX Orin Developer Kit", 62800, "jetson-agx-orin"),
        # other GPUs (core counts) than the specs describe: no spec, rather than a wrong one
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 15656, None),  # Orin NX 16 GB
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 7620, None),  # Orin NX 8 GB
        ("NVIDIA Jetson Orin Nano Developer Kit", 3434, None),  # Orin Nano 4 GB
        ("NVIDIA Jetson AGX Orin Developer Kit", 30536, None),  # AGX Orin 32 GB
    ],
)
def test_jetson_modules_match_only_their_own_spec(model, memory_mb, spec):
    """/proc/device-tree/model and MemTotal, as the bundle runner reads them on each module."""
    fp = {"kind": "jetson", "gpu_name": model, "memory_mb": memory_mb}
    assert [s.id for s in list_devices() if s.matches(fp)] == ([spec] if spec else [])


def test_bad_device_yaml_reports_every_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("id: x\nkind: tpu\nfingerprint: []\n")
    with pytest.raises(DeryError) as e:
        load_device(p)
    msg = str(e.value)
    for needle in ("name:", "fingerprint:", "backends:", "default_backend:", "kind: 'tpu' not in"):
        assert needle in msg, msg


SPEC = (
    "id: x\nname: X\nkind: cpu\nfingerprint: {cpu_model: '.*'}\nbackends: [onnxruntime]\n"
    "default_backend: onnxruntime\ndefault_precision: fp32\n"
)


def test_the_cpu_spec_searches_one_thread_and_every_core_this_process_may_use():
    cpu = get_device("cpu")
    cores = len(os.sched_getaffinity(0))
    assert cpu.threads == (1, "all") and cpu.default_threads == 1
    assert cpu.thread_counts() == ([1] if cores == 1 else [1, cores])
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # pinned to one core (taskset -c N): 1 is every core, searched once
    try:
        assert cpu.thread_counts() == [1]
    finally:
        os.sched_setaffinity(0, before)
    assert get_device("h200").thread_counts() == [None] and get_device("h200").default_threads is None


def test_spec_thread_counts_read_as_written(tmp_path):
    p = tmp_path / "x.yaml"
    for written, counts in (("4", [4]), ("[2, 1, 2]", [2, 1]), ("null", [None])):
        p.write_text(SPEC + f"threads: {written}\n")
        assert load_device(p).thread_counts() == counts, written


@pytest.mark.parametrize("bad", ["0", "[1, every]", "[]", "true", "[1, -2]", "'8'"])
def test_a_bad_thread_count_is_one_line_naming_it(tmp_path, bad):
    p = tmp_path / "x.yaml"
    p.write_text(SPEC + f"threads: {bad}\n")
    with pytest.raises(DeryError) as e:
        load_device(p)
    msg = str(e.value)
    assert "threads: expected a positive integer, 'all' or a list of them, got" in msg and len(msg.splitlines()) == 1
    if bad == "[1, every]":
        assert msg.endswith("got [1, 'every'] ('every' is neither)"), msg


def test_cpu_fingerprint_describes_this_machine():
    fp = machine_fingerprint("cpu")
    assert fp["kind"] == "cpu" and fp["cpu_model"] == cpu_model() and fp["cpu_model"]
    assert fp["cores"] == os.cpu_count() and fp["memory_mb"] > 0
    assert get_device("cpu").matches(fp)
    assert "cpu" in {s.id for s in this_machine()}


def test_jetson_fingerprint_points_at_the_bundle():
    with pytest.raises(DeryError, match="profiled remotely"):
        machine_fingerprint("jetson")


def test_without_nvml_there_is_no_gpu_fingerprint():
    if nvml_works():
        pytest.skip("NVML works on this machine")
    assert gpu_fingerprint() is None and gpu_fingerprint(0) is None
    with pytest.raises(DeryError, match="no NVIDIA GPU visible through NVML"):
        machine_fingerprint("cuda")


def test_default_device_without_a_gpu_is_cpu():
    if torch.cuda.is_available() or nvml_works():
        pytest.skip("this machine has a GPU")
    assert torch_gpu_identity() is None
    assert default_device() == "cpu"


def test_uuid_prefixes_are_normalised():
    # torch prints a bare UUID, NVML prefixes "GPU-" (whole GPU) or "MIG-" (an instance), older pynvml as bytes
    bare = "ffc79498-6c3b-1b5e-7f0e-3f6a1e2d9c11"
    assert _uuid_hex(bare) == _uuid_hex(f"GPU-{bare.upper()}") == _uuid_hex(f"MIG-{bare}".encode()) == bare


def test_optional_reading_degrades_to_none():
    pynvml = pytest.importorskip("pynvml")

    def not_supported():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    assert _optional(not_supported) is None
    assert _optional(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):  # only NVML's "cannot read this" is optional, bugs still show
        _optional(lambda: 1 / 0)


@pytest.mark.gpu
def test_fingerprint_of_each_visible_gpu_is_that_gpu():
    if not nvml_works():
        pytest.skip("torch sees a GPU but NVML (nvidia-ml-py) does not work here")
    import pynvml

    for i in range(torch.cuda.device_count()):
        fp = gpu_fingerprint(i)
        assert fp is not None and fp["kind"] == "cuda"
        # found by UUID or PCI bus id, never by NVML's own numbering
        assert fp["nvml_match"] in ("uuid", "pci"), fp
        name = torch.cuda.get_device_name(i)
        assert name in fp["gpu_name"] or fp["gpu_name"] in name, (name, fp)
        total_mb = torch.cuda.get_device_properties(i).total_memory / 2**20
        assert abs(fp["memory_mb"] - total_mb) <= 0.05 * total_mb, (fp, total_mb)
        for key in ("sm_clock_mhz", "max_sm_clock_mhz", "temperature_c", "power_w"):
            assert key in fp and (fp[key] is None or fp[key] >= 0), fp
        ident = torch_gpu_identity(i)
        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByUUID("GPU-" + ident["uuid"])
            assert _uuid_hex(pynvml.nvmlDeviceGetUUID(h)) == ident["uuid"]
        except pynvml.NVMLError_NotFound:
            pytest.skip("torch's device is a MIG instance: its UUID is not a whole GPU's")
        finally:
            pynvml.nvmlShutdown()


@pytest.mark.gpu
def test_cuda_machine_fingerprint_and_default_device():
    if not nvml_works():
        pytest.skip("torch sees a GPU but NVML (nvidia-ml-py) does not work here")
    fp = machine_fingerprint("cuda")
    assert fp == {**fp, "kind": "cuda"} and fp["gpu_name"]
    matched = [s for s in list_devices() if s.kind == "cuda" and s.matches(fp)]
    if not matched:
        pytest.skip(f"no device spec matches {fp['gpu_name']!r}")
    assert default_device() == matched[0].id
