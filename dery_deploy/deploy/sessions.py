"""One session class per runtime a package can name, each built from the package's recorded settings,
each importing only its own runtime (and NumPy) when it is built.

A session runs a float32 NCHW batch of exactly the package's batch (`run`), and binds one such batch
for back-to-back timed calls (`bind`), the way the export measured it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dery_deploy.deploy.base import Session
from dery_deploy.deploy.info import DeployInfo
from dery_deploy.deploy.settings import onnxruntime_session
from dery_deploy.errors import DeryError

INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install openvino",
    "tensorrt": "NVIDIA TensorRT with its Python bindings, on a machine with an NVIDIA GPU",
}


class OnnxRuntimeSession(Session):
    def __init__(self, info: DeployInfo, folder: Path):
        super().__init__(info, folder)
        self.sess = onnxruntime_session(folder / info.model, info.runtime.session)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.info.input.name: x})[0]

    def effective(self) -> dict:
        o = self.sess.get_session_options()
        return {
            "intra_op_num_threads": o.intra_op_num_threads,
            "inter_op_num_threads": o.inter_op_num_threads,
            "providers": self.sess.get_providers(),
        }


class OpenVinoSession(Session):
    def __init__(self, info: DeployInfo, folder: Path):
        super().__init__(info, folder)
        import openvino as ov

        # the recorded properties, INFERENCE_PRECISION_HINT among them: the IR cannot carry it (the CPU
        # plugin ignores it in rt_info), and a plain compile_model runs fp32 networks in bfloat16 on
        # CPUs with AVX512-BF16 or AMX
        self.compiled = ov.Core().compile_model(str(folder / info.model), "CPU", dict(info.runtime.session))
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0])

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        request = self.compiled.create_infer_request()
        return lambda: request.infer({0: x}, share_inputs=True, share_outputs=True)

    def effective(self) -> dict:
        c = self.compiled
        return {
            "INFERENCE_NUM_THREADS": int(c.get_property("INFERENCE_NUM_THREADS")),
            "NUM_STREAMS": int(c.get_property("NUM_STREAMS")),
            "INFERENCE_PRECISION_HINT": c.get_property("INFERENCE_PRECISION_HINT").to_string(),
        }


def open_session(info: DeployInfo, folder: Path) -> Session:
    """The session of the package's runtime, built with its recorded settings.

    Raises:
        DeryError: the runtime is not installed (what to install), or the file does not load.
    """
    name = info.runtime.name
    try:
        if name == "onnxruntime":
            return OnnxRuntimeSession(info, folder)
        if name == "openvino":
            return OpenVinoSession(info, folder)
        if name == "tensorrt":
            from dery_deploy.deploy.engine import TensorRtSession

            return TensorRtSession(info, folder)
        raise DeryError(f"{folder}: unknown runtime {name!r}", "deploy")  # deploy.json's check refuses it first
    except ImportError as e:
        raise DeryError(
            f"this package runs on {name}, which does not import here ({e}); install {INSTALL[name]}", "deploy"
        ) from None
    except RuntimeError as e:  # the runtime refused the file (both raise RuntimeError subclasses)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DeryError(
            f"{name} cannot load {folder / info.model} ({first}); the file does not match the "
            "runtime installed here: re-export the package with this version",
            "deploy",
        ) from None
