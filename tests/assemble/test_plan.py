import json

import pytest
import torch

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import BlockRef, Plan, build_net, load_plan, save_plan, stitch_state_dict


def _plan(ws):
    blocks = []
    for k, name in enumerate(["res", "vit", "cnx"]):
        b = ws.partition.sets[k].block_of(name)
        blocks.append(BlockRef(k, name, b.start, b.end))
    return Plan(ws.zoo.name, ws.zoo.hash(), blocks, 10, zoo_ref=ws.zoo.ref)


def test_plan_round_trip_and_rebuild(tiny_ws, tmp_path):
    plan = _plan(tiny_ws)
    torch.manual_seed(0)
    net = build_net(plan, tiny_ws.zoo, tiny_ws.dis)
    assert len(plan.adapters) == 2 and {a.kind for a in plan.adapters} >= {"NCHW->NLC"} | set()  # CNN -> ViT stitch
    save_plan(tmp_path / "plan.json", plan)
    again = load_plan(tmp_path / "plan.json")
    on_disk = json.loads((tmp_path / "plan.json").read_text())
    assert (on_disk["kind"], on_disk["schema"]) == ("plan", Plan.SCHEMA)
    assert again.to_dict() == {k: v for k, v in on_disk.items() if k not in ("kind", "schema")}
    assert again.signature() == plan.signature()
    # the output depends only on plan + zoo + adapter weights: rebuild with another seed, load weights, same logits
    torch.manual_seed(123)
    net2 = build_net(again, tiny_ws.zoo, tiny_ws.dis, weights=stitch_state_dict(net))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))


def test_same_donor_native_boundary_needs_no_adapter(tiny_ws):
    blocks = [
        BlockRef(k, "res", s.block_of("res").start, s.block_of("res").end) for k, s in enumerate(tiny_ws.partition.sets)
    ]
    net = build_net(Plan(tiny_ws.zoo.name, tiny_ws.zoo.hash(), blocks, 10), tiny_ws.zoo, tiny_ws.dis)
    assert all(isinstance(a, torch.nn.Identity) for a in net.adapters)


def test_plan_from_changed_zoo_refused(tiny_ws):
    plan = _plan(tiny_ws)
    plan.zoo_hash = "0" * 16
    with pytest.raises(DeryError, match="re-assemble"):
        build_net(plan, tiny_ws.zoo, tiny_ws.dis)
