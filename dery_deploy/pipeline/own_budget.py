"""A budget the run chose itself, raised when its shipped file measures over it.

Without `--budgets`, `dery run` places its budgets in the gaps between the donors' profiled latencies
(`budgets.choose_budgets`): they are the tool's numbers, not the user's. Passes of one run were seen to
disagree by 36-48% for one 0.1 ms network on a 2-core VM whose speed flips between two states (the
shipped file measured 0.0845 ms as a finalist, then 0.1257 ms in the final pass and 0.0872 and 0.1149 ms
alone), so a budget placed from the profile can be found infeasible by the run's own last measurement.
Such a budget is then raised to RAISE_MARGIN over the slowest figure its verdict reads (its looks at the
package alone where it had them, else every figure the run took of its shipped file),
and the run says so: the answer keeps the network it picked, promised at a budget it meets.

The raise is refused (the verdict stands, and the run exits 2 as for a user's budget) when a donor more
accurate than the pick fits the raised budget (the pick would no longer be the best that fits), or when
the raised budget reaches the next larger budget of the run (two budgets would promise the same).
A budget the user gave (`--budgets`) is never raised.
"""

from __future__ import annotations

from collections.abc import Callable

from dery_deploy.pipeline.budgets import round_up
from dery_deploy.pipeline.records import BudgetRaise, BudgetResult, DonorFit
from dery_deploy.pipeline.runner import Run

RAISE_MARGIN = 0.05


def proposed_raise(res: BudgetResult, budgets: list[float]) -> BudgetRaise | str | None:
    """The raise of `res`'s budget its figures call for, the reason none is allowed (a string), or None
    when its shipped file is not over its budget."""
    v = res.export.budget if res.export else None
    if v is None or not v.over or not res.measured_history_ms:
        return None
    read = res.verdict_figures
    slowest = max(read)
    new = round_up(slowest * (1 + RAISE_MARGIN))
    figures = ", ".join(f"{ms:.4f}" for ms in read)
    nxt = [b for b in budgets if b > res.budget_ms]
    if nxt and new >= min(nxt):
        return f"raising it to {new:g} ms would reach the run's next budget, {min(nxt):g} ms"
    why = (
        f"budget {res.budget_ms:g} ms was the run's own choice (no --budgets), placed from the profile; its "
        f"shipped file measured {figures} ms {'alone' if res.measured_looks else 'in the final pass and alone'}, "
        f"so it is promised at {new:g} ms, "
        f"{100 * RAISE_MARGIN:.0f}% over the slowest figure"
    )
    return BudgetRaise(res.budget_ms, new, slowest, why)


def raise_own_budget(r: Run, res: BudgetResult, fitting: Callable[[float], dict[str, DonorFit]]) -> bool:
    """Raise `res`'s self-chosen budget where its shipped file measured over it (module docstring);
    `fitting(ms)` gives the donors that fit `ms` with their accuracy. True when it was raised (the
    caller judges the file again against the raised budget)."""
    raise_ = proposed_raise(res, r.manifest.budgets)
    if raise_ is None:
        return False
    if isinstance(raise_, BudgetRaise):
        better = {n: f for n, f in fitting(raise_.to_ms).items() if res.top1 is not None and f.top1 > res.top1}
        if not better:
            res.raised = raise_
            r.say(f"  note: {raise_.why}")
            return True
        n = max(better, key=lambda k: better[k].top1)
        raise_ = f"donor {n} ({better[n].top1:.2f}%) fits {raise_.to_ms:g} ms and beats the pick"
    r.say(f"  note: budget {res.budget_ms:g} ms, the run's own choice, was not raised: {raise_}")
    return False
