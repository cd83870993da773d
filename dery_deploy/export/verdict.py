"""The budget verdict: the shipped artifact's measured latency against the plan's budget.

The budget is a promise about what ships: where this machine is the plan's device, the artifact is
measured at the plan's batch, precision and thread count, at the per-call percentile the budget
promises (at least 1024 calls for p90 and p99, as MLPerf's single-stream scenario asks), and
compared with the budget itself; the only allowance is the measurement's own uncertainty (one
standard error over its windows), printed beside the verdict. The rule itself (`within_budget`) is
`dery bench`'s too, so it lives in `deploy.bench`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dery_deploy.deploy.bench import MAX_ALLOWANCE, within_budget
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.devices import get_device, this_machine
from dery_deploy.runtime.harness import Measurement


@dataclass
class BudgetVerdict:
    checked: bool
    reason: str = ""
    budget_ms: float | None = None
    predicted_ms: float | None = None
    measured_ms: float | None = None
    noise: float | None = None  # relative standard error of the measurement: the only allowance
    limit_ms: float | None = None
    within_budget: bool | None = None
    plan_device: str | None = None
    plan_backend: str | None = None
    plan_precision: str | None = None
    plan_batch: int | None = None
    percentile: int = 50  # of single calls, the budget's promise
    plan_threads: int | None = None
    measured_in: str = ""  # where the measurement was taken, when not by the export itself
    # how much slower the machine ran (its reference workload) than when the file was exported, where that
    # alone explains a figure over the budget: the verdict is then undecided, not over
    machine_slower: float | None = None
    at_export_speed_ms: float | None = None  # the measured figure divided by that slowdown

    @property
    def status(self) -> str:
        """ "within", "over", "undecided" (the measurement was too noisy to judge) or "not checked"."""
        if not self.checked:
            return "not checked"
        return {True: "within", False: "over", None: "undecided"}[self.within_budget]

    @property
    def over(self) -> bool:
        return self.status == "over"

    def word(self) -> str:
        """The verdict in the words the terminal and the report print."""
        return {"within": "within budget", "over": "OVER BUDGET", "undecided": "UNDECIDED"}.get(
            self.status, "not checked"
        )

    def line(self) -> str:
        if not self.checked:
            return f"budget not checked: {self.reason}"
        assert self.budget_ms is not None and self.measured_ms is not None and self.noise is not None
        at = "" if self.percentile == 50 else f" at p{self.percentile}"
        predicted = "" if self.predicted_ms is None else f"predicted {self.predicted_ms:.4f} ms, "
        head = f"budget {self.budget_ms:g} ms{at}: {predicted}measured {self.measured_ms:.4f} ms{at} over all calls"
        if self.status == "undecided" and self.machine_slower is not None:
            return (
                f"{head}, but the machine ran {100 * self.machine_slower:.0f}% slower than when the file was "
                f"exported (its reference workload), and at that speed the file costs {self.at_export_speed_ms:.4f} "
                "ms, within budget -> UNDECIDED: measure again with nothing else running (dery bench)"
            )
        if self.status == "undecided":
            return (
                f"{head} (±{100 * self.noise:.1f}%, its standard error, is above the {100 * MAX_ALLOWANCE:g}% a "
                "verdict allows) -> UNDECIDED: measure again with nothing else running (dery bench)"
            )
        over = 100 * (self.measured_ms / self.budget_ms - 1)
        verdict = "within budget" if self.within_budget else f"OVER BUDGET by {over:.1f}%"
        assert self.limit_ms is not None
        return (
            f"{head} (±{100 * self.noise:.1f}%, its standard error, the only allowance: limit "
            f"{self.limit_ms:.4f} ms) -> {verdict}"
        )


def budget_check(
    plan: Plan | None,
    measured: Measurement,
    artifact_device: str,
    precision: str,
    batch: int,
    threads: int | None,
    budget_ms: float | None = None,
) -> BudgetVerdict:
    """The shipped artifact's measured latency against the plan's budget, or against `budget_ms` where the
    run raised a budget it had chosen itself (`pipeline/own_budget.py`) (see module docstring)."""
    if not plan or not plan.budget or not plan.budget.latency_ms:
        return BudgetVerdict(False, "no latency budget (a donor run, or a plan without a budget)")
    b = plan.budget.latency_ms if budget_ms is None else budget_ms
    q = int(plan.budget.percentile or 50)
    base: dict[str, Any] = dict(
        budget_ms=b,
        predicted_ms=plan.predicted.latency_ms if plan.predicted else None,
        plan_device=plan.device,
        plan_backend=plan.backend,
        plan_precision=plan.precision,
        plan_batch=plan.batch,
        percentile=q,
        plan_threads=plan.threads,
    )
    try:
        spec = get_device(plan.device or "")
    except DeryError:
        return BudgetVerdict(False, f"unknown plan device {plan.device!r}", **base)
    if spec.kind != artifact_device:
        return BudgetVerdict(
            False, f"the artifact ran on {artifact_device}, the plan's device {spec.id} is {spec.kind}", **base
        )
    if spec.id not in {s.id for s in this_machine()}:
        return BudgetVerdict(False, f"this machine is not the plan's device {spec.id!r}", **base)
    if (precision, batch) != (plan.precision, plan.batch):
        return BudgetVerdict(
            False,
            f"the artifact is {precision} batch {batch}, the budget is for {plan.precision} batch {plan.batch}",
            **base,
        )
    if plan.threads and threads != plan.threads:
        return BudgetVerdict(
            False, f"the artifact ran with {threads} threads, the budget is for {plan.threads}", **base
        )
    # the statistic a user measures with the file alone: the per-call percentile over all calls
    noise = measured.promise_uncertainty_at(q)
    value = measured.promise_at(q)
    limit = b * (1 + noise)
    within = within_budget(value, b, noise)
    return BudgetVerdict(
        True,
        "" if within is not None else "the measurement's standard error is above the allowance: undecided",
        measured_ms=round(value, 5),
        noise=round(noise, 4),
        limit_ms=limit,
        within_budget=within,
        **base,
    )


def relate_to_machine(
    verdict: BudgetVerdict, reference_now: float | None, reference_then: float | None
) -> BudgetVerdict:
    """`verdict` unless it is over only because the machine itself ran slower than when the file was exported:
    both measurements time the same reference workload with the file's runtime and threads, and where the
    measured figure divided by the reference's slowdown is within budget, the network did not change, the
    machine did, and the verdict is undecided (said so), never over and never within."""
    if not verdict.over or not reference_now or not reference_then or reference_now <= reference_then:
        return verdict
    assert verdict.measured_ms is not None and verdict.budget_ms is not None and verdict.noise is not None
    slower = reference_now / reference_then - 1
    at_export = verdict.measured_ms / (1 + slower)
    if not within_budget(at_export, verdict.budget_ms, verdict.noise):
        return verdict
    return replace(
        verdict,
        within_budget=None,
        reason=f"the machine ran {100 * slower:.0f}% slower than at export (reference {reference_then:.4f} -> "
        f"{reference_now:.4f} ms)",
        machine_slower=round(slower, 4),
        at_export_speed_ms=round(at_export, 5),
    )
