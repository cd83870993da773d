import random

import pytest

from dery_deploy.assemble.program import Budget, ProgramData, brute_force, fastest, solve, top_n_dp
from dery_deploy.errors import DeryError


def random_instance(seed: int, sets: int = 4, donors: int = 5) -> ProgramData:
    rng = random.Random(seed)
    opts = [[f"d{i}" for i in range(donors)] for _ in range(sets)]
    bus = [[rng.randint(50, 2000) for _ in range(donors)] for _ in range(sets)]
    bp = [[rng.randint(1_000, 2_000_000) for _ in range(donors)] for _ in range(sets)]
    bm = [[rng.uniform(1, 50) for _ in range(donors)] for _ in range(sets)]
    pairs = [(a, b) for a in range(donors) for b in range(donors) if a != b]
    aus = [{p: rng.randint(10, 300) for p in pairs} for _ in range(sets - 1)]
    ap = [{p: rng.randint(100, 50_000) for p in pairs} for _ in range(sets - 1)]
    am = [{p: rng.uniform(1, 20) for p in pairs} for _ in range(sets - 1)]
    bq = [[rng.randint(0, 500) for _ in range(donors)] for _ in range(sets)]
    sq = [{p: rng.randint(200, 990) for p in pairs} for _ in range(sets - 1)]
    return ProgramData(
        opts,
        bus,
        bp,
        bm,
        aus,
        ap,
        am,
        [rng.randint(10, 50) for _ in range(donors)],
        [rng.randint(100, 5000) for _ in range(donors)],
        10,
        bq,
        sq,
        1000,
        [rng.randint(0, 300) for _ in range(donors)],
    )


@pytest.mark.parametrize("seed", range(8))
def test_top_n_equals_brute_force(seed):
    data = random_instance(seed)
    rng = random.Random(seed)
    budget = Budget(rng.randint(1500, 5000), 40.0 if seed % 2 else None, 4_000_000 if seed % 3 == 0 else None)
    for top in (1, 5):
        bf = brute_force(data, budget, top)
        res = solve(data, budget, top)
        if not bf:
            assert not res.solutions and "no assembly meets" in res.infeasible_reason
            continue
        assert res.status == "OPTIMAL"
        assert [s.quality for s in res.solutions] == [s.quality for s in bf]  # the exact top N, in order
        assert [s.quality for s in top_n_dp(data, budget, top)] == [s.quality for s in bf]


def test_budget_never_exceeded_and_top_n_distinct():
    data = random_instance(42, sets=5, donors=6)
    for budget_us in (2000, 3000, 5000):
        res = solve(data, Budget(budget_us), top=10)
        assert len({s.choice for s in res.solutions}) == len(res.solutions) == 10
        assert all(s.latency_us <= budget_us for s in res.solutions)
        qs = [s.quality for s in res.solutions]
        assert qs == sorted(qs, reverse=True)
        assert res.extra["cp_sat_solves"] == 10  # CP-SAT proved every one of the ten in turn


def test_evaluation_matches_its_parts():
    data = random_instance(7)
    choice = (1, 1, 3, 0)  # a native stitch (1 -> 1), then two adapters
    ev = data.evaluate(choice)
    lat = (
        data.base_us
        + sum(data.block_us[k][o] for k, o in enumerate(choice))
        + data.adapter_us[1][(1, 3)]
        + data.adapter_us[2][(3, 0)]
        + data.head_us[0]
    )
    assert ev.latency_us == lat
    q = (
        sum(data.block_q[k][o] for k, o in enumerate(choice))
        + data.native_q
        + data.stitch_q[1][(1, 3)]
        + data.stitch_q[2][(3, 0)]
        + data.end_q[0]
    )
    assert ev.quality == q


def test_infeasible_budget_reports_fastest():
    data = random_instance(3)
    res = solve(data, Budget(1))
    assert not res.solutions and "fastest assembly is predicted at" in res.infeasible_reason
    f = fastest(data)
    assert res.fastest_us == f.latency_us
    ok = solve(data, Budget(f.latency_us), top=1)
    assert ok.solutions and ok.solutions[0].latency_us == f.latency_us
    assert f.latency_us == min(data.evaluate(c.choice).latency_us for c in brute_force(data, Budget(10**9), 10**6))


def test_negative_budget_refused():
    with pytest.raises(DeryError, match="latency budget must be > 0"):
        solve(random_instance(0), Budget(-1000))
