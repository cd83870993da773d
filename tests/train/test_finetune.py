import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.train.finetune import FinetuneSource, Recipe, finetune, load_checkpoint, load_run_model
from tests.conftest import ROOT, TINY_ZOO, assert_one_line_error, run_dery


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
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    recipe = Recipe(epochs_adapter=2, epochs_full=2, batch=50, lr=3e-3, lr_full=1e-3, head_init="random")
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    h = m.history
    assert [e.phase for e in h] == [1, 1, 2, 2]
    assert h[-1].loss < h[0].loss
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.meta.epoch == 3 and ckpt.meta.config["source"]["plan"]["blocks"] and ckpt.optimizer_state
    assert ckpt.meta.history == h and ckpt.optimizer_groups.param_groups


def test_end_to_end_that_lowers_validation_ships_the_phase_one_network(tiny_ws, small_task, tmp_path):
    """An end-to-end phase that destroys the network (a learning rate of 5) must not be what ships:
    the network as phase 1 left it is kept, in the checkpoint too, and the metrics say why."""
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    recipe = Recipe(epochs_adapter=2, epochs_full=1, batch=50, lr_full=5.0, head_init="probe")
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    assert m.kept.startswith("phase 1 (end to end lowered validation"), m.kept
    assert m.val_accuracy == m.phase1_val_accuracy > 20
    model, _ = load_run_model(tmp_path / "run", tiny_ws.zoo)
    from dery_deploy.train.finetune import accuracy

    assert round(accuracy(model, small_task.x("val"), small_task.y("val"))[0], 3) == m.val_accuracy
    again = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    assert again.val_accuracy == m.val_accuracy  # the finished run is returned as it was kept


def _epoch_of(run):
    try:
        return load_checkpoint(run).meta.epoch
    except Exception:  # noqa: BLE001 - not written yet
        return -1


@pytest.mark.slow
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
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
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


def test_frozen_blocks_stay_byte_identical_through_seam_matching_and_both_phases(tiny_ws, small_task, tmp_path):
    """A family path's blocks shared with its largest path (`frozen_blocks`, issue 28 option (a)): seam
    matching, phase 1 and phase 2 leave every tensor of them as it started, BatchNorm statistics included,
    while the private block trains."""
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws)).freezing([0, 2])
    before = {k: v.clone() for k, v in load_run_model_or_build(src, tiny_ws).state_dict().items()}
    recipe = Recipe(match_epochs=1, match_images=256, epochs_adapter=1, epochs_full=1, batch=50)
    finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "r", log=None, progress=False)
    after, _ = load_run_model(tmp_path / "r", tiny_ws.zoo)
    state = after.state_dict()
    for k, v in state.items():
        if k.startswith(("blocks.0.", "blocks.2.")):
            assert torch.equal(v, before[k]), k
    assert any("running_mean" in k for k in state if k.startswith("blocks.0."))  # BN statistics were checked too
    assert any(not torch.equal(v, before[k]) for k, v in state.items() if k.startswith("blocks.1."))
    from dery_deploy.train.trainer import start_model

    with pytest.raises(DeryError, match="frozen blocks \\[7\\]"):
        start_model(src.freezing([7]), tiny_ws.zoo)


def load_run_model_or_build(src, ws):
    from dery_deploy.train.finetune import build_model

    torch.manual_seed(0)
    return build_model(src, ws.zoo)


def test_existing_output_refused_without_force(tiny_ws, small_task, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "junk.txt").write_text("x")
    with pytest.raises(DeryError, match="--force"):
        finetune(
            FinetuneSource.of_plan(tiny_plan(tiny_ws)),
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


PLATEAU_DATA = "fashion-mnist:labels_per_class=20,test_per_class=30"
PLATEAU_RECIPE = dict(epochs_adapter=4, epochs_full=1, batch=40, plateau=0.5, head_init="random", match_epochs=0)


def _ddp_worker(rank: int, world: int, port: int, source: FinetuneSource, out: str) -> None:
    """One of two gloo processes of `test_ddp_ranks_decide_the_plateau_together` (module level: spawned)."""
    import torch.distributed

    from dery_deploy.data.task import load_task
    from dery_deploy.zoo import get_zoo

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    zoo = get_zoo(TINY_ZOO)
    task = load_task(PLATEAU_DATA, zoo.input)
    finetune(source, zoo, task, Recipe(**PLATEAU_RECIPE), Path(out), log=None, progress=False, device="cpu")
    # the group finetune() created is gone again: a later call (or the caller's own group) starts clean
    Path(f"{out}.rank{rank}").write_text(json.dumps({"group_left": torch.distributed.is_initialized()}))


def test_ddp_ranks_decide_the_plateau_together(tiny_ws, tmp_path):
    """Two gloo processes, up to 4 adapter epochs with a 50% plateau test: every rank must judge the
    plateau on the global loss. Judged on each rank's own shard, ranks could disagree and one rebuilt its
    DDP wrapper while the other still all-reduced (a hang, caught here by the join timeout); the recorded
    loss was rank 0's shard. Phase 1 trains adapters and head on frozen blocks whose BatchNorms are in eval
    mode, so two processes with half the global batch each compute the single process's loss."""
    import socket

    import torch.multiprocessing as mp

    from dery_deploy.data.task import load_task

    source = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    single = finetune(
        source,
        tiny_ws.zoo,
        load_task(PLATEAU_DATA, tiny_ws.zoo.input),
        Recipe(**PLATEAU_RECIPE),
        tmp_path / "single",
        log=None,
        progress=False,
        device="cpu",
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.start_processes(
        _ddp_worker, args=(2, port, source, str(tmp_path / "ddp")), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + 600
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two ranks did not finish within 10 minutes: a rank is stuck in a collective")
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    p1_single = [h.to_dict() for h in single.history if h.phase == 1]
    p1_ddp = [h for h in ddp["history"] if h["phase"] == 1]
    assert ddp["world_size"] == 2 and len(p1_ddp) == len(p1_single) < 4 and p1_ddp[-1].get("plateau")
    for a, b in zip(p1_ddp, p1_single):
        assert abs(a["loss"] - b["loss"]) < 2e-3, (a, b)
        assert abs(a["train_acc"] - b["train_acc"]) < 1e-6, (a, b)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"ddp.rank{rank}").read_text()) == {"group_left": False}


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
    # a teacher that is no fine-tuned run's folder is refused before training, in one line
    args = ("finetune", "--donor", "mnv3_rot", "-o", str(tmp_path / "z"), "--teacher", str(tmp_path / "nowhere"))
    assert_one_line_error(run_dery(*args), "--teacher", "is not a run folder of `dery finetune`")
    assert not (tmp_path / "z").exists()
    assert_one_line_error(run_dery("evaluate", str(tmp_path / "nowhere")), "run folder not found", "dery finetune -o")
    # options named as the user typed them, the distillation weight checked with or without a teacher
    bad = ("finetune", "--donor", "mnv3_rot", "-o", str(tmp_path / "v"), "--match-epochs", "-1", "--head-init", "x")
    assert_one_line_error(run_dery(*bad), "--match-epochs must be >= 0", "--head-init must be probe or random")
    bad = ("finetune", "--donor", "mnv3_rot", "-o", str(tmp_path / "v"), "--distill", "2")
    assert_one_line_error(run_dery(*bad), "--distill must be in [0, 1], got 2")
    assert not (tmp_path / "v").exists()
    # a valid artifact of another kind passed as the plan: the file is fine, the argument is not
    other = tmp_path / "partition.json"
    other.write_text(json.dumps({"kind": "partition", "schema": 1}))
    assert_one_line_error(
        run_dery("finetune", str(other), "-o", str(tmp_path / "w")), "is a partition artifact, not a plan"
    )
    assert "delete" not in run_dery("finetune", str(other), "-o", str(tmp_path / "w")).stderr


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


@pytest.mark.gpu
def test_healing_and_the_probe_run_on_the_training_gpu(tiny_ws, small_task, tmp_path):
    """Under --device cuda the seams are healed and the head is probed on the GPU; both ran on the CPU
    before the model moved. Not reproducible on a CPU: there the two are the same device."""
    from dery_deploy.train.finetune import build_model
    from dery_deploy.train.head_init import fit_head

    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    model = build_model(src, tiny_ws.zoo, num_classes=10).cuda()
    acc = fit_head(model, small_task.x("train"), small_task.y("train"), 10)  # CPU images, GPU model
    assert acc is not None and acc > 20 and model.head.fc.weight.is_cuda
    recipe = Recipe(epochs_adapter=1, epochs_full=0, batch=50, match_epochs=1, match_images=256)
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "r", log=None, progress=False, device="cuda")
    assert m.device.startswith("cuda") and m.seam_matching and m.probe_train_accuracy is not None


METRICS_KEYS = [
    "val_accuracy",
    "kept",
    "test_accuracy",
    "phase1_val_accuracy",
    "phase1_test_accuracy",
    "phase1_epochs",
    "probe_train_accuracy",
    "seam_matching",
    "epochs",
    "history",
    "device",
    "params_m",
    "world_size",
    "train_seconds",
]


def test_metrics_json_keeps_its_keys_and_their_order(tiny_ws, small_task, tmp_path):
    """metrics.json (and what finetune() returns) is `FinetuneMetrics.to_dict()`: the same 14 keys in
    the same order as before the recipe became a class, and a finished run returns the file as written."""
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    recipe = Recipe(epochs_adapter=1, epochs_full=0, batch=50, head_init="random")
    m = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "r", log=None, progress=False, eval_phase1=True)
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    d = m.to_dict()
    assert list(d) == list(on_disk) == METRICS_KEYS and d == on_disk
    assert list(d["history"][0]) == ["epoch", "phase", "loss", "train_acc", "seconds", "val_acc", "test_acc"]
    assert json.loads((tmp_path / "r" / "history.json").read_text()) == d["history"]
    again = finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "r", log=None, progress=False)
    assert again == m and again.to_dict() == on_disk


def test_epoch_record_writes_only_what_was_set():
    from dery_deploy.train.results import EpochRecord

    plain = {"epoch": 0, "phase": 1, "loss": 2.1, "train_acc": 30.0, "seconds": 1.5}
    ended = {**plain, "distill_loss": 0.4, "plateau": True, "val_acc": 41.0, "test_acc": 40.0}
    for d in (plain, ended, {**plain, "val_acc": 41.0}):
        assert list(EpochRecord.from_dict(d).to_dict().items()) == list(d.items())


# a metrics.json from before the better network was kept (no `kept`) and seam matching said how many
# images it used (no `images`): what a run folder of 2026-11-28 morning holds
OLD_METRICS = {
    "val_accuracy": 41.5,
    "test_accuracy": None,
    "phase1_val_accuracy": 40.0,
    "phase1_test_accuracy": None,
    "phase1_epochs": 1,
    "probe_train_accuracy": 35.25,
    "seam_matching": [{"epoch": 0, "phase": 0, "seam_rel_mse": 0.61}],
    "epochs": 2,
    "history": [
        {"epoch": 0, "phase": 1, "loss": 2.1, "train_acc": 30.0, "seconds": 1.5, "val_acc": 40.0},
        {"epoch": 1, "phase": 2, "loss": 1.9, "train_acc": 33.0, "seconds": 3.0},
    ],
    "device": "cpu",
    "params_m": 0.1234,
    "world_size": 1,
    "train_seconds": 3.1,
}


def test_older_metrics_read_back_as_written():
    """metrics.json as older runs wrote it reads back, and writes itself again key for key."""
    from dery_deploy.train.run_folder import FinetuneMetrics

    m = FinetuneMetrics.from_dict(OLD_METRICS)
    assert m.kept is None and m.seam_matching[0].images is None and m.history[0].val_acc == 40.0
    assert list(m.to_dict().items()) == list(OLD_METRICS.items())
    seams = [{"epoch": 0, "phase": 0, "seam_rel_mse": 0.6, "images": 9}]
    now = {**OLD_METRICS, "kept": "end to end", "seam_matching": seams}
    assert FinetuneMetrics.from_dict(now).to_dict() == now


def test_run_config_reads_back_and_ignores_the_number_of_processes(tmp_path):
    from dery_deploy.artifacts import atomic_write_json
    from dery_deploy.train.run_folder import RunConfig
    from dery_deploy.train.teacher import TeacherSummary

    teacher = TeacherSummary(["t"], "89a03008c0414a87", 256)
    source, recipe = FinetuneSource.of_donor("res"), {"seed": 3}
    cfg = RunConfig(source, "tiny", "tiny.yaml", "h", "fashion-mnist", "t", 10, ["a"], recipe, teacher, 1)
    atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["teacher"] == {"runs": ["t"], "key": "89a03008c0414a87", "images": 256}
    back = RunConfig.read(tmp_path)
    assert back == cfg and list(back.to_dict().items()) == list(on_disk.items()) and back.seed == 3
    assert cfg.same_as(RunConfig(**{**cfg.__dict__, "world_size": 2}))
    assert not cfg.same_as(RunConfig(**{**cfg.__dict__, "teacher": None})) and not cfg.same_as(None)


def test_run_folder_states(tmp_path):
    """What a new call finds in its -o folder: nothing, another run, the same run finished, or its checkpoint."""
    from dery_deploy.train.checkpoint import CheckpointMeta, save_checkpoint
    from dery_deploy.train.run_folder import Conflict, FinetuneMetrics, Finished, Fresh, Resume, RunConfig, RunFolder

    classes = list("abcdefghij")
    cfg = RunConfig(
        FinetuneSource.of_donor("res"), "tiny", "tiny.yaml", "h", "fashion-mnist", "t", 10, classes, {}, None, 1
    )
    folder = RunFolder(tmp_path / "run")
    assert isinstance(folder.state(cfg), Fresh)
    folder.path.mkdir()
    assert isinstance(folder.state(cfg), Fresh)  # empty
    (folder.path / "junk.txt").write_text("x")
    assert isinstance(folder.state(cfg), Conflict)
    (folder.path / "config.json").write_text(json.dumps({**cfg.to_dict(), "world_size": 2}))
    assert isinstance(folder.state(cfg), Fresh)  # the same run under 2 processes, nothing saved yet
    save_checkpoint(folder.path, torch.nn.Linear(2, 2), None, CheckpointMeta(0, 1, [], cfg.to_dict(), False, None, []))
    state = folder.state(cfg)
    assert isinstance(state, Resume) and state.checkpoint.meta.epoch == 0 and "weight" in state.checkpoint.model_state
    assert isinstance(folder.state(cfg, resume=False), Fresh)
    (folder.path / "metrics.json").write_text(json.dumps(OLD_METRICS))
    assert folder.state(cfg) == Finished(FinetuneMetrics.from_dict(OLD_METRICS))
    other = RunConfig(**{**cfg.__dict__, "recipe": {"seed": 1}})
    assert isinstance(folder.state(other), Conflict)
    folder.clear()
    assert sorted(p.name for p in folder.path.iterdir()) == ["config.json", "junk.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeryError, match="is a file, not a run folder"):
        RunFolder(tmp_path / "file").state(cfg)


def test_phase_one_ends_at_its_epochs_or_a_plateau():
    from dery_deploy.train.phases import next_phase, plateaued

    assert not plateaued([2.0], 0.5) and not plateaued([2.0, 1.9], 0.0)
    assert plateaued([2.0, 1.9], 0.1) and not plateaued([2.0, 1.0], 0.1)
    r = Recipe(epochs_adapter=2, epochs_full=1)
    assert next_phase([], False, r) == (1, False)
    assert next_phase([1, 1], False, r) == (2, True)
    assert next_phase([1], True, r) == (2, True)  # plateaued after one epoch
    assert next_phase([1, 2], True, r) == (None, True)
    assert next_phase([], True, Recipe(epochs_adapter=0, epochs_full=1)) == (2, True)


def test_building_the_network_leaves_the_source_as_asked(tiny_ws):
    """build_net fills a plan's adapter and head records in place; the source's plan must not change, or
    config.json (written after the build) no longer matches a rerun's source and a resume is refused."""
    from dery_deploy.train.finetune import build_model

    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    before = src.to_dict()
    assert not before["plan"]["adapters"]
    build_model(src, tiny_ws.zoo)
    assert src.to_dict() == before


def test_a_plans_training_loads_only_the_donors_it_borrows_from(tiny_ws, small_task, tmp_path, monkeypatch):
    """A selection trial, a healing and every network built for a plan loaded every donor of the zoo (a quick
    run: 37 builds of six donors); the plan of res and cnx must load those two, never vit."""
    import dery_deploy.zoo.load as zoo_load
    from dery_deploy.train.finetune import build_model

    loaded: list[str] = []
    real = zoo_load.load_donor
    monkeypatch.setattr(zoo_load, "load_donor", lambda zoo, name: loaded.append(name) or real(zoo, name))
    src = FinetuneSource.of_plan(tiny_plan(tiny_ws))
    net = build_model(src, tiny_ws.zoo)
    assert sorted(loaded) == ["cnx", "res"] and sum(p.numel() for p in net.parameters()) > 0
    loaded.clear()
    recipe = Recipe(epochs_adapter=1, epochs_full=0, batch=50, head_init="probe", match_epochs=1, match_images=64)
    finetune(src, tiny_ws.zoo, small_task, recipe, tmp_path / "run", log=None, progress=False)
    assert loaded and set(loaded) == {"cnx", "res"}
    assert sorted(zoo_load.dissect_zoo(tiny_ws.zoo, ["vit", "nope"])) == ["vit"]  # a name the zoo lacks is not made up
