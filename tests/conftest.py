import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_dery(*args: str, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run the real `dery` CLI in a subprocess (exit code, stdout, stderr as a user sees them)."""
    e = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "dery_deploy.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=e)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


@pytest.fixture(scope="session")
def fashion_zoo():
    from dery_deploy.zoo import get_zoo

    return get_zoo("fashion")


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401
        trt = cuda
    except Exception:  # noqa: BLE001
        trt = False
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(pytest.mark.skip(reason="needs the tensorrt Python package (TensorRT builder) and an NVIDIA GPU"))
