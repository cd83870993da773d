"""Profiles: one (device, backend, precision, batch) for one zoo's architectures, as a typed
artifact written atomically after every record.

Because the whole file is rewritten atomically after each record, an interrupted run (Ctrl-C,
kill -9) leaves the records finished so far, and the next run resumes after them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from dery_deploy.artifacts import JsonArtifact
from dery_deploy.errors import DeryError
from dery_deploy.runtime.devices import get_device

_RECORD_FIELDS = (
    "kind",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "uncertainty",
    "uncertainties",
    "noise",
    "runs",
    "stable",
    "windows",
    "window_medians_ms",
    "peak_memory_mb",
    "build_s",
    "calibration_ms",
)


def profile_command(zoo: str, device: str, backend: str, precision: str, batch: int, extra: str = "") -> str:
    """What measures a profile of these keys, as a user types it: one command on the machine itself, or for a
    Jetson, which cannot profile itself from here, the bundle route (bundle here, runner there, import here).
    `extra` adds options of the host command (e.g. --data)."""
    try:
        jetson = get_device(device).kind == "jetson"
    except DeryError:
        jetson = False
    if not jetson:
        return (
            f"`dery profile --zoo {zoo} --device {device} --backend {backend} --precision {precision} "
            f"--batch {batch}{extra}`"
        )
    runner_backend = "" if backend == "tensorrt" else f" --backend {backend}"
    return (
        f"`dery profile --zoo {zoo} --device {device} --precision {precision} --batch {batch}{extra} --bundle DIR "
        f"--verify 20` here, `python3 DIR/runner.py --bundle DIR --out result.json{runner_backend}` on the "
        f"{device} (DIR copied there) and `dery profile --import result.json` here"
    )


@dataclass
class Record:
    """One measured item: latency in ms at the per-call median, p90 and p99 (each over the pass's quiet
    windows, `runtime/harness.py`), its relative uncertainty, peak memory in MB (None where the
    backend cannot measure it), and what the item is (`info`)."""

    kind: str  # block | adapter | head | donor | unit | prefix | overhead
    median_ms: float
    p90_ms: float
    p99_ms: float
    uncertainty: float  # relative standard error of median_ms
    runs: int
    stable: bool  # uncertainty within the target; an unstable record is reported, never trusted silently
    windows: int = 0
    window_medians_ms: list[float] = field(default_factory=list)
    peak_memory_mb: float | None = None
    build_s: float = 0.0
    calibration_ms: float | None = None  # the reference workload in the same pass (calibration.py)
    noise: float = 0.0  # how much slower the item's typical window ran than its quiet one
    uncertainties: dict = field(default_factory=dict)  # "p90" / "p99" -> relative standard error
    info: dict = field(default_factory=dict)  # donor, arch, unit range, adapter kind, specs, ...

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in _RECORD_FIELDS}
        d.update(self.info)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        known = {k: d[k] for k in _RECORD_FIELDS if k in d}
        return cls(**known, info={k: v for k, v in d.items() if k not in _RECORD_FIELDS})

    def at(self, percentile: int) -> float:
        """The latency at a per-call percentile (50, 90 or 99)."""
        return {50: self.median_ms, 90: self.p90_ms, 99: self.p99_ms}[percentile]


@dataclass
class VerifyRow:
    plan: str
    adapters: int
    predicted_ms: float  # the latency model as the program uses it
    measured_ms: float  # end-to-end median (quiet-window estimate)
    measured_stable: bool
    raw_predicted_ms: float  # sum of raw item latencies (no speed calibration, no bias correction)
    calibrated_predicted_ms: float  # items at the profile's reference speed, no bias correction
    measured_at_reference_ms: float  # the measurement scaled to the reference speed
    calibration_ms: float | None
    rel_error: float  # (predicted - measured) / measured, bias fitted without this row
    measured_p90_ms: float | None = None
    measured_p99_ms: float | None = None
    uncertainty: float | None = None  # the end-to-end measurement's relative standard error
    # the items' latencies summed as measured (no per-call overhead subtracted), raw and at the reference speed
    raw_sum_ms: float | None = None
    calibrated_sum_ms: float | None = None
    # blocks in context (differences of their donors' prefixes), less the overhead, raw and at the reference
    # speed; None where the profile holds no prefixes
    raw_context_ms: float | None = None
    calibrated_context_ms: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> VerifyRow:
        return cls(**d)

    def measured_at(self, percentile: int) -> float:
        return {50: self.measured_ms, 90: self.measured_p90_ms, 99: self.measured_p99_ms}[percentile] or 0.0


@dataclass
class PercentileFit:
    """The latency model at a per-call percentile (p90, p99): the scale from the items' medians to a
    network's tail, its leave-one-out errors and the p90 of how much slower than predicted networks ran."""

    scale: float
    median_abs_rel_error: float
    max_abs_rel_error: float
    p90_under_prediction: float


@dataclass
class LatencyCheck:
    """How well the latency model predicts whole networks: `n` random mixed assemblies measured end
    to end. `speed` is the item latencies' basis (raw, or scaled to the reference speed) chosen
    because it verified better; `scale` corrects the sum-of-parts bias (fitted on these rows; the
    errors are leave-one-out, so they are not flattered by the fit). `percentiles` holds the same
    for a network's p90 and p99 of single calls, predicted from the items' medians by a scale of
    their own (what `--percentile 90|99` plans with)."""

    n: int
    seed: int
    speed: str  # raw | calibrated
    scale: float
    median_abs_rel_error: float
    max_abs_rel_error: float
    p90_under_prediction: float  # how much slower than predicted a network runs, 90th percentile (>= 0)
    raw_median_abs_rel_error: float
    raw_max_abs_rel_error: float
    calibrated_median_abs_rel_error: float
    calibrated_max_abs_rel_error: float
    partition_key: str
    when: str
    assemblies: list[VerifyRow] = field(default_factory=list)
    percentiles: dict[str, PercentileFit] = field(default_factory=dict)  # "p90" / "p99" -> the model there
    noise_index: float | None = None  # of the pass that measured the assemblies
    # whether each part's latency is taken less the per-call overhead (chosen like `speed`; older checks did)
    subtract_overhead: bool = True
    # whether blocks are their donors' prefix differences (chosen like `speed`), and the best model of each
    # kind on these rows (median / max |error|, leave-one-out): blocks timed alone, blocks in context
    context: bool = False
    isolated_errors: list[float] | None = None
    context_errors: list[float] | None = None
    # how the assemblies were timed: "promise" as a budget is judged (per-call percentiles over all calls, each
    # window re-warmed: `TimingOptions.for_budget`), or "windows" (quiet windows, cold; checks before that)
    measured_as: str = "windows"

    def at(self, percentile: int) -> tuple[float, float, float, float]:
        """(scale, median |error|, max |error|, p90 under-prediction) for a per-call percentile."""
        if percentile == 50 or f"p{percentile}" not in self.percentiles:
            return self.scale, self.median_abs_rel_error, self.max_abs_rel_error, self.p90_under_prediction
        f = self.percentiles[f"p{percentile}"]
        return f.scale, f.median_abs_rel_error, f.max_abs_rel_error, f.p90_under_prediction

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyCheck:
        return cls(
            **{
                **d,
                "assemblies": [VerifyRow.from_dict(r) for r in d.get("assemblies", [])],
                "percentiles": {k: PercentileFit(**v) for k, v in (d.get("percentiles") or {}).items()},
            }
        )


@dataclass
class Profile(JsonArtifact):
    KIND = "profile"
    SCHEMA = 3
    STAGE = "profile"

    device: str
    device_name: str
    fingerprint: dict  # {"start": fingerprint, "end": fingerprint or None}
    backend: str
    backend_version: str
    precision: str
    batch: int
    zoo: str
    structure_hash: str
    records: dict[str, Record] = field(default_factory=dict)
    verify: LatencyCheck | None = None
    calibration: dict = field(default_factory=dict)
    imported_from: dict | None = None
    threads: int | None = None  # CPU threads the runtime computed with (None: its default, e.g. on a GPU)
    passes: list[dict] = field(default_factory=list)  # every measurement pass: items, seconds, noise index
    # items the backend could not build or run (key -> why): unavailable to plans, tried again on resume
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "fingerprint": self.fingerprint,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "precision": self.precision,
            "batch": self.batch,
            "zoo": self.zoo,
            "structure_hash": self.structure_hash,
            "calibration": self.calibration,
            "imported_from": self.imported_from,
            "threads": self.threads,
            "passes": self.passes,
            "failed": self.failed,
            "verify": self.verify.to_dict() if self.verify else None,
            "records": {k: r.to_dict() for k, r in self.records.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(
            d["device"],
            d["device_name"],
            d["fingerprint"],
            d["backend"],
            d["backend_version"],
            d["precision"],
            d["batch"],
            d["zoo"],
            d["structure_hash"],
            {k: Record.from_dict(r) for k, r in d["records"].items()},
            LatencyCheck.from_dict(d["verify"]) if d.get("verify") else None,
            d.get("calibration", {}),
            d.get("imported_from"),
            d.get("threads"),
            d.get("passes", []),
            d.get("failed", {}),
        )

    def lacking_memory(self) -> set[str]:
        """Keys of the items without a memory figure: a `dery run` profile's (`run_profile(memory=False)`), or
        a backend's that cannot measure it; prefixes never have one (no network is built of one)."""
        return {k for k, r in self.records.items() if r.peak_memory_mb is None and r.kind != "prefix"}

    def how_to_profile(self) -> str:
        t = f" --threads {self.threads}" if self.threads else ""
        return profile_command(self.zoo, self.device, self.backend, self.precision, self.batch, t)

    def check(self, path, spec, zoo=None, structure: str | None = None) -> None:
        """Refuse a profile of another device or machine, or of another zoo's architectures."""
        if self.device != spec.id:
            raise DeryError(f"profile {path} is for device {self.device!r}, not {spec.id!r}", "profile")
        for when in ("start", "end"):
            fp = self.fingerprint.get(when)
            if fp is not None and not spec.matches(fp):
                what = fp.get("gpu_name") or fp.get("cpu_model")
                raise DeryError(
                    f"profile {path} was measured on {what!r}, which does not match device spec {spec.id!r} "
                    f"({spec.fingerprint}); profile on the right machine or pick the matching --device",
                    "profile",
                )
        if zoo is not None and self.zoo != zoo.name:
            raise DeryError(f"profile {path} is of zoo {self.zoo!r}, not {zoo.name!r}", "profile")
        if structure is not None and self.structure_hash != structure:
            raise DeryError(
                f"profile {path} was measured for other architectures of zoo {self.zoo!r} "
                f"(structure {self.structure_hash} vs {structure}); re-profile",
                "profile",
            )


def profile_path(
    root: Path, device: str, zoo: str, backend: str, precision: str, batch: int, threads: int | None = None
) -> Path:
    t = f"-t{threads}" if threads else ""
    return Path(root) / "profiles" / device / f"{zoo}-{backend}-{precision}-b{batch}{t}.json"


def read_profile(path: str | Path) -> Profile:
    return Profile.read(path)


def find_profile(
    roots: list[Path], zoo: str, device: str, backend: str, precision: str, batch: int, threads: int | None = None
) -> Path:
    """The first existing profile of these keys under `roots` (the cache, then the shipped profiles/)."""
    for base in roots:
        p = profile_path(base, device, zoo, backend, precision, batch, threads)
        if p.is_file():
            return p
    t = f" --threads {threads}" if threads else ""
    raise DeryError(
        f"no {backend} {precision} batch-{batch} profile of zoo {zoo!r} for device {device!r}; run "
        + profile_command(zoo, device, backend, precision, batch, t),
        "profile",
    )
