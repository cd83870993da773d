"""A shipped family loaded with its runtime alone (`deploy/family.py`): `at_budget` picks the most
accurate path measured within a budget and refuses one no path meets, switching is a lookup, a copied
folder loads, another machine's figures are said once, `measure()` re-times here, and no torch is needed."""

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import dery_deploy
from dery_deploy.data import fashion_mnist
from dery_deploy.deploy.family import OtherMachineWarning, load_family
from dery_deploy.deploy.family_info import FAMILY_FILE
from dery_deploy.errors import DeryError
from tests.conftest import ROOT
from tests.deploy.test_predictor import BLOCK_TORCH

# top-1s 78 / 75 / 80 (the fixture's); p50s set by hand so the test says which path each budget gets
P50 = {"path-0": 0.2, "path-1": 0.1, "path-2": 0.3}


def with_figures(family_folder, tmp_path, fingerprint: dict | None = None):
    """A copy of the family whose recorded p50s are P50 (standard error 0.1%), on `fingerprint`'s machine."""
    folder = tmp_path / "family"
    shutil.copytree(family_folder, folder)
    data = json.loads((folder / FAMILY_FILE).read_text())
    for p in data["paths"]:
        p["latency"].update(p50_ms=P50[p["name"]], standard_error={"p50": 0.001, "p90": 0.001, "p99": 0.001})
    if fingerprint is not None:
        data["fingerprint"] = fingerprint
    (folder / FAMILY_FILE).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "ms,name",
    [(0.15, "path-1"), (0.25, "path-0"), (0.35, "path-2"), (10.0, "path-2")],
)
def test_at_budget_picks_the_most_accurate_path_within_it(shipped_family, tmp_path, ms, name):
    family = load_family(with_figures(shipped_family.folder, tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded machine is this one: nothing to say
        model = family.at_budget(ms)
    assert model.info.model == family.info.path(name).model and model.info.budget is not None
    assert family.pick(ms).name == name  # the same answer, without a session
    assert model.predict(np.zeros((28, 28), np.uint8))[0][0][0] in fashion_mnist.CLASSES


def test_at_budget_refuses_a_budget_no_path_meets(shipped_family, tmp_path):
    family = load_family(with_figures(shipped_family.folder, tmp_path))
    with pytest.raises(DeryError, match=r"within 0\.05 ms at p50: the fastest, path-1 .*0\.1000 ms") as e:
        family.at_budget(0.05)
    assert "\n" not in str(e.value)


def test_switching_paths_is_a_lookup(shipped_family):
    family = load_family(shipped_family.folder)
    first = family.at_budget(1000.0)
    assert family.at_budget(1000.0) is first and family.at_budget(1000.0).session is first.session


def test_another_machines_figures_are_said_once_and_measure_retimes_here(shipped_family, tmp_path):
    other = {"kind": "cpu", "cpu_model": "Some Other CPU", "cores": 64}
    family = load_family(with_figures(shipped_family.folder, tmp_path, other))
    with pytest.warns(OtherMachineWarning, match="another machine .*Some Other CPU.*family.measure") as rec:
        assert family.at_budget(0.15).info.model == "path-1.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        family.at_budget(0.15)  # said once
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    measured = family.measure(calls=100, seconds=0.1, warmup_s=0.1)
    assert set(measured) == {"path-0", "path-1", "path-2"}
    assert all(0 < m.p50_ms <= m.p99_ms and m.calls >= 100 for m in measured.values())
    fastest = min(measured, key=lambda n: measured[n].p50_ms)
    # from now on it decides by this machine's figures: the hand-set ones would refuse this budget
    assert family.at_budget(measured[fastest].p50_ms * 10).info.model  # answers
    assert family.figure(family.info.path("path-2"), 50) == measured["path-2"].at(50)


def test_a_copied_family_loads_and_predicts_the_same(shipped_family, tmp_path):
    moved = tmp_path / "elsewhere" / "fam"
    shutil.copytree(shipped_family.folder, moved)
    x = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    here = load_family(shipped_family.folder).at_budget(1000.0).logits(x)
    there = load_family(moved).at_budget(1000.0).logits(x)
    np.testing.assert_array_equal(here, there)


def test_load_names_load_family_for_a_family_folder(shipped_family):
    with pytest.raises(DeryError, match=r"is a family of paths.*load_family"):
        dery_deploy.load(shipped_family.folder)


def test_load_family_works_where_torch_does_not_import(shipped_family):
    code = BLOCK_TORCH + (
        "import numpy as np, dery_deploy\n"
        f"family = dery_deploy.load_family({str(shipped_family.folder)!r})\n"
        "for ms in (1000.0, 0.0001):\n"
        "    try:\n"
        "        print(family.at_budget(ms).predict(np.zeros((28, 28), np.uint8))[0][0][0])\n"
        "    except dery_deploy.DeryError as e:\n"
        "        print('refused', str(e).split(':')[0])\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('torch', 'timm')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first in fashion_mnist.CLASSES and second.startswith("refused [deploy] no path of")
