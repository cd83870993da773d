"""`dery run`: the main job, one function per stage, each reused when its artifact still matches.

zoo -> similarity -> partition -> profile (+ latency-model check) -> budgets from the donors'
latencies -> per budget: assemble, fine-tune, evaluate, export + parity + budget check -> donor
baselines with the same recipe -> report.md / report.html.

Everything lives in one run folder (its own cache included). A rerun with the same options reuses
every stage; a rerun with other options reuses what still matches (the same similarity, partition,
profile) and recomputes the rest; an interrupted run resumes. A failed run's manifest says which
stage failed and why.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from dery_deploy.artifacts import JsonArtifact, atomic_write_json, make_output_dir
from dery_deploy.assemble.candidates import DONOR_NEAR, AdapterFitter, donor_near
from dery_deploy.assemble.program import fastest
from dery_deploy.assemble.stage import MAX_MARGIN, NoFinalistKeeps, Scores, assemble, program_data
from dery_deploy.data.task import DEFAULT_DATA, Task, load_task
from dery_deploy.errors import DeryError
from dery_deploy.export.package import refresh_latency
from dery_deploy.export.stage import BudgetVerdict, budget_check, export_run
from dery_deploy.network.items import donor_key
from dery_deploy.network.plan import Plan, load_plan, save_plan_with_weights
from dery_deploy.partition.cover_set import optimise
from dery_deploy.partition.stage import Partition, make_partition, problem_from
from dery_deploy.pipeline.final_pass import Compared, measure_compared
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.run import resolve_backend, run_profile, verify
from dery_deploy.profile.store import Profile, profile_path, read_profile
from dery_deploy.report.report import write_report
from dery_deploy.runtime.backends import Backend, get_backend
from dery_deploy.runtime.devices import DeviceSpec, get_device, this_machine
from dery_deploy.runtime.harness import BUSY_CORES, PERCENTILES, Measurement, PassSummary, busy_note
from dery_deploy.similarity.compute import Similarity, compute_similarity
from dery_deploy.train.evaluate import evaluate_model
from dery_deploy.train.finetune import Recipe, finetune, load_run_model
from dery_deploy.train.select import SCREEN_FOLDS, Finalist, default_folds, select
from dery_deploy.train.teacher import Teacher, make_teacher
from dery_deploy.zoo.load import dissect_zoo, get_zoo
from dery_deploy.zoo.spec import ZooSpec
from dery_deploy.zoo.summary import zoo_rows

T = TypeVar("T")


@dataclass
class RunOptions:
    zoo: str = "fashion"
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    budgets: list[float] | None = None
    data: str = DEFAULT_DATA
    probe_data: str | None = None  # unlabelled images for similarity (default: the task's own)
    K: int = 4
    epochs_adapter: int = 4
    epochs_full: int = 6
    top: int = 10
    verify: int = 10
    probe: int = 512
    restarts: int = 50
    aoti: bool = False  # an AOTInductor package for the middle budget: opt-in (--aoti), it never ships on a CPU
    quick: bool = False
    seed: int = 0
    out: str = "runs/default"
    allow_over_budget: bool = False  # else a shipped artifact measured over its budget fails the run
    batch: int = 1  # images per call the budgets are for (32: a throughput budget)
    percentile: int = 50  # of single calls, what every budget promises
    threads: int | None = None  # CPU threads the runtime computes with (None: the device spec's)
    targets: list[str] | None = None  # backend/precision pairs to search (None: the device spec's `search`)

    def check(self) -> None:
        """Every bad option at once, before any work starts."""
        bad = []
        if self.K < 1:
            bad.append(f"-K must be >= 1, got {self.K}")
        if self.epochs_adapter < 0 or self.epochs_full < 0 or self.epochs_adapter + self.epochs_full == 0:
            bad.append(f"epochs must be >= 0 and not both 0, got {self.epochs_adapter} and {self.epochs_full}")
        if self.top < 1:
            bad.append(f"--top must be >= 1, got {self.top}")
        if self.verify < 3:
            bad.append(f"--verify must be >= 3 (mixed assemblies to judge the latency model), got {self.verify}")
        if self.probe < 8:
            bad.append(f"--probe must be >= 8, got {self.probe}")
        if self.budgets is not None and any(not b > 0 for b in self.budgets):
            bad.append(f"--budgets must be positive, got {self.budgets}")
        if self.batch < 1:
            bad.append(f"--batch must be >= 1, got {self.batch}")
        if self.percentile not in PERCENTILES:
            bad.append(f"--percentile must be one of {', '.join(map(str, PERCENTILES))}, got {self.percentile}")
        if self.threads is not None and self.threads < 1:
            bad.append(f"--threads must be >= 1, got {self.threads}")
        if bad:
            raise DeryError("; ".join(bad), "run")

    def apply_quick(self) -> None:
        """--quick: one budget, short training, fewer candidates; same stages."""
        self.epochs_adapter, self.epochs_full = min(self.epochs_adapter, 1), min(self.epochs_full, 2)
        self.top, self.verify, self.probe, self.restarts = (
            min(self.top, 4),
            min(self.verify, 5),
            min(self.probe, 256),
            20,
        )
        self.aoti = False


@dataclass
class StageRecord:
    stage: str
    status: str  # computed | reused | loaded | infeasible
    seconds: float
    note: str = ""


@dataclass
class RunManifest(JsonArtifact):
    KIND = "run"
    SCHEMA = 2
    STAGE = "run"

    zoo: str
    zoo_hash: str
    device: str
    backend: str
    precision: str
    options: dict
    status: str = "running"  # running | done | no-feasible-budget | failed
    failed_stage: str | None = None
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    task: dict = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)
    donor_latency_ms: dict[str, float] = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    profile: str = ""
    results: list[dict] = field(default_factory=list)
    donors: dict[str, dict] = field(default_factory=dict)
    teacher: dict = field(default_factory=dict)
    final_pass: dict = field(default_factory=dict)  # the one interleaved measurement every comparison reads
    targets: list[str] = field(default_factory=list)  # backend/precision pairs searched
    verify_by_target: dict = field(default_factory=dict)  # each target's latency check (verify: the first's)
    recipe: dict = field(default_factory=dict)  # what every compared network was trained with (Recipes.describe)
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> RunManifest:
        d = {k: v for k, v in d.items() if k not in ("schema", "kind")}
        d["stages"] = [StageRecord(**s) for s in d.get("stages", [])]
        return cls(**d)


def _round_sig(x: float, sig: int = 3) -> float:
    return float(f"{x:.{sig}g}")


def choose_budgets(donor_ms: dict[str, float], quick: bool, floor_ms: float = 0.0) -> tuple[list[float], list[str]]:
    """Budgets in the gaps between the donors' latencies, where a user has a real choice: below every
    donor (only reassembled networks fit), between the two fastest donors, and in the widest
    remaining gap; with --quick, only the one between the two fastest. None is below `floor_ms` (the
    fastest assembly plus the planning margin): a default budget is feasible by construction.

    Returns:
        the budgets, and notes on what was moved or left out and why.
    """
    lat = sorted(donor_ms.values())
    notes = []
    if len(lat) < 2:
        wanted = [_round_sig(0.85 * lat[0]), _round_sig(1.5 * lat[0])]
    else:
        first = _round_sig((lat[0] + lat[1]) / 2)
        rest = [(lat[i + 1] / lat[i], (lat[i] + lat[i + 1]) / 2) for i in range(1, len(lat) - 1)]
        wide = _round_sig(max(rest)[1]) if rest else _round_sig(1.5 * lat[-1])
        wanted = [first] if quick else [_round_sig(0.85 * lat[0]), first, wide]
    floor = _round_up(floor_ms)
    out = []
    for b in wanted:
        if b < floor:
            notes.append(
                f"budget {b:g} ms is below the fastest assembly plus the planning margin ({floor:g} ms): "
                + ("dropped" if any(w >= floor for w in wanted) else f"raised to {floor:g} ms")
            )
            b = floor if not any(w >= floor for w in wanted) else None
        if b is not None:
            out.append(b)
    return sorted(set(out)), notes


def _round_up(x: float, sig: int = 3) -> float:
    """x rounded up to `sig` significant digits (a budget floor must not round below what it bounds)."""
    if x <= 0:
        return 0.0
    r = _round_sig(x, sig)
    step = 10 ** (math.floor(math.log10(abs(x))) - sig + 1)
    return r if r >= x else float(f"{r + step:.{sig}g}")


class Run:
    """One `dery run`: its options, folder, manifest and the reuse-or-compute helper every stage uses."""

    def __init__(self, opts: RunOptions, console=None, progress_factory=None):
        self.opts = opts
        self.out = Path(opts.out)
        self.cache = self.out / "cache"
        self.console = console
        self.progress_factory = progress_factory
        self.t0 = time.time()

    def say(self, text: str) -> None:
        if self.console:
            self.console.print(text)
        else:
            print(text)

    def progress(self):
        from contextlib import nullcontext

        return self.progress_factory() if self.progress_factory else nullcontext(None)

    def stage(
        self, name: str, reuse: Callable[[], T | None], compute: Callable[[], T], note: Callable[[T], str] = None
    ) -> T:
        """Reuse-or-compute: `reuse()` returns the stage's still-valid result (or None), else `compute()`."""
        self.say(f"[bold cyan]> {name}[/]" if self.console else f"> {name}")
        self.current = name
        t = time.time()
        result = reuse()
        status = "reused"
        if result is None:
            result = compute()
            status = "computed"
        self.manifest.stages.append(StageRecord(name, status, round(time.time() - t, 2), note(result) if note else ""))
        self.save()
        return result

    def record(self, name: str, status: str, seconds: float, note: str = "") -> None:
        self.manifest.stages.append(StageRecord(name, status, round(seconds, 2), note))
        self.save()

    def save(self) -> None:
        self.manifest.seconds = round(time.time() - self.t0, 1)
        self.manifest.write(self.out / "run.json")


def target_name(backend: Backend, precision: str) -> str:
    return f"{backend.name}/{precision}"


def resolve_targets(spec: DeviceSpec, opts: RunOptions) -> list[tuple[Backend, str]]:
    """The backend/precision pairs this run searches: --targets, else --backend/--precision alone,
    else the device spec's `search` list; each checked to run here."""
    if opts.targets:
        names = opts.targets
    elif opts.backend or opts.precision:
        names = [f"{opts.backend or spec.default_backend}/{opts.precision or spec.default_precision}"]
    else:
        names = spec.targets()
    out = []
    for n in dict.fromkeys(names):
        if n.count("/") != 1:
            raise DeryError(f"--targets takes backend/precision pairs (e.g. openvino/int8), got {n!r}", "run")
        b, p = n.split("/")
        out.append(resolve_backend(spec, b, p, opts.threads))
    return out


def check_run_dir(out: Path, zoo, device: str) -> None:
    path = out / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            return  # a torn manifest from a killed run: rewritten below
        if old.get("zoo") != zoo.name or old.get("device") != device:
            raise DeryError(
                f"run directory {out} belongs to zoo {old.get('zoo')!r} on device {old.get('device')!r}, "
                f"not {zoo.name!r} on {device!r}; choose another -o",
                "run",
            )


def run(opts: RunOptions, console=None, progress_factory=None) -> RunManifest:
    opts.check()
    if opts.quick:
        opts.apply_quick()
    r = Run(opts, console, progress_factory)
    zoo = get_zoo(opts.zoo)
    spec = get_device(opts.device) if opts.device else (this_machine() or [get_device("cpu")])[0]
    check_run_dir(r.out, zoo, spec.id)
    targets = resolve_targets(spec, opts)
    backend, precision = targets[0]
    t0 = time.time()
    task = load_task(opts.data, zoo.input, opts.seed)  # a bad --data is one line and leaves no folder behind
    task_seconds = time.time() - t0
    make_output_dir(r.out, "run folder", "run")
    r.manifest = RunManifest(
        zoo.name, zoo.hash(), spec.id, backend.name, precision, asdict(opts), started=time.strftime("%Y-%m-%dT%H:%M:%S")
    )
    r.manifest.targets = [target_name(b, p) for b, p in targets]
    r.current = "setup"
    try:
        _run_stages(r, zoo, spec, targets, task, task_seconds)
    except BaseException as e:
        r.manifest.status = "failed" if not isinstance(e, KeyboardInterrupt) else "interrupted"
        r.manifest.failed_stage = r.current
        r.manifest.error = str(e) if isinstance(e, DeryError) else f"{type(e).__name__}: {e}"
        r.manifest.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        r.save()
        raise
    return r.manifest


def _run_stages(r: Run, zoo, spec: DeviceSpec, targets: list[tuple[Backend, str]], task: Task, task_seconds: float):
    opts = r.opts
    r.say("[bold cyan]> task[/]" if r.console else "> task")
    r.current = "task"
    r.record("task", "loaded", task_seconds, task.summary() + "".join(f"; {n}" for n in task.notes))
    for n in task.notes:
        r.say(f"  [yellow]note:[/] {n}" if r.console else f"  note: {n}")
    r.manifest.task = {"spec": task.spec, "hash": task.hash(), "classes": task.classes, "summary": task.summary()}
    rows = stage_zoo(r, zoo)
    dis = dissect_zoo(zoo)
    sim = stage_similarity(r, zoo, task)
    part = stage_partition(r, zoo, sim, dis)
    models: list[LatencyModel] = []
    for backend, precision in targets:
        prof_file = stage_profile(r, zoo, spec, backend, precision, part, dis, task)
        prof = stage_verify(r, zoo, spec, prof_file, part, dis, target_name(backend, precision))
        models.append(LatencyModel.of(prof, str(prof_file), opts.percentile))
    backend, precision = targets[0]
    model, prof = models[0], models[0].profile
    # a donor's latency is that of its fastest target: what a budget must beat to be worth reassembling for
    donor_ms = {
        n: round(min(m.predict_ms([donor_key(zoo, n, task.num_classes)]) for m in models), 5) for n in zoo.donor_names
    }
    fitter = AdapterFitter.for_task(dis, task)
    computed: list[Scores] = []

    def scores() -> Scores:
        """The task-aware quality terms, computed the first time they are needed."""
        if not computed:
            computed.append(
                r.stage(
                    "task-aware scores (transferability, seams)",
                    lambda: None,
                    lambda: Scores.compute(dis, task, part, fitter),
                    lambda sc: f"{len(sc.transfer)} boundaries, {len(sc.seams)} seams",
                )
            )
        return computed[0]

    budgets = opts.budgets
    if not budgets:
        floor = min(feasible_floor(zoo, part, dis, m, task, scores()) for m in models)
        budgets, notes = choose_budgets(donor_ms, opts.quick, floor)
        for n in notes:
            r.say(f"  note: {n}")
    r.manifest.budgets, r.manifest.donor_latency_ms = budgets, donor_ms
    at = "" if opts.percentile == 50 else f" at p{opts.percentile}"
    r.say(
        f"  budgets{at}: {', '.join(f'{b:g} ms' for b in budgets)} (donors, predicted: "
        + ", ".join(f"{n} {ms:.3f}" for n, ms in sorted(donor_ms.items(), key=lambda kv: kv[1]))
        + ")"
    )
    recipes = Recipes.of(opts)
    r.manifest.recipe = recipes.describe()
    ce = stage_donors(r, zoo, task, recipes.ce, donor_ms, teacher_pool(donor_ms, budgets), "ce")
    teacher_name = max(ce, key=lambda n: (ce[n]["val_accuracy"], n))
    teacher = make_teacher(
        [r.out / "donors" / "ce" / teacher_name], task, recipes.teacher_pool, opts.seed, r.cache, load_run_model
    )
    r.manifest.teacher = {"donor": teacher_name, "val_accuracy": ce[teacher_name]["val_accuracy"], **teacher.describe()}
    r.say(f"  teacher: {teacher_name} (validation {ce[teacher_name]['val_accuracy']:.2f}%)")
    within = final_donors(donor_ms, budgets)
    r.manifest.donors = stage_donors(r, zoo, task, recipes.final, donor_ms, within, "final", teacher, evaluate=True)
    ctx = Context(zoo, spec, backend, precision, part, dis, model, task, recipes, fitter, scores, teacher, models)
    for i, b in enumerate(list(budgets)):
        res = stage_budget(r, ctx, b, aoti=opts.aoti and i == len(budgets) // 2)
        if not opts.budgets and res.get("fastest_measured_ms"):
            res = rederive_budget(
                r, ctx, budgets, i, res["fastest_measured_ms"], aoti=opts.aoti and i == len(budgets) // 2
            )
        r.manifest.results.append(res)
        ctx.carried += [f["plan"] for f in r.manifest.results[-1].get("finalists", []) if f["seams"]]
    feasible = [res for res in r.manifest.results if "plan" in res]
    if feasible:
        stage_final_pass(r, ctx)
    r.manifest.status = "done" if feasible else "no-feasible-budget"
    r.manifest.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    r.stage("report", lambda: None, lambda: write_report(r.out, r.manifest, zoo, sim, part, prof, rows))
    r.save()
    if not feasible:
        f = fastest(program_data(zoo, part, dis, model, task.num_classes, scores()))
        raise DeryError(
            f"no budget was feasible on {spec.id}; the fastest assembly is predicted at {f.latency_ms:.4f} ms "
            f"(report: {r.out / 'report.md'})",
            "run",
        )
    verdicts = [
        (res, BudgetVerdict(**res["onnx"]["budget"])) for res in feasible if (res.get("onnx") or {}).get("budget")
    ]
    for res, v in verdicts:
        if v.status == "undecided":
            r.say(f"  [yellow]budget {res['budget_ms']:g} ms: {v.line()}[/]" if r.console else f"  {v.line()}")
    over = [res for res, v in verdicts if v.over]
    if over and not opts.allow_over_budget:
        worst = max(over, key=lambda res: res["onnx"]["budget"]["measured_ms"] / res["budget_ms"])
        raise DeryError(
            f"{len(over)} shipped artifact(s) over budget, e.g. {BudgetVerdict(**worst['onnx']['budget']).line()}; "
            f"see {r.out / 'report.md'}, or pass --allow-over-budget to accept them",
            "run",
        )


# a budget the run chose itself and its finalists then measured over is raised to the fastest finalist's
# measurement plus this much: the passes of one run were seen to disagree by up to 40% on a drifting host
REDERIVE_MARGIN = 0.05


def rederive_budget(r: Run, ctx: Context, budgets: list[float], i: int, fastest_ms: float, aoti: bool) -> dict:
    """A default budget that the finalists' own measurement found infeasible (the profile predicted them
    within it) is raised to what they measured, said on the terminal, and assembled again."""
    new = _round_up(fastest_ms * (1 + REDERIVE_MARGIN))
    r.say(
        f"  note: budget {budgets[i]:g} ms was chosen from the profile, but every finalist measured slower when built "
        f"(the fastest {fastest_ms:.4f} ms): the machine runs slower now than when it was profiled; raised to "
        f"{new:g} ms"
    )
    budgets[i] = new
    r.manifest.budgets = sorted(set(budgets))
    donor_ms = r.manifest.donor_latency_ms
    untrained = [n for n in final_donors(donor_ms, [new]) if n not in r.manifest.donors]
    if untrained:  # the raised budget may pick a donor no smaller budget could: it is trained to ship first
        z, t = ctx.zoo, ctx.task
        r.manifest.donors.update(
            stage_donors(r, z, t, ctx.recipes.final, donor_ms, untrained, "final", ctx.teacher, evaluate=True)
        )
    return stage_budget(r, ctx, new, aoti=aoti)


def feasible_floor(zoo, part, dis, model: LatencyModel, task: Task, scores: Scores) -> float:
    """The smallest budget the program can meet: the fastest assembly's predicted latency plus the
    planning margin the assembler will apply."""
    f = fastest(program_data(zoo, part, dis, model, task.num_classes, scores))
    check = model.profile.verify
    margin = min(check.at(model.percentile)[3], MAX_MARGIN) if check else 0.0
    return f.latency_ms * (1 + margin) if f else 0.0


def stage_final_pass(r: Run, ctx: Context) -> None:
    """Measure every compared network on every target in one interleaved pass and judge and compare
    with it alone (`final_pass.py`): donors' latency, which donors fit each budget, the best
    reassembled networks, and each shipped artifact against its budget (its export report is
    rewritten with that verdict)."""
    m = r.manifest
    backends = {f"{mm.profile.backend}/{mm.profile.precision}": mm for mm in ctx.models}
    compared = []
    for name, mm in backends.items():
        be = get_backend(mm.profile.backend, mm.profile.threads)
        compared += [
            Compared(f"donor:{n}|{name}", Path(d["run"]), be, mm.profile.precision) for n, d in sorted(m.donors.items())
        ]
        compared += [
            Compared(f"mix:{res['budget_ms']:g}|{name}", Path(res["run_mix"]), be, mm.profile.precision)
            for res in m.results
            if res.get("mix")
        ]
    for res in m.results:
        if "plan" in res and (res.get("onnx") or {}).get("artifact"):
            plan, name = res["plan"], f"{res['plan']['backend']}/{res['plan']['precision']}"
            be = get_backend(plan["backend"], plan.get("threads"))
            art = Path(res["export_dir"]) / res["onnx"]["artifact"]
            compared.append(Compared(f"ship:{res['budget_ms']:g}|{name}", Path(res["run"]), be, plan["precision"], art))
    x = task_example(ctx)
    device = "cuda" if ctx.spec.kind == "cuda" else "cpu"
    path = r.out / "final_pass.json"
    key = {
        "compared": [[c.key, _stamp(c.artifact or c.run_dir / "checkpoint.safetensors")] for c in compared],
        "run": [ctx.model.profile.batch, ctx.model.profile.threads, r.opts.percentile],
    }

    def reuse():
        if not path.is_file():
            return None
        old = json.loads(path.read_text())
        return old if old.get("key") == key else None

    def compute():
        with r.progress() as prog:
            meas, summary = measure_compared(compared, device, x, r.opts.percentile, ctx.model.profile.threads, prog)
        out = {"key": key, "summary": summary.to_dict(), "measurements": {k: v.to_dict() for k, v in meas.items()}}
        atomic_write_json(path, out)
        return out

    fp = r.stage(
        f"final measurement ({len(compared)} network-target pairs, one interleaved pass)",
        reuse,
        compute,
        lambda fp: (
            f"noise index {100 * fp['summary']['noise_index']:.1f}%"
            + (f"; [yellow]{busy}[/]" if (busy := PassSummary(**fp["summary"]).load_line()) else "")
        ),
    )
    apply_final_pass(r, ctx, fp)


def task_example(ctx: Context):
    import torch

    return torch.randn(
        ctx.model.profile.batch, *ctx.zoo.input_tensor_spec.shape, generator=torch.Generator().manual_seed(0)
    )


def _stamp(path: Path) -> list:
    """What identifies a file's content cheaply: size and modification time."""
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _artifact(folder: Path) -> Path | None:
    p = folder / "model.onnx"
    return p if p.is_file() else None


def apply_final_pass(r: Run, ctx: Context, fp: dict) -> None:
    """Every latency the report compares, from the final pass; each shipped artifact judged against its budget.

    A donor's latency is that of its fastest target; it fits a budget when any target does, with the
    accuracy of the most accurate target that fits (its int8 test accuracy measured where only int8 fits)."""
    m = r.manifest
    q = r.opts.percentile
    meas = {k: Measurement(**v) for k, v in fp["measurements"].items()}
    m.final_pass = {**fp["summary"], "percentile": q, "measurements": fp["measurements"]}

    def by_target(what: str) -> dict[str, Measurement]:
        return {k.split("|", 1)[1]: v for k, v in meas.items() if k.split("|", 1)[0] == what}

    for n, d in m.donors.items():
        ts = by_target(f"donor:{n}")
        fastest_t = min(ts, key=lambda t: ts[t].promise_at(q))
        d["profile_latency_ms"] = d.get("profile_latency_ms", d["latency_ms"])
        d["latency_by_target"] = {
            t: {"ms": round(v.promise_at(q), 5), "uncertainty": round(v.promise_uncertainty_at(q), 5)}
            for t, v in ts.items()
        }
        d["latency_ms"], d["latency_uncertainty"] = d["latency_by_target"][fastest_t].values()
        d["fastest_target"] = fastest_t
    for res in m.results:
        if "plan" not in res:
            continue
        b = res["budget_ms"]
        if res.get("mix"):
            ts = by_target(f"mix:{b:g}")
            t = min(ts, key=lambda k: ts[k].promise_at(q))
            res["mix"]["measured_ms"] = round(ts[t].promise_at(q), 5)
            res["mix"]["measured_uncertainty"] = round(ts[t].promise_uncertainty_at(q), 5)
            res["mix"]["measured_target"] = t
        [(target, shipped)] = by_target(f"ship:{b:g}").items() or [(None, None)]
        onnx = res.get("onnx") or {}
        if shipped is not None:
            res["measured_ms"], res["measured_uncertainty"] = (
                round(shipped.promise_at(q), 5),
                round(shipped.promise_uncertainty_at(q), 5),
            )
            res["admitted_disagreement"] = admitted_disagreement(r, res, target, shipped.promise_at(q))
            verdict = budget_check(
                res["plan"], shipped, onnx["device"], onnx["precision"], onnx["batch"], onnx.get("threads")
            )
            verdict.measured_in = "the run's final pass, beside every compared network"
            onnx["budget"] = asdict(verdict)
            report = Path(res["export_dir"]) / f"report-{res.get('export_format', 'onnx')}.json"
            if report.is_file():
                atomic_write_json(report, {**json.loads(report.read_text()), "budget": onnx["budget"]})
            # the package states what the report states: the final pass's figure of the shipped file
            refresh_latency(
                Path(res["export_dir"]),
                shipped,
                verdict.line(),
                verdict.measured_in,
                (fp["summary"].get("references_ms") or {}).get(f"{res['plan']['backend']}/t{onnx.get('threads')}"),
                fp["summary"].get("other_load_cores"),
            )
        fitting = {}
        for n, d in m.donors.items():
            fits = [t for t, v in d["latency_by_target"].items() if v["ms"] <= b]
            if fits:
                fitting[n] = donor_accuracy(r, ctx, n, d, fits)
        res["donors_within_budget"] = sorted(fitting, key=lambda n: -fitting[n]["top1"])
        res["donor_fit"] = fitting


# how far the measurement that admitted a finalist may differ from the final pass's before the run says so
ADMITTED_DISAGREEMENT = 0.10


def admitted_disagreement(r: Run, res: dict, target: str, final_ms: float) -> float | None:
    """The relative difference between the shipped network's measurement as a finalist (which admitted it
    under the budget) and the final pass's, said on the terminal when above `ADMITTED_DISAGREEMENT`: the
    two were taken minutes apart in other passes, and a machine whose speed moved between them makes
    the admission and the verdict disagree (seen: 35-60% on one host)."""
    pick = res.get("pick_triple") or {}
    rows = [f for f in res.get("finalists", []) if (f["plan"], f.get("target")) == (pick.get("network"), target)]
    admitted = (rows[0].get("measured") or {}).get("latency_ms") if rows else None
    if not admitted:
        return None
    rel = round(final_ms / admitted - 1, 4)
    if abs(rel) > ADMITTED_DISAGREEMENT:
        r.say(
            f"  note: budget {res['budget_ms']:g} ms: the shipped network measured {admitted:.4f} ms as a finalist and "
            f"{final_ms:.4f} ms in the final pass ({100 * rel:+.0f}%): the machine's speed moved between the two "
            "passes (or other processes loaded it); the verdict below is the final pass's"
        )
    return rel


def donor_accuracy(r: Run, ctx: Context, name: str, d: dict, fits: list[str]) -> dict:
    """A donor's test accuracy on the best target of `fits`: fp32 as evaluated, else the int8 network's, measured."""
    fp32 = [t for t in fits if not t.endswith("/int8")]
    if fp32:
        return {"target": min(fp32, key=lambda t: d["latency_by_target"][t]["ms"]), "top1": d["top1"]}
    best = None
    for t in fits:
        acc = int8_on(Path(d["run"]), ctx.task, t, ctx.model.profile.threads, "test")["top1"]
        if best is None or acc > best["top1"]:
            best = {"target": t, "top1": acc}
    return best


def stage_zoo(r: Run, zoo) -> list[dict]:
    path = r.out / "zoo.json"

    def reuse():
        if path.is_file():
            d = json.loads(path.read_text())
            return d["donors"] if d.get("zoo_hash") == zoo.hash() else None
        return None

    def compute():
        rows = zoo_rows(zoo)
        atomic_write_json(path, {"zoo": zoo.name, "zoo_hash": zoo.hash(), "donors": rows})
        return rows

    return r.stage("zoo", reuse, compute)


def stage_similarity(r: Run, zoo, task: Task) -> Similarity:
    probe_source = r.opts.probe_data or task.spec
    r.say("[bold cyan]> similarity[/]" if r.console else "> similarity")
    r.current = "similarity"
    with r.progress() as prog:
        sim, st = compute_similarity(
            zoo, r.opts.probe, r.opts.seed, cache=r.cache, probe_data=probe_source, progress=prog
        )
    r.record(
        "similarity",
        "reused" if st.computed == 0 else "computed",
        st.seconds,
        f"{st.computed} of {st.pairs} donor pairs computed, {st.probe_images} probe images",
    )
    return sim


def stage_partition(r: Run, zoo, sim: Similarity, dis) -> Partition:
    path = r.out / "partition.json"

    def reuse():
        if not Partition.is_current(path):
            return None
        old = Partition.read(path)
        same = (old.zoo_hash, old.K, old.similarity_key, old.restarts, old.seed) == (
            zoo.hash(),
            r.opts.K,
            sim.key,
            r.opts.restarts,
            r.opts.seed,
        )
        return old if same else None

    def compute():
        problem = problem_from(zoo, sim, r.opts.K, 0.2, dis)
        part = make_partition(zoo, sim, problem, optimise(problem, r.opts.restarts, r.opts.seed), dis, r.opts.seed)
        part.write(path)
        return part

    return r.stage("partition", reuse, compute, lambda p: f"K={p.K}, objective {p.objective:.3f}")


def stage_profile(r: Run, zoo, spec, backend, precision, part, dis, task) -> Path:
    batch = r.opts.batch
    path = profile_path(r.cache, spec.id, zoo.name, backend.name, precision, batch, backend.threads)
    before = len(read_profile(path).records) if Profile.is_current(path) else 0
    t = time.time()
    threads = f", {backend.threads} thread(s)" if backend.threads else ""
    name = f"profile ({spec.id}, {backend.name} {precision}, batch {batch}{threads})"
    r.say(f"[bold cyan]> {name}[/]" if r.console else f"> {name}")
    r.current = "profile"
    with r.progress() as prog:
        run_profile(
            zoo,
            spec,
            backend.name,
            precision,
            [batch],
            part,
            dis,
            r.cache,
            task.num_classes,
            prog,
            threads=backend.threads,
        )
    prof = read_profile(path)
    measured = len(prof.records) - before
    if measured and (busy := busy_note(prof.passes)):
        r.say(f"  [yellow]note:[/] {busy}" if r.console else f"  note: {busy}")
    r.record(
        f"profile {backend.name}/{precision}", "computed" if measured else "reused", time.time() - t,
        f"{measured} items measured",
    )  # fmt: skip
    return path


def stage_verify(r: Run, zoo, spec, prof_file: Path, part, dis, target: str = "") -> Profile:
    def reuse():
        prof = read_profile(prof_file)
        v = prof.verify
        return prof if v and (v.n, v.seed, v.partition_key) == (r.opts.verify, r.opts.seed, part.key) else None

    def compute():
        with r.progress() as prog:
            verify(zoo, spec, prof_file, part, dis, r.opts.verify, r.opts.seed, prog)
        return read_profile(prof_file)

    on = f", {target}" if target else ""
    prof = r.stage(f"latency-model check ({r.opts.verify} mixed assemblies{on})", reuse, compute)
    v = prof.verify
    summary = {k: val for k, val in v.to_dict().items() if k != "assemblies"}
    if not r.manifest.verify:  # the first target's, which the report's latency-model paragraph describes
        r.manifest.verify = summary
        r.manifest.profile = str(prof_file.relative_to(r.out))
    r.manifest.verify_by_target[target or prof.backend + "/" + prof.precision] = {
        **summary,
        "profile": str(prof_file.relative_to(r.out)),
    }
    r.say(
        f"  latency model{on}: median |error| {100 * v.median_abs_rel_error:.2f}%, max "
        f"{100 * v.max_abs_rel_error:.2f}% ({v.speed} item latencies x {v.scale:.3f})"
    )
    return prof


def final_donors(donor_ms: dict[str, float], budgets: list[float]) -> list[str]:
    """Donors trained with the final recipe: every one that may be a candidate at some budget (profiled
    up to `DONOR_NEAR` over it), since any candidate donor can be the pick that ships."""
    return [n for n, ms in donor_ms.items() if donor_near(ms, max(budgets))]


def teacher_pool(donor_ms: dict[str, float], budgets: list[float]) -> list[str]:
    """Donors trained as teacher candidates: those within twice the largest budget (at least the fastest
    two): the teacher may be slower than the budget, it never ships."""
    ranked = sorted(donor_ms, key=lambda n: (donor_ms[n], n))
    return [n for n in ranked if donor_ms[n] <= 2 * max(budgets)] or ranked[:2]


@dataclass
class Recipes:
    """The recipes of one run: `ce` trains teacher candidates and is the base of the selection's short
    rungs; `final` is the one recipe every compared network gets (donors and the picks alike)."""

    ce: Recipe
    final: Recipe
    rungs: tuple[int, ...]
    teacher_pool: int
    finalists: int  # mixed (non-donor) finalists per budget

    @classmethod
    def of(cls, opts: RunOptions) -> Recipes:
        ce = Recipe(epochs_adapter=opts.epochs_adapter, epochs_full=opts.epochs_full, plateau=0.02, seed=opts.seed)
        final = Recipe(
            match_epochs=1 if opts.quick else 4,
            match_images=4096 if opts.quick else 8192,
            epochs_adapter=opts.epochs_adapter,
            epochs_full=opts.epochs_full,
            plateau=0.02,
            distill=0.5,
            distill_images=1024 if opts.quick else 4096,
            seed=opts.seed,
        )
        return cls(ce, final, (1,) if opts.quick else (1, 2), 4096 if opts.quick else 8192, 2 if opts.quick else 4)

    def describe(self) -> dict:
        f = self.final

        def ep(n: int) -> str:
            return f"{n} epoch" + ("" if n == 1 else "s")

        return {
            "final": asdict(f),
            "selection_rungs_epochs": list(self.rungs),
            "mixed_finalists": self.finalists,
            "teacher_images": self.teacher_pool,
            "cut_to_fit": (
                f"scaled to fit this run's time on a small CPU (DeRy and SN-Net train 50-300 epochs): seam "
                f"matching {ep(f.match_epochs)} x up to {f.match_images} unlabelled images, phase 1 at most "
                f"{ep(f.epochs_adapter)} (until its loss plateaus), phase 2 {ep(f.epochs_full)}, distillation "
                f"on up to {f.distill_images} unlabelled images per epoch, selection rungs of "
                f"{'/'.join(str(x) for x in self.rungs)} epochs over {self.finalists} mixed finalists and every "
                f"fitting donor"
            ),
        }


@dataclass
class Context:
    """What every budget of a run shares: the zoo and device, the partition and latency model, the
    task, the recipes, the adapter fitter, the task-aware scores (computed on first use), the teacher."""

    zoo: ZooSpec
    spec: DeviceSpec
    backend: Backend
    precision: str
    part: Partition
    dis: dict
    model: LatencyModel
    task: Task
    recipes: Recipes
    fitter: AdapterFitter
    scores: Callable[[], Scores]
    teacher: Teacher
    models: list[LatencyModel] = field(default_factory=list)  # one per target searched, the first is `model`'s
    carried: list[str] = field(default_factory=list)  # mixed finalists of the smaller budgets so far

    @property
    def latency(self) -> tuple:
        """(backend, precision, device) of evaluations measured here."""
        return self.backend, self.precision, "cuda" if self.spec.kind == "cuda" else "cpu"


def stage_budget(r: Run, ctx: Context, b: float, aoti: bool) -> dict:
    """One budget: candidates on every target and measured (network, target) finalists, selection by
    evidence on validation, healing of the best mixed plan with the final recipe, the pick among the
    measured (network, runtime, precision) triples, then its evaluation and exports."""
    bdir = r.out / f"budget-{b:g}ms"
    entry: dict = {"budget_ms": b}
    try:
        sel = r.stage(
            f"assemble and select under {b:g} ms",
            lambda: _reuse_selection(bdir, selection_key(r, ctx)),
            lambda: assemble_and_select(r, ctx, b, bdir),
            lambda o: o["selection"]["pick"],
        )
    except DeryError as e:
        entry["infeasible"] = str(e)
        if isinstance(e, NoFinalistKeeps):
            entry["fastest_measured_ms"] = e.fastest_ms
        r.manifest.stages[-1:] = []
        r.record(f"assemble {b:g} ms", "infeasible", 0.0, str(e))
        r.say(f"  [yellow]{e}[/]" if r.console else f"  {e}")
        return entry
    s = sel["selection"]
    entry.update({k: sel[k] for k in ("candidates", "finalists", "rejected_over_budget", "solver", "margin")})
    entry["selection"] = s
    paths = {(f["plan"], f.get("target", "")): bdir / f["path"] for f in sel["finalists"]}
    if s["best_mix"]:
        entry["mix"] = heal_best_mix(r, ctx, b, bdir, s["best_mix"], paths)
        entry["mix"]["selection_accuracy"] = last_rung_accuracy(s).get(s["best_mix"])
        entry["run_mix"] = str(bdir / "mix")
        carry_better_mix(r, entry, sel)
    triples = score_triples(r, ctx, sel, entry.get("mix"), Path(entry["run_mix"]) if entry.get("mix") else None)
    pick = pick_triple(triples, s)
    entry["triples"] = triples
    entry["pick_triple"] = pick
    r.say(f"  pick: {pick['network']} on {pick['target']} ({pick['rule']})")
    plan = load_plan(paths[(pick["network"], pick["target"])]).to_dict()
    fmt = EXPORT_FORMAT.get(plan["backend"], "onnx")
    if pick["kind"] == "mix":
        run_dir = Path(entry["run_mix"])
        entry.update({"pick_kind": "mix", "run": str(run_dir)})
        entry.update({k: v for k, v in entry["mix"].items() if k in ("top1", "per_class", "params_m", "confusion_png")})
        entry["val_accuracy"] = entry["mix"].get("val_accuracy")
    else:
        d = r.manifest.donors[plan["blocks"][0]["donor"]]
        run_dir = Path(d["run"])
        entry.update({"pick_kind": "donor", "run": d["run"]})
        entry.update({k: d[k] for k in ("top1", "val_accuracy", "params_m", "per_class", "confusion_png")})
    entry["plan"] = plan
    entry["export_format"] = fmt
    entry["export_dir"] = str(bdir / "export")
    label = f"{pick['kind']} {pick['network']}"[:60]
    entry["onnx"] = stage_export(r, run_dir, fmt, label, plan=plan, out=bdir / "export", precision=plan["precision"])
    if plan["precision"] == "int8" and entry["onnx"].get("int8_top1") is not None:
        entry["fp32_top1"], entry["top1"] = entry["top1"], entry["onnx"]["int8_top1"]
    entry["measured_ms"] = entry["onnx"].get("latency_ms")
    if aoti:
        entry["aoti"] = stage_export(r, run_dir, "aoti", f"pick {b:g} ms", plan=plan, out=bdir / "export")
    return entry


# what ships for a plan made with each backend: the artifact that backend runs
EXPORT_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}


def selection_key(r: Run, ctx: Context) -> dict:
    """What a budget's assembly and selection depend on, beyond the budget itself."""
    return {
        "partition": ctx.part.key,
        "task": ctx.task.hash(),
        "top": r.opts.top,
        "rungs": list(ctx.recipes.rungs),
        "recipe": asdict(ctx.recipes.ce),
        "targets": [
            [m.profile.backend, m.profile.precision, m.profile.batch, m.profile.threads, len(m.profile.records)]
            for m in ctx.models
        ],
        "percentile": ctx.model.percentile,
        "carried": ctx.carried,
        "folds": [default_folds(ctx.task), SCREEN_FOLDS],
        "donor_near": DONOR_NEAR,
    }


def _reuse_selection(bdir: Path, key: dict) -> dict | None:
    path = bdir / "selection.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return old if old.get("key") == key else None


def assemble_and_select(r: Run, ctx: Context, b: float, bdir: Path) -> dict:
    """Candidates on every target, (network, target) finalists measured in one pass, then selection
    by evidence among the networks (training does not depend on the runtime)."""
    with r.progress() as prog:
        res = assemble(
            ctx.zoo,
            ctx.part,
            ctx.dis,
            ctx.model,
            ctx.task,
            b,
            top=r.opts.top,
            seed=r.opts.seed,
            progress=prog,
            fitter=ctx.fitter,
            scores=ctx.scores(),
            finalists=ctx.recipes.finalists,
            more_models=tuple(ctx.models[1:]),
            carried=tuple(ctx.carried),
        )
    saved, networks = [], {}
    for i, c in enumerate(res.finalists):
        path = save_plan_with_weights(c.plan, c.net, bdir / "finalists" / f"{i:02d}.json")
        saved.append({**c.to_dict(), "path": f"finalists/{i:02d}.json"})
        if c.name not in networks:
            networks[c.name] = Finalist(
                c.name,
                {"plan": c.plan.to_dict(), "adapter_weights": str(path.with_suffix(".safetensors").resolve())},
                c.is_donor,
                c.measured.get("latency_ms"),
            )
    sel = select(
        list(networks.values()), ctx.zoo, ctx.task, bdir / "select", ctx.recipes.ce, rungs=ctx.recipes.rungs,
        log=lambda m: r.say(m),
    )  # fmt: skip
    out = {
        "key": selection_key(r, ctx),
        "candidates": [c.to_dict() for c in res.candidates],
        "finalists": saved,
        "rejected_over_budget": [c.to_dict() for c in res.rejected],
        "solver": res.solver,
        "margin": res.margin,
        "selection": sel.to_dict(),
    }
    atomic_write_json(bdir / "selection.json", out)
    return out


def heal_best_mix(r: Run, ctx: Context, b: float, bdir: Path, name: str, paths: dict) -> dict:
    """The best mixed plan healed with the final recipe (even when a donor ships: the report compares
    it with the donors trained the same way), evaluated, and exported as ONNX."""
    mix_dir = bdir / "mix"
    path = next(p for (n, _), p in paths.items() if n == name)
    plan = load_plan(path)
    source = {"plan": plan.to_dict(), "adapter_weights": str(path.with_suffix(".safetensors").resolve())}
    metrics = stage_finetune(
        r, f"heal {name} ({b:g} ms)", source, ctx.zoo, ctx.task, ctx.recipes.final, mix_dir, eval_phase1=True,
        teacher=ctx.teacher,
    )  # fmt: skip
    ev = stage_evaluate(r, mix_dir, ctx.task, f"best mix {b:g} ms")
    mix = {
        "plan": plan.to_dict(),
        "val_accuracy": metrics.get("val_accuracy"),
        "phase1_top1": metrics.get("phase1_test_accuracy"),
        "kept": metrics.get("kept"),
        "seam_matching": metrics.get("seam_matching"),
        **ev,
    }
    mix["onnx"] = stage_export(r, mix_dir, "onnx", f"best mix {b:g} ms")
    return mix


def last_rung_accuracy(s: dict) -> dict[str, float]:
    """Each finalist's validation accuracy at the last rung the selection trained."""
    last = max((t["rung"] for t in s["trials"]), default=0)
    return {t["finalist"]: t["val_accuracy"] for t in s["trials"] if t["rung"] == last}


def carry_better_mix(r: Run, entry: dict, sel: dict) -> None:
    """More room never buys a worse reassembled network: where a smaller budget's healed best mix has the
    higher validation accuracy and is a finalist that measured within this budget too, it is this
    budget's best mix as well (the same network, trained the same way: reused, not retrained)."""
    kept = {f["plan"] for f in sel["finalists"]}
    here = entry["mix"]
    for prev in r.manifest.results:
        m = prev.get("mix")
        if not m or prev["budget_ms"] >= entry["budget_ms"] or m.get("val_accuracy") is None:
            continue
        name = describe_plan(m["plan"])
        if name in kept and m["val_accuracy"] > (here.get("val_accuracy") or -1):
            here = {**m, "carried_from": prev["budget_ms"], "replaced": describe_plan(entry["mix"]["plan"])}
            entry["run_mix"] = prev["run_mix"]
    entry["mix"] = here


def describe_plan(plan: dict) -> str:
    return Plan.from_dict(plan).describe()


def score_triples(r: Run, ctx: Context, sel: dict, mix: dict | None, mix_dir: Path | None) -> list[dict]:
    """Every measured (network, target) finalist among the donors selection compared at its last rung and
    this budget's best mix (the one healed and shipped), with its validation accuracy on that target: the
    selection's for fp32, and for int8 the selection's plus the int8 change measured on the
    validation split by running the final network, quantized, on that runtime (a network's accuracy
    on another runtime or precision is measured, never assumed); a measured gain counts as none (on a
    few hundred images it is noise: an int8 file that scored 2.0 points above its fp32 source on 200
    validation images lost 0.26 on test)."""
    acc = last_rung_accuracy(sel["selection"])
    best_mix = describe_plan(mix["plan"]) if mix else None
    if best_mix and best_mix not in acc and mix.get("selection_accuracy") is not None:
        acc[best_mix] = mix["selection_accuracy"]  # carried from a smaller budget, where it was selected
    donor_runs = {f"{n} (whole donor)": Path(d["run"]) for n, d in r.manifest.donors.items()}
    out = []
    for f in sel["finalists"]:
        name, target = f["plan"], f.get("target") or ""
        if name not in acc:
            continue
        donor = f["origin"] == "donor"
        if not donor and name != best_mix:
            continue  # of the mixed plans, only the best (healed with the final recipe) ships
        final_run = donor_runs.get(name) if donor else mix_dir
        change = 0.0
        if target.endswith("/int8"):
            if final_run is None:
                continue  # only networks trained with the final recipe are quantized and measured
            change = int8_on(final_run, ctx.task, target, ctx.model.profile.threads, "val")["top1_change"]
        out.append(
            {
                "network": name,
                "target": target,
                "kind": "donor" if donor else "mix",
                "selection_accuracy": acc[name],
                "int8_change": round(change, 3),
                # quantization adds no accuracy: a gain on the validation split is its noise, not a reason to pick int8
                "val_accuracy": round(acc[name] + min(change, 0.0), 3),
                "measured_ms": f["measured"]["latency_ms"],
                "uncertainty": f["measured"].get("uncertainty"),
            }
        )
    return out


def pick_triple(triples: list[dict], s: dict) -> dict:
    """The pick among triples: the best donor triple unless the best mixed triple beats it on validation by
    more than the selection's noise; between a network's targets, the more accurate, then full precision,
    then the faster. An int8 target never scores above its network's fp32 one (`score_triples`), so
    int8 ships only a network that does not fit the budget in fp32 (more accurate than what does).
    The rule names the evidence: out of fold where selection cross-validated, else the validation split."""

    def best(kind: str) -> dict | None:
        ts = [t for t in triples if t["kind"] == kind]
        return max(
            ts,
            key=lambda t: (t["val_accuracy"], not t["target"].endswith("/int8"), -t["measured_ms"], t["target"]),
            default=None,
        )

    d, m = best("donor"), best("mix")
    noise = s.get("noise") or 0.0
    k = s.get("folds") or 1
    on = f"out of fold ({k}-fold cross-validation)" if k > 1 else "on validation"
    if d is None and m is None:
        raise DeryError("no measured finalist has a validation accuracy", "run")
    if d is None:
        return {**m, "rule": f"no donor fits the budget: the best mixed plan {on}"}
    if m is None:
        return {**d, "rule": f"no mixed plan is a finalist: the best donor {on}"}
    diff = m["val_accuracy"] - d["val_accuracy"]
    if diff > noise:
        return {**m, "rule": f"the mixed plan beats the best donor {on} by {diff:.2f} points, more than "
                f"the noise {noise:.2f}"}  # fmt: skip
    if abs(diff) < 0.005:
        why = f"the best donor: the best mixed plan ties it {on}"
    elif diff >= -noise:
        why = f"the best donor: the best mixed plan differs by {diff:+.2f} points {on}, within the noise {noise:.2f}"
    else:
        why = f"the best donor: the best mixed plan is {-diff:.2f} points worse {on}"
    return {**d, "rule": why}


def int8_on(run_dir: Path, task: Task, target: str, threads: int | None, split: str) -> dict:
    """The run's network as QDQ INT8 on the target's runtime against itself in fp32 on a split
    (`runtime.evaluate.accuracy_change`: top1, fp32_top1, top1_change, ...); cached beside the run."""
    from dery_deploy.runtime.evaluate import accuracy_change, artifact_runner
    from dery_deploy.runtime.quantize import CALIBRATION_IMAGES, qdq_from_module

    cache = run_dir / f"int8-{split}-{target.replace('/', '-')}.json"
    ckpt = run_dir / "checkpoint.safetensors"
    if cache.is_file() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(cache.read_text())
    model, cfg = load_run_model(run_dir)
    qdq = qdq_from_module(model, task.unlabelled_images(CALIBRATION_IMAGES, cfg["recipe"].get("seed", 0)))
    runtime = artifact_runner(qdq, target.split("/")[0], threads)
    acc = {**accuracy_change(model, runtime, task.x(split), task.y(split), split), "target": target}
    atomic_write_json(cache, acc)
    return acc


def stage_finetune(
    r: Run, name: str, source: dict, zoo, task, recipe, run_dir: Path, eval_phase1: bool = False, teacher=None
) -> dict:
    def reuse():
        if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
            return None
        cfg = json.loads((run_dir / "config.json").read_text())
        want = teacher.describe() if (teacher and recipe.distill) else None
        same = (
            cfg.get("source") == source
            and cfg.get("task_hash") == task.hash()
            and cfg.get("recipe") == asdict(recipe)
            and cfg.get("teacher") == want
        )
        return json.loads((run_dir / "metrics.json").read_text()) if same else None

    def compute():
        # another configuration in this folder (an earlier run with other options) is replaced, not refused
        return finetune(
            source,
            zoo,
            task,
            recipe,
            run_dir,
            force=True,
            log=None,
            test=False,
            eval_phase1=eval_phase1,
            teacher=teacher,
        )

    return r.stage(name, reuse, compute, lambda m: f"validation {m.get('val_accuracy')}%")


def stage_evaluate(r: Run, run_dir: Path, task, label: str, latency: tuple | None = None) -> dict:
    path = run_dir / "evaluation.json"
    ckpt = run_dir / "checkpoint.safetensors"

    def reuse():
        if path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime:
            ev = json.loads(path.read_text())
            return ev if (latency is None or "latency" in ev) else None
        return None

    def compute():
        model, _ = load_run_model(run_dir)
        return evaluate_model(model, task, run_dir, label, latency=latency)

    ev = r.stage(f"evaluate {label}", reuse, compute)
    lat = ev.get("latency")
    flag = "" if not lat or lat["stable"] else " [yellow](unstable measurement)[/]"
    r.say(
        f"  {label}: top-1 {ev['top1']:.2f}%"
        + (f", measured {lat['median_ms']:.4f} ms ({lat['backend']}){flag}" if lat else "")
    )
    out = {
        "top1": ev["top1"],
        "per_class": ev["per_class"],
        "params_m": ev["params_m"],
        "confusion_png": str(run_dir / ev["confusion_png"]),
    }
    if lat:
        out["measured_ms"], out["measured_stable"] = lat["median_ms"], lat["stable"]
    return out


def stage_export(
    r: Run,
    run_dir: Path,
    fmt: str,
    label: str,
    plan: dict | None = None,
    out: Path | None = None,
    precision: str | None = None,
) -> dict:
    """Export a run (into `out`, default RUN/export), held to `plan`'s budget (default the run's own plan)."""
    out = out or run_dir / "export"
    path = out / f"report-{fmt}.json"
    ckpt = run_dir / "checkpoint.safetensors"

    def reuse():
        if not (path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime):
            return None
        rep = json.loads(path.read_text())
        same_budget = (rep.get("budget") or {}).get("budget_ms") == (plan or {}).get("budget", {}).get("latency_ms")
        same_precision = precision is None or rep.get("precision") == precision
        return rep if (same_budget or plan is None) and same_precision else None

    def compute():
        try:
            return export_run(
                run_dir, fmt, precision, None, out, None, allow_over_budget=True, force=True, plan=plan,
                accept_int8_loss=True,
            )  # fmt: skip
        except DeryError as e:
            return {"format": fmt, "error": str(e)}

    rep = r.stage(f"export {fmt} ({label})", reuse, compute)
    if rep.get("parity"):
        b = rep.get("budget") or {}
        verdict = "" if not b.get("checked") else f" {BudgetVerdict(**b).word()}"
        check = (
            f"int8 test top-1 {rep['int8_top1']:.2f}% ({rep['int8_top1_change']:+.2f} points vs fp32)"
            if rep.get("precision") == "int8"
            else f"parity {rep['parity']['max_abs_diff']:.1e}"
        )
        busy = " (timed on a busy machine)" if (rep.get("other_load_cores") or 0) > BUSY_CORES else ""
        r.say(f"  {fmt} {rep.get('precision', '')}: {check}, {rep['latency_ms']:.4f} ms{verdict}{busy}")
    else:
        r.say(f"  {fmt}: {rep.get('error')}")
    return rep


def stage_donors(
    r: Run,
    zoo,
    task,
    recipe,
    donor_ms: dict[str, float],
    names: list[str],
    tag: str,
    teacher=None,
    evaluate: bool = False,
) -> dict[str, dict]:
    """Donors trained with `recipe` (whole, with a new classifier): teacher candidates (`ce`) or the
    baselines every pick is compared with (`final`, the same recipe as the picks)."""
    donors = {}
    for name in sorted(names, key=lambda n: (donor_ms[n], n)):
        ddir = r.out / "donors" / tag / name
        m = stage_finetune(
            r,
            f"fine-tune donor {name} ({tag}, {donor_ms[name]:.3f} ms)",
            {"donor": name, "zoo_ref": zoo.ref},
            zoo,
            task,
            recipe,
            ddir,
            teacher=teacher,
        )
        donors[name] = {"val_accuracy": m.get("val_accuracy"), "latency_ms": donor_ms[name], "run": str(ddir)}
        if evaluate:
            donors[name].update(stage_evaluate(r, ddir, task, f"donor {name}"))
    return donors
