"""The family program: one assembly per budget, chosen together so that the paths share blocks.

A deployment rarely has one budget. Given M budgets on one target, the family program chooses one
chain per budget that maximises the summed quality minus a price per distinct parameter (a block, a
stitch or a head that two paths both use is stored once), each chain within its own budget, and each
chain's quality at most `delta` (a fraction of that budget's own optimum) below that optimum: the price
of sharing is bounded and reported per path.

It is one exact CP-SAT model: M chains (`program.add_chain`), and a sharing indicator per block, stitch
and head that is on when any path uses it (u >= x_m), whose parameters are what the family stores. It is
hinted with the budgets' independent optima (`program.top_n_dp`), which always satisfy it, so the solver
starts from a feasible family and the result is never worse than storing the optima separately.

This chooses the family; `dery run --family` (`pipeline/family.py`) trains and ships it, and
`scripts/bench_family.py` measures the solve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dery_deploy.assemble.program import SCALE, Budget, Chain, ProgramData, add_chain, top_n_dp
from dery_deploy.errors import DeryError
from dery_deploy.profile.latency_model import us_to_ms

DELTA = 0.02  # a path may give up at most 2% of its budget's own optimum quality to share blocks
PRICE = 0.05  # quality (1.0 = SCALE units) a million stored parameters are worth


@dataclass(frozen=True)
class FamilyPath:
    """One budget's path: the assembly (an option per set), its quality against the budget's own optimum,
    its predicted latency and its parameters (those it shares counted too)."""

    budget_ms: float
    choice: tuple[int, ...]
    quality: int
    optimum: int
    latency_ms: float
    params: int

    @property
    def loss(self) -> float:
        """The quality given up for sharing, as a fraction of the budget's own optimum."""
        return (self.optimum - self.quality) / abs(self.optimum) if self.optimum else 0.0


@dataclass(frozen=True)
class Family:
    """The chosen paths, the parameters the family stores (each shared one once) against the budgets'
    independent optima stored separately and as a family, and how the solve went."""

    paths: list[FamilyPath]
    distinct_params: int
    separate_params: int
    optima_shared_params: int  # what the independent optima would store as a family: the program's baseline
    status: str
    seconds: float
    delta: float
    price: float

    @property
    def ratio(self) -> float:
        """Stored parameters of the family over those of the separate optima."""
        return self.distinct_params / self.separate_params if self.separate_params else 1.0


def _items(data: ProgramData) -> dict[tuple, int]:
    """Every storable item and its parameters: ("b", k, o) blocks, ("s", k, a, b) non-native stitches,
    ("h", o) heads of the last set's options."""
    items: dict[tuple, int] = {
        ("b", k, o): data.block_params[k][o] for k in range(data.K) for o in range(len(data.options[k]))
    }
    for k in range(data.K - 1):
        items.update({("s", k, a, b): p for (a, b), p in data.adapter_params[k].items()})
    items.update({("h", o): p for o, p in enumerate(data.head_params)})
    return items


def _uses(chain: Chain, item: tuple, last: int) -> list:
    """The chain's variables that put `item` into the network."""
    if item[0] == "b":
        return [chain.x[item[1], item[2]]]
    if item[0] == "s":
        return [chain.e[item[1], item[2], item[3]]]
    return [chain.x[last, item[1]]]


def stored_params(data: ProgramData, choices: list[tuple[int, ...]]) -> int:
    """Parameters a family of `choices` stores: each block, stitch and head once, however many paths use it."""
    used: set[tuple] = set()
    for c in choices:
        used |= {("b", k, o) for k, o in enumerate(c)}
        used |= {("s", k, c[k], c[k + 1]) for k in range(data.K - 1) if (c[k], c[k + 1]) in data.adapter_params[k]}
        used.add(("h", c[-1]))
    items = _items(data)
    return sum(items[i] for i in used)


def solve_family(
    data: ProgramData,
    budgets: list[Budget],
    delta: float = DELTA,
    price: float = PRICE,
    time_limit_s: float = 20.0,
    workers: int = 2,
) -> Family:
    """The family of `budgets` (module docstring); raises DeryError naming a budget nothing meets."""
    from ortools.sat.python import cp_model

    if not 0 <= delta < 1:
        raise DeryError(f"--delta must be in [0, 1), got {delta:g}", "family")
    t0 = time.perf_counter()
    optima = []
    for b in budgets:
        best = top_n_dp(data, b, 1)
        if not best:
            raise DeryError(f"no assembly meets {b.describe()}: the family needs every budget feasible", "family")
        optima.append(best[0])
    model = cp_model.CpModel()
    chains = [add_chain(model, data, b, f"_{m}") for m, b in enumerate(budgets)]
    for c, opt in zip(chains, optima):
        model.add(c.quality * SCALE >= opt.quality * SCALE - int(round(delta * abs(opt.quality) * SCALE)))
        c.hint(model, opt.choice)
    items = _items(data)
    stored_vars = []
    for item in items:
        u = model.new_bool_var(f"u_{'_'.join(map(str, item))}")
        for c in chains:
            for v in _uses(c, item, data.K - 1):
                model.add_implication(v, u)
        stored_vars.append(u)
    stored = cp_model.LinearExpr.weighted_sum(stored_vars, list(items.values()))
    # quality in SCALE units per 1.0; the price in those units per parameter, scaled to integers by 10^6
    model.maximize(10**6 * sum(c.quality for c in chains) - int(round(price * SCALE)) * stored)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):  # the hint is feasible: only a time-out lands here
        raise DeryError(f"the family program found no solution in {time_limit_s:g} s", "family")
    paths = []
    for b, c, opt in zip(budgets, chains, optima):
        e = data.evaluate(c.choice(solver, data))
        paths.append(FamilyPath(us_to_ms(b.latency_us), e.choice, e.quality, opt.quality, e.latency_ms, e.params))
    return Family(
        paths,
        stored_params(data, [p.choice for p in paths]),
        sum(o.params for o in optima),
        stored_params(data, [o.choice for o in optima]),
        solver.status_name(status),
        round(time.perf_counter() - t0, 4),
        delta,
        price,
    )
