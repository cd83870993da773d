"""The answer per budget, one typed row built from run.json in one place: the report's table and the
terminal's lines after `dery run` both read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.records import BudgetResult


@dataclass(frozen=True)
class Answer:
    """What ships at one budget, on which runtime and where, its latency against the budget as the run's
    final pass measured it, its test accuracy, and the best donor that fits beside it.

    `infeasible` is None when something ships; otherwise it says why nothing does (possibly "")."""

    budget_ms: float  # the budget promised: the raised one where the run raised a budget it chose itself
    percentile: int
    infeasible: str | None = None
    raised_from_ms: float | None = None  # the run's own choice, before it was raised
    ships: str = ""
    runtime: str = ""
    artifact: str | None = None
    measured_ms: float | None = None
    uncertainty: float = 0.0
    within_budget: bool | None = None
    undecided: bool = False
    machine_slower: float | None = None  # undecided because the machine ran this much slower than at export
    top1: float = 0.0
    donor: str | None = None
    donor_top1: float | None = None
    donor_target: str | None = None

    @classmethod
    def of(cls, r: BudgetResult, m: RunManifest, root: Path | None = None) -> Answer:
        """The answer for one budget's result `r` of the run `m`; the artifact path relative to `root` where
        it lies under it."""
        q = m.final_pass.percentile if m.final_pass else 50
        if r.plan is None:
            return cls(r.budget_ms, q, infeasible=r.infeasible or "")
        plan = r.plan
        n = plan.threads
        threads = f", {n} thread" + ("" if n == 1 else "s") if n else ""
        verdict = r.export.budget if r.export else None
        checked = verdict is not None and verdict.checked
        best = r.donors_within_budget[0] if r.donors_within_budget else None
        fit = (r.donor_fit or {}).get(best) if best else None
        return cls(
            r.promised_ms,
            q,
            raised_from_ms=r.raised.from_ms if r.raised else None,
            ships=f"{plan.describe()} ({r.pick_kind})",
            runtime=f"{plan.backend} {plan.precision}, batch {plan.batch}{threads}",
            artifact=_artifact(r, root),
            measured_ms=r.measured_ms,
            uncertainty=r.measured_uncertainty or 0.0,
            within_budget=verdict.within_budget if verdict is not None and checked else None,
            undecided=checked and verdict is not None and verdict.within_budget is None,
            machine_slower=verdict.machine_slower if verdict is not None else None,
            top1=r.top1,  # type: ignore[arg-type]  # a budget that ships has its test accuracy
            donor=best,
            donor_top1=donor_top1(r, m, best),
            donor_target=fit.target if fit else None,
        )

    @property
    def feasible(self) -> bool:
        return self.infeasible is None

    def budget_text(self) -> str:
        """The budget in words: `0.132`, or `0.132 (raised from 0.108)`."""
        raised = f" (raised from {self.raised_from_ms:g})" if self.raised_from_ms is not None else ""
        return f"{self.budget_ms:g}{raised}"

    @property
    def difference(self) -> float | None:
        """Points the shipped network is ahead of the best fitting donor; None when no donor fits."""
        return None if self.donor_top1 is None else self.top1 - self.donor_top1

    def measured_text(self) -> str:
        """The shipped artifact's latency, its standard error and the budget verdict, in words."""
        if self.measured_ms is None:
            return "-"
        at = "" if self.percentile == 50 else f" (p{self.percentile})"
        verdict = {True: ", within budget", False: ", OVER BUDGET", None: ""}[self.within_budget]
        if self.undecided:
            why = (
                "too noisy to judge"
                if self.machine_slower is None
                else f"the machine ran {100 * self.machine_slower:.0f}% slower than at export"
            )
            verdict = f", UNDECIDED ({why})"
        return f"{self.measured_ms:.4f} ms{at} ±{100 * self.uncertainty:.1f}%{verdict}"


def _artifact(r: BudgetResult, root: Path | None) -> str | None:
    """The shipped artifact's path, relative to `root` where it lies under it."""
    if not (r.export_dir and r.export and r.export.artifact):
        return None
    art = Path(r.export_dir) / r.export.artifact
    if root is not None:
        try:
            art = art.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    return str(art)


def answers(m: RunManifest, root: Path | None = None) -> list[Answer]:
    """One answer per budget of the run `m`, in the run's order."""
    return [Answer.of(r, m, root) for r in m.results]


def measured_text(a: Answer) -> str:
    return a.measured_text()


def donor_top1(r: BudgetResult, m: RunManifest, donor: str | None) -> float | None:
    """A fitting donor's test top-1 on the target it fits (its int8 accuracy where only int8 fits)."""
    if donor is None:
        return None
    fit = (r.donor_fit or {}).get(donor)
    return fit.top1 if fit else m.donors[donor].top1
