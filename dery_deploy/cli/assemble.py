"""`dery assemble`: the best network for a device under a latency budget, for your task.

Examples:
    dery assemble --zoo fashion --device cpu --latency-ms 0.3 -o plan.json
    dery assemble --zoo fashion --device cpu --latency-ms 0.2,0.3,0.5 --top 10 -o plans/plan.json
    dery assemble --zoo my_zoo.yaml --data ~/images/task --latency-ms 0.4 --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dery_deploy.artifacts import cache_root
from dery_deploy.assemble.stage import AdapterFitter
from dery_deploy.assemble.stage import assemble as run_assemble
from dery_deploy.cli.common import Listing, console, parse_float_list, progress_bar, show_notes
from dery_deploy.data.task import DEFAULT_DATA, load_task
from dery_deploy.errors import DeryError
from dery_deploy.network.items import structure_hash
from dery_deploy.network.plan import save_plan_with_weights
from dery_deploy.partition.stage import current_partition
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.store import find_profile, read_profile
from dery_deploy.runtime.devices import default_device, get_device
from dery_deploy.similarity.compute import load_similarity
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
    batch: int = typer.Option(1, "--batch"),
    profile: Path | None = typer.Option(None, "--profile", help="profile JSON (default: found by device/backend)"),
    partition: Path | None = typer.Option(None, "--partition"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="plan path; adapter weights go beside it"),
    as_json: bool = typer.Option(False, "--json", help="print the plans as JSON"),
    cache: Path | None = typer.Option(None, "--cache"),
) -> None:
    """Pick one block per equivalence set under the budget, rank candidates on your task, write the plan."""
    budgets = parse_float_list(latency_ms, "--latency-ms")
    if batch <= 0:
        raise DeryError(f"--batch must be positive, got {batch}", "assemble")
    root = cache or cache_root()
    z = get_zoo(zoo)
    spec = get_device(device or default_device())
    task = load_task(data, z.input, seed)
    show_notes(task.notes)
    part = current_partition(z, partition, cache, "assemble")
    prof_path = profile or find_profile(
        [root, SHIPPED_PROFILES],
        z.name,
        spec.id,
        backend or spec.default_backend,
        precision or spec.default_precision,
        batch,
    )
    prof = read_profile(prof_path)
    prof.check(prof_path, spec, z, structure_hash(z))
    model = LatencyModel.of(prof, str(prof_path))
    sim = load_similarity(z, part.similarity_key, cache)
    dis = dissect_zoo(z)
    fitter = AdapterFitter.for_task(dis, task)
    results = []
    for b in budgets:
        with progress_bar() as prog:
            res = run_assemble(
                z, part, dis, sim, model, task, b, memory_mb, params_m, top, proxy, search, seed, prog, fitter
            )
        path = budget_path(out, b, len(budgets) > 1)
        save_plan_with_weights(res.plan, res.net, path)
        results.append((b, res, path))
        if not as_json:
            print_candidates(res, b)
            console.print(f"plan for {b:g} ms -> {path}")
    if as_json:
        print(json.dumps([r[1].plan.to_dict() for r in results], indent=2))
    elif len(results) > 1:
        listing = Listing(
            "one plan per budget",
            "budget (ms)",
            "plan",
            "predicted (ms)",
            "M params",
            "proxy",
            numbers=("budget (ms)", "predicted (ms)", "M params", "proxy"),
        )
        for b, res, _ in results:
            p = res.plan
            listing.add(
                **{
                    "budget (ms)": f"{b:g}",
                    "plan": p.describe(),
                    "predicted (ms)": f"{p.predicted['latency_ms']:.4f}",
                    "M params": f"{p.predicted['params_m']:.3f}",
                    "proxy": f"{p.proxy['score']:.2f}",
                }
            )
        listing.show()


def print_candidates(res, budget: float) -> None:
    s = res.solver
    listing = Listing(
        f"top candidates under {budget:g} ms ({s['name']} {s['status']}, {s.get('seconds_top', 0):.3f} s)",
        "#",
        "blocks",
        "pred. ms",
        "M params",
        "quality",
        res.plan.proxy["name"],
        numbers=("#", "pred. ms", "M params", "quality", res.plan.proxy["name"]),
    )
    for i, c in enumerate(res.candidates):
        listing.add(
            **{
                "#": "*" if i == 0 else str(i),
                "blocks": c.plan.describe(),
                "pred. ms": f"{c.predicted_ms:.4f}",
                "M params": f"{c.evaluation.params / 1e6:.3f}",
                "quality": f"{c.evaluation.quality / 1000:.3f}",
                res.plan.proxy["name"]: f"{c.proxy:.2f}",
            }
        )
    listing.show()


def register(app: typer.Typer) -> None:
    app.command("assemble")(assemble)
