"""One budget rule for `dery bench` and the Jetson bundle's check_engine.py: the standalone script
carries verbatim copies of `deploy/bench.py`'s `summarise` and `within_budget` (it cannot import the
package), and judges trtexec's times with them."""

import ast
import importlib.util

import numpy as np
import pytest

from dery_deploy.deploy import bench
from tests.conftest import ROOT

SHARED = ("summarise", "within_budget")
CONSTANTS = ("BLOCKS", "BOOTSTRAP", "MAX_ALLOWANCE")


def engine_check():
    path = ROOT / "dery_deploy/export/engine_check.py"
    spec = importlib.util.spec_from_file_location("check_engine_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def definitions(path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    return {n.name: ast.dump(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in SHARED}


def test_check_engine_carries_the_bench_rule_verbatim():
    ours = definitions(ROOT / "dery_deploy/deploy/bench.py")
    copy = definitions(ROOT / "dery_deploy/export/engine_check.py")
    assert set(ours) == set(SHARED) and copy == ours, "copy deploy/bench.py's functions into engine_check.py"
    check = engine_check()
    assert {c: getattr(check, c) for c in CONSTANTS} == {c: getattr(bench, c) for c in CONSTANTS}


@pytest.mark.parametrize("budget,within", [(1.2, True), (0.8, False), (None, None)])
def test_check_engine_judges_trtexec_times_as_bench_judges_calls(budget, within):
    times = list(1.0 + 0.01 * np.random.default_rng(1).standard_normal(2000))
    got = engine_check().judge_times(times, budget, 90)
    kept = np.asarray(times[200:])  # the first tenth warms up
    est, se, _ = bench.summarise(kept, np.random.default_rng(0))
    assert got["within_budget"] is within and got["runs"] == 1800 and not got["undecided"]
    assert got["latency_ms_at_percentile"] == round(est[90], 5) and got["standard_error"] == round(se[90], 5)


def test_check_engine_leaves_a_budget_inside_a_wide_error_undecided():
    rng = np.random.default_rng(2)
    times = list(np.exp(rng.standard_normal(1000)))  # spread far wider than MAX_ALLOWANCE allows
    got = engine_check().judge_times(times, float(np.median(times[100:])), 50)
    assert got["within_budget"] is None and got["undecided"] and got["standard_error"] > bench.MAX_ALLOWANCE
