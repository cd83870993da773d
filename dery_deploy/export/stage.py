"""The export stage's names where the CLI, the pipeline and the tests import them: the driver is
`export.run`, the verdict `export.verdict`, the report `export.report`, the output checks
`export.checks` and one exporter per format `export.formats`."""

from __future__ import annotations

from dery_deploy.export.checks import (
    FP16_TOL,
    FP32_TOL,
    INT8_MAX_DROP,
    PARITY_IMAGES,
    checked_outputs,
    exported_onnx,
    int8_accuracy,
    int8_onnx,
    parity,
)
from dery_deploy.export.formats import ARTIFACTS, EXPORT_FORMAT, FORMATS, PRECISIONS, RUNTIME_OF, tensorrt_engine
from dery_deploy.export.report import ExportReport, Int8Record, Parity
from dery_deploy.export.run import export_precision, export_run, shipped_top1
from dery_deploy.export.verdict import BudgetVerdict, budget_check

__all__ = [
    "ARTIFACTS",
    "EXPORT_FORMAT",
    "FORMATS",
    "FP16_TOL",
    "FP32_TOL",
    "INT8_MAX_DROP",
    "PARITY_IMAGES",
    "PRECISIONS",
    "RUNTIME_OF",
    "BudgetVerdict",
    "ExportReport",
    "Int8Record",
    "Parity",
    "budget_check",
    "checked_outputs",
    "export_precision",
    "export_run",
    "exported_onnx",
    "int8_accuracy",
    "int8_onnx",
    "parity",
    "shipped_top1",
    "tensorrt_engine",
]
