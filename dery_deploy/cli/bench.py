"""`dery bench`: measure a shipped package on this machine and, where this is the machine it was
measured on, judge its budget.

Exit codes (a script or CI can tell them apart):
    0  within budget, or measured only (no budget, or another machine: nothing judged)
    2  over budget
    3  undecided: the standard error stayed above the cap the verdict allows
    1  a user error (a missing or damaged package, a bad option), said in one line

A family folder (family.json: paths sharing one weights file, one per budget) has every path measured in
one interleaved pass and each judged by the same rule; the exit code is the worst path's.

Examples:
    dery bench runs/default/budget-0.3ms/export
    dery bench runs/default/family --calls 2000 --seconds 3
    dery bench PACKAGE --percentile 99 --calls 5000 --seconds 10 --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.core import TyperCommand

USER_ERROR = 1  # not 2: that is "over budget"


class BenchCommand(TyperCommand):
    """`dery bench` with its usage errors (a missing package, a bad option value) exiting USER_ERROR,
    the `dery` default being 2, which this command gives to "over budget"."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        typed = list(args)  # click consumes `args` as it parses
        try:
            return super().parse_args(ctx, args)
        except typer.Exit:
            raise  # --help
        except Exception as e:
            # click's usage and parameter errors (exit code 2, or 1 for other click errors); the
            # classes are typer's vendored click's, reached without importing `dery_deploy.cli.main`
            if not hasattr(e, "format_message") or getattr(e, "exit_code", None) not in (1, 2):
                raise
            msg = " ".join(e.format_message().split()).rstrip(".")
            opts = getattr(getattr(e, "param", None), "opts", None) or []
            given = [typed[i + 1] for i, a in enumerate(typed[:-1]) if a in opts]
            if given and repr(given[0]) not in msg:
                msg += f" (got {given[0]!r})"
            typer.secho(f"error: {msg}. See `dery bench --help`.", fg="red", err=True)
            raise typer.Exit(USER_ERROR) from None


def bench(
    package: Path = typer.Argument(..., help="package folder (holding deploy.json), or a family's (family.json)"),
    percentile: int | None = typer.Option(
        None, "--percentile", help="50, 90 or 99: the per-call percentile to measure for (default: the budget's)"
    ),
    calls: int | None = typer.Option(None, "--calls", help="calls per round, at least (default 3000; p90/p99 1024+)"),
    seconds: float | None = typer.Option(None, "--seconds", help="seconds per round, at least (default 5; p90/p99 2+)"),
    as_json: bool = typer.Option(False, "--json", help="print the measurement and verdict as JSON"),
) -> None:
    """Time a package's calls with its recorded settings and judge its budget on its own machine.

    Warm up, then time back-to-back calls; print p50 / p90 / p99 / mean / max over all calls with their
    standard error, and judge the budget where this machine is the package's. Exit 0 within budget or
    measured only, 2 over budget, 3 undecided, 1 a user error."""
    from dery_deploy.errors import DeryError

    try:
        code = _bench(package, percentile, calls, seconds, as_json)
    except DeryError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        code = USER_ERROR
    raise typer.Exit(code)


def _bench(package: Path, percentile: int | None, calls: int | None, seconds: float | None, as_json: bool) -> int:
    """Measure, judge and print; the exit code of the verdict."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dery_deploy.deploy.bench import PackageBench, judge, precise
    from dery_deploy.deploy.family_info import is_family
    from dery_deploy.deploy.machine import fingerprint, same_machine

    if is_family(package) and not (package / "deploy.json").is_file():
        return _bench_family(package, percentile, calls, seconds, as_json)
    bench = PackageBench(package, percentile, calls, seconds)
    info = bench.info
    q = info.budget.percentile if info.budget else (percentile or 50)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as prog:
        task = prog.add_task(f"bench {info.model}: warm-up", total=None)
        tick = lambda n, s: prog.update(task, description=f"bench {info.model}: {n} calls, {s:.1f} s")  # noqa: E731
        judged = info.budget is not None and same_machine(info.fingerprint, fingerprint(info.runtime.device))
        # a verdict needs the standard error within the cap: more rounds before calling it undecided (`precise`)
        res = precise(bench, q, tick) if judged else bench.round(tick)
    verdict = judge(info, res)
    if as_json:
        rel = res.relative_to(info)
        relative = {"machine_speed_change": rel[0], "relative_p50_change": rel[1]} if rel else {}
        out = {**res.to_dict(), **relative, "rounds": bench.rounds, "verdict": verdict.line}
        print(json.dumps({**out, "judged": verdict.judged, "exit_code": verdict.exit_code}))
    else:
        _print_text(info, res)
        print(verdict.line)
    return verdict.exit_code


def _print_text(info, res) -> None:
    se = res.standard_error
    n = info.runtime.threads
    threads = f"{n} thread{'' if n == 1 else 's'}" if n else info.runtime.device
    print(
        f"{info.model} on {res.runtime} ({info.runtime.precision}, batch {res.batch}, {threads}): "
        f"{res.calls} calls in {res.seconds:.1f} s"
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


def _bench_family(folder: Path, percentile: int | None, calls: int | None, seconds: float | None, as_json: bool) -> int:
    """Every path of a family in one interleaved pass, each judged; the worst path's exit code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dery_deploy.deploy.family import load_family
    from dery_deploy.deploy.family_bench import judge_family

    family = load_family(folder)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as prog:
        n = len(family.paths)
        task = prog.add_task(f"bench {n} paths: warm-up", total=None)
        tick = lambda k, s: prog.update(task, description=f"bench {n} paths: {k} calls, {s:.1f} s")  # noqa: E731
        results = family.measure(calls, seconds, tick, percentile=percentile)
    verdict = judge_family({p.name: family.info.as_package(p) for p in family.paths}, results)
    rows = []
    for p in family.paths:
        res, v = results[p.name], verdict.verdicts[p.name]
        within = None if not v.judged or v.undecided else not v.over
        rows.append(
            {
                "path": p.name,
                "plan": p.plan,
                "budget_ms": p.budget.latency_ms,
                "percentile": p.budget.percentile,
                **res.to_dict(),
                "within": within,
                "verdict": v.line,
            }
        )
    if as_json:
        print(json.dumps({"paths": rows, "rounds": family.rounds, "exit_code": verdict.exit_code}))
    else:
        _print_family(rows)
    return verdict.exit_code


def _print_family(rows: list[dict]) -> None:
    print(f"{'path':8} {'budget':>12} {'p50 ms':>16} {'p90 ms':>16} {'p99 ms':>16}  within  plan")
    for r in rows:
        se = r["standard_error"]
        cells = [f"{r[f'p{q}_ms']:.4f} ±{100 * se[f'p{q}']:.1f}%" for q in (50, 90, 99)]
        within = {True: "yes", False: "OVER", None: "-"}[r["within"]]
        budget = f"{r['budget_ms']:g} ms p{r['percentile']}"
        print(f"{r['path']:8} {budget:>12} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}  {within:6}  {r['plan']}")
    for r in rows:
        print(f"{r['path']}: {r['verdict']}")


def register(app: typer.Typer) -> None:
    app.command("bench", cls=BenchCommand)(bench)
