"""Runtime sessions as every measurement and every shipped package runs them, without torch.

One place says how an ONNX Runtime session is set up (the measured settings), so that what the
profile, the final pass, a measurement worker and a deployment loader run is the same program.
"""

from __future__ import annotations

from pathlib import Path

ORT_INSTALL = "the onnxruntime package is needed (pip install onnxruntime)"


def ort_settings(threads: int) -> dict:
    """The session settings a measurement is taken with, as recorded beside what ships."""
    # ORT's intra-op threads spin-wait after each run by default; with several sessions alive in one
    # process (the reference workload's and the item's) the spinning threads of one steal the cores
    # of the other and inflate its timing. Measured here: 24-79% slower items.
    return {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "session.intra_op.allow_spinning": "0"}


def ort_session(source: bytes | str | Path, threads: int, providers: list | None = None):
    """An ONNX Runtime InferenceSession of ONNX bytes or a file, with `ort_settings(threads)`."""
    try:
        import onnxruntime as ort
    except ImportError:
        from dery_deploy.errors import DeryError

        raise DeryError(ORT_INSTALL) from None
    opts = ort.SessionOptions()
    settings = ort_settings(threads)
    opts.intra_op_num_threads = settings["intra_op_num_threads"]
    opts.inter_op_num_threads = settings["inter_op_num_threads"]
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", settings["session.intra_op.allow_spinning"])
    data = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(data, opts, providers=providers or ["CPUExecutionProvider"])
