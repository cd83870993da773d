"""`dery assemble`: the best network for a device under a latency budget, for your task.

Candidates (the program's top N, every donor that fits, the best one- and two-seam chains) are
scored on your labelled images; the finalists are measured on the device; then, unless
--no-select, they are trained briefly with successive halving and compared by k-fold
cross-validation on your labelled images (--folds; the validation split alone where it holds 1000
images or more), and the pick (the best donor unless a mixed plan wins beyond the noise) is the plan.
Several processes or machines share one selection with --storage (an SQLite file or a database URL).

Examples:
    dery assemble --zoo fashion --device cpu --latency-ms 0.3 -o plan.json
    dery assemble --zoo fashion --device cpu --latency-ms 0.14,0.3 --top 10 -o plans/plan.json
    dery assemble --zoo my_zoo.yaml --data ~/images/task --latency-ms 0.4 --json
    dery assemble --latency-ms 0.3 --storage sqlite:///select.db -o plan.json   # run on two machines at once
    dery assemble --latency-ms 0.3 --folds 1 -o plan.json   # decide on the validation split alone (faster)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.artifacts import cache_root, sha256_json
from dery_deploy.assemble.candidates import AdapterFitter
from dery_deploy.assemble.measure import measure_finalists
from dery_deploy.assemble.program_data import Scores
from dery_deploy.assemble.stage import MEASURED_HERE, AssembleRequest, AssembleResult, Measuring
from dery_deploy.assemble.stage import assemble as run_assemble
from dery_deploy.cli.common import (
    Listing,
    check_percentile,
    console,
    parse_float_list,
    progress_bar,
    show_notes,
)
from dery_deploy.data.task import DEFAULT_DATA, load_task
from dery_deploy.errors import DeryError
from dery_deploy.network.items import structure_hash
from dery_deploy.network.plan import Plan, save_plan_with_weights
from dery_deploy.partition.stage import current_partition
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.store import find_profile, profile_command, read_profile
from dery_deploy.runtime.devices import default_device, get_device
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select import Finalist, identity, shared_once
from dery_deploy.train.select import select as run_select
from dery_deploy.train.source import FinetuneSource
from dery_deploy.zoo.load import dissect_zoo, get_zoo

SHIPPED_PROFILES = Path(__file__).resolve().parents[2]  # profiles/ beside the package, in a source checkout


def budget_path(out: Path, budget: float, many: bool) -> Path:
    return out.with_name(f"{out.stem}-{budget:g}ms{out.suffix}") if many else out


def assemble(
    zoo: str = typer.Option("fashion", "--zoo", help="zoo name or YAML path"),
    data: str = typer.Option(
        DEFAULT_DATA, "--data", help="your task: a folder with train/ and test/, or fashion-mnist[:options]"
    ),
    device: str | None = typer.Option(None, "--device", help="device id (default: this machine's)"),
    latency_ms: str = typer.Option(..., "--latency-ms", help="budget(s) in ms, e.g. 0.3 or 0.2,0.3,0.5"),
    memory_mb: float | None = typer.Option(
        None, "--memory-mb", help="peak-memory budget (backends that measure memory)"
    ),
    params_m: float | None = typer.Option(None, "--params-m", help="parameter budget in millions"),
    top: int = typer.Option(10, "--top", help="candidates the proxy reranks"),
    proxy: str = typer.Option("probe", "--proxy", help="probe (default: closed-form linear probe), naswot or zico"),
    search: str = typer.Option("cpsat", "--search", help="cpsat (integer program + proxy rerank) or optuna"),
    backend: str | None = typer.Option(None, "--backend", help="default: the device's"),
    precision: str | None = typer.Option(None, "--precision", help="default: the device's"),
    batch: int = typer.Option(1, "--batch", help="images per call the budgets are for (a profile at this batch)"),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads the runtime computes with (default: the first count the device spec lists)"
    ),
    percentile: int = typer.Option(
        50, "--percentile", help="the budget holds for this percentile of single calls: 50 (median), 90 or 99"
    ),
    profile: Path | None = typer.Option(None, "--profile", help="profile JSON (default: found by device/backend)"),
    partition: Path | None = typer.Option(None, "--partition", help="partition.json (default: the zoo's current one)"),
    seed: int = typer.Option(0, "--seed", help="seed of the search and the proxy"),
    out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="plan path; adapter weights go beside it"),
    select: bool = typer.Option(
        True,
        "--select/--no-select",
        help="pick by short training scored on held-out labelled images, or by the proxy alone",
    ),
    folds: int | None = typer.Option(
        None,
        "--folds",
        help="k of the selection's cross-validation (1: the validation split alone; default: 5 under 1000 "
        "validation images, else 1)",
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage shared by processes running the same selection (sqlite:///f.db, a URL)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the plans as JSON"),
    cache: Path | None = typer.Option(None, "--cache", help="artifact cache (default: $DERY_CACHE, else .dery_cache)"),
) -> None:
    """Pick one block per equivalence set under the budget, rank candidates on your task, write the plan."""
    budgets = check_options(latency_ms, batch, percentile, folds, threads, out)
    z = get_zoo(zoo)
    spec = get_device(device or default_device())
    task = load_task(data, z.input, seed)
    show_notes(task.notes)
    part = current_partition(z, partition, cache, "assemble")
    prof_path = profile or find_profile(
        [cache or cache_root(), SHIPPED_PROFILES],
        z.name,
        spec.id,
        backend or spec.default_backend,
        precision or spec.default_precision,
        batch,
        threads or spec.default_threads,
    )
    model = latency_model(z, spec, prof_path, percentile, data, quiet=as_json, partition=partition)
    dis = dissect_zoo(z)
    fitter = AdapterFitter.for_task(dis, task)
    scores = Scores.compute(dis, task, part, fitter)
    results = []
    for b in budgets:
        with progress_bar() as prog:
            shared = shared_measurement(storage, task, b, model, z, prog)
            res = run_assemble(
                z, part, dis, model, task, AssembleRequest(b, memory_mb, params_m, top, proxy, search, seed),
                fitter=fitter, scores=scores, measuring=Measuring(shared), progress=prog,
            )  # fmt: skip
        path = budget_path(out, b, len(budgets) > 1)
        plan, net = res.plan, res.net
        if select:
            plan, net = select_finalist(res, path, z, task, seed, storage, folds, quiet=as_json)
        save_plan_with_weights(plan, net, path)
        results.append((b, res, path, plan))
        if not as_json:
            print_candidates(res, b, spec)
            if select:
                console.print(f"pick: {plan.describe()}: {plan.selection.rule if plan.selection else ''}")
            console.print(f"plan for {b:g} ms -> {path}")
    if as_json:
        print(json.dumps([r[3].to_dict() for r in results], indent=2))
    elif len(results) > 1:
        show_plans(results)


def check_options(latency_ms: str, batch: int, percentile: int, folds: int | None, threads: int | None, out: Path):
    """Every option checked before any work: the budgets, or one line naming the bad value."""
    budgets = parse_float_list(latency_ms, "--latency-ms")
    if batch <= 0:
        raise DeryError(f"--batch must be positive, got {batch}", "assemble")
    check_percentile(percentile, "assemble")
    if folds is not None and folds < 1:
        raise DeryError(f"--folds must be >= 1 (1: the validation split alone), got {folds}", "assemble")
    if threads is not None and threads < 1:
        raise DeryError(f"--threads must be >= 1, got {threads}", "assemble")
    for b in budgets:
        Plan.check_replaceable(budget_path(out, b, len(budgets) > 1))
    return budgets


def latency_model(
    z, spec, prof_path: Path, percentile: int, data: str, quiet: bool, partition: Path | None = None
) -> LatencyModel:
    """The profile's latency model, with the command that measures what it lacks (on the partition given, where
    one was: a `dery run` folder's is beside its cache, not in it); a profile without a latency check is said
    (its plans get no safety margin)."""
    prof = read_profile(prof_path)
    prof.check(prof_path, spec, z, structure_hash(z))
    model = LatencyModel.of(prof, str(prof_path), percentile)
    extra = ("" if data == DEFAULT_DATA else f" --data {data}") + (f" --threads {prof.threads}" if prof.threads else "")
    extra += f" --partition {partition}" if partition else ""
    model.how_to = profile_command(z.ref, spec.id, prof.backend, prof.precision, prof.batch, extra)
    if prof.verify is None and not quiet:
        how = (
            model.how_to
            if spec.kind == "jetson"
            else profile_command(z.ref, spec.id, prof.backend, prof.precision, prof.batch, extra + " --verify 20")
        )
        console.print(
            f"note: {prof_path} has no latency check, so plans get no safety margin; {how} measures the "
            "model's error and the margin",
            style="yellow",
        )
    return model


def select_finalist(res, path: Path, z, task, seed: int, storage: str | None, folds: int | None, quiet: bool):
    """The finalists saved beside the plan and selected by evidence: (plan, network) of the pick, the
    plan carrying its selection."""
    finalists = []
    for i, c in enumerate(res.finalists):
        fp = save_plan_with_weights(c.plan, c.net, path.with_name(f"{path.stem}.finalists") / f"{i:02d}.json")
        weights = str(fp.with_suffix(".safetensors").resolve())
        finalists.append(Finalist(c.name, FinetuneSource.of_plan(c.plan, weights), c.is_donor))
    sel = run_select(
        finalists,
        z,
        task,
        path.with_name(f"{path.stem}.select"),
        Recipe(plateau=0.02, seed=seed),
        storage,
        log=None if quiet else console.print,
        folds=folds,
    )
    chosen = next(c for c in res.finalists if c.name == sel.pick)
    chosen.plan.selection = sel
    return chosen.plan, chosen.net


def show_plans(results: list) -> None:
    """One row per budget: the plan, its predicted latency, size and proxy score."""
    listing = Listing(
        "one plan per budget",
        "budget (ms)",
        "plan",
        "predicted (ms)",
        "M params",
        "proxy",
        numbers=("budget (ms)", "predicted (ms)", "M params", "proxy"),
    )
    for b, _, _, p in results:
        listing.add(
            **{
                "budget (ms)": f"{b:g}",
                "plan": p.describe(),
                "predicted (ms)": f"{p.predicted.latency_ms:.4f}",
                "M params": f"{p.predicted.params_m:.3f}",
                "proxy": f"{p.proxy.score:.2f}",
            }
        )
    listing.show()


def shared_measurement(storage: str | None, task, budget: float, model: LatencyModel, zoo, progress):
    """How the finalists are measured: here, or, for a selection shared through `storage`, once by
    whichever process gets there first, stored in the study, and read by every other process, so
    that all of them keep the same finalists and reach the same pick."""
    if storage is None:
        return None

    def measure(final: list) -> dict | str:
        prof = model.profile
        key = [
            task.hash(),
            budget,
            model.percentile,
            [prof.device, prof.backend, prof.precision, prof.batch, prof.threads],
            sorted((c.name, sha256_json(identity(c.plan.to_dict()))) for c in final),
        ]
        return shared_once(
            storage,
            f"dery-measure-{sha256_json(key)[:12]}",
            lambda: measure_finalists(final, model, zoo, progress),
        )

    return measure


def print_candidates(res: AssembleResult, budget: float, spec) -> None:
    s = res.solver
    proxy = res.plan.proxy.name if res.plan.proxy else "proxy"
    listing = Listing(
        f"candidates under {budget:g} ms ({s.name} {s.status}, {s.seconds_top:.3f} s; measured: {s.measured})",
        "blocks",
        "origin",
        "pred. ms",
        "measured",
        "quality",
        proxy,
        numbers=("pred. ms", "measured", "quality", proxy),
    )
    finalists = {c.name for c in res.finalists}
    for c in res.candidates:
        measured = c.measured.get("latency_ms")
        listing.add(
            **{
                "blocks": c.name + (" *" if c.name in finalists else ""),
                "origin": c.origin,
                "pred. ms": f"{c.predicted_ms:.4f}",
                "measured": None if measured is None else f"{measured:.4f}",
                "quality": None if c.quality is None else f"{c.quality:.1f}",
                proxy: f"{c.proxy:.2f}",
            }
        )
    listing.show()
    if s.measured != MEASURED_HERE:  # e.g. a Jetson's plan made on the host: nothing was measured
        after = (
            f"; the first measurement of the plan is check_engine.py on the device (`dery export RUN --format "
            f"tensorrt --device {spec.id} --bundle DIR`)"
            if spec.kind == "jetson"
            else f"; run dery assemble on the {spec.id} to measure them"
        )
        console.print(f"* finalist (predicted within the budget; {s.measured}){after}", style="dim")
        return
    dropped = s.rejected_over_budget
    console.print(
        f"* finalist (measured within the budget); {dropped} of {s.finalists} "
        "finalists measured over the budget and dropped"
        + (": " + ", ".join(f"{c.name} {c.measured['latency_ms']:.4f} ms" for c in res.rejected) if dropped else ""),
        style="dim",
    )
    near = s.near_budget
    if near:
        console.print(
            f"within measurement noise of the budget (a remeasurement could decide otherwise): {', '.join(near)}; "
            "rule: kept when the estimate is within the budget",
            style="yellow",
        )


def register(app: typer.Typer) -> None:
    app.command("assemble")(assemble)
