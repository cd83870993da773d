"""The GPU machine's two scripts, on what a CPU can show: gpu_check.sh's gate on what the solver imports
(in a subprocess where pandas cannot be imported, as on the GPU image), and gpu_prep.sh's size guard and
data self-check in a throw-away copy of the tree (`--check`, which downloads nothing). Whether the carried
wheels install and import on the GPU image itself is what gpu_check.sh's `environment` step and its
summary's `solver_imports` report there (no GPU machine was lent for issue 18; by hand, the carried wheels
installed with --target into a Python 3.12 venv holding only what the image has of their needs (numpy,
python-dateutil, six, tqdm, pyyaml, packaging, typing_extensions) imported cp_model and solved a model;
without pandas, `import ortools, optuna` passed while cp_model failed)."""

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def gate() -> str:
    m = re.search(r"^NEEDS='([^']+)'$", (ROOT / "scripts" / "gpu_check.sh").read_text(), re.M)
    assert m, "gpu_check.sh has no NEEDS='...' line"
    return m.group(1)


def test_the_solver_gate_fails_where_cp_model_cannot_import(tmp_path):
    """ortools 9.15's cp_model imports pandas at import time; `import ortools` alone loads neither."""
    pytest.importorskip("ortools")
    pytest.importorskip("optuna")
    blocked = tmp_path / "blocked" / "pandas"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('pandas is not on this image')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "blocked"))
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)  # noqa: E731
    assert run("import ortools, optuna").returncode == 0  # what the old gate ran: it passed
    p = run(gate())
    assert p.returncode != 0 and "pandas is not on this image" in p.stderr
    assert subprocess.run([sys.executable, "-c", gate()]).returncode == 0  # where pandas imports, it passes


def idx(path, magic, dims, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + len(dims)), magic, *dims) + payload)


@pytest.fixture
def tree(tmp_path):
    """A copy of what gpu_prep.sh needs of the project, as a git work tree, with a stand-in $PYTHON that logs."""
    root = tmp_path / "tree"
    (root / "scripts").mkdir(parents=True)
    for f in ("gpu_prep.sh", "python.sh"):
        shutil.copy(ROOT / "scripts" / f, root / "scripts" / f)
    (root / ".gitignore").write_text("/.whl/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    fm = root / ".whl" / "fmnist"
    fm.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 10)):
        idx(fm / f"{split}-images-idx3-ubyte.gz", 2051, (n, 28, 28), bytes(n * 784))
        idx(fm / f"{split}-labels-idx1-ubyte.gz", 2049, (n,), bytes(range(n)) if n <= 10 else bytes(n))
    py = tmp_path / "python"
    py.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/python.log\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    env = dict(os.environ, PYTHON=str(py), PYTHONPATH=str(ROOT))
    return root, env, tmp_path / "python.log"


def test_prep_guard_counts_the_tree_and_the_carried_folder(tree):
    root, env, _ = tree
    big = root / ".whl" / "big.whl"
    with open(big, "wb") as f:  # sparse: 63 MiB as copied, nothing on disk
        f.truncate(63 * 2**20)
    p = subprocess.run(["bash", "scripts/gpu_prep.sh", "--check"], cwd=root, env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "over 64 MiB less 2 MiB headroom" in p.stderr, p.stdout + p.stderr
    assert re.search(r"carried: \.whl/ 64 MiB \+ project tree \d+ MiB = 64 MiB", p.stdout), p.stdout
    # an untracked, unignored file travels too: it counts
    big.unlink()
    with open(root / "notes.bin", "wb") as f:
        f.truncate(63 * 2**20)
    p = subprocess.run(["bash", "scripts/gpu_prep.sh", "--check"], cwd=root, env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "project tree 64 MiB" in p.stdout, p.stdout + p.stderr


def test_prep_self_check_runs_on_the_projects_python(tree):
    """The self-check imports dery_deploy (and torch): it runs on $PYTHON, the project's Python, after the guard."""
    root, env, log = tree
    p = subprocess.run(["bash", "scripts/gpu_prep.sh", "--check"], cwd=root, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "gpu_prep: fmnist train 12 test 10" in p.stdout and "of the 64 MiB limit" in p.stdout
    assert "from dery_deploy.data.fashion_mnist import load_split" in log.read_text()


def test_prep_says_which_interpreter_to_name_when_its_python_lacks_the_project(tree, tmp_path):
    """With no .venv, no usable $PYTHON and a python3 without torch, the self-check fails after the wheels
    were collected: the error names the interpreter it used and how to name another."""
    root, env, _ = tree
    bare = tmp_path / "bare-python"  # this Python without site-packages: no torch, no dery_deploy
    bare.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    env = dict(env, PYTHON=str(bare))
    env.pop("PYTHONPATH")
    p = subprocess.run(["bash", "scripts/gpu_prep.sh", "--check"], cwd=root, env=env, capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"PYTHON ({bare})" in p.stderr and "./.venv (absent)" in p.stderr, p.stderr
    assert "PYTHON=/path/to/venv/bin/python bash scripts/gpu_prep.sh --check" in p.stderr, p.stderr


def test_the_h200_estimate_leaves_a_rerun_even_with_a_full_carry():
    """The whole script's expected time, machine start and transfer must leave 4 of a lease's 15 minutes for
    rerunning a failed step, also when the carry is at its 64 MiB limit (the .whl/ wheels and data)."""
    p = subprocess.run(["bash", "scripts/gpu_check.sh", "--estimate"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m = re.search(r"steps (\d+)s expected \+ machine start (\d+)s \+ transfer of (\d+) MiB (\d+)s = (\d+)s", p.stdout)
    assert m, p.stdout
    steps, start, mib, transfer, total = map(int, m.groups())
    assert total == steps + start + transfer and "enough" in p.stdout
    per_mib = transfer / max(mib, 1)
    assert steps + start + 64 * per_mib <= 15 * 60 - 4 * 60 + 1, p.stdout
