"""A recording fake of the `tensorrt` Python module: it records what our code asks of TensorRT's API
(builder flags, optimisation-profile shapes, loggers, enqueues) so that can be checked on a machine
without TensorRT. It builds nothing: `build_serialized_network` returns a marker, never an engine, and
no test may count it as an engine having run (tests marked `tensorrt` do that where TensorRT exists).

Modelled on TensorRT 10.3 and 11.1 as far as our code uses them: TF32 is on by default in a new
builder config, and TensorRT 11 has no `BuilderFlag.FP16` or `INT8` (weak typing is gone).

For the runtime side (`deploy.engine`, a package's session) `deserialize_cuda_engine` reads a
`fake_engine` description (its IO tensors and profile) instead of an engine, and `RecordingCuda`
stands in for the CUDA driver: both record what the session asks (binding names, shapes, addresses,
copies, enqueues, synchronisations). The logits a fake session returns are zeros, never an engine's.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import torch

NOT_AN_ENGINE = b"recording-fake-tensorrt: no engine was built"
FAKE_ENGINE = b"recording-fake-tensorrt engine description:"


def fake_engine(
    input: str = "x",
    output: str = "y",
    chw: tuple[int, int, int] = (1, 32, 32),
    classes: int = 10,
    profile_batches: tuple[int, int, int] = (1, 2, 32),
    dtype: str = "FLOAT",
) -> bytes:
    """What the fake's `deserialize_cuda_engine` reads as an engine: its IO tensors and profile."""
    spec = {"input": input, "output": output, "chw": list(chw), "classes": classes}
    spec |= {"profile": [[b, *chw] for b in profile_batches], "dtype": dtype}
    return FAKE_ENGINE + json.dumps(spec).encode()


@dataclass
class Record:
    """Every call our code made, in order: (what, arguments)."""

    calls: list[tuple[str, tuple]] = field(default_factory=list)
    enqueue_result: bool = True  # what execute_async_v3 answers
    parsed: list[bytes] = field(default_factory=list)  # every ONNX handed to the parser

    def of(self, what: str) -> list[tuple]:
        return [args for name, args in self.calls if name == what]


def make_module(major: int, record: Record) -> types.ModuleType:  # noqa: C901 (a fake of the tensorrt module: one nested class per API object)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.{3 if major == 10 else 1}.0"

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            record.calls.append(("Logger", (severity,)))

    flags = {"TF32": "TF32"} if major >= 11 else {"FP16": "FP16", "INT8": "INT8", "TF32": "TF32"}
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            record.calls.append(("set_shape", (name, tuple(lo), tuple(opt), tuple(hi))))

    class Config:
        def __init__(self):
            self.flags = {"TF32"}  # TensorRT's default

        def set_memory_pool_limit(self, pool, size):
            record.calls.append(("set_memory_pool_limit", (pool, size)))

        def set_flag(self, flag):
            record.calls.append(("set_flag", (flag,)))
            self.flags.add(flag)

        def clear_flag(self, flag):
            record.calls.append(("clear_flag", (flag,)))
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def create_timing_cache(self, data):
            return object()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def add_optimization_profile(self, profile):
            record.calls.append(("add_optimization_profile", ()))

    class Builder:
        def __init__(self, logger):
            record.calls.append(("Builder", (logger,)))

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record.calls.append(("build", (frozenset(config.flags),)))
            return NOT_AN_ENGINE

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            record.calls.append(("parse", (len(data),)))
            record.parsed.append(bytes(data))
            return True

    class Context:
        def __init__(self, spec: dict | None = None):
            self.spec, self.input_shape = spec, None

        def set_input_shape(self, name, shape):
            record.calls.append(("set_input_shape", (name, tuple(shape))))
            lo, _, hi = self.spec["profile"]
            ok = name == self.spec["input"] and len(shape) == 4 and list(shape[1:]) == lo[1:]
            if ok and lo[0] <= shape[0] <= hi[0]:
                self.input_shape = tuple(shape)
                return True
            return False

        def get_tensor_shape(self, name):
            n = self.input_shape[0] if self.input_shape else -1  # unknown until the input shape is set
            return (n, *self.spec["chw"]) if name == self.spec["input"] else (n, self.spec["classes"])

        def set_tensor_address(self, name, ptr):
            record.calls.append(("set_tensor_address", (name, ptr)))
            return name in (self.spec["input"], self.spec["output"])

        def execute_async_v3(self, stream_handle):
            record.calls.append(("execute_async_v3", (stream_handle,)))
            return record.enqueue_result

    class Engine:
        def __init__(self, spec: dict):
            self.spec = spec
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return (self.spec["input"], self.spec["output"])[i]

        def get_tensor_mode(self, name):
            if name not in (self.spec["input"], self.spec["output"]):
                return trt.TensorIOMode.NONE
            return trt.TensorIOMode.INPUT if name == self.spec["input"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, self.spec["dtype"])

        def get_tensor_profile_shape(self, name, index):
            record.calls.append(("get_tensor_profile_shape", (name, index)))
            return [tuple(s) for s in self.spec["profile"]] if name == self.spec["input"] else []

        def create_execution_context(self):
            record.calls.append(("create_execution_context", ()))
            return Context(self.spec)

    class Runtime:
        def __init__(self, logger):
            record.calls.append(("Runtime", (logger,)))

        def deserialize_cuda_engine(self, data):
            record.calls.append(("deserialize_cuda_engine", (len(data),)))
            data = bytes(data)
            if not data.startswith(FAKE_ENGINE):
                return None  # what TensorRT answers for a file that is not its engine
            return Engine(json.loads(data[len(FAKE_ENGINE) :]))

    trt.TensorIOMode = types.SimpleNamespace(NONE="NONE", INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT8="INT8")
    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.Context = Context
    return trt


def install(monkeypatch, major: int) -> Record:
    """Put the recording fake in place of `tensorrt` for one test, with fresh process-wide caches, and let
    `import_tensorrt` past its GPU check (the fake needs none; nothing it returns runs on a GPU)."""
    from dery_deploy.runtime import tensorrt as ours

    record = Record()
    monkeypatch.setitem(sys.modules, "tensorrt", make_module(major, record))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ours, "_TIMING_CACHE", {})
    monkeypatch.setattr(ours, "_LOGGER", {})
    return record


class RecordingCuda:
    """Stands in for `deploy.cuda.CudaDriver`: hands out made-up addresses and records every call; it
    copies nothing (the host buffer a session reads back keeps what it held)."""

    STREAM = 7

    def __init__(self, record: Record):
        self.log, self.next, self.events = record, 0x1000, 0

    def stream(self) -> int:
        self.log.calls.append(("cuStreamCreate", ()))
        return self.STREAM

    def alloc(self, nbytes: int) -> int:
        self.log.calls.append(("cuMemAlloc", (nbytes,)))
        self.next += nbytes + 256
        return self.next - nbytes - 256

    def to_device(self, dst, src, stream) -> None:
        self.log.calls.append(("to_device", (dst, tuple(src.shape), str(src.dtype), stream)))

    def to_host(self, dst, src, stream) -> None:
        self.log.calls.append(("to_host", (src, tuple(dst.shape), str(dst.dtype), stream)))

    def event(self) -> int:
        self.events += 1
        return self.events

    def record(self, event, stream) -> None:
        self.log.calls.append(("cuEventRecord", (event, stream)))

    def elapsed_ms(self, start, end) -> float:
        self.log.calls.append(("cuEventElapsedTime", (start, end)))
        return 0.25  # made up: nothing ran

    def synchronize(self, stream) -> None:
        self.log.calls.append(("synchronize", (stream,)))

    def close(self) -> None:
        self.log.calls.append(("close", ()))


def install_runtime(monkeypatch, major: int = 10) -> Record:
    """The recording fake of `tensorrt` and of the CUDA driver for a package's session (`deploy.engine`)."""
    from dery_deploy.deploy import engine

    record = Record()
    monkeypatch.setitem(sys.modules, "tensorrt", make_module(major, record))
    monkeypatch.setattr(engine, "CudaDriver", lambda: RecordingCuda(record))
    monkeypatch.setattr(engine, "_LOGGER", {})
    return record
