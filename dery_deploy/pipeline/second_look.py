"""The final pass's look at each shipped file alone, and the keys its measurements are filed under.

The final pass times every compared network among the others, which ranks them; what a budget promises is
what the shipped file costs alone, as a user measures it. On an Intel Xeon host (2 cores) three shipped files
read 1-12% slower at p50 among 20 other files than alone in a worker (interleaved repeats; the file at two
threads most, ONNX Runtime 0.153 -> 0.158-0.177 ms), whether each window began with 0, 2 or 10 ms of untimed
calls: not cold caches, and not removed by warming. So on the CPU every shipped package is also measured as
`dery bench` measures it (`runtime.worker.bench_package`: its session from its recorded settings, its
reference workload interleaved, at least LOOK_SECONDS in a fresh worker), and the verdict and the package's
recorded latency read that look. A look found over its budget, undecided, or far from the measurement that
admitted the file is followed by REMEASURES more, each lasting REMEASURE_SECONDS; the verdict reads the
slowest look. Elsewhere (a GPU, torch backends) a suspect by the final pass is measured again alone with the
machine's reference, as before. The final pass files every measurement under `compared_key`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dery_deploy.deploy.bench import MAX_ALLOWANCE, BenchResult, within_budget
from dery_deploy.pipeline.final_pass_file import LOOK_SECONDS, REMEASURE_SECONDS, REMEASURES, FinalPassFile, SecondLook
from dery_deploy.pipeline.records import BudgetResult
from dery_deploy.pipeline.runner import Run
from dery_deploy.runtime.harness import Measurement, PassSummary
from dery_deploy.runtime.worker import bench_package


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
    the percentile in every pass that measured it, in order. Looked at alone, the slowest look's (the final
    pass among the other networks reads it higher than a user does: module docstring); measured once, that
    one; else the slowest pass's: the promise is a figure the file met in every look. The median of three let
    two passes in one fast spell of the host carry the verdict (0.1167 ms promised, 0.144-0.168 ms measured
    alone afterwards); a pass slowed by a neighbour's load is flagged by the pass itself (`load_line`), and
    one slowed by the machine is told apart by its reference workload (`relate_to_machine`)."""
    mine = [(measurements[key], summary) for summary, measurements in fp.passes() if key in measurements]
    history = [round(m.promise_at(q), 5) for m, _ in mine]
    looks = [(s.measurements[key], s.summary) for s in fp.remeasured if s.package and key in s.measurements]
    m, summary = max(looks or mine, key=lambda ms: ms[0].promise_at(q))
    return m, summary, history


def look_figures(
    res: BenchResult, other_load_cores: float | None, reference: str, threads: int
) -> tuple[Measurement, PassSummary]:
    """A package look (`bench_package`) as the final pass files a measurement: per-call percentiles over all
    calls with their block-bootstrap errors; `reference` names the runtime and threads its reference ran at."""
    every = {"p50": res.p50_ms, "p90": res.p90_ms, "p99": res.p99_ms}
    se = dict(res.standard_error)
    m = Measurement(
        res.p50_ms, res.p90_ms, res.p99_ms, se["p50"], res.calls, 1, se["p50"] <= MAX_ALLOWANCE, res.noise,
        [], {k: v for k, v in se.items() if k != "p50"}, every, se,
    )  # fmt: skip
    refs = {reference: res.reference_ms} if res.reference_ms else {}
    summary = PassSummary(
        1, 1, res.seconds, res.noise, int(se["p50"] > MAX_ALLOWANCE), threads, time.strftime("%Y-%m-%dT%H:%M:%S"),
        other_load_cores, os.cpu_count(), references_ms=refs,
    )  # fmt: skip
    return m, summary


@dataclass
class Ship:
    """A shipped package the final pass looks at alone: its final-pass key, folder, runtime and threads."""

    key: str
    folder: Path
    runtime: str
    threads: int


def package_identity(folder: Path) -> str:
    """What a look at a package measures: its files (by the digests deploy.json records) and its runtime
    settings. Two budgets that ship the same donor on the same target ship the same package but for their
    budget and verdict: one look measures both."""
    try:
        d = json.loads((folder / "deploy.json").read_text())
        return json.dumps([d["files"], d["runtime"]], sort_keys=True)
    except (OSError, ValueError, KeyError, TypeError):
        return str(folder)  # (unreadable: looked at on its own, and `bench_package` says what is wrong)


def look_at_ships(r: Run, ships: list[Ship], fp: FinalPassFile) -> None:
    """Each shipped package measured alone as `dery bench` measures it, LOOK_SECONDS, then the suspects among
    those looks (`ship_suspects`) REMEASURES more times for REMEASURE_SECONDS each; every look appended to
    `fp.remeasured` (module docstring). Packages with the same files and settings (`package_identity`) are
    looked at once, the look filed under each one's key: a run whose larger budgets all ship its best donor
    on one target looked at the same file three times (4.5 s each, 10 s each again where one was suspect)."""
    q = r.opts.percentile
    groups: dict[str, list[Ship]] = {}
    for ship in ships:
        groups.setdefault(package_identity(ship.folder), []).append(ship)

    def look(same: list[Ship], seconds: float) -> dict[str, Measurement]:
        ship = same[0]
        res, load = bench_package(ship.folder, q, seconds)
        m, summary = look_figures(res, load, f"{ship.runtime}/t{ship.threads}", ship.threads)
        keys = [s.key for s in same]
        fp.remeasured.append(SecondLook(keys, summary, {k: m for k in keys}, package=True))
        return {k: m for k in keys}

    if ships:
        what = "the shipped package" if len(ships) == 1 else f"the {len(ships)} shipped packages"
        alike = f" ({len(ships) - len(groups)} the same as another: looked at once)" if len(groups) < len(ships) else ""
        r.say(f"  measuring {what} alone, as `dery bench` does: the latency a budget promises{alike}")
    first: dict[str, Measurement] = {}
    for same in groups.values():
        first.update(look(same, LOOK_SECONDS))
    keys = ship_suspects(r, first)
    for i in range(REMEASURES if keys else 0):
        r.say(f"  measuring {len(keys)} shipped package(s) alone again ({i + 1} of {REMEASURES}): " + ", ".join(keys))
        for same in (g for g in groups.values() if any(s.key in keys for s in g)):
            look(same, REMEASURE_SECONDS)


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


def say_figures(r: Run, res: BudgetResult, verdict_ms: float) -> None:
    """The shipped file's figures on the terminal where it was measured more than once and the verdict had to
    choose (several looks alone, or a final-pass figure and re-measurements); one look needs no line."""
    b, history, looks = res.budget_ms, res.measured_history_ms or [], res.measured_looks
    span = f" (the figures span {100 * (max(history) / min(history) - 1):.0f}%)" if min(history) > 0 else ""
    if looks > 1:
        r.say(
            f"  budget {b:g} ms: the shipped package measured " + ", ".join(f"{ms:.4f}" for ms in res.verdict_figures)
            + f" ms alone ({history[0]:.4f} ms in the final pass among the other networks); the verdict reads the "
            f"slowest look, {verdict_ms:.4f} ms{span}"
        )  # fmt: skip
    elif not looks and len(history) > 1:
        r.say(
            f"  budget {b:g} ms: the shipped file measured {history[0]:.4f} ms in the final pass, then "
            + ", ".join(f"{ms:.4f}" for ms in history[1:])
            + f" ms re-measured alone; the verdict reads the slowest, {verdict_ms:.4f} ms{span}"
        )


def measured_in(figures: int, looks: int) -> str:
    """Where the verdict's figure was measured, as the report and the package say it."""
    if looks:
        return (
            "the shipped package alone, as `dery bench` measures it (its recorded settings, the machine's reference "
            "interleaved)" + (f", {looks} times (the slowest figure)" if looks > 1 else "")
            + ", after the run's final pass had measured it among every compared network"
        )  # fmt: skip
    return "the run's final pass, beside every compared network" + (
        f", then re-measured alone {figures - 1} time(s) with the machine's reference (the slowest figure)"
        if figures > 1
        else ""
    )
