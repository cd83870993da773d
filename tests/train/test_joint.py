"""Joint training of a family's paths (issue 28, option (b)) on the real embedded zoo: the shared block is one
module, every step trains it for both paths, and BatchNorm in the borrowed blocks keeps its statistics."""

import torch
from torch import nn

from dery_deploy.network.plan import AssembledNet, BlockRef, Plan, build_net
from dery_deploy.train.joint import JointPaths, hold_statistics, prepare, tie_shared, train_jointly
from dery_deploy.train.recipe import Recipe


def _plan(zoo, blocks) -> Plan:
    return Plan(zoo.name, zoo.hash(), [BlockRef(i, *b) for i, b in enumerate(blocks)], 10, zoo_ref=zoo.ref)


def test_two_paths_train_their_shared_block_together(fashion_zoo, fashion_task):
    from dery_deploy.assemble.candidates import AdapterFitter
    from dery_deploy.zoo.load import dissect_zoo

    dis = dissect_zoo(fashion_zoo)
    n = dis["resnet10t_tops"].num_body_units
    plans = [
        _plan(fashion_zoo, [("resnet10t_tops", 0, 1), ("resnet10t_tops", 1, n)]),  # the larger path
        _plan(fashion_zoo, [("mnv3_rot", 0, 1), ("resnet10t_tops", 1, n)]),  # a cheaper stem, one seam
    ]
    torch.manual_seed(0)
    nets = [build_net(p, fashion_zoo, dis) for p in plans]
    fitter = AdapterFitter.for_task(dis, fashion_task, 128)
    for net, plan in zip(nets, plans):
        fitter.init(net, plan)
    assert nets[0].blocks[1] is not nets[1].blocks[1]  # built as copies
    tied = tie_shared(nets, plans)
    assert tied == [[], [1]] and nets[1].blocks[1] is nets[0].blocks[1]
    joint = JointPaths(nets)
    distinct = {id(p) for net in nets for p in net.parameters()}
    assert len(list(joint.parameters())) == len(distinct) < sum(len(list(net.parameters())) for net in nets)

    shared0 = {k: v.clone() for k, v in nets[0].blocks[1].state_dict().items()}
    stem0 = {k: v.clone() for k, v in nets[1].blocks[0].state_dict().items()}
    recipe = Recipe(match_epochs=1, match_images=256, epochs_adapter=1, epochs_full=1, batch=50, seed=0)
    starts = prepare(nets, plans, tied, dis, fashion_task, recipe)
    # the smaller path matched its seam by training its own stem, the shared block held as the larger had it
    assert starts[0].seam_matching == [] and len(starts[1].seam_matching) == 1
    assert all(torch.equal(v, shared0[k]) for k, v in nets[0].blocks[1].state_dict().items())
    assert any(not torch.equal(v, stem0[k]) for k, v in nets[1].blocks[0].state_dict().items() if v.is_floating_point())
    assert all(s.probe_acc is not None for s in starts) and all(net.frozen == () for net in nets)

    ticks = []
    res = train_jointly(joint, fashion_task, recipe, None, starts, ticks.append)
    assert [h.phase for h in res.history] == [1, 2] and len(ticks) == 2 * 4  # 200 labels, batches of 50
    assert all(v is not None and 0 <= v <= 100 for v in res.val + res.phase1_val)
    # phase 2 trained the shared block, still one module: its weights (BatchNorm's scale and shift among them)
    # moved, its BatchNorm statistics did not; each path's head is its own
    assert nets[1].blocks[1] is nets[0].blocks[1]
    now = nets[0].blocks[1].state_dict()
    stats = ("running_mean", "running_var")
    assert all(torch.equal(now[k], shared0[k]) for k in now if k.endswith(stats))
    assert any(not torch.equal(now[k], shared0[k]) for k in now if k.endswith("weight"))
    assert nets[0].head is not nets[1].head
    # evaluation mode afterwards: the same input gives the same logits twice
    x = fashion_task.x("test")[:8]
    with torch.no_grad():
        assert torch.equal(nets[1](x), nets[1](x))


def test_held_statistics_normalise_with_what_the_donor_had(fashion_task):
    """In training mode, BatchNorm in the borrowed blocks normalises with its running statistics and keeps them;
    an adapter's or head's BatchNorm (not a borrowed block) still learns its batch's."""
    torch.manual_seed(0)
    block_bn, adapter_bn = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    with torch.no_grad():
        block_bn.running_mean.fill_(2.0)
        block_bn.running_var.fill_(4.0)
    net = AssembledNet([nn.Sequential(nn.Linear(8, 4), block_bn), nn.Identity()], [adapter_bn], nn.Identity())
    joint = JointPaths([net])
    joint.train()
    hold_statistics(joint)
    x = torch.randn(64, 8)
    out = net.blocks[0](x)
    with torch.no_grad():
        want = (net.blocks[0][0](x) - 2.0) / (4.0 + block_bn.eps) ** 0.5 * block_bn.weight + block_bn.bias
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.equal(block_bn.running_mean, torch.full((4,), 2.0)) and not block_bn.training
    net.adapters[0](out)
    assert adapter_bn.training and not torch.equal(adapter_bn.running_mean, torch.zeros(4))
