"""A recording fake of the `tensorrt` Python module: it records what our code asks of TensorRT's API
(builder flags, optimisation-profile shapes, loggers, enqueues) so that can be checked on a machine
without TensorRT. It builds nothing: `build_serialized_network` returns a marker, never an engine, and
no test may count it as an engine having run (tests marked `tensorrt` do that where TensorRT exists).

Modelled on TensorRT 10.3 and 11.1 as far as our code uses them: TF32 is on by default in a new
builder config, and TensorRT 11 has no `BuilderFlag.FP16` or `INT8` (weak typing is gone).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import torch

NOT_AN_ENGINE = b"recording-fake-tensorrt: no engine was built"


@dataclass
class Record:
    """Every call our code made, in order: (what, arguments)."""

    calls: list[tuple[str, tuple]] = field(default_factory=list)
    enqueue_result: bool = True  # what execute_async_v3 answers
    parsed: list[bytes] = field(default_factory=list)  # every ONNX handed to the parser

    def of(self, what: str) -> list[tuple]:
        return [args for name, args in self.calls if name == what]


def make_module(major: int, record: Record) -> types.ModuleType:
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
        def execute_async_v3(self, stream_handle):
            record.calls.append(("execute_async_v3", (stream_handle,)))
            return record.enqueue_result

    class Runtime:
        def __init__(self, logger):
            record.calls.append(("Runtime", (logger,)))

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
