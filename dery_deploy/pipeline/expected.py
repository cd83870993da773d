"""What the time estimate held out in advance, put back where the run does it after all.

The estimate (`estimate.py`) holds out the final training of donors the short recipe is expected to leave out
(`budgets.expected_dominated`) and the best mix's heal at budgets where selection is expected to rule every mix
out (`budgets.expected_unhealed`) or a smaller budget's healed mix is expected back
(`RunEstimate.expected_read_back`). Where the run does that work after all, its parts go back into the run's
line and their seconds into `RunEstimate.put_back_s`; the estimate recorded against the run stays as it was made.
"""

from __future__ import annotations

from dery_deploy.pipeline.records import Part
from dery_deploy.pipeline.runner import Run

MIX_PARTS = ("heal", "evaluate best mix", "export")  # what `estimate` holds out per budget, in this order


def put_back(r: Run, name: str) -> None:
    """A donor the estimate expected the short recipe to leave out but which it kept: its final training and
    evaluation, held out of the estimate, are put back into what the run's line counts, and recorded."""
    stages = (f"fine-tune donor {name} (final", f"evaluate donor {name}")
    est = r.manifest.estimate
    if est is None or r.eta is None:
        return
    counted = {p.stage for p in r.eta.todo}  # (a refit under --time-limit may have counted it already)
    _back(r, [p for p in est.held_out if p.stage in stages and p.stage not in counted])


def put_back_heal(r: Run, budget_ms: float) -> None:
    """The best mix at `budget_ms` is healed although the estimate expected selection to rule it out there, or a
    smaller budget's heal to be read back: its heal, evaluation and export, held out of the estimate, are put back
    into the run's line, and recorded."""
    est = r.manifest.estimate
    held = sorted(est.expected_unhealed + est.expected_read_back) if est is not None else []
    if est is None or r.eta is None or budget_ms not in held:
        return
    mixes = [p for p in est.held_out if p.stage in MIX_PARTS]
    at = held.index(budget_ms) * len(MIX_PARTS)
    _back(r, mixes[at : at + len(MIX_PARTS)])


def _back(r: Run, parts: list[Part]) -> None:
    est = r.manifest.estimate
    assert r.eta is not None and est is not None
    r.eta.todo = parts + r.eta.todo
    est.put_back_s = round(est.put_back_s + sum(p.seconds for p in parts), 1)
