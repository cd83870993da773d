"""One chain (one block per set, one stitch between consecutive sets, the head after the last) as CP-SAT
variables and constraints, shared by the single-budget program (`program.solve`) and the family program
(`family.solve_family`), which puts one chain per budget into one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dery_deploy.assemble.program import Budget, ProgramData, mem_ok

if TYPE_CHECKING:
    from ortools.sat.python.cp_model import IntVar, LinearExpr


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
