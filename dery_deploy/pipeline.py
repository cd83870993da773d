"""`dery run`: the main job, every stage in order, each skipped when its artifact is still valid.

zoo -> similarity -> partition -> profile (+ latency-model verify) -> budgets from the donors'
measured latencies -> per budget: assemble, fine-tune, evaluate, measure, export + parity ->
donor baselines with the same recipe -> report.md / report.html.

Everything lives in one run directory (its own cache included), so a second run in the same
directory reuses every stage, and an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from dery_deploy.artifacts import atomic_write_json, read_json_artifact
from dery_deploy.errors import DeryError

SCHEMA = 1
KIND = "run"


@dataclass
class RunOptions:
    zoo: str = "fashion"
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    budgets: list[float] | None = None
    data: str = "fashion-mnist:labels_per_class=100"
    K: int = 4
    epochs_adapter: int = 4
    epochs_full: int = 6
    top: int = 10
    verify: int = 10
    probe: int = 512
    restarts: int = 50
    aoti: bool = True
    quick: bool = False
    seed: int = 0
    out: str = "runs/default"

    def apply_quick(self) -> None:
        """--quick: one budget, short training, fewer candidates; same stages."""
        self.epochs_adapter, self.epochs_full = min(self.epochs_adapter, 1), min(self.epochs_full, 2)
        self.top, self.verify, self.probe, self.restarts = min(self.top, 4), min(self.verify, 4), min(self.probe, 256), 20
        self.aoti = False


@dataclass
class StageLog:
    stages: list[dict] = field(default_factory=list)

    def record(self, name: str, status: str, seconds: float, note: str = "") -> None:
        self.stages.append({"stage": name, "status": status, "seconds": round(seconds, 2), "note": note})


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = int(pos), min(len(s) - 1, int(pos) + 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _round_sig_up(x: float, sig: int = 3) -> float:
    """Round up to `sig` significant digits (so the donor at a percentile fits its own budget)."""
    from math import ceil, floor, log10

    if not x:
        return x
    scale = 10 ** (-int(floor(log10(abs(x)))) + sig - 1)
    return ceil(x * scale - 1e-9) / scale


def choose_budgets(donor_ms: dict[str, float], quick: bool) -> list[float]:
    """Budgets from the donors' measured latencies: 25th/50th/75th percentile (median only with --quick)."""
    xs = list(donor_ms.values())
    qs = (0.5,) if quick else (0.25, 0.5, 0.75)
    return sorted({_round_sig_up(_percentile(xs, q)) for q in qs})


def check_run_dir(out: Path, zoo, device: str) -> None:
    path = out / "run.json"
    if path.is_file():
        old = read_json_artifact(path, KIND, SCHEMA, "run")
        if old["zoo"] != zoo.name or old["zoo_hash"] != zoo.hash() or old["device"] != device:
            raise DeryError(f"run directory {out} belongs to zoo {old['zoo']!r} ({old['zoo_hash']}) on device "
                            f"{old['device']!r}, not {zoo.name!r} ({zoo.hash()}) on {device!r}; choose another -o", "run")


def run(opts: RunOptions, console=None, progress_factory=None) -> dict:
    from dery_deploy.assemble.plan import load_plan
    from dery_deploy.assemble.stage import AdapterFitter, assemble, probe_for_adapters
    from dery_deploy.data.task import load_task
    from dery_deploy.partition.cover_set import optimise
    from dery_deploy.partition.stage import dissect_zoo, load_partition, partition_record, problem_from, write_partition
    from dery_deploy.profile.devices import get_device, this_machine
    from dery_deploy.profile.calibration import reference_ms
    from dery_deploy.profile.items import donor_key
    from dery_deploy.profile.latency_model import item_ms
    from dery_deploy.profile.run import DOWNSTREAM_CLASSES, resolve_backend, run_profile, verify
    from dery_deploy.profile.store import read_profile
    from dery_deploy.similarity.compute import compute_similarity
    from dery_deploy.train.finetune import Recipe, finetune
    from dery_deploy.zoo.load import get_zoo
    from dery_deploy.zoo.summary import zoo_rows

    say = console.print if console else print
    t_run = time.time()
    if opts.quick:
        opts.apply_quick()
    log = StageLog()
    out = Path(opts.out)
    cache = out / "cache"

    def stage(name):
        say(f"[bold cyan]> {name}[/]" if console else f"> {name}")
        return time.time()

    def progress():
        from contextlib import nullcontext

        return progress_factory() if progress_factory else nullcontext(None)

    # zoo
    t = stage("zoo")
    zoo = get_zoo(opts.zoo)
    spec = get_device(opts.device) if opts.device else (this_machine() or [get_device("cpu")])[0]
    check_run_dir(out, zoo, spec.id)
    out.mkdir(parents=True, exist_ok=True)
    backend, precision = resolve_backend(spec, opts.backend, opts.precision)
    manifest = {"schema": SCHEMA, "kind": KIND, "zoo": zoo.name, "zoo_hash": zoo.hash(), "device": spec.id,
                "backend": backend.name, "precision": precision, "options": asdict(opts), "stages": log.stages,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / "run.json", {**manifest, "status": "running"})
    zoo_table_path = out / "zoo.json"
    if zoo_table_path.is_file() and json.loads(zoo_table_path.read_text()).get("zoo_hash") == zoo.hash():
        rows = json.loads(zoo_table_path.read_text())["donors"]
        log.record("zoo", "reused", time.time() - t)
    else:
        rows = zoo_rows(zoo, latency=True)
        atomic_write_json(zoo_table_path, {"zoo": zoo.name, "zoo_hash": zoo.hash(), "donors": rows})
        log.record("zoo", "computed", time.time() - t)
    dis = dissect_zoo(zoo)

    # similarity
    t = stage("similarity")
    with progress() as prog:
        sim, st = compute_similarity(zoo, opts.probe, opts.seed, cache=cache, progress=prog)
    log.record("similarity", "reused" if st["computed"] == 0 else "computed", time.time() - t,
               f"{st['computed']} of {st['pairs']} donor pairs computed")

    # partition
    t = stage("partition")
    ppath = out / "partition.json"
    part = None
    if ppath.is_file():
        old = load_partition(ppath, zoo)
        if (old["K"], old["similarity_key"], old["restarts"], old["seed"]) == (opts.K, sim.key, opts.restarts, opts.seed):
            part = old
    if part is None:
        problem, _ = problem_from(zoo, sim, opts.K, 0.2, dis)
        res = optimise(problem, opts.restarts, opts.seed)
        part = partition_record(zoo, sim, problem, res, dis, opts.seed)
        write_partition(ppath, part)
        log.record("partition", "computed", time.time() - t, f"objective {part['objective']:.3f}")
    else:
        log.record("partition", "reused", time.time() - t)

    # profile (+ verify)
    t = stage(f"profile ({spec.id}, {backend.name} {precision}, batch 1)")
    from dery_deploy.profile.store import profile_path

    prof_file = profile_path(cache, spec.id, zoo.name, backend.name, precision, 1)
    before = len(read_profile(prof_file)["records"]) if prof_file.is_file() else 0
    with progress() as prog:
        run_profile(zoo, spec, backend.name, precision, [1], part, dis, cache, prog)
    prof = read_profile(prof_file)
    measured_now = len(prof["records"]) - before
    log.record("profile", "computed" if measured_now else "reused", time.time() - t, f"{measured_now} items measured")
    t = stage(f"latency-model check ({opts.verify} mixed assemblies)")
    old_v = prof.get("verify", {})
    if (old_v.get("n"), old_v.get("seed"), old_v.get("partition_objective")) != (opts.verify, opts.seed, part["objective"]):
        with progress() as prog:
            verify(zoo, spec, prof_file, part, dis, opts.verify, opts.seed, prog)
        prof = read_profile(prof_file)
        log.record("verify", "computed", time.time() - t)
    else:
        log.record("verify", "reused", time.time() - t)
    v = prof["verify"]
    say(f"  latency model: median |error| {100 * v['median_abs_rel_error']:.2f}%, max {100 * v['max_abs_rel_error']:.2f}%")

    donor_ms = {n: round(item_ms(prof, donor_key(zoo, n, DOWNSTREAM_CLASSES)), 5) for n in zoo.donor_names}
    budgets = opts.budgets or choose_budgets(donor_ms, opts.quick)
    say(f"  budgets: {', '.join(f'{b:g} ms' for b in budgets)} (donors: "
        + ", ".join(f"{n} {ms:.3f}" for n, ms in sorted(donor_ms.items(), key=lambda kv: kv[1])) + ")")

    task = load_task(opts.data, zoo, opts.seed)
    recipe = Recipe(opts.epochs_adapter, opts.epochs_full, seed=opts.seed)
    fitter = AdapterFitter(dis, probe_for_adapters(zoo))
    results = []
    for b in budgets:
        bdir = out / f"budget-{b:g}ms"
        entry = {"budget_ms": b}
        t = stage(f"assemble under {b:g} ms")
        plan_path = bdir / "plan.json"
        valid = False
        if plan_path.is_file():
            p = load_plan(plan_path)
            valid = (p.zoo_hash == zoo.hash() and p.budget.get("latency_ms") == b and p.backend == backend.name
                     and p.solver.get("partition_objective") == part["objective"])
        if not valid:
            try:
                with progress() as prog:
                    res = assemble(zoo, part, dis, sim, prof, str(prof_file), b, top=opts.top, seed=opts.seed,
                                   progress=prog, fitter=fitter)
            except DeryError as e:
                entry["infeasible"] = str(e)
                results.append(entry)
                log.record(f"assemble {b:g} ms", "infeasible", time.time() - t, str(e))
                say(f"  [yellow]{e}[/]" if console else f"  {e}")
                continue
            from dery_deploy.cli.assemble import write_plan_with_weights

            res["plan"].solver["partition_objective"] = part["objective"]
            entry["candidates"] = [{"plan": c.plan.describe(), "predicted_ms": round(c.predicted_ms, 5), "params_m":
                                    round(c.params / 1e6, 4), "quality": round(c.quality, 4), "proxy": round(c.proxy, 3)}
                                   for c in res["candidates"]]
            atomic_write_json(bdir / "candidates.json", entry["candidates"])
            write_plan_with_weights(res["plan"], res["net"], plan_path)
            log.record(f"assemble {b:g} ms", "computed", time.time() - t)
        else:
            log.record(f"assemble {b:g} ms", "reused", time.time() - t)
        plan = load_plan(plan_path)
        entry["plan"] = plan.to_dict()
        if (bdir / "candidates.json").is_file():
            entry["candidates"] = json.loads((bdir / "candidates.json").read_text())
        say(f"  plan: {plan.describe()} predicted {plan.predicted['latency_ms']:.4f} ms")

        t = stage(f"fine-tune plan ({b:g} ms)")
        train_dir = bdir / "train"
        reused = (train_dir / "metrics.json").is_file()
        source = {"plan": plan.to_dict(), "adapter_weights": str(plan_path.with_suffix(".safetensors").resolve())}
        finetune(source, zoo, task, recipe, train_dir, log=None, test=False, eval_phase1=True)
        log.record(f"finetune {b:g} ms", "reused" if reused else "computed", time.time() - t)
        entry["phase1_top1"] = json.loads((train_dir / "metrics.json").read_text()).get("phase1_test_accuracy")
        entry.update(_evaluate_and_measure(train_dir, task, backend, precision, spec, log, stage, say, f"plan {b:g} ms",
                                           ref=reference_ms(prof)))
        if opts.aoti and b == budgets[len(budgets) // 2]:
            entry["aoti"] = _export(train_dir, "aoti", log, stage, say, f"plan {b:g} ms")
        results.append(entry)

    # donor baselines: every donor that fits the largest budget, same recipe
    feasible = [r for r in results if "plan" in r]
    max_budget = max(budgets)
    donors = {}
    for name, ms in sorted(donor_ms.items(), key=lambda kv: kv[1]):
        if ms > max_budget:
            continue
        t = stage(f"fine-tune donor {name} ({ms:.3f} ms)")
        ddir = out / "donors" / name
        reused = (ddir / "metrics.json").is_file()
        finetune({"donor": name, "zoo_ref": zoo.ref}, zoo, task, recipe, ddir, log=None, test=False)
        log.record(f"finetune donor {name}", "reused" if reused else "computed", time.time() - t)
        ev = _evaluate_and_measure(ddir, task, backend, precision, spec, log, stage, say, f"donor {name}", measure=False)
        donors[name] = {**ev, "latency_ms": ms}
    for r in results:
        r["donors_within_budget"] = sorted((n for n, d in donors.items() if d["latency_ms"] <= r["budget_ms"]),
                                           key=lambda n: -donors[n]["top1"])

    t = stage("report")
    from dery_deploy.report.report import write_report

    manifest.update({"status": "done" if feasible else "no-feasible-budget", "budgets": budgets, "results": results,
                     "donors": donors, "donor_latency_ms": donor_ms, "verify": {k: v[k] for k in v if k != "assemblies"},
                     "profile": str(prof_file.relative_to(out)), "seconds": round(time.time() - t_run, 1),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_report(out, manifest, zoo, sim, part, prof, rows)
    log.record("report", "computed", time.time() - t)
    manifest["seconds"] = round(time.time() - t_run, 1)
    atomic_write_json(out / "run.json", manifest)
    if not feasible:
        from dery_deploy.assemble.stage import program_data
        from dery_deploy.assemble.program import fastest_latency

        fastest = fastest_latency(program_data(zoo, part, dis, sim, prof, str(prof_file)))
        raise DeryError(f"no budget was feasible on {spec.id}; the fastest assembly is predicted at {fastest:.4f} ms "
                        f"(report: {out / 'report.md'})", "run")
    return manifest


def _evaluate_and_measure(run_dir: Path, task, backend, precision, spec, log, stage, say, label, measure=True,
                          ref: float | None = None) -> dict:
    from dery_deploy.profile.items import example_input
    from dery_deploy.profile.run import device_for, measure_module
    from dery_deploy.train.evaluate import evaluate_model
    from dery_deploy.train.finetune import load_run_model

    t = stage(f"evaluate {label}")
    ev_path = run_dir / "evaluation.json"
    if ev_path.is_file():
        ev = json.loads(ev_path.read_text())
        log.record(f"evaluate {label}", "reused", time.time() - t)
    else:
        model, cfg = load_run_model(run_dir)
        ev = evaluate_model(model, task, run_dir, label, latency=False)
        if measure:
            # the fine-tuned network, measured end to end with the profile's backend, as --verify does
            from dery_deploy.profile.calibration import Calibrator

            now = Calibrator(backend, precision, device_for(spec), 1).measure()
            m = measure_module(backend, model, example_input(spec_input(model, task), 1), precision, device_for(spec))
            ev["measured_raw_ms"] = m["median_ms"]
            ev["calibration_ms"] = round(now, 5)
            ev["measured_ms"] = round(m["median_ms"] * (ref / now if ref else 1.0), 5)  # at the profile's speed
            ev["measured_stable"] = m["stable"]
            atomic_write_json(ev_path, ev)
        log.record(f"evaluate {label}", "computed", time.time() - t)
    say(f"  {label}: top-1 {ev['top1']:.2f}%" + (f", measured {ev['measured_ms']:.4f} ms" if "measured_ms" in ev else ""))
    out = {"top1": ev["top1"], "per_class": ev["per_class"], "params_m": ev["params_m"], "confusion_png":
           str((run_dir / ev["confusion_png"]))}
    if "measured_ms" in ev:
        out["measured_ms"] = ev["measured_ms"]
    if measure:
        out["onnx"] = _export(run_dir, "onnx", log, stage, say, label)
    return out


def spec_input(model, task):
    from dery_deploy.dissect.spec import TensorSpec

    c, h, w = task.test_x.shape[1:]
    return TensorSpec("NCHW", c, h, w, 0, 1.0)


def _export(run_dir: Path, fmt: str, log, stage, say, label) -> dict:
    from dery_deploy.export.stage import export_run

    t = stage(f"export {fmt} ({label})")
    rep_path = run_dir / "export" / f"report-{fmt}.json"
    if rep_path.is_file():
        rep = json.loads(rep_path.read_text())
        log.record(f"export {fmt} {label}", "reused", time.time() - t)
    else:
        try:
            rep = export_run(run_dir, fmt, None, None, None, None, allow_over_budget=True, force=True)
        except DeryError as e:
            rep = {"format": fmt, "error": str(e)}
        log.record(f"export {fmt} {label}", "computed", time.time() - t)
    if "parity" in rep:
        b = rep.get("budget", {})
        verdict = "" if not b.get("checked") else (" within budget" if b["within_budget"] else " OVER BUDGET")
        say(f"  {fmt}: parity {rep['parity']['max_abs_diff']:.1e}, {rep['latency_ms']:.4f} ms{verdict}")
    else:
        say(f"  {fmt}: {rep.get('error')}")
    return rep
