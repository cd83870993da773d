import json
import os
import subprocess
import sys

import pytest
import torch

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.train.finetune import Recipe, finetune, load_checkpoint, load_run_model
from tests.conftest import ROOT, assert_one_line_error, run_dery


def tiny_plan(ws) -> Plan:
    blocks = []
    for k, name in enumerate(["res", "cnx", "res"]):
        b = ws.partition.sets[k].block_of(name)
        blocks.append(BlockRef(k, name, b.start, b.end))
    return Plan(ws.zoo.name, ws.zoo.hash(), blocks, 10, zoo_ref=ws.zoo.ref)


@pytest.fixture(scope="module")
def small_task(fashion_task):
    return fashion_task


def test_finetune_lowers_loss_and_resumes(tiny_ws, small_task, tmp_path):
    src = {"plan": tiny_plan(tiny_ws).to_dict()}
    recipe = Recipe(epochs_adapter=2, epochs_full=2, batch=50, lr=3e-3, lr_full=1e-3, head_init="random")
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    h = m["history"]
    assert [e["phase"] for e in h] == [1, 1, 2, 2]
    assert h[-1]["loss"] < h[0]["loss"]
    _, optim, meta = load_checkpoint(tmp_path / "run")
    assert meta["epoch"] == 3 and meta["config"]["source"]["plan"]["blocks"] and optim


def test_end_to_end_that_lowers_validation_ships_the_phase_one_network(tiny_ws, small_task, tmp_path):
    """An end-to-end phase that destroys the network (a learning rate of 5) must not be what ships:
    the network as phase 1 left it is kept, in the checkpoint too, and the metrics say why."""
    src = {"plan": tiny_plan(tiny_ws).to_dict()}
    recipe = Recipe(epochs_adapter=2, epochs_full=1, batch=50, lr_full=5.0, head_init="probe")
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    assert m["kept"].startswith("phase 1 (end to end lowered validation"), m["kept"]
    assert m["val_accuracy"] == m["phase1_val_accuracy"] > 20
    model, _ = load_run_model(tmp_path / "run", tiny_ws.zoo)
    from dery_deploy.train.finetune import accuracy

    assert round(accuracy(model, small_task.x("val"), small_task.y("val"))[0], 3) == m["val_accuracy"]
    again = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    assert again["val_accuracy"] == m["val_accuracy"]  # the finished run is returned as it was kept


def _epoch_of(run):
    try:
        return load_checkpoint(run)[2]["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def test_killed_run_resumes_to_the_same_weights(tiny_ws, tmp_path):
    import signal
    import time

    from dery_deploy.network.plan import save_plan

    save_plan(tmp_path / "plan.json", tiny_plan(tiny_ws))
    args = [
        "finetune",
        str(tmp_path / "plan.json"),
        "--data",
        "fashion-mnist:labels_per_class=100,test_per_class=30",
        "--epochs-adapter",
        "2",
        "--epochs-full",
        "8",
        "--batch",
        "50",
    ]
    full = run_dery(*args, "-o", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dery_deploy.cli.main", *args, "-o", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _epoch_of(run) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _epoch_of(run)
    assert 0 <= killed_at < 9 and not (run / "metrics.json").exists()
    again = run_dery(*args, "-o", str(run))
    assert again.returncode == 0, again.stderr
    hist = json.loads((run / "metrics.json").read_text())["history"]
    assert [e["epoch"] for e in hist] == list(range(10))
    a, _ = load_run_model(run, tiny_ws.zoo)
    b, _ = load_run_model(tmp_path / "full", tiny_ws.zoo)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-4), k


def test_phase_one_freezes_blocks(tiny_ws, small_task, tmp_path):
    src = {"plan": tiny_plan(tiny_ws).to_dict()}
    before = {k: v.clone() for k, v in load_run_model_or_build(src, tiny_ws).state_dict().items()}
    finetune(
        src,
        tiny_ws.zoo,
        small_task,
        Recipe(epochs_adapter=1, epochs_full=0, batch=50),
        tmp_path / "r",
        log=None,
        progress=False,
    )
    after, _ = load_run_model(tmp_path / "r", tiny_ws.zoo)
    for k, v in after.state_dict().items():
        if k.startswith("blocks."):
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in after.state_dict().items() if k.startswith("adapters."))


def load_run_model_or_build(src, ws):
    from dery_deploy.train.finetune import build_model

    torch.manual_seed(0)
    return build_model(src, ws.zoo)


def test_existing_output_refused_without_force(tiny_ws, small_task, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "junk.txt").write_text("x")
    with pytest.raises(DeryError, match="--force"):
        finetune(
            {"plan": tiny_plan(tiny_ws).to_dict()},
            tiny_ws.zoo,
            small_task,
            Recipe(epochs_adapter=1, epochs_full=0, batch=50),
            tmp_path / "r",
            log=None,
            progress=False,
        )


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tiny_ws, tmp_path):
    from dery_deploy.network.plan import save_plan

    plan = tiny_plan(tiny_ws)
    save_plan(tmp_path / "plan.json", plan)
    common = [
        "finetune",
        str(tmp_path / "plan.json"),
        "--data",
        "fashion-mnist:labels_per_class=20,test_per_class=30",
        "--epochs-adapter",
        "1",
        "--epochs-full",
        "1",
        "--batch",
        "40",
        "--head-init",
        "random",
        "--device",
        "cpu",
    ]
    single = run_dery(*common, "-o", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "dery_deploy.cli.main",
            *common,
            "-o",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s = json.loads((tmp_path / "single" / "metrics.json").read_text())
    d = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert d["world_size"] == 2 and s["world_size"] == 1
    # same global batch and data order; BN statistics are per process, so "within noise"
    assert abs(d["history"][-1]["loss"] - s["history"][-1]["loss"]) < 0.15
    assert abs(d["test_accuracy"] - s["test_accuracy"]) < 8.0


def test_cli_refusals(tiny_ws, tmp_path):
    assert_one_line_error(run_dery("finetune", "-o", str(tmp_path / "x")), "either a plan.json or --donor")
    assert_one_line_error(run_dery("finetune", "--donor", "nope", "-o", str(tmp_path / "x")), "Unknown donor 'nope'")
    empty = tmp_path / "imgs"
    (empty / "a").mkdir(parents=True)
    assert_one_line_error(
        run_dery("finetune", "--donor", "mnv3_rot", "--data", str(empty), "-o", str(tmp_path / "y")),
        "class folder",
        "holds no images",
    )
    assert not (tmp_path / "y").exists()  # nothing half-written


def test_image_folder_task_and_imbalance_warning(tmp_path, fashion_zoo):
    from PIL import Image

    from dery_deploy.data.fashion_mnist import load_split
    from dery_deploy.data.task import load_task

    test = load_split("test")
    for cls, n in (("shirt", 30), ("bag", 4)):
        (tmp_path / cls).mkdir()
        for i, img in enumerate(test.images[test.labels == (6 if cls == "shirt" else 8)][:n]):
            Image.fromarray(img.numpy()).save(tmp_path / cls / f"{i}.png")
    task = load_task(str(tmp_path), fashion_zoo.input)
    assert task.classes == ["bag", "shirt"] and task.train.images.shape[1:] == (1, 32, 32)
    assert len(task.train) + len(task.val) + len(task.test) == 34
    assert any("class imbalance" in n for n in task.notes)


def test_training_device_choice():
    from dery_deploy.train.finetune import train_device

    assert train_device("cpu").type == "cpu"
    with pytest.raises(DeryError, match="--device must be cpu or cuda"):
        train_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeryError, match="no CUDA GPU"):
            train_device("cuda")
