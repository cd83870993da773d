"""`dery bench`: measure a shipped package on this machine and, where this is the machine it was
measured on, judge its budget (exit 2 when over, 3 when the measurement stays too noisy to decide).

Examples:
    dery bench runs/default/budget-0.3ms/export
    dery bench PACKAGE --percentile 99 --calls 5000 --seconds 10 --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench(
    package: Path = typer.Argument(..., help="package folder (holding deploy.json)"),
    percentile: int | None = typer.Option(
        None, "--percentile", help="50, 90 or 99: the per-call percentile to measure for (default: the budget's)"
    ),
    calls: int | None = typer.Option(None, "--calls", help="calls per round, at least (default 3000; p90/p99 1024+)"),
    seconds: float | None = typer.Option(None, "--seconds", help="seconds per round, at least (default 5; p90/p99 2+)"),
    as_json: bool = typer.Option(False, "--json", help="print the measurement and verdict as JSON"),
) -> None:
    """Warm up, then time back-to-back calls of the package with its recorded settings; print p50 / p90 /
    p99 / mean / max over all calls with their standard error, and judge the budget where this machine is
    the package's."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dery_deploy.deploy.bench import MAX_ALLOWANCE, MAX_ROUNDS, judge, measure_package
    from dery_deploy.deploy.info import read_package

    info = read_package(package)
    q = info.budget.percentile if info.budget else (percentile or 50)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as prog:
        task = prog.add_task(f"bench {info.model}: warm-up", total=None)
        tick = lambda n, s: prog.update(task, description=f"bench {info.model}: {n} calls, {s:.1f} s")  # noqa: E731
        res = measure_package(package, percentile, calls, seconds, tick)
        rounds = 1
        # a verdict needs the standard error within the cap: measure again (pooled) before calling it undecided
        while res.at(q)[1] > MAX_ALLOWANCE and rounds < MAX_ROUNDS and info.budget is not None:
            rounds += 1
            res = measure_package(package, percentile, calls, seconds, tick, rounds=rounds)
    verdict = judge(info, res)
    if as_json:
        rel = res.relative_to(info)
        relative = {"machine_speed_change": rel[0], "relative_p50_change": rel[1]} if rel else {}
        print(
            json.dumps(
                {**res.to_dict(), **relative, "rounds": rounds, "verdict": verdict.line, "judged": verdict.judged}
            )
        )
    else:
        se = res.standard_error
        print(
            f"{info.model} on {res.runtime} ({info.runtime.precision}, batch {res.batch}, {info.runtime.threads} "
            f"threads): {res.calls} calls in {res.seconds:.1f} s"
        )
        print(
            f"p50 {res.p50_ms:.4f} ms (±{100 * se['p50']:.1f}%)  p90 {res.p90_ms:.4f} ms (±{100 * se['p90']:.1f}%)  "
            f"p99 {res.p99_ms:.4f} ms (±{100 * se['p99']:.1f}%)  mean {res.mean_ms:.4f}  max {res.max_ms:.4f} ms"
        )
        if info.latency is not None:
            print(f"recorded: p50 {info.latency.p50_ms:.4f} ms ({info.latency.measured_in})")
        if (rel := res.relative_to(info)) is not None:
            print(
                f"machine speed: the reference workload ran {100 * rel[0]:+.1f}% against when it was recorded; "
                f"related to it, p50 is {100 * rel[1]:+.1f}% against the recorded"
            )
        print(verdict.line)
    raise typer.Exit(verdict.exit_code)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
