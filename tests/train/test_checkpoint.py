import json

import torch
from safetensors import safe_open

from dery_deploy.train.checkpoint import CheckpointMeta, load_checkpoint, restore_optimizer, save_checkpoint


def _stepped():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_the_optimizer_state_keeps_its_layout_on_disk_and_resumes(tmp_path):
    """The optimizer's tensors as `optim.<param>.<name>` and torch's param_groups as `{"param_groups": [...]}` in
    the metadata's `optimizer`: the layout every older checkpoint has, so they resume."""
    model, opt = _stepped()
    save_checkpoint(tmp_path, model, opt, CheckpointMeta(1, 2, [], {}, True, None, []))
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["meta"])
    assert {k for k in keys if k.startswith("optim.")} == {
        f"optim.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")
    }
    assert list(meta["optimizer"]) == ["param_groups"]
    group = meta["optimizer"]["param_groups"][0]
    assert group["params"] == [0, 1] and group["lr"] == 0.01

    ckpt = load_checkpoint(tmp_path)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    restore_optimizer(fresh, ckpt.optimizer_state, ckpt.optimizer_groups)
    want, got = opt.state_dict(), fresh.state_dict()
    assert got["param_groups"] == json.loads(json.dumps(want["param_groups"]))  # as JSON: betas a list
    for i in (0, 1):
        for n in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got["state"][i][n], want["state"][i][n])
    assert ckpt.meta.epoch == 1 and ckpt.meta.phase == 2


def test_a_checkpoint_saved_without_an_optimizer_has_no_groups(tmp_path):
    save_checkpoint(tmp_path, torch.nn.Linear(2, 2), None, CheckpointMeta(0, 1, [], {}, False, None, []))
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["meta"])["optimizer"] == {"param_groups": []}
    assert load_checkpoint(tmp_path).optimizer_groups.param_groups == []
