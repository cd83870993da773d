"""`dery assemble`: the best network for a device under a latency budget.

Examples:
    dery assemble --zoo fashion --device cpu --latency-ms 1.5 -o plan.json
    dery assemble --zoo fashion --device cpu --latency-ms 1,2,4 --top 10 --proxy naswot -o plans/plan.json
    dery assemble --zoo fashion --device cpu --latency-ms 2 --search optuna --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dery_deploy.cli.common import console, parse_float_list


def find_profile(root: Path, zoo: str, device: str, backend: str, precision: str, batch: int) -> Path:
    from dery_deploy.errors import DeryError
    from dery_deploy.profile.store import profile_path

    for base in (root, Path("."), Path(__file__).resolve().parents[2]):
        p = profile_path(base, device, zoo, backend, precision, batch)
        if p.is_file():
            return p
    raise DeryError(f"no {backend} {precision} batch-{batch} profile of zoo {zoo!r} for device {device!r}; run `dery "
                    f"profile --zoo {zoo} --device {device} --backend {backend} --precision {precision} --batch {batch}`",
                    "assemble")


def budget_path(out: Path, budget: float, many: bool) -> Path:
    return out.with_name(f"{out.stem}-{budget:g}ms{out.suffix}") if many else out


def assemble(zoo: str = typer.Option("fashion", "--zoo"),
             device: Optional[str] = typer.Option(None, "--device", help="device id (default: this machine's)"),
             latency_ms: str = typer.Option(..., "--latency-ms", help="budget(s) in ms, e.g. 1.5 or 1,2,4"),
             memory_mb: Optional[float] = typer.Option(None, "--memory-mb", help="peak-memory budget"),
             params_m: Optional[float] = typer.Option(None, "--params-m", help="parameter budget in millions"),
             top: int = typer.Option(10, "--top", help="candidates the proxy reranks"),
             proxy: str = typer.Option("probe", "--proxy", help="probe (default: closed-form linear probe), naswot or zico"),
             search: str = typer.Option("cpsat", "--search", help="cpsat (integer program + proxy rerank) or optuna"),
             backend: Optional[str] = typer.Option(None, "--backend"),
             precision: Optional[str] = typer.Option(None, "--precision"),
             batch: int = typer.Option(1, "--batch"),
             profile: Optional[Path] = typer.Option(None, "--profile", help="profile JSON (default: found by device/backend)"),
             partition: Optional[Path] = typer.Option(None, "--partition"),
             seed: int = typer.Option(0, "--seed"),
             out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="plan path; adapter weights go beside it"),
             as_json: bool = typer.Option(False, "--json", help="print the plans as JSON"),
             cache: Optional[Path] = typer.Option(None, "--cache")) -> None:
    """Pick one block per equivalence set under the budget, rank candidates by a proxy, write the plan."""
    from dery_deploy.assemble.stage import assemble as run_assemble
    from dery_deploy.cli.partition import current_partition
    from dery_deploy.cli.profile import default_device
    from dery_deploy.cli.similarity import progress_bar
    from dery_deploy.errors import DeryError
    from dery_deploy.partition.stage import dissect_zoo
    from dery_deploy.profile.devices import get_device
    from dery_deploy.profile.store import check_profile, read_profile
    from dery_deploy.profile.items import structure_hash
    from dery_deploy.similarity.compute import cache_root, compute_similarity
    from dery_deploy.zoo.load import get_zoo

    budgets = parse_float_list(latency_ms, "--latency-ms")
    if batch <= 0:
        raise DeryError(f"--batch must be positive, got {batch}", "assemble")
    root = cache or cache_root()
    z = get_zoo(zoo)
    spec = get_device(device or default_device())
    part = current_partition(z, partition, cache, "assemble")
    prof_path = profile or find_profile(root, z.name, spec.id, backend or spec.default_backend,
                                        precision or spec.default_precision, batch)
    prof = read_profile(prof_path)
    check_profile(prof, prof_path, spec, z, structure_hash(z))
    sim, _ = compute_similarity(z, cache=cache)
    dis = dissect_zoo(z)
    results = []
    from dery_deploy.assemble.stage import AdapterFitter, probe_for_adapters

    fitter = AdapterFitter(dis, probe_for_adapters(z))
    for b in budgets:
        with progress_bar() as prog:
            res = run_assemble(z, part, dis, sim, prof, str(prof_path), b, memory_mb, params_m, top, proxy, search, seed,
                               prog, fitter)
        path = budget_path(out, b, len(budgets) > 1)
        write_plan_with_weights(res["plan"], res["net"], path)
        results.append((b, res, path))
        if not as_json:
            print_candidates(res, b)
            console.print(f"plan for {b:g} ms -> {path}")
    if as_json:
        print(json.dumps([r[1]["plan"].to_dict() for r in results], indent=2))
    elif len(results) > 1:
        table = Table("budget (ms)", "plan", "predicted (ms)", "params (M)", "proxy", title="one plan per budget")
        for b, res, _ in results:
            p = res["plan"]
            table.add_row(f"{b:g}", p.describe(), f"{p.predicted['latency_ms']:.4f}", f"{p.predicted['params_m']:.3f}",
                          f"{p.proxy['score']:.2f}")
        console.print(table)


def write_plan_with_weights(plan, net, path: Path) -> None:
    from safetensors.torch import save_file

    from dery_deploy.artifacts import atomic_write_with
    from dery_deploy.assemble.plan import save_plan, stitch_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".safetensors")
    atomic_write_with(weights, lambda tmp: save_file(stitch_state_dict(net), str(tmp)))
    plan.solver["adapter_weights"] = weights.name
    save_plan(path, plan)


def print_candidates(res: dict, budget: float) -> None:
    s = res["solver"]
    table = Table("#", "blocks", "pred. ms", "mem MB", "params M", "quality", f"{res['plan'].proxy['name']}",
                  title=f"top candidates under {budget:g} ms ({s['name']} {s['status']}, {s.get('seconds_top', 0):.3f} s)")
    for i, c in enumerate(res["candidates"]):
        mark = "[green]*[/]" if i == 0 else str(i)
        table.add_row(mark, c.plan.describe(), f"{c.predicted_ms:.4f}", f"{c.memory_mb:.2f}", f"{c.params / 1e6:.3f}",
                      f"{c.quality:.3f}", f"{c.proxy:.2f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("assemble")(assemble)
