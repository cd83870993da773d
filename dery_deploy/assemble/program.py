"""The integer program: one block per equivalence set under a latency (and memory, parameter) budget.

The structure is a chain: one block per set, one stitch (an adapter, or nothing where two blocks
of one donor meet natively) between consecutive sets, the new head after the last. Quality and
latency add up along the chain, so the program is solved twice, by two exact methods:

- `top_n_dp`: a label-setting dynamic program over (set, block) with Pareto pruning on
  (latency, parameters, quality) and a lower bound of the remaining latency; it keeps every partial
  chain that fewer than N others dominate, so it returns the exact top N.
- `solve`: the OR-Tools CP-SAT model (one chain's variables and constraints in `add_chain`, which the
  family program, `family.py`, adds once per budget), seeded with the DP's optimum as a hint and
  bounded by its value, so the solver proves optimality at once; the top N are then enumerated by CP-SAT itself as every
  assembly of quality at least the N-th best's, which certifies the DP's list.

All numbers are integers: latency in the latency model's unit (`profile.latency_model.UNITS_PER_MS`
per ms, 10 ns; the fields keep their `_us` names), the same arithmetic as the plan's predicted
latency; quality in 1/1000 units.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dery_deploy.errors import DeryError
from dery_deploy.profile.latency_model import us_to_ms

if TYPE_CHECKING:
    from ortools.sat.python.cp_model import IntVar, LinearExpr

SCALE = 1000  # quality units per 1.0
# the latency of an item the profile could not measure (its backend rejected it): larger than any budget, so
# no assembly holding it is feasible, in the DP and in CP-SAT alike (10**12 units: 10^4 s)
UNAVAILABLE_US = 10**12


def quality_int(v: float) -> int:
    return int(round(v * SCALE))


@dataclass
class ProgramData:
    """Everything the program needs, indexed [set][option]; stitches [set][(a, b)] for set -> set + 1.

    A stitch missing from `adapter_us[k]` is native (the same donor continuing): no adapter, no cost.
    """

    options: list[list[str]]  # option labels (donor names) per set
    block_us: list[list[int]]  # marginal latency of each block (latency - per-call overhead)
    block_params: list[list[int]]
    block_mem: list[list[float | None]]
    adapter_us: list[dict[tuple[int, int], int]]
    adapter_params: list[dict[tuple[int, int], int]]
    adapter_mem: list[dict[tuple[int, int], float | None]]
    head_us: list[int]  # per option of the last set
    head_params: list[int]
    base_us: int = 0  # paid once per network: the per-call overhead
    block_q: list[list[int]] = field(default_factory=list)  # quality of a block (integer units)
    stitch_q: list[dict[tuple[int, int], int]] = field(default_factory=list)  # quality of a non-native stitch
    native_q: int = SCALE  # quality of a native stitch
    end_q: list[int] = field(default_factory=list)  # quality of the features a last-set block hands the head

    def __post_init__(self) -> None:
        if not self.block_q:
            self.block_q = [[0] * len(o) for o in self.options]
        if not self.stitch_q:
            self.stitch_q = [{p: 0 for p in a} for a in self.adapter_us]
        if not self.end_q:
            self.end_q = [0] * len(self.options[-1])

    @property
    def K(self) -> int:
        return len(self.options)

    def edges(self, k: int):
        """(a, b, latency, params, quality) of every stitch between set k and set k + 1."""
        for a in range(len(self.options[k])):
            for b in range(len(self.options[k + 1])):
                if (a, b) in self.adapter_us[k]:
                    yield a, b, self.adapter_us[k][(a, b)], self.adapter_params[k][(a, b)], self.stitch_q[k][(a, b)]
                else:
                    yield a, b, 0, 0, self.native_q

    def evaluate(self, choice: tuple[int, ...]) -> Evaluation:
        """Latency, params, memory and quality of one assembly (choice[k] = option in set k)."""
        lat, params, q = self.base_us, 0, 0
        mem: list[float | None] = []
        for k, o in enumerate(choice):
            lat += self.block_us[k][o]
            params += self.block_params[k][o]
            mem.append(self.block_mem[k][o])
            q += self.block_q[k][o]
        for k in range(self.K - 1):
            pair = (choice[k], choice[k + 1])
            if pair in self.adapter_us[k]:
                lat += self.adapter_us[k][pair]
                params += self.adapter_params[k][pair]
                mem.append(self.adapter_mem[k][pair])
                q += self.stitch_q[k][pair]
            else:
                q += self.native_q
        lat += self.head_us[choice[-1]]
        params += self.head_params[choice[-1]]
        q += self.end_q[choice[-1]]
        known = [m for m in mem if m is not None]
        peak = max(known) if len(known) == len(mem) else None
        return Evaluation(choice, lat, params, peak, q)


@dataclass
class Evaluation:
    choice: tuple[int, ...]
    latency_us: int
    params: int
    memory_mb: float | None
    quality: int  # integer units (SCALE per 1.0)

    @property
    def latency_ms(self) -> float:
        return us_to_ms(self.latency_us)


@dataclass
class Budget:
    latency_us: int
    memory_mb: float | None = None
    params: int | None = None

    def admits(self, e: Evaluation) -> bool:
        return (
            e.latency_us <= self.latency_us
            and (self.params is None or e.params <= self.params)
            and (self.memory_mb is None or (e.memory_mb is not None and e.memory_mb <= self.memory_mb))
        )

    def describe(self) -> str:
        return (
            f"{us_to_ms(self.latency_us):g} ms"
            + (f" / {self.memory_mb:g} MB" if self.memory_mb is not None else "")
            + (f" / {self.params / 1e6:g} M params" if self.params is not None else "")
        )


@dataclass
class SolveResult:
    solutions: list[Evaluation]
    status: str
    seconds: float  # the whole solve: optimum and the top N
    seconds_first: float  # to the proven optimum
    method: str = "cp-sat"
    infeasible_reason: str = ""
    fastest_us: int | None = None
    extra: dict = field(default_factory=dict)


def mem_ok(m: float | None, budget: Budget) -> bool:
    return budget.memory_mb is None or (m is not None and m <= budget.memory_mb)


@dataclass
class Chain:
    """A chain's variables in a CP-SAT model: x[k, o] = option o is the block of set k; e[k, a, b] = the
    stitch a (set k) -> b (set k + 1); and its linear expressions of quality, latency and parameters."""

    x: dict[tuple[int, int], IntVar]
    e: dict[tuple[int, int, int], IntVar]
    quality: LinearExpr
    latency: LinearExpr
    params: LinearExpr

    def hint(self, model, choice: tuple[int, ...]) -> None:
        """Hint the model with the assembly `choice` for this chain."""
        for (k, o), v in self.x.items():
            model.add_hint(v, int(choice[k] == o))
        for (k, a, b), v in self.e.items():
            model.add_hint(v, int(choice[k] == a and choice[k + 1] == b))

    def choice(self, solver, data: ProgramData) -> tuple[int, ...]:
        """The assembly a solved model chose for this chain."""
        return tuple(next(o for o in range(len(data.options[k])) if solver.value(self.x[k, o])) for k in range(data.K))


def add_chain(model, data: ProgramData, budget: Budget, tag: str = "") -> Chain:
    """One chain of `data` within `budget` added to `model` (module docstring)."""
    K = data.K
    x = {(k, o): model.new_bool_var(f"x{tag}_{k}_{o}") for k in range(K) for o in range(len(data.options[k]))}
    e = {(k, a, b): model.new_bool_var(f"e{tag}_{k}_{a}_{b}") for k in range(K - 1) for a, b, *_ in data.edges(k)}
    # Exactly one block per equivalence set.
    for k in range(K):
        model.add_exactly_one(x[k, o] for o in range(len(data.options[k])))
    # A stitch is on exactly when both its ends are chosen, written as flow conservation (one out of
    # every chosen block, one into it), which keeps the LP relaxation a path through the sets.
    out_of: dict[tuple[int, int], list] = {}
    into: dict[tuple[int, int], list] = {}
    for (k, a, b), v in e.items():
        out_of.setdefault((k, a), []).append(v)
        into.setdefault((k + 1, b), []).append(v)
    for (k, a), vs in out_of.items():
        model.add(sum(vs) == x[k, a])
    for (k, b), vs in into.items():
        model.add(sum(vs) == x[k, b])
    stitch = {(k, a, b): (lat, par, q) for k in range(K - 1) for a, b, lat, par, q in data.edges(k)}
    last = range(len(data.options[K - 1]))
    # Predicted latency (the latency model's integers) within the budget.
    latency = (
        data.base_us
        + sum(data.block_us[k][o] * v for (k, o), v in x.items())
        + sum(stitch[key][0] * v for key, v in e.items())
        + sum(data.head_us[o] * x[K - 1, o] for o in last)
    )
    model.add(latency <= budget.latency_us)
    # Peak memory: no item above the budget (activations are freed between items).
    if budget.memory_mb is not None:
        for (k, o), v in x.items():
            if not mem_ok(data.block_mem[k][o], budget):
                model.add(v == 0)
        for (k, a, b), v in e.items():
            if (a, b) in data.adapter_mem[k] and not mem_ok(data.adapter_mem[k][(a, b)], budget):
                model.add(v == 0)
    params = (
        sum(data.block_params[k][o] * v for (k, o), v in x.items())
        + sum(stitch[key][1] * v for key, v in e.items())
        + sum(data.head_params[o] * x[K - 1, o] for o in last)
    )
    if budget.params is not None:
        model.add(params <= budget.params)
    # The quality of blocks, stitches and the features that reach the head.
    quality = (
        sum(data.block_q[k][o] * v for (k, o), v in x.items())
        + sum(stitch[key][2] * v for key, v in e.items())
        + sum(data.end_q[o] * x[K - 1, o] for o in last)
    )
    return Chain(x, e, quality, latency, params)


def fastest(data: ProgramData, budget: Budget | None = None) -> Evaluation | None:
    """The fastest assembly (exact DP over the chain), within the memory budget when one is given."""
    mem_budget = Budget(10**12, budget.memory_mb) if budget else Budget(10**12)
    best: dict[int, tuple[int, tuple[int, ...]]] = {
        o: (data.base_us + data.block_us[0][o], (o,))
        for o in range(len(data.options[0]))
        if mem_ok(data.block_mem[0][o], mem_budget)
    }
    for k in range(1, data.K):
        new: dict[int, tuple[int, tuple[int, ...]]] = {}
        for a, b, lat, _, _ in data.edges(k - 1):
            if a not in best or not mem_ok(data.block_mem[k][b], mem_budget):
                continue
            if (a, b) in data.adapter_mem[k - 1] and not mem_ok(data.adapter_mem[k - 1][(a, b)], mem_budget):
                continue
            cand = best[a][0] + lat + data.block_us[k][b]
            if b not in new or cand < new[b][0]:
                new[b] = (cand, best[a][1] + (b,))
        best = new
    done = [(lat + data.head_us[o], choice) for o, (lat, choice) in best.items()]
    return data.evaluate(min(done)[1]) if done else None


def top_n_dp(data: ProgramData, budget: Budget, top: int) -> list[Evaluation]:
    """The exact top `top` assemblies by quality (ties: faster first) under the budget."""
    K = data.K
    # fastest completion from (k, o) to the end, head included: a lower bound that prunes labels early
    rest = [[0] * len(o) for o in data.options]
    rest[K - 1] = list(data.head_us)
    for k in range(K - 2, -1, -1):
        for a in range(len(data.options[k])):
            rest[k][a] = min(
                lat + data.block_us[k + 1][b] + rest[k + 1][b] for aa, b, lat, _, _ in data.edges(k) if aa == a
            )
    pmax = budget.params if budget.params is not None else 10**18
    # without a parameter budget, parameters must not keep labels apart: count them as 0
    bp = data.block_params if budget.params is not None else [[0] * len(o) for o in data.options]
    # label: (latency, params, quality, choice)
    labels = [
        [(data.base_us + data.block_us[0][o], bp[0][o], data.block_q[0][o], (o,))]
        if mem_ok(data.block_mem[0][o], budget)
        else []
        for o in range(len(data.options[0]))
    ]
    labels = [
        [lab for lab in ls if lab[0] + rest[0][o] <= budget.latency_us and lab[1] <= pmax]
        for o, ls in enumerate(labels)
    ]
    for k in range(1, K):
        new: list[list[tuple]] = [[] for _ in data.options[k]]
        for a, b, lat, par, q in data.edges(k - 1):
            if not labels[a] or not mem_ok(data.block_mem[k][b], budget):
                continue
            if (a, b) in data.adapter_mem[k - 1] and not mem_ok(data.adapter_mem[k - 1][(a, b)], budget):
                continue
            par = par if budget.params is not None else 0
            add_lat, add_par, add_q = lat + data.block_us[k][b], par + bp[k][b], q + data.block_q[k][b]
            for la, pa, qa, ch in labels[a]:
                nl = la + add_lat
                if nl + rest[k][b] > budget.latency_us or pa + add_par > pmax:
                    continue
                new[b].append((nl, pa + add_par, qa + add_q, ch + (b,)))
        labels = [_k_best_pareto(ls, top) for ls in new]
    done = []
    for o, ls in enumerate(labels):
        for lat, par, q, ch in ls:
            lat, q = lat + data.head_us[o], q + data.end_q[o]
            par += data.head_params[o] if budget.params is not None else 0
            if lat <= budget.latency_us and par <= pmax:
                done.append((-q, lat, ch))
    done.sort()
    return [data.evaluate(ch) for _, _, ch in done[:top]]


def _k_best_pareto(labels: list[tuple], n: int) -> list[tuple]:
    """Drop labels that n or more kept labels dominate (no more latency, no more params, at least the
    quality): each dominating one extends to a distinct assembly at least as good, so a dropped
    label cannot be among the top n."""
    labels.sort(key=lambda t: (-t[2], t[0], t[1]))
    kept: list[tuple] = []
    for lab in labels:
        dominated = 0
        for other in kept:
            if other[0] <= lab[0] and other[1] <= lab[1]:
                dominated += 1
                if dominated >= n:
                    break
        if dominated < n:
            kept.append(lab)
    return kept


def brute_force(data: ProgramData, budget: Budget, top: int = 1) -> list[Evaluation]:
    """Exhaustive top `top` (for tests and benchmarks on enumerable instances)."""
    evs = [data.evaluate(c) for c in itertools.product(*[range(len(o)) for o in data.options])]
    ok = sorted((e for e in evs if budget.admits(e)), key=lambda e: (-e.quality, e.latency_us, e.choice))
    return ok[:top]


def solve(
    data: ProgramData, budget: Budget, top: int = 10, time_limit_s: float = 20.0, workers: int = 2
) -> SolveResult:
    """Top `top` distinct assemblies under the budget: the DP's list, certified by CP-SAT (module docstring)."""
    from ortools.sat.python import cp_model

    if budget.latency_us < 0:
        raise DeryError(f"latency budget must be > 0 ms, got {us_to_ms(budget.latency_us):g}", "assemble")
    if top < 1:
        raise DeryError(f"--top must be >= 1, got {top}", "assemble")
    t0 = time.perf_counter()
    dp = top_n_dp(data, budget, top)
    t_dp = time.perf_counter() - t0
    if not dp:
        f = fastest(data, budget)
        reason = f"no assembly meets {budget.describe()}"
        if f is not None:
            reason += f"; the fastest assembly is predicted at {f.latency_ms:.4f} ms"
        else:
            reason += "; no assembly fits the memory budget at any latency"
        return SolveResult(
            [],
            "INFEASIBLE",
            time.perf_counter() - t0,
            t_dp,
            infeasible_reason=reason,
            fastest_us=f.latency_us if f else None,
        )
    model = cp_model.CpModel()
    chain = add_chain(model, data, budget)
    quality = chain.quality
    # The N best, one CP-SAT optimum each: the i-th solve excludes the i-1 before it (no-good cuts)
    # and is bounded by the DP's i-th value and hinted with its assembly, so each proof closes at once.
    model.maximize(quality)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    solver.parameters.cp_model_probing_level = 0  # probing costs ~0.3 s a round here and is not needed with the bound
    statuses, t_first = [], 0.0
    for i, want in enumerate(dp):
        model.add(quality <= want.quality)  # valid: the DP is exact (earlier, looser bounds stay valid too)
        model.clear_hints()
        chain.hint(model, want.choice)
        status = solver.solve(model)
        statuses.append(solver.status_name(status))
        if status != cp_model.OPTIMAL:
            raise AssertionError(f"CP-SAT did not prove the DP's assembly #{i + 1} {want.choice} ({statuses[-1]})")
        got = chain.choice(solver, data)
        if data.evaluate(got).quality != want.quality:
            raise AssertionError(f"CP-SAT's assembly #{i + 1} {got} differs in quality from the DP's {want.choice}")
        if i == 0:
            t_first = time.perf_counter() - t0
        # no-good: this assembly may not come back
        model.add_bool_or([chain.x[k, o].Not() for k, o in enumerate(got)])
    name = statuses[0]
    solutions, extra = dp, {"dp_seconds": round(t_dp, 4), "cp_sat_solves": len(statuses)}
    return SolveResult(solutions, name, time.perf_counter() - t0, t_first, "cp-sat", extra=extra)
