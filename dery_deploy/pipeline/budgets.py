"""The budgets a run chooses itself, and which donors each needs trained."""

from __future__ import annotations

import math
from collections.abc import Callable

from dery_deploy.assemble.candidates import donor_near
from dery_deploy.assemble.pool import planning_margin
from dery_deploy.assemble.program import fastest
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.data.task import Task
from dery_deploy.profile.latency_model import LatencyModel


def _round_sig(x: float, sig: int = 3) -> float:
    return float(f"{x:.{sig}g}")


# A budget the run chooses lies at least this far from every donor's profiled latency, on either side. The
# finalists' pass and the final pass measure a donor a few percent away from its profile and from each other
# (a new user's quick run: resnet10t_tops profiled 0.0883 ms, 0.0860 as a finalist, 0.0853 in the final pass,
# against its own budget of 0.0856 ms; on the fashion zoo mnv3_rot profiled 0.0796 ms and measured 0.0851 ms as a
# finalist), so a budget in a narrower gap makes whether a donor fits a coin toss: the pick dropped the more
# accurate donor while the final pass called it fitting.
CLEARANCE = 0.05


def _gaps(named: list[tuple[float, str]]) -> tuple[list[tuple[float, float, int]], list[str]]:
    """(ratio, midpoint, index) of each gap between neighbouring donors whose midpoint clears both by
    `CLEARANCE`, and a note on the gap between the two fastest where it does not."""
    gaps, notes = [], []
    for i, ((a, an), (b, bn)) in enumerate(zip(named, named[1:])):
        mid = _round_sig((a + b) / 2)
        if mid >= a * (1 + CLEARANCE) and b >= mid * (1 + CLEARANCE):
            gaps.append((b / a, mid, i))
        elif i == 0:
            notes.append(
                f"no budget between {an} ({a:.4f} ms) and {bn} ({b:.4f} ms): any budget there lies within "
                f"{100 * CLEARANCE:.0f}% of one of them, where a measurement could put it on either side"
            )
    return gaps, notes


def choose_budgets(
    donor_ms: dict[str, float], quick: bool, floor_ms: float = 0.0, least: int = 1
) -> tuple[list[float], list[str]]:
    """Budgets in the gaps between the donors' latencies, where a user has a real choice: below every
    donor (only reassembled networks fit), in the first gap from the fastest donor up, and in the widest
    gap above it; with --quick, only the first gap. A gap counts where its midpoint lies `CLEARANCE` from
    both donors; where none does, one budget lies above every donor. None is below `floor_ms` (the fastest
    assembly plus the planning margin): a default budget is feasible by construction. Where fewer than
    `least` are left (a family needs two), the floor itself is one (the tests' tiny zoo: its mixes ran 1.7x
    their parts, so the fastest assembly's floor lies above both gaps below its second donor).

    Returns:
        the budgets, and notes on what was moved or left out and why.
    """
    named = sorted((ms, n) for n, ms in donor_ms.items())
    lat = [ms for ms, _ in named]
    gaps, notes = _gaps(named)
    if len(lat) < 2:
        wanted = [_round_sig(0.85 * lat[0]), _round_sig(1.5 * lat[0])]
    else:
        above = _round_sig(1.5 * lat[-1])  # every donor fits: two donors, or no gap between them is clear
        first = gaps[0][1] if gaps else above
        # from three donors on, budgets stay below the slowest (the thread screen relies on it)
        wide = max(gaps[1:])[1] if len(gaps) > 1 else (above if len(lat) < 3 else first)
        wanted = [first] if quick else [_round_sig(0.85 * lat[0]), first, wide]
    floor = round_up(floor_ms)
    out = sorted({b for b in wanted if b >= floor})
    below = [b for b in wanted if b < floor]
    raised = bool(below) and len(out) < least  # the floor itself, the smallest budget a mix can meet
    for b in sorted(set(below)):
        said = f"raised to {floor:g} ms" if raised and b == max(below) else "dropped"
        notes.append(f"budget {b:g} ms is below the fastest assembly plus the planning margin ({floor:g} ms): {said}")
    out += [floor] if raised and floor not in out else []
    return sorted(set(out)), notes


def round_up(x: float, sig: int = 3) -> float:
    """x rounded up to `sig` significant digits (a budget floor must not round below what it bounds)."""
    if x <= 0:
        return 0.0
    r = _round_sig(x, sig)
    step = 10 ** (math.floor(math.log10(abs(x))) - sig + 1)
    return r if r >= x else float(f"{r + step:.{sig}g}")


def feasible_floor(zoo, part, dis, model: LatencyModel, task: Task, scores: Scores) -> float:
    """The smallest budget the program can meet: the fastest assembly's predicted latency plus the
    planning margin the assembler will apply."""
    f = fastest(program_data(zoo, part, dis, model, task.num_classes, scores))
    return f.latency_ms * (1 + planning_margin(model)) if f else 0.0


def final_donors(donor_ms: dict[str, float], budgets: list[float]) -> list[str]:
    """Donors trained with the final recipe: every one that may be a candidate at some budget (profiled
    up to `DONOR_NEAR` over it), since any candidate donor can be the pick that ships."""
    return [n for n, ms in donor_ms.items() if donor_near(ms, max(budgets))]


# A donor is left out of the final recipe and of the candidates when a donor at least `DOMINATED_FASTER` faster
# validated `DOMINATED_POINTS` better after the short (`ce`) recipe: it cannot be the best donor that fits
# any budget. The final recipe closes part of a short-recipe gap, never all of it. Seen on the fashion zoo at
# 100 labels per class (validation, short -> final, against resnet10t_tops): mnv3_rot 29.0 -> 17.5 points
# behind, tinynet_rot 30.5 -> 20.0, vit_tops 16.5 -> 10.5 (seed 0) and 18.5 -> 12.0 (seed 1), convnext_lower
# 12.0 -> 8.0, mobilevit_lower 9.0 -> 7.5: at least 60% of the gap stayed, and the largest catch-up was 11.5
# points. A 15-point gap leaves about 9 after the final recipe, 3.5 over the largest catch-up seen; vit_tops,
# left out there, costs 90-100 s of final training on the Xeon host that could not change any answer.
DOMINATED_POINTS = 15.0
# What the time estimate expects of the transferability probe, whose gaps run smaller than the short recipe's:
# resnet10t_tops over vit_tops 12.0 / 10.9 by probe (seeds 0 / 1) against 16.5 / 18.5 after the short recipe;
# over convnext_lower 4.6 / 5.8 against 12.0 / 8.5; over mobilevit_lower 5.6 / 7.6 against 9.0 / 9.5.
PROBE_DOMINATED_POINTS = 10.0
DOMINATED_FASTER = 0.10


def dominated_donors(
    donor_ms: dict[str, float], ce_accuracy: dict[str, float | None], points: float = DOMINATED_POINTS
) -> dict[str, str]:
    """The donors not worth the final recipe: for each, why (the faster donor that validated at least `points`
    better after the short recipe). Donors the short recipe did not train are never left out."""
    out = {}
    scored = {n: a for n, a in ce_accuracy.items() if a is not None and n in donor_ms}
    for d, acc in scored.items():
        better = [
            e
            for e, acc_e in scored.items()
            if donor_ms[e] <= donor_ms[d] * (1 - DOMINATED_FASTER) and acc_e - acc >= points
        ]
        if better:
            e = max(better, key=lambda n: (scored[n], n))
            out[d] = (
                f"{e} is faster ({donor_ms[e]:.3f} against {donor_ms[d]:.3f} ms) and validated "
                f"{scored[e] - acc:.1f} points better after the short recipe ({scored[e]:.1f}% against {acc:.1f}%)"
            )
    return out


def expected_dominated(donor_ms: dict[str, float], probe: dict[str, float], pool: list[str]) -> list[str]:
    """The donors of `pool` the short recipe is expected to leave out (`dominated_donors`), judged before it
    trains from each donor's transferability probe (ridge leave-one-out accuracy of its last features,
    `assemble.quality`) at `PROBE_DOMINATED_POINTS`: only the run's time estimate reads this. The probe's gaps
    track the short recipe's on the fashion zoo, smaller where they are small: resnet10t_tops over mnv3_rot 29.5
    points by probe and 29.0 after the short recipe, over tinynet_rot 24.7 and 30.5 (seed 0, 100 labels a
    class); the others beside `PROBE_DOMINATED_POINTS`."""
    scored = {n: probe.get(n) for n in pool}
    return sorted(dominated_donors({n: donor_ms[n] for n in pool}, scored, PROBE_DOMINATED_POINTS))


def expected_unhealed(donor_ms: dict[str, float], probe: dict[str, float], budgets: list[float]) -> list[float]:
    """The budgets at which selection is expected to rule every mix out, so that the best mix is not healed
    (`pick.mix_ruled_out`): those that the donor the transferability probe rates best fits, by its predicted
    latency. Only the run's time estimate reads this, and a heal the run does after all is put back into its
    line (`expected.put_back_heal`). On the fashion zoo the probe rates resnet10t_tops best: every budget it
    fitted skipped the heal on the Xeon host (two default runs, 2 of 2 budgets each, and every quick run); on
    the EPYC's quality bench a mix won at 0.157 ms, which it fitted, on 1 seed of 3, and where only mnv3_rot
    (29.5 points lower by probe) fitted, 0.137 ms, the mix won on both seeds."""
    scored = {n: a for n, a in probe.items() if n in donor_ms}
    if not scored:
        return []
    best = max(scored, key=lambda n: (scored[n], -donor_ms[n]))
    return [b for b in budgets if donor_ms[best] <= b]


def last_block_probe(zoo, dis, scores: Callable[[], Scores]) -> Callable[[], dict[str, float]]:
    """Each donor's transferability probe at its last block (what `expected_dominated` reads), computed with
    the task-aware scores when called."""
    return lambda: {n: scores().transfer.get((n, len(dis[n].body)), 0.0) for n in zoo.donor_names}


def teacher_pool(donor_ms: dict[str, float], budgets: list[float]) -> list[str]:
    """Donors trained as teacher candidates: those within twice the largest budget (at least the fastest
    two): the teacher may be slower than the budget, it never ships."""
    ranked = sorted(donor_ms, key=lambda n: (donor_ms[n], n))
    return [n for n in ranked if donor_ms[n] <= 2 * max(budgets)] or ranked[:2]
