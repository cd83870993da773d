import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_dery(*args: str, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run the real `dery` CLI in a subprocess (exit code, stdout, stderr as a user sees them)."""
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dery_deploy.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


@pytest.fixture(scope="session")
def fashion_zoo():
    from dery_deploy.zoo import get_zoo

    return get_zoo("fashion")


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        trt = cuda
    except Exception:  # noqa: BLE001
        trt = False
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(
                pytest.mark.skip(reason="needs the tensorrt Python package (TensorRT builder) and an NVIDIA GPU")
            )


TINY_ZOO = ROOT / "tests" / "tiny_zoo.yaml"


class TinyWorkspace:
    """Similarity, partition (K=3) and a CPU onnxruntime profile (10-class heads) of the tiny zoo, built once."""

    def __init__(self, root):
        from dery_deploy.partition.cover_set import optimise
        from dery_deploy.partition.stage import make_partition, problem_from
        from dery_deploy.profile.latency_model import LatencyModel
        from dery_deploy.profile.run import run_profile
        from dery_deploy.profile.store import read_profile
        from dery_deploy.runtime.devices import get_device
        from dery_deploy.similarity.compute import compute_similarity
        from dery_deploy.zoo import get_zoo
        from dery_deploy.zoo.load import dissect_zoo

        self.root = root
        self.zoo = get_zoo(TINY_ZOO)
        self.sim, _ = compute_similarity(self.zoo, 128, cache=root)
        self.dis = dissect_zoo(self.zoo)
        problem = problem_from(self.zoo, self.sim, 3, 0.2, self.dis)
        self.partition = make_partition(self.zoo, self.sim, problem, optimise(problem, 10, 0), self.dis, 0)
        self.partition_path = self.partition.write(root / "tiny" / "partition.json")
        self.device = get_device("cpu")
        [self.profile_path] = run_profile(
            self.zoo, self.device, "onnxruntime", "fp32", [1], self.partition, self.dis, root, num_classes=10
        )
        self.profile = read_profile(self.profile_path)
        self.model = LatencyModel.of(self.profile, str(self.profile_path))


@pytest.fixture(scope="session")
def tiny_ws(tmp_path_factory):
    return TinyWorkspace(tmp_path_factory.mktemp("tiny_ws"))


@pytest.fixture(scope="session")
def fashion_task(fashion_zoo):
    """The default task shape with few images: 20 labels per class, 30 test images per class."""
    from dery_deploy.data.task import load_task

    return load_task("fashion-mnist:labels_per_class=20,test_per_class=30", fashion_zoo.input)


def write_folder(root, classes=("ant", "bee", "cat", "dog", "eel"), n_train=6, n_test=3, size=40, mode="RGB", seed=0):
    """A generated image folder: train/ and test/ with one sub-folder per class; each class has its own colour."""
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = torch.tensor([(c * 50) % 255, (c * 90) % 255, (c * 130) % 255], dtype=torch.float)
                px = (base + 30 * torch.rand(size, size, 3, generator=g)).clamp(0, 255).byte().numpy()
                Image.fromarray(px).convert(mode).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def shipped(tiny_ws, fashion_task, tmp_path_factory):
    """A tiny reassembled network trained briefly on the fashion task and exported as packages: ONNX
    Runtime fp32 and OpenVINO fp32, each `dery export`'s folder with its deploy.json (batch 2, 1 thread,
    a 50 ms budget at p90)."""
    from dery_deploy.export.stage import export_run
    from dery_deploy.network.plan import BlockRef, Plan
    from dery_deploy.network.plan_records import PlanBudget
    from dery_deploy.train.finetune import FinetuneSource, Recipe, finetune

    root = tmp_path_factory.mktemp("shipped")
    sets = tiny_ws.partition.sets
    blocks = [BlockRef(k, n, sets[k].block_of(n).start, sets[k].block_of(n).end) for k, n in enumerate(["res"] * 3)]
    plan = Plan(tiny_ws.zoo.name, tiny_ws.zoo.hash(), blocks, 10, zoo_ref=tiny_ws.zoo.ref)
    plan.budget = PlanBudget(50.0, 90)
    plan.device, plan.backend, plan.precision, plan.batch, plan.threads = "cpu", "onnxruntime", "fp32", 2, 1
    recipe = Recipe(epochs_adapter=2, epochs_full=0, batch=50)
    finetune(FinetuneSource.of_plan(plan), tiny_ws.zoo, fashion_task, recipe, root / "run", log=None, progress=False)
    out = {}
    for fmt in ("onnx", "openvino"):
        out[fmt] = root / f"package-{fmt}"
        export_run(root / "run", fmt, "fp32", None, out[fmt], None, allow_over_budget=True, force=True)
    return out


@pytest.fixture(scope="session")
def shipped_family(fashion_zoo, fashion_task, tmp_path_factory):
    """A family of three paths from the fashion zoo, built by the project's network builder over one
    dissection of each donor, so the blocks two paths share are the same modules (the same tensors):
    resnet10t_tops[0:3]; mnv3_rot's stem before resnet10t_tops[1:5]; and resnet10t_tops[0:5]. Heads are
    untrained (seeded); the top-1s are given, as a trainer would measure them. Budgets 20 / 30 / 40 ms at
    p50, ONNX Runtime fp32 batch 1, 1 thread; timed briefly (the figures only need to exist)."""
    from types import SimpleNamespace

    from dery_deploy.dissect import dissect
    from dery_deploy.export.family import FamilyMember, write_family
    from dery_deploy.network.plan import BlockRef, Plan, build_net
    from dery_deploy.network.plan_records import PlanBudget
    from dery_deploy.zoo.load import load_donor

    zoo = fashion_zoo
    arch = {d.name: d.arch for d in zoo.donors}
    dis = {n: dissect(load_donor(zoo, n), arch[n], zoo.input_tensor_spec) for n in ("resnet10t_tops", "mnv3_rot")}

    def member(blocks, budget_ms: float, top1: float) -> FamilyMember:
        plan = Plan(zoo.name, zoo.hash(), [BlockRef(i, *b) for i, b in enumerate(blocks)], 10, zoo_ref=zoo.ref)
        plan.budget = PlanBudget(budget_ms, 50)
        plan.device, plan.backend, plan.batch, plan.threads = "cpu", "onnxruntime", 1, 1
        torch.manual_seed(int(budget_ms))
        return FamilyMember(build_net(plan, zoo, dis, copy_blocks=False), plan, top1)

    members = [
        member([("resnet10t_tops", 0, 3)], 20.0, 78.0),
        member([("mnv3_rot", 0, 1), ("resnet10t_tops", 1, 5)], 30.0, 75.0),
        member([("resnet10t_tops", 0, 5)], 40.0, 80.0),
    ]
    folder = tmp_path_factory.mktemp("family") / "family"
    info = write_family(folder, members, fashion_task, threads=1, calls=200, seconds=0.3, warmup_s=0.2)
    return SimpleNamespace(folder=folder, members=members, info=info)
