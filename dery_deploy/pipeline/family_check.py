"""A family's paths measured before any training (issue 28): the family program plans each path from the
latency model's prediction, and a path chosen that way once measured 6.3% over its budget in the family's own
pass, after all its training. Latency does not depend on weight values, so before training every chosen
path's untrained network (`build_net`) is exported as the family ships it (ONNX fp32, batch 1 static) and
all paths are timed in one interleaved pass in the measurement worker (`runtime.worker`, the machinery of
the run's final pass), with `TimingOptions.for_budget` at the run's percentile and thread count. Each path is
judged by the statistic a shipped file is judged by: the per-call percentile over all calls
(`Measurement.promise_at`), allowed its standard error (`deploy.bench.within_budget`).

The replace rule (`lowered`): a path measured over its budget has that budget's planned latency lowered by
its measured excess (planned x budget / measured), and at least to below that path's own prediction (so the
program cannot choose it again), and the family program is solved again; every path is then
measured again in one pass. At most MAX_RESOLVES re-solves; a budget still over after them, or whose lowered
budget nothing meets, falls back to the plan the run ships separately at that budget (said on the terminal),
and the final paths are measured once more so that what the record holds is what is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.assemble.family import Family, solve_family
from dery_deploy.assemble.program import Budget
from dery_deploy.deploy.bench import within_budget
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan, build_net
from dery_deploy.profile.latency_model import budget_us
from dery_deploy.runtime.harness import Measurement, PassSummary, TimingOptions
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.worker import FileItem, measure_files
from dery_deploy.schema import load_dataclass

MAX_RESOLVES = 2  # re-solves of the family program after the first pass; a third over budget falls back


@dataclass(frozen=True)
class PathCheck:
    """One path's figure in a pass before training: the promise statistic and its standard error (ms), judged
    against the path's budget (None: too noisy to decide, kept)."""

    budget_ms: float
    latency_ms: float
    se_ms: float
    within: bool | None

    @classmethod
    def of(cls, m: Measurement, budget_ms: float, percentile: int) -> PathCheck:
        value, se = m.promise_at(percentile), m.promise_uncertainty_at(percentile)
        return cls(budget_ms, round(value, 5), round(value * se, 6), within_budget(value, budget_ms, se))

    @property
    def excess(self) -> float:
        """How far over its budget the path measured, as a fraction of the budget."""
        return self.latency_ms / self.budget_ms - 1


def lowered(planned: Budget, check: PathCheck, predicted_ms: float) -> Budget:
    """The replace rule: the budget the program plans this path to, lowered by the path's measured excess and
    at least below the path's own prediction, so that the program cannot choose it again (a path predicted
    well inside its planned budget would otherwise survive a few percent off it)."""
    scaled = int(planned.latency_us * check.budget_ms / check.latency_ms)
    return Budget(min(scaled, budget_us(predicted_ms) - 1), planned.memory_mb, planned.params)


def measure_plans(
    plans: list[Plan], zoo, dissections: dict, threads: int, percentile: int
) -> tuple[list[Measurement], PassSummary]:
    """Every plan's untrained network exported as the family ships it, timed in one interleaved pass in the
    measurement worker on ONNX Runtime with `threads`."""
    x = torch.randn(1, *zoo.input_tensor_spec.shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="dery-family-check-") as tmp:
        items = []
        for i, plan in enumerate(plans):
            net = build_net(copy.deepcopy(plan), zoo, dissections, copy_blocks=False)  # the plan's records stay
            path = Path(tmp) / f"path-{i}.onnx"
            path.write_bytes(onnx_from_module(net.eval(), x, dynamic_batch=False))
            items.append(FileItem(f"path-{i}", str(path), "onnxruntime", threads, list(x.shape)))
        res = measure_files(items, TimingOptions.for_budget(percentile))
    return [res.measurements[f"path-{i}"] for i in range(len(plans))], res.summary


@dataclass
class CheckedFamily:
    """What the check leaves to train: the family (as last solved), each budget's plan, its figure before
    training, the pass summaries, and the lines said on the terminal."""

    family: Family
    plans: list[Plan]
    checks: list[PathCheck]
    passes: list[PassSummary]
    fallbacks: list[int]  # budget indices that fell back to the run's separate plan
    lines: list[str]

    def save(self, path: Path, key: str) -> None:
        """Written with the key of what it was checked for, so that a later run in the same folder (another
        `--family-training`) trains the same paths instead of measuring them again on a machine that drifts."""
        atomic_write_json(
            path,
            {
                "key": key,
                "family": dataclasses.asdict(self.family),
                "plans": [p.to_dict() for p in self.plans],
                "checks": [dataclasses.asdict(c) for c in self.checks],
                "passes": [p.to_dict() for p in self.passes],
                "fallbacks": self.fallbacks,
                "lines": self.lines,
            },
        )

    @classmethod
    def reuse(cls, path: Path, key: str) -> CheckedFamily | None:
        """The check saved at `path` for `key`, or None (none saved, or saved for other inputs)."""
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        if d.get("key") != key:
            return None
        return cls(
            load_dataclass(Family, d["family"]),
            [Plan.from_dict(p) for p in d["plans"]],
            [load_dataclass(PathCheck, c) for c in d["checks"]],
            [load_dataclass(PassSummary, p) for p in d["passes"]],
            d["fallbacks"],
            d["lines"],
        )


def check_paths(
    family: Family,
    planned: list[Budget],
    budgets_ms: list[float],
    plan_of: Callable[[tuple[int, ...], float], Plan],
    separate: list[Plan | None],
    measure: Callable[[list[Plan]], tuple[list[Measurement], PassSummary]],
    solve: Callable[[list[Budget]], Family],
    percentile: int,
) -> CheckedFamily:
    """The module docstring's rule over `family`, whose paths are planned to `planned` for `budgets_ms`.

    Args:
        plan_of: a path's plan on the family's target from its choice and budget.
        separate: the plan the run ships separately at each budget (a fallback), or None.
        measure: one interleaved pass over the plans (`measure_plans`).
        solve: the family program over planned budgets (`solve_family` on the run's data).
    """
    plans = [plan_of(p.choice, b) for p, b in zip(family.paths, budgets_ms)]
    passes: list[PassSummary] = []
    lines: list[str] = []
    fallbacks: list[int] = []
    for round_ in range(MAX_RESOLVES + 1):
        measured, summary = measure(plans)
        passes.append(summary)
        checks = [PathCheck.of(m, b, percentile) for m, b in zip(measured, budgets_ms)]
        over = [i for i, c in enumerate(checks) if c.within is False]
        if not over:
            return CheckedFamily(family, plans, checks, passes, fallbacks, lines)
        said = ", ".join(f"{budgets_ms[i]:g} ms by {100 * checks[i].excess:.1f}%" for i in over)
        if round_ == MAX_RESOLVES:
            lines.append(f"still over after {MAX_RESOLVES} re-solves: {said}")
            break
        new = [lowered(b, checks[i], family.paths[i].latency_ms) if i in over else b for i, b in enumerate(planned)]
        try:
            family = solve(new)
        except DeryError as e:
            lines.append(f"measured over ({said}); lowered, the program finds no family: {e}")
            break
        lines.append(f"measured over ({said}): planned budget lowered by the excess, family program solved again")
        planned = new
        plans = [plan_of(p.choice, b) for p, b in zip(family.paths, budgets_ms)]
    for i in over:
        fallback = separate[i]
        if fallback is None:
            lines.append(f"{budgets_ms[i]:g} ms: no separate plan to fall back to; the path stays as measured")
            continue
        plans[i] = _as_family_path(fallback, plans[i])
        fallbacks.append(i)
        lines.append(f"{budgets_ms[i]:g} ms: falls back to the run's separate plan {plans[i].describe()}")
    measured, summary = measure(plans)
    passes.append(summary)
    checks = [PathCheck.of(m, b, percentile) for m, b in zip(measured, budgets_ms)]
    return CheckedFamily(family, plans, checks, passes, fallbacks, lines)


def _as_family_path(separate: Plan, like: Plan) -> Plan:
    """The separate plan's blocks as a family path: a new head (a family path always has one), on the
    family's target and with the budget of the path it replaces."""
    plan = Plan.from_dict(separate.to_dict())
    plan.head_kind, plan.adapters, plan.head = "new", [], None
    plan.budget, plan.device, plan.backend, plan.precision = like.budget, like.device, like.backend, like.precision
    plan.batch, plan.threads = like.batch, like.threads
    return plan


def solver(data, **kw) -> Callable[[list[Budget]], Family]:
    """The family program on the run's data, as `check_paths` re-solves it."""
    return lambda budgets: solve_family(data, budgets, **kw)
