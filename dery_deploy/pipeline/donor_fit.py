"""Which donors fit a budget, on which target, with which test accuracy: what the answer compares the shipped
network with (`final_pass.apply_final_pass` reads the final pass's figures into it)."""

from __future__ import annotations

from pathlib import Path

from dery_deploy.network.plan import whole_donor_of
from dery_deploy.pipeline.context import Context
from dery_deploy.pipeline.records import BudgetResult, DonorFit, DonorResult
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.stages import int8_on
from dery_deploy.runtime.target import is_int8


def dropped_donors(r: Run, res: BudgetResult) -> set[tuple[str, str]]:
    """(donor, target) pairs the budget's own finalist pass measured over it and dropped, said where the final
    pass has them within it: the pick never had them, so the answer does not compare the pick with them."""
    out = set()
    for c in res.rejected_over_budget or []:
        name = whole_donor_of(c.plan)
        d = r.manifest.donors.get(name) if name else None
        if name is None or d is None or c.measured is None:
            continue
        out.add((name, c.target))
        final = d.latency_by_target.get(c.target)
        if final is not None and final.ms <= res.budget_ms:
            r.say(
                f"  note: {name} on {c.target} measured {c.measured.latency_ms:.4f} ms as a finalist, over "
                f"{res.budget_ms:g} ms, and {final.ms:.4f} ms in the final pass: the two passes disagree at this "
                "budget; the pick never had it, so it is not counted as a donor that fits"
            )
    return out


def fitting_donors(r: Run, ctx: Context, b: float, dropped: set[tuple[str, str]] | None = None) -> dict[str, DonorFit]:
    """The donors whose final-pass latency on some target is within `b`, each with its accuracy there; a
    target in `dropped` (the budget's finalist pass measured the donor over it there) does not count."""
    fitting: dict[str, DonorFit] = {}
    for n, d in r.manifest.donors.items():
        fits = [t for t, v in d.latency_by_target.items() if v.ms <= b and (n, t) not in (dropped or set())]
        if fits:
            fitting[n] = donor_accuracy(r, ctx, n, d, fits)
    return fitting


def donor_accuracy(r: Run, ctx: Context, name: str, d: DonorResult, fits: list[str]) -> DonorFit:
    """A donor's test accuracy on the best target of `fits`: fp32 as evaluated, else the int8 network's, measured."""
    fp32 = [t for t in fits if not is_int8(t)]
    if fp32 and d.top1 is not None:
        return DonorFit(min(fp32, key=lambda t: d.latency_by_target[t].ms), d.top1)
    best = None
    for t in fits:
        acc = int8_on(Path(d.run), ctx.task, t, ctx.model.profile.threads, "test").top1
        if best is None or acc > best.top1:
            best = DonorFit(t, acc)
    assert best is not None, "a donor fits on at least one target"
    return best
