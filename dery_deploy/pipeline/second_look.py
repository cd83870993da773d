"""The final pass's second look at a shipped file, and the keys its measurements are filed under.

A shipped file the final pass finds over its budget, undecided, or far from the measurement that admitted
it is measured again, alone with the machine's reference, REMEASURES times, each lasting REMEASURE_SECONDS;
its verdict reads the slowest of its figures. The final pass files every measurement under `compared_key`.
"""

from __future__ import annotations

from dery_deploy.deploy.bench import within_budget
from dery_deploy.pipeline.records import BudgetResult, FinalPassFile
from dery_deploy.pipeline.runner import Run
from dery_deploy.runtime.harness import Measurement, PassSummary


def compared_key(what: str, target: str) -> str:
    """The final pass's key of a network on a target: `<what>|<backend>/<precision>`, what being
    `donor:<name>`, `mix:<budget>` or `ship:<budget>` (budgets as `f"{ms:g}"`)."""
    return f"{what}|{target}"


def by_target(measurements: dict[str, Measurement], what: str) -> dict[str, Measurement]:
    """target -> the measurement of `what` (as `compared_key` spells it) on that target."""
    split = (k.split("|", 1) for k in measurements)
    return {target: measurements[f"{w}|{target}"] for w, target in split if w == what}


# how far the measurement that admitted a finalist may differ from the final pass's before the run says so
ADMITTED_DISAGREEMENT = 0.10


def admitted_ms(res: BudgetResult, target: str) -> float | None:
    """The shipped network's measurement as a finalist, which admitted it under the budget (None for a pick
    that was not a measured finalist)."""
    pick = res.pick_triple
    if pick is None:
        return None
    rows = [f for f in res.finalists or [] if (f.plan, f.target) == (pick.network, target)]
    return rows[0].measured.latency_ms if rows and rows[0].measured else None


def ship_suspects(r: Run, measured: dict[str, Measurement]) -> list[str]:
    """The shipped files (final-pass keys) whose `measured` figure is not within budget, or disagrees with the
    measurement that admitted them by more than ADMITTED_DISAGREEMENT: a machine whose speed moved, or a
    neighbour that loaded it for a while, is told apart from the network by measuring again."""
    q, out = r.opts.percentile, []
    for res in r.manifest.results:
        if not res.feasible:
            continue
        b = res.budget_ms
        for target, m in by_target(measured, f"ship:{b:g}").items():
            value, admitted = m.promise_at(q), admitted_ms(res, target)
            moved = admitted is not None and admitted > 0 and abs(value / admitted - 1) > ADMITTED_DISAGREEMENT
            if moved or within_budget(value, b, m.promise_uncertainty_at(q)) is not True:
                out.append(compared_key(f"ship:{b:g}", target))
    return out


def verdict_measurement(fp: FinalPassFile, key: str, q: int) -> tuple[Measurement, PassSummary, list[float]]:
    """The measurement a network's verdict reads, the summary of the pass it came from, and its figure at
    the percentile in every pass that measured it, in order. Measured once, that one; measured again, the
    slowest pass's: the promise is a figure the file met in every pass. The median of three let two
    passes in one fast spell of the host carry the verdict (0.1167 ms promised, 0.144-0.168 ms measured
    alone afterwards); a pass slowed by a neighbour's load is flagged by the pass itself (`load_line`), and
    one slowed by the machine is told apart by its reference workload (`relate_to_machine`)."""
    mine = [(measurements[key], summary) for summary, measurements in fp.passes() if key in measurements]
    history = [round(m.promise_at(q), 5) for m, _ in mine]
    m, summary = max(mine, key=lambda ms: ms[0].promise_at(q))
    return m, summary, history


def admitted_disagreement(r: Run, res: BudgetResult, target: str, final_ms: float, quiet: bool = False) -> float | None:
    """The relative difference between the shipped network's measurement as a finalist (which admitted it
    under the budget) and the final pass's, said on the terminal when above `ADMITTED_DISAGREEMENT`: the
    two were taken minutes apart in other passes, and a machine whose speed moved between them makes
    the admission and the verdict disagree (seen: 35-60% on one host)."""
    admitted = admitted_ms(res, target)
    if not admitted:
        return None
    rel = round(final_ms / admitted - 1, 4)
    if abs(rel) > ADMITTED_DISAGREEMENT and not quiet:
        r.say(
            f"  note: budget {res.budget_ms:g} ms: the shipped network measured {admitted:.4f} ms as a finalist and "
            f"{final_ms:.4f} ms in the final pass ({100 * rel:+.0f}%): the machine's speed moved between the two "
            "passes (or other processes loaded it); the file was measured again before its verdict"
        )
    return rel
