"""The answer per budget, one typed row built from run.json in one place: the report's table and the
terminal's lines after `dery run` both read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dery_deploy.report.text import describe


@dataclass(frozen=True)
class Answer:
    """What ships at one budget, on which runtime and where, its latency against the budget as the run's
    final pass measured it, its test accuracy, and the best donor that fits beside it.

    `infeasible` is None when something ships; otherwise it says why nothing does (possibly "")."""

    budget_ms: float
    percentile: int
    infeasible: str | None = None
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
    def of(cls, r: dict, run: dict, root: Path | None = None) -> Answer:
        """The answer for one budget's result `r` of `run`; the artifact path relative to `root` where it
        lies under it."""
        q = (run.get("final_pass") or {}).get("percentile", 50)
        if "plan" not in r:
            return cls(r["budget_ms"], q, infeasible=str(r.get("infeasible", "")))
        plan = r["plan"]
        n = plan.get("threads")
        threads = f", {n} thread" + ("" if n == 1 else "s") if n else ""
        shipped = r.get("export") or {}
        budget = shipped.get("budget") or {}
        best = (r.get("donors_within_budget") or [None])[0]
        return cls(
            r["budget_ms"],
            q,
            ships=f"{describe(plan)} ({r.get('pick_kind')})",
            runtime=f"{plan.get('backend')} {plan.get('precision')}, batch {plan.get('batch', 1)}{threads}",
            artifact=_artifact(r, shipped, root),
            measured_ms=r.get("measured_ms"),
            uncertainty=r.get("measured_uncertainty") or 0.0,
            within_budget=budget.get("within_budget") if budget.get("checked") else None,
            undecided=bool(budget.get("checked")) and budget.get("within_budget") is None,
            machine_slower=budget.get("machine_slower"),
            top1=r["top1"],
            donor=best,
            donor_top1=donor_top1(r, run, best),
            donor_target=((r.get("donor_fit") or {}).get(best) or {}).get("target"),
        )

    @property
    def feasible(self) -> bool:
        return self.infeasible is None

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


def _artifact(r: dict, shipped: dict, root: Path | None) -> str | None:
    """The shipped artifact's path, relative to `root` where it lies under it."""
    if not (r.get("export_dir") and shipped.get("artifact")):
        return None
    art = Path(r["export_dir"]) / shipped["artifact"]
    if root is not None:
        try:
            art = art.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    return str(art)


def answers(run: dict, root: Path | None = None) -> list[Answer]:
    """One answer per budget of `run`, in the run's order."""
    return [Answer.of(r, run, root) for r in run["results"]]


def measured_text(a: Answer) -> str:
    return a.measured_text()


def donor_top1(r: dict, run: dict, donor: str | None) -> float | None:
    """A fitting donor's test top-1 on the target it fits (its int8 accuracy where only int8 fits)."""
    if donor is None:
        return None
    fit = (r.get("donor_fit") or {}).get(donor)
    return fit["top1"] if fit else run["donors"][donor]["top1"]
