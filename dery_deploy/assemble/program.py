"""The integer program (OR-Tools CP-SAT): one block per equivalence set under a latency budget.

Quality estimate maximised (decomposable, so the program stays linear):
  sum over stitches of CKA(upstream block's output boundary, downstream block's input boundary)
  + capacity_weight * sum over blocks of capacity (log parameter count, scaled to [0, 1] in its set)
Why: the stitch CKA says how much of what the downstream block expects the upstream block already
provides (1 for two blocks of one donor meeting natively), which is what least-squares adapters
can recover without training; capacity says how much the block can carry, which the budget then
trades against speed. It only has to rank candidates well enough for a top-N list: the final pick
is made by a training-free proxy on real data.

Latency (integer microseconds, scaled once in `to_us`): the latency model of
`profile.latency_model`, sum of items minus one per-call overhead per extra item, written as
(item - overhead) for every chosen item plus one overhead.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

from dery_deploy.errors import DeryError

SCALE = 1000  # quality units per 1.0 of CKA / capacity


def to_us(ms: float) -> int:
    return int(round(ms * 1000))


@dataclass
class ProgramData:
    """Everything the program needs, indexed [set][option]; adapters [set][a][b] for set -> set+1."""

    options: list[list[str]]  # option labels (donor names) per set
    block_ms: list[list[float]]
    block_params: list[list[int]]
    block_mem: list[list[float]]
    adapter_ms: list[dict[tuple[int, int], float]]  # boundary k: (a, b) -> ms; missing = native (0)
    adapter_params: list[dict[tuple[int, int], int]]
    adapter_mem: list[dict[tuple[int, int], float]]
    stitch_cka: list[dict[tuple[int, int], float]]  # boundary k: (a, b) -> CKA
    head_ms: list[float]  # per option of the last set
    head_params: list[int]
    overhead_ms: float = 0.0
    capacity_weight: float = 0.5

    @property
    def K(self) -> int:
        return len(self.options)

    def capacity(self) -> list[list[float]]:
        out = []
        for ps in self.block_params:
            logs = [math.log1p(p) for p in ps]
            lo, hi = min(logs), max(logs)
            out.append([(v - lo) / (hi - lo) if hi > lo else 1.0 for v in logs])
        return out

    def evaluate(self, choice: tuple[int, ...]) -> dict:
        """Latency / params / memory / quality of one assembly (choice[k] = option in set k)."""
        lat = self.overhead_ms
        params, mem, q = 0, 0.0, 0.0
        cap = self.capacity()
        items = 0
        for k, o in enumerate(choice):
            lat += self.block_ms[k][o] - self.overhead_ms
            params += self.block_params[k][o]
            mem = max(mem, self.block_mem[k][o])
            q += self.capacity_weight * cap[k][o]
            items += 1
        for k in range(self.K - 1):
            pair = (choice[k], choice[k + 1])
            q += self.stitch_cka[k].get(pair, 1.0)
            if pair in self.adapter_ms[k]:
                lat += self.adapter_ms[k][pair] - self.overhead_ms
                params += self.adapter_params[k][pair]
                mem = max(mem, self.adapter_mem[k][pair])
        lat += self.head_ms[choice[-1]] - self.overhead_ms
        params += self.head_params[choice[-1]]
        return {"latency_ms": lat, "params": params, "memory_mb": mem, "quality": q}


@dataclass
class Solution:
    choice: tuple[int, ...]
    latency_ms: float
    params: int
    memory_mb: float
    quality: float
    status: str


@dataclass
class SolveResult:
    solutions: list[Solution]
    status: str
    seconds: float
    seconds_first: float
    infeasible_reason: str = ""
    fastest_ms: float | None = None
    extra: dict = field(default_factory=dict)


def _quality_int(v: float) -> int:
    return int(round(v * SCALE))


def solve(data: ProgramData, latency_ms: float, memory_mb: float | None = None, params_max: int | None = None,
          top: int = 10, time_limit_s: float = 10.0, workers: int = 2) -> SolveResult:
    """Top-`top` distinct assemblies by the quality estimate under the budgets (no-good cuts)."""
    from ortools.sat.python import cp_model

    if not latency_ms > 0:
        raise DeryError(f"latency budget must be > 0 ms, got {latency_ms}", "assemble")
    if top < 1:
        raise DeryError(f"--top must be >= 1, got {top}", "assemble")
    K = data.K
    cap = data.capacity()
    o_us = to_us(data.overhead_ms)

    # Variables: x[k, o] = option o is the block of set k; y[k, a, b] = adapter between a (set k) and b (set k+1).
    model = cp_model.CpModel()
    x = {(k, o): model.new_bool_var(f"x_{k}_{o}") for k in range(K) for o in range(len(data.options[k]))}
    y = {(k, a, b): model.new_bool_var(f"y_{k}_{a}_{b}") for k in range(K - 1) for (a, b) in data.stitch_cka[k]}

    # Exactly one block per equivalence set.
    for k in range(K):
        model.add_exactly_one(x[k, o] for o in range(len(data.options[k])))

    # Predicted latency (integer us) within the budget.
    lat_terms = [(to_us(data.block_ms[k][o]) - o_us) * x[k, o] for (k, o) in x]
    lat_terms += [(to_us(data.adapter_ms[k][(a, b)]) - o_us) * v for (k, a, b), v in y.items() if (a, b) in data.adapter_ms[k]]
    lat_terms += [(to_us(data.head_ms[o]) - o_us) * x[K - 1, o] for o in range(len(data.options[K - 1]))]
    latency = sum(lat_terms) + o_us
    model.add(latency <= to_us(latency_ms))
    # Optional budgets: peak memory (the largest item) and total parameters.
    if memory_mb is not None:
        for (k, o), v in x.items():
            if data.block_mem[k][o] > memory_mb:
                model.add(v == 0)
        for (k, a, b), v in y.items():
            if data.adapter_mem[k].get((a, b), 0.0) > memory_mb:
                model.add(v == 0)
    if params_max is not None:
        p_terms = [data.block_params[k][o] * x[k, o] for (k, o) in x]
        p_terms += [data.adapter_params[k].get((a, b), 0) * v for (k, a, b), v in y.items()]
        p_terms += [data.head_params[o] * x[K - 1, o] for o in range(len(data.options[K - 1]))]
        model.add(sum(p_terms) <= params_max)

    # Objective: stitch compatibility + capacity (module docstring says why).
    obj = [_quality_int(data.capacity_weight * cap[k][o]) * x[k, o] for (k, o) in x]
    obj += [_quality_int(data.stitch_cka[k][(a, b)]) * v for (k, a, b), v in y.items()]
    # native stitches (same donor, consecutive sets) have CKA 1 and no adapter
    nat = {}
    for k in range(K - 1):
        for a in range(len(data.options[k])):
            for b in range(len(data.options[k + 1])):
                if (a, b) not in data.stitch_cka[k]:
                    v = nat[k, a, b] = model.new_bool_var(f"n_{k}_{a}_{b}")
                    obj.append(SCALE * v)
    # Linearised stitch, as flow conservation: each chosen block has exactly one outgoing and one
    # incoming stitch, so with one block per set a stitch variable is on exactly when both its ends
    # are chosen. This form (rather than y <= x_a, y <= x_b, y >= x_a + x_b - 1) makes the LP
    # relaxation a path through the sets, which is what lets CP-SAT prove optimality fast.
    edges = {**y, **nat}
    for k in range(K - 1):
        for a in range(len(data.options[k])):
            model.add(sum(v for (kk, aa, _), v in edges.items() if kk == k and aa == a) == x[k, a])
        for b in range(len(data.options[k + 1])):
            model.add(sum(v for (kk, _, bb), v in edges.items() if kk == k and bb == b) == x[k + 1, b])
    model.maximize(sum(obj))

    # Hint: the greedy fastest block of every set.
    for k in range(K):
        fastest = min(range(len(data.options[k])), key=lambda o: data.block_ms[k][o])
        for o in range(len(data.options[k])):
            model.add_hint(x[k, o], int(o == fastest))

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    solutions, first_status, t0 = [], None, time.perf_counter()
    t_first = 0.0
    for i in range(top):
        status = solver.solve(model)
        name = solver.status_name(status)
        if i == 0:
            first_status, t_first = name, time.perf_counter() - t0
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
        choice = tuple(next(o for o in range(len(data.options[k])) if solver.value(x[k, o])) for k in range(K))
        ev = data.evaluate(choice)
        solutions.append(Solution(choice, ev["latency_ms"], ev["params"], ev["memory_mb"], ev["quality"], name))
        # No-good cut: this exact assembly may not come back.
        model.add_bool_or([x[k, o].Not() for k, o in enumerate(choice)])
    seconds = time.perf_counter() - t0
    res = SolveResult(solutions, first_status, seconds, t_first)
    if not solutions:
        res.fastest_ms = fastest_latency(data)
        res.infeasible_reason = (f"no assembly meets {latency_ms:g} ms"
                                 + (f" / {memory_mb:g} MB" if memory_mb is not None else "")
                                 + (f" / {params_max / 1e6:g} M params" if params_max is not None else "")
                                 + f"; the fastest assembly is predicted at {res.fastest_ms:.4f} ms")
    return res


def fastest_latency(data: ProgramData) -> float:
    """Predicted latency of the fastest assembly (exact DP over sets)."""
    K = data.K
    best = [data.block_ms[0][o] - data.overhead_ms for o in range(len(data.options[0]))]
    for k in range(1, K):
        new = []
        for b in range(len(data.options[k])):
            new.append(min(best[a] + data.adapter_ms[k - 1].get((a, b), data.overhead_ms) - data.overhead_ms
                           for a in range(len(data.options[k - 1]))) + data.block_ms[k][b] - data.overhead_ms)
        best = new
    return min(best[o] + data.head_ms[o] - data.overhead_ms for o in range(len(best))) + data.overhead_ms


def brute_force(data: ProgramData, latency_ms: float, memory_mb: float | None = None, params_max: int | None = None):
    """Exhaustive optimum (for tests and benchmarks on enumerable instances), same integer scaling."""
    best, best_q = None, -1
    cap = data.capacity()
    for choice in itertools.product(*[range(len(o)) for o in data.options]):
        ev = data.evaluate(choice)
        lat_us = to_us(data.overhead_ms) + sum(to_us(data.block_ms[k][o]) - to_us(data.overhead_ms) for k, o in enumerate(choice))
        lat_us += sum(to_us(data.adapter_ms[k][(choice[k], choice[k + 1])]) - to_us(data.overhead_ms)
                      for k in range(data.K - 1) if (choice[k], choice[k + 1]) in data.adapter_ms[k])
        lat_us += to_us(data.head_ms[choice[-1]]) - to_us(data.overhead_ms)
        if lat_us > to_us(latency_ms):
            continue
        if memory_mb is not None and ev["memory_mb"] > memory_mb:
            continue
        if params_max is not None and ev["params"] > params_max:
            continue
        q = sum(_quality_int(data.capacity_weight * cap[k][o]) for k, o in enumerate(choice))
        q += sum(_quality_int(data.stitch_cka[k][(choice[k], choice[k + 1])]) if (choice[k], choice[k + 1]) in data.stitch_cka[k]
                 else SCALE for k in range(data.K - 1))
        if q > best_q:
            best, best_q = choice, q
    return best, best_q
