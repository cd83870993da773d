"""OpenVINO on the CPU: ONNX (fp32, or the QDQ INT8 of `runtime.quantize`) read by OpenVINO,
compiled for one single-stream latency measurement, and saved as IR (.xml + .bin) to ship.

What a fair single-stream latency needs, set on every compile (OpenVINO's defaults differ):
- INFERENCE_PRECISION_HINT f32: on a CPU with AVX512-BF16 or AMX (this machine's EPYC has
  AVX512-BF16) OpenVINO computes "fp32" models in bf16 by default: logits moved by up to 0.05
  here, so fp32 would not be fp32. INT8 models keep their INT8 ops; the rest runs in fp32, as on
  ONNX Runtime, so both runtimes serve the same numerical model.
- INFERENCE_NUM_THREADS = the backend's threads, one stream, the latency hint: one request at a
  time on the threads the plan was measured with.
- no hyper-threading siblings and no pinning: the thread count asked for is the count used, and
  threads are not pinned to a core another process may be busy on (ONNX Runtime pins nothing).
- a static input shape where the batch is known (`reshape`): OpenVINO's CPU plugin picks kernels
  per shape, and its dynamic-shape path ran mnv3 at batch 1 37% slower here. The shipped IR is saved
  with the plan's batch static, so a plain `compile_model` of it runs that shape.
- the inference precision cannot travel in the IR: OpenVINO 2026.4's CPU plugin ignores
  `INFERENCE_PRECISION_HINT` in the model's rt_info (`runtime_options`; it honours KV_CACHE_PRECISION
  there), so the package's loader sets it and a plain `compile_model` of an fp32 IR may run bfloat16.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from dery_deploy.deploy.settings import SessionValue, openvino_settings
from dery_deploy.errors import DeryError

INSTALL = "backend openvino needs the openvino package (pip install openvino)"
_CORE = None


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise DeryError(INSTALL, "export") from None
    return ov


def core():
    """One OpenVINO Core per process (it loads the CPU plugin once)."""
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


def _default_threads() -> int:
    import torch  # the process's compute threads, where the caller named none (a measurement worker always does)

    return torch.get_num_threads()


def compile_config(threads: int | None) -> dict[str, SessionValue]:
    """The CPU plugin's properties for a single-stream latency measurement (module docstring)."""
    return openvino_settings(threads or _default_threads())


def read_model(model: bytes | str | Path):
    """An OpenVINO model from ONNX bytes, or from an .onnx / .xml file."""
    return core().read_model(str(model) if isinstance(model, Path) else model)


def compile_model(model, threads: int | None, shape: tuple[int, ...] | None = None, any_batch: bool = False):
    """Compile ONNX bytes, a file or an `ov.Model` for the CPU (module docstring); with `shape`, for
    that static input shape; with `any_batch`, for any batch (a shipped IR's batch is static)."""
    m = read_model(model) if isinstance(model, (bytes, str, Path)) else model.clone()
    if any_batch:
        shape = (-1, *(d.get_length() for d in list(m.input(0).get_partial_shape())[1:]))
    if shape is not None:
        m.reshape({0: list(shape)})
    return core().compile_model(m, "CPU", compile_config(threads))


def save_ir(model: bytes | str | Path, xml: Path, batch: int | None = None) -> Path:
    """Write the OpenVINO IR of ONNX `model` as `xml` and its `.bin` beside it, weights uncompressed
    (OpenVINO would store fp32 weights as fp16 by default); with `batch`, the input's batch is saved
    static, so that a plain `compile_model` of the file runs the shape that was measured. Atomic: both
    are written in a temporary folder, the .bin renamed into place first, so a reader that sees the new
    .xml sees its .bin."""
    ov = import_openvino()
    xml = Path(xml)
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", suffix=".tmp", dir=xml.parent))
    try:
        m = read_model(model)
        if batch is not None:
            m.reshape({0: [batch, *(d.get_length() for d in list(m.input(0).get_partial_shape())[1:])]})
        ov.save_model(m, str(tmp / xml.name), compress_to_fp16=False)
        os.replace(tmp / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(tmp / xml.name, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml
