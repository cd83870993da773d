"""`dery run`: the main job on the embedded default (the Fashion-MNIST zoo on this machine), or on
your zoo and task.

Examples:
    dery run                         # everything (how long it took where it was timed: `dery run --help`)
    dery run --quick                 # one budget, one thread count, short training
    dery run --time-limit 10         # fit the run to 10 minutes, saying what it cut
    dery run --budgets 0.2,0.3 -o runs/mine --epochs-full 10
    dery run --budgets 0.2,0.3 --family      # also one family of paths sharing blocks, in runs/default/family
    dery run --zoo my_zoo.yaml --data ~/images/task -o runs/task

Each run prints, once its profiles have timed the machine, how long the rest will take there.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.cli.common import console, parse_float_list, progress_bar
from dery_deploy.cli.measured_times import TIMES
from dery_deploy.cli.run_times import SCALES, phrase
from dery_deploy.data.task import DEFAULT_DATA
from dery_deploy.pipeline import RunOptions
from dery_deploy.pipeline import run as run_pipeline
from dery_deploy.pipeline.budgets import DOMINATED_POINTS
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.report.answers import answers
from dery_deploy.report.sections import time_limit_line


def run(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    data: str = typer.Option(
        DEFAULT_DATA, "--data", help="your task: a folder with train/ and test/, or fashion-mnist[:options]"
    ),
    probe_data: str | None = typer.Option(
        None, "--probe-data", help="unlabelled images for similarity (default: the task's)"
    ),
    device: str | None = typer.Option(None, "--device", help="device id (default: this machine's)"),
    backend: str | None = typer.Option(None, "--backend", help="one backend only (default: the device's search list)"),
    targets: str | None = typer.Option(
        None, "--targets", help="backend/precision pairs to search, e.g. onnxruntime/fp32,openvino/int8"
    ),
    budgets: str | None = typer.Option(None, "--budgets", help="latency budgets in ms (default: from donor latencies)"),
    K: int = typer.Option(4, "-K", "--sets", help="equivalence sets (blocks per donor)"),
    epochs_adapter: int = typer.Option(
        4, "--epochs-adapter", help="final recipe: epochs training the adapters and head alone"
    ),
    epochs_full: int = typer.Option(6, "--epochs-full", help="final recipe: epochs training the whole network"),
    top: int = typer.Option(10, "--top", help="candidates per budget the program's ranking keeps"),
    verify: int = typer.Option(10, "--verify", help="mixed assemblies measured to check the latency model"),
    quick: bool = typer.Option(
        False,
        "--quick",
        help=f"one budget, one thread count, 1+2 epochs, fewer candidates ({phrase(TIMES, 'quick')})",
    ),
    aoti: bool = typer.Option(
        False,
        "--aoti/--no-aoti",
        help="also build and time an AOTInductor package for the middle budget (off by default: on this CPU it ran "
        "1.21 ms where the plan's ONNX ran 0.21 ms, and took about a minute per run)",
    ),
    allow_over_budget: bool = typer.Option(
        False, "--allow-over-budget", help="finish without an error when a shipped artifact measures over its budget"
    ),
    batch: int = typer.Option(1, "--batch", help="images per call the budgets are for (e.g. 32 for throughput)"),
    percentile: int = typer.Option(
        50, "--percentile", help="every budget holds for this percentile of single calls: 50, 90 or 99"
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="one CPU thread count to compute with (default: each count the device spec lists)"
    ),
    time_limit: float | None = typer.Option(
        None,
        "--time-limit",
        help="minutes the run may take: it searches fewer targets and cuts rungs, recipe, epochs and the budgets "
        "it chose itself (never yours) to fit, and says what it cut",
    ),
    keep_all_targets: bool = typer.Option(
        False,
        "--keep-all-targets",
        help="search every profiled target in selection, even one dominated at every budget (by default such a "
        "target, one the pick could never choose by the profiles and their errors, is left out and said why)",
    ),
    family: bool = typer.Option(
        False,
        "--family",
        help="also ship one family of paths over the budgets that share their blocks (RUN/family/; ONNX Runtime "
        "fp32, batch 1, two or more budgets, given or chosen as a default run chooses them, --quick too): the "
        "paths trained together (see --family-training)",
    ),
    family_training: str = typer.Option(
        "joint",
        "--family-training",
        help="how --family trains its paths: joint (every path at every step, the blocks they share trained by "
        "all of them; measured better at every budget of the fashion bench) or frozen (the largest as a pick is, "
        "then each smaller one on the blocks it shares with it, frozen)",
    ),
    heal_every_mix: bool = typer.Option(
        False,
        "--heal-every-mix",
        help="heal each budget's best mixed plan with the final recipe even where selection already rules it out "
        "(the best donor wins at any accuracy the heal could give it); slower, for the report's comparison of "
        "reassembly with the donors at every budget",
    ),
    train_every_donor: bool = typer.Option(
        False,
        "--train-every-donor",
        help="train every donor that may fit a budget with the final recipe, even one a faster donor beat by "
        f"{DOMINATED_POINTS:g} points or more after the short recipe (it cannot be the best donor that fits); "
        "slower, for the report's figures of every donor",
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the data split, the search and the training"),
    out: Path = typer.Option(Path("runs/default"), "-o", "--out", help="run directory (reused on rerun)"),
    as_json: bool = typer.Option(False, "--json", help="print the run's results as JSON at the end"),
) -> None:
    """Similarity, partition, profile, then per budget assemble, fine-tune, evaluate, export; writes report.md."""
    opts = RunOptions(
        zoo=zoo,
        device=device,
        backend=backend,
        budgets=parse_float_list(budgets, "--budgets") if budgets is not None else None,
        data=data,
        probe_data=probe_data,
        K=K,
        epochs_adapter=epochs_adapter,
        epochs_full=epochs_full,
        top=top,
        verify=verify,
        aoti=aoti,
        allow_over_budget=allow_over_budget,
        quick=quick,
        seed=seed,
        out=str(out),
        batch=batch,
        percentile=percentile,
        threads=threads,
        targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None,
        time_limit=time_limit,
        keep_all_targets=keep_all_targets,
        family=family,
        family_training=family_training,
        heal_every_mix=heal_every_mix,
        train_every_donor=train_every_donor,
    )
    m = run_pipeline(opts, None if as_json else console, progress_bar)
    if as_json:
        print(
            json.dumps(
                {k: v for k, v in m.to_dict().items() if k in ("status", "results", "donors", "seconds")},
                indent=2,
                default=str,
            )
        )
        return
    est = m.estimate
    said = (
        f" (estimated after the profiles: {est.after_s + est.seconds:.0f} s)"
        if est and est.parts and est.this_run
        else ""
    )
    console.print(f"[bold green]done[/] in {m.seconds:.0f} s{said}: report {out / 'report.md'} (and report.html)")
    show_answer(m)


def show_answer(m: RunManifest) -> None:
    """The answer per budget, in lines that read at 80 columns (report.md has the same as a table)."""
    console.print("[bold]the answer[/]")
    for a in answers(m, Path.cwd()):
        if not a.feasible:
            console.print(f"  [bold]{a.budget_text()} ms[/]: nothing ships: {a.infeasible}")
            continue
        console.print(f"  [bold]{a.budget_text()} ms[/]: ship {a.ships}")
        console.print(f"    {a.runtime}: {a.artifact or 'no artifact'}")
        vs = (
            f"best fitting donor {a.donor} {a.donor_top1:.2f}% ({a.difference:+.2f} points)"
            if a.donor
            else "no donor fits"
        )
        console.print(f"    measured {a.measured_text()}; test top-1 {a.top1:.2f}%; {vs}")
    if m.time_limit and m.time_limit.minutes:
        console.print(f"  [yellow]{time_limit_line(m.time_limit, not m.options.budgets)}[/]")
    fp = m.final_pass
    if fp:
        alone = any(res.measured_looks for res in m.results)
        console.print(
            ("  latency: each shipped package alone, as `dery bench` measures it; comparisons: " if alone else
             "  latency: ") + f"one interleaved pass over every compared network, noise index "
            f"{100 * fp.noise_index:.1f}%; ± is each measurement's standard error",
            style="dim",
        )  # fmt: skip


def register(app: typer.Typer) -> None:
    # the times are `measured_times.TIMES`, generated from bench/wall_time.txt (`scripts/run_times.py`)
    doc = f"{run.__doc__} The default run took {phrase(TIMES, 'default')}; --quick {phrase(TIMES, 'quick')}; {SCALES}."
    app.command("run", help=doc)(run)
