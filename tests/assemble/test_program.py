import random

import pytest

from dery_deploy.assemble.program import ProgramData, brute_force, solve, to_us
from dery_deploy.errors import DeryError


def random_instance(seed: int, sets: int = 4, donors: int = 5) -> ProgramData:
    rng = random.Random(seed)
    opts = [[f"d{i}" for i in range(donors)] for _ in range(sets)]
    bms = [[rng.uniform(0.05, 2.0) for _ in range(donors)] for _ in range(sets)]
    bp = [[rng.randint(1_000, 2_000_000) for _ in range(donors)] for _ in range(sets)]
    bm = [[rng.uniform(1, 50) for _ in range(donors)] for _ in range(sets)]
    pairs = [(a, b) for a in range(donors) for b in range(donors) if a != b]
    ams = [{p: rng.uniform(0.01, 0.3) for p in pairs} for _ in range(sets - 1)]
    ap = [{p: rng.randint(100, 50_000) for p in pairs} for _ in range(sets - 1)]
    am = [{p: rng.uniform(1, 20) for p in pairs} for _ in range(sets - 1)]
    ck = [{p: rng.uniform(0.2, 0.99) for p in pairs} for _ in range(sets - 1)]
    return ProgramData(opts, bms, bp, bm, ams, ap, am, ck, [rng.uniform(0.01, 0.05) for _ in range(donors)],
                       [rng.randint(100, 5000) for _ in range(donors)], overhead_ms=0.01)


@pytest.mark.parametrize("seed", range(8))
def test_cp_sat_optimum_equals_brute_force(seed):
    data = random_instance(seed)
    budget = random.Random(seed).uniform(1.5, 5.0)
    mem = 40.0 if seed % 2 else None
    params = 4_000_000 if seed % 3 == 0 else None
    res = solve(data, budget, mem, params, top=1)
    best, best_q = brute_force(data, budget, mem, params)
    if best is None:
        assert not res.solutions and res.fastest_ms is not None
        return
    assert res.status == "OPTIMAL"
    got = res.solutions[0]
    assert data.evaluate(got.choice)["quality"] == pytest.approx(data.evaluate(best)["quality"], abs=2e-3)


def test_budget_never_exceeded_and_top_n_distinct():
    data = random_instance(42, sets=5, donors=6)
    for budget in (2.0, 3.0, 5.0):
        res = solve(data, budget, top=10)
        assert len({s.choice for s in res.solutions}) == len(res.solutions) == 10
        assert all(to_us(s.latency_ms) <= to_us(budget) for s in res.solutions)
        qs = [s.quality for s in res.solutions]
        assert qs[0] >= max(qs) - 2e-3  # the first is the optimum


def test_infeasible_budget_reports_fastest():
    data = random_instance(3)
    res = solve(data, 0.001)
    assert not res.solutions and "fastest assembly is predicted at" in res.infeasible_reason
    fast = solve(data, res.fastest_ms + 1e-3, top=1)
    assert fast.solutions and fast.solutions[0].latency_ms == pytest.approx(res.fastest_ms, abs=2e-3)


@pytest.mark.parametrize("budget", [0.0, -1.0])
def test_non_positive_budget_refused(budget):
    with pytest.raises(DeryError, match="latency budget must be > 0"):
        solve(random_instance(0), budget)
