"""`deploy.json`: what a shipped package needs to be run and to have its promise checked elsewhere.

One typed file beside the model file(s), like timm's `pretrained_cfg` or a Hugging Face repository's
`config.json` + preprocessor config: the input and its preprocessing exactly as the task's data
pipeline applied it, the class names in output order, the runtime with every session setting the
latency was measured with, the budget and its percentile, the measured percentiles with their
uncertainty, the machine they were measured on, the test accuracy, and each file's sha256. Paths in it
are file names inside the package folder, so the folder can be copied anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from dery_deploy.artifacts import JsonArtifact, sha256_file
from dery_deploy.errors import DeryError

FILE = "deploy.json"
REFERENCE_MODEL = "reference.onnx"  # the machine-speed probe shipped beside the model
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
FITS = ("pad", "resize-crop")
PERCENTILES = (50, 90, 99)
FIX = "copy the package again from where it was made, or re-export it (`dery export RUN --format ...`)"


@dataclass
class Preprocess:
    """How an image became the network's input, in the order applied (`deploy.preprocess`).

    color: the Pillow mode an image is converted to ("L": grey by ITU-R 601-2 luma, "RGB").
    fit: "pad": zero-padded, centred, to `pad_to` (Fashion-MNIST's 28 px to 32), then resized to `size`
        where that differs; "resize-crop": the shorter side resized to `size`, then centre-cropped.
    interpolation / antialias: the resize's filter.
    scale, mean, std: x = (pixel * scale - mean[c]) / std[c].
    """

    color: str
    fit: str
    size: int
    pad_to: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = True
    scale: float = 1 / 255
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass
class ModelInput:
    name: str  # the graph's input name
    channels: int
    height: int
    width: int
    layout: str = "NCHW"
    dtype: str = "float32"


@dataclass
class Runtime:
    """What ran the file when it was measured; `session` holds every setting given to the runtime
    (ONNX Runtime SessionOptions fields and config entries, OpenVINO compile properties)."""

    name: str  # onnxruntime | openvino | tensorrt
    version: str
    precision: str
    batch: int
    threads: int | None  # CPU threads it computed with (None on a GPU)
    session: dict = field(default_factory=dict)
    device: str = "cpu"  # cpu | cuda


@dataclass
class Latency:
    """The shipped file's measured latency per call (ms) at the package's batch."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    calls: int
    standard_error: dict[str, float]  # relative, per percentile: {"p50": 0.004, ...}
    noise: float  # how much slower the typical stretch of calls ran than a quiet one (relative)
    statistic: str  # how the percentiles were taken
    measured_in: str  # which measurement: the export's own, or the run's final pass
    when: str = ""
    # the machine's reference workload (REFERENCE_MODEL, batch 1) per call in the same pass: its speed
    # at the time, so that `dery bench` can relate a later measurement to it
    reference_ms: float | None = None
    other_load_cores: float | None = None  # other processes' CPU use while it was timed (cores; None: unread)


@dataclass
class Budget:
    latency_ms: float
    percentile: int = 50
    verdict: str = ""  # the line the tool judged it with, where it was judged


@dataclass
class DeployInfo(JsonArtifact):
    """The package's `deploy.json` (module docstring)."""

    KIND: ClassVar[str] = "deploy"
    SCHEMA: ClassVar[int] = 1
    STAGE: ClassVar[str] = "deploy"
    FIX: ClassVar[str] = FIX

    model: str  # the file the runtime opens (model.onnx, model.xml, model.engine)
    files: dict[str, str]  # every file of the package -> sha256
    input: ModelInput
    preprocess: Preprocess
    output: str  # the graph's output name: logits in the order of `classes`
    classes: list[str]
    runtime: Runtime
    latency: Latency | None
    budget: Budget | None
    fingerprint: dict  # the machine measured on: {kind: cpu, cpu_model, cores} or {kind: cuda, gpu_name}
    accuracy: dict  # {"top1": %, "split": "test", "images": N, "task": kind}
    made_by: str = ""  # dery_deploy version

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DeployInfo:
        lat, bud = data.get("latency"), data.get("budget")
        info = cls(
            model=data["model"],
            files=dict(data["files"]),
            input=ModelInput(**data["input"]),
            preprocess=Preprocess(**data["preprocess"]),
            output=data["output"],
            classes=list(data["classes"]),
            runtime=Runtime(**data["runtime"]),
            latency=Latency(**lat) if lat is not None else None,
            budget=Budget(**bud) if bud is not None else None,
            fingerprint=dict(data["fingerprint"]),
            accuracy=dict(data["accuracy"]),
            made_by=data.get("made_by", ""),
        )
        bad = info.problems()
        if bad:
            raise ValueError("; ".join(bad))
        return info

    def problems(self) -> list[str]:
        """Every field that is out of range, at once (empty when the file is sound)."""
        bad = []
        p, i, r = self.preprocess, self.input, self.runtime
        if self.model not in self.files:
            bad.append(f"model {self.model!r} is not among files {sorted(self.files)}")
        bad += [f"file {n!r} is not a plain name inside the package" for n in self.files if Path(n).name != n]
        if r.name not in RUNTIMES:
            bad.append(f"runtime.name {r.name!r} is not one of {', '.join(RUNTIMES)}")
        if r.precision not in PRECISIONS:
            bad.append(f"runtime.precision {r.precision!r} is not one of {', '.join(PRECISIONS)}")
        if r.batch < 1:
            bad.append(f"runtime.batch {r.batch} < 1")
        if p.fit not in FITS or p.color not in ("L", "RGB"):
            bad.append(f"preprocess fit {p.fit!r} / color {p.color!r} unknown")
        if i.channels != (1 if p.color == "L" else 3) or len(p.mean) != i.channels or len(p.std) != i.channels:
            bad.append(f"input.channels {i.channels} disagrees with color {p.color} or mean/std")
        if (i.height, i.width) != (p.size, p.size) or i.layout != "NCHW":
            bad.append(f"input {i.layout} {i.height}x{i.width} disagrees with preprocess size {p.size}")
        if not self.classes:
            bad.append("classes is empty")
        if self.budget is not None and self.budget.percentile not in PERCENTILES:
            bad.append(f"budget.percentile {self.budget.percentile} is not one of {PERCENTILES}")
        return bad

    def at(self, percentile: int) -> tuple[float, float]:
        """The measured latency (ms) at a per-call percentile and its relative standard error."""
        if self.latency is None:
            raise DeryError("this package records no measured latency", "deploy")
        lat = self.latency
        return getattr(lat, f"p{percentile}_ms"), lat.standard_error.get(f"p{percentile}", float("nan"))


def _packages_near(folder: Path) -> str:
    """The fix for a package folder that does not exist: the packages of the run folder it names, where the path
    goes through one (`RUN/budget-<ms>/export`: a budget's folder is named by the budget the run chose)."""
    for run in (folder.parent.parent, folder.parent, folder):
        found = sorted(str(p.parent) for p in run.glob(f"budget-*/export/{FILE}")) if run.is_dir() else []
        if found:
            return f"the packages in {run}: " + ", ".join(found)
    return f"give the folder that holds {FILE}"


def read_package(folder: str | Path) -> DeployInfo:
    """A package's deploy.json, with every file it lists present and unchanged (sha256).

    Raises:
        DeryError: one line naming the missing, edited or truncated file and the fix.
    """
    folder = Path(folder)
    if folder.is_file() and folder.name == FILE:
        folder = folder.parent
    if folder.is_file():
        raise DeryError(f"{folder} is a file, not a package folder; give the folder that holds {FILE}", "deploy")
    if not folder.is_dir():
        raise DeryError(f"package folder not found: {folder}; {_packages_near(folder)}", "deploy")
    if not (folder / FILE).is_file():
        raise DeryError(
            f"{folder} holds no {FILE}: not a package (export one with `dery export RUN --format onnx`)", "deploy"
        )
    info = DeployInfo.read(folder / FILE)
    for name, digest in info.files.items():
        path = folder / name
        if not path.is_file():
            raise DeryError(f"{path} is missing from the package; {FIX}", "deploy")
        if sha256_file(path) != digest:
            raise DeryError(f"{path} does not match the sha256 in {FILE} (edited or truncated); {FIX}", "deploy")
    return info
