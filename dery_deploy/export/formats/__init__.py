"""One module per export format, each a class over the small base in `base.py`, registered in one table
(`EXPORTERS`); the tables the rest of the package reads are lookups in it."""

from __future__ import annotations

from dery_deploy.export.formats.aoti import AotiExporter
from dery_deploy.export.formats.base import EXPORTERS, Exporter, ExportJob, formats, get_exporter, register_exporter
from dery_deploy.export.formats.onnx_family import OnnxExporter, OpenVinoExporter
from dery_deploy.export.formats.tensorrt import TensorRTExporter, tensorrt_engine

FORMATS: tuple[str, ...] = formats()
PRECISIONS: dict[str, tuple[str, ...]] = {f: EXPORTERS[f].precisions for f in FORMATS}
ARTIFACTS: dict[str, str] = {f: EXPORTERS[f].artifact_name for f in FORMATS}
# the runtime backend that runs each format's file, and the format that ships a plan made with a backend
RUNTIME_OF: dict[str, str] = {f: b for f in FORMATS if (b := EXPORTERS[f].backend) is not None}
EXPORT_FORMAT: dict[str, str] = {b: f for f, b in RUNTIME_OF.items()}

__all__ = [
    "ARTIFACTS",
    "EXPORTERS",
    "EXPORT_FORMAT",
    "FORMATS",
    "PRECISIONS",
    "RUNTIME_OF",
    "AotiExporter",
    "ExportJob",
    "Exporter",
    "OnnxExporter",
    "OpenVinoExporter",
    "TensorRTExporter",
    "formats",
    "get_exporter",
    "register_exporter",
    "tensorrt_engine",
]
