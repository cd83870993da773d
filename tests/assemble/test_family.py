"""The family program against brute force over every combination of assemblies, and its sharing rule."""

import itertools

import pytest

from dery_deploy.assemble.family import solve_family, stored_params
from dery_deploy.assemble.program import SCALE, Budget, ProgramData, brute_force, fastest
from dery_deploy.errors import DeryError
from tests.assemble.test_program import random_instance


def best_by_brute_force(data: ProgramData, budgets: list[Budget], delta: float, price: float) -> int:
    """The family objective's optimum, over every combination of each budget's admissible assemblies."""
    per_budget = []
    for b in budgets:
        every = brute_force(data, b, top=10**6)
        floor = every[0].quality - delta * abs(every[0].quality)
        per_budget.append([e for e in every if e.quality >= floor])
    best = None
    for combo in itertools.product(*per_budget):
        value = 10**6 * sum(e.quality for e in combo) - round(price * SCALE) * stored_params(
            data, [e.choice for e in combo]
        )
        best = value if best is None else max(best, value)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("price", [0.05, 2.0])
def test_the_family_is_the_best_combination(seed, price):
    data = random_instance(seed, sets=3, donors=4)
    lo = fastest(data).latency_us
    budgets = [Budget(int(lo * 1.3)), Budget(int(lo * 2.2))]
    fam = solve_family(data, budgets, delta=0.1, price=price)
    assert fam.status == "OPTIMAL"
    got = 10**6 * sum(p.quality for p in fam.paths) - round(price * SCALE) * fam.distinct_params
    assert got == best_by_brute_force(data, budgets, 0.1, price)
    for p, b in zip(fam.paths, budgets):
        assert data.evaluate(p.choice).latency_us <= b.latency_us
        assert p.quality >= p.optimum - 0.1 * abs(p.optimum) and 0 <= p.loss <= 0.1
    # the independent optima are a feasible family: the chosen one is worth at least as much
    baseline = 10**6 * sum(p.optimum for p in fam.paths) - round(price * SCALE) * fam.optima_shared_params
    assert got >= baseline and fam.optima_shared_params <= fam.separate_params


def test_with_no_quality_to_give_each_path_is_its_budgets_optimum():
    data = random_instance(1, sets=3, donors=4)
    lo = fastest(data).latency_us
    budgets = [Budget(int(lo * 1.3)), Budget(int(lo * 2.2))]
    fam = solve_family(data, budgets, delta=0.0, price=50.0)
    assert [p.quality for p in fam.paths] == [p.optimum for p in fam.paths]


def test_a_high_price_trades_quality_within_delta_for_shared_blocks():
    # two sets, two donors; the fast budget can only take donor 1's blocks, the slow one prefers donor 0's
    # by 1% of its quality: priced enough, the slow path takes donor 1's blocks too and stores nothing more
    data = ProgramData(
        [["d0", "d1"], ["d0", "d1"]],
        [[500, 100], [500, 100]],
        [[1_000_000, 1_000_000], [1_000_000, 1_000_000]],
        [[1.0, 1.0], [1.0, 1.0]],
        [{(0, 1): 10, (1, 0): 10}],
        [{(0, 1): 1000, (1, 0): 1000}],
        [{(0, 1): 1.0, (1, 0): 1.0}],
        [5, 5],
        [100, 100],
        0,
        [[505, 500], [505, 500]],
        [{(0, 1): 0, (1, 0): 0}],
        0,
        [0, 0],
    )
    fast, slow = Budget(300), Budget(2000)
    cheap = solve_family(data, [fast, slow], delta=0.02, price=0.0)
    assert [p.choice for p in cheap.paths] == [(1, 1), (0, 0)]
    dear = solve_family(data, [fast, slow], delta=0.02, price=1.0)
    assert [p.choice for p in dear.paths] == [(1, 1), (1, 1)]
    assert dear.distinct_params == 2_000_100 < cheap.distinct_params == 4_000_200
    assert dear.paths[1].loss == pytest.approx(10 / 1010)
    # room for one shared block only (5 of 1010 given up, a stitch between): the last set's block and head
    assert [p.choice for p in solve_family(data, [fast, slow], delta=0.005, price=1.0).paths] == [(1, 1), (0, 1)]
    # no room: the slow path keeps its optimum
    assert [p.choice for p in solve_family(data, [fast, slow], delta=0.004, price=1.0).paths] == [(1, 1), (0, 0)]


def test_a_budget_nothing_meets_is_named():
    data = random_instance(2, sets=3, donors=4)
    lo = fastest(data).latency_us
    with pytest.raises(DeryError, match="no assembly meets"):
        solve_family(data, [Budget(lo - 1), Budget(lo * 2)])
    with pytest.raises(DeryError, match="--delta must be in"):
        solve_family(data, [Budget(lo * 2)], delta=1.5)
