"""The runtime settings a latency is measured with, defined once: the measurement (`runtime/`) builds
its sessions from these, the package records them, and the loader rebuilds sessions from the record.

ONNX Runtime: `threads` intra-op threads, one inter-op thread, and no spin-waiting after a run (spinning
threads of one session steal the cores of another; a plain `InferenceSession(path)` uses every core and
spins, a different program than the one judged). OpenVINO: one stream, the latency hint, `threads`
inference threads, no pinning or hyper-threading siblings, and f32 inference precision: on a CPU with
AVX512-BF16 or AMX a plain `compile_model` computes fp32 networks in bfloat16.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

# one runtime option's value, as a package's deploy.json records it under the option's name: ONNX Runtime's
# SessionOptions fields, config entries and providers, OpenVINO's compile properties, a TensorRT engine's shapes
SessionValue: TypeAlias = int | str | bool | list[str] | list[int] | dict[str, str]


def onnxruntime_settings(threads: int) -> dict[str, SessionValue]:
    """SessionOptions fields, config entries and providers of a CPU session computing with `threads`."""
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "log_severity_level": 3,
        "config_entries": {"session.intra_op.allow_spinning": "0"},
        "providers": ["CPUExecutionProvider"],
    }


def onnxruntime_session(model: bytes | str | Path, settings: dict, providers: list | None = None):
    """An InferenceSession built with `settings` (as `onnxruntime_settings` writes them)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for key in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level"):
        if key in settings:
            setattr(opts, key, settings[key])
    for key, value in settings.get("config_entries", {}).items():
        opts.add_session_config_entry(key, str(value))
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, opts, providers=providers or settings.get("providers"))


def openvino_settings(threads: int) -> dict[str, SessionValue]:
    """The CPU plugin's compile properties for a single-stream latency (module docstring)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_HYPER_THREADING": False,
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32",
    }
