"""Joint training of a family's paths (issue 28, option (b)) on the real embedded zoo: the shared block is one
module while training, every step trains it for both paths, and afterwards each path has its own copy of it
with its own BatchNorm statistics."""

import torch
from torch import nn

from dery_deploy.network.plan import AssembledNet, BlockRef, Plan, build_net
from dery_deploy.train.joint import JointPaths, own_batchnorm, prepare, tie_shared, train_jointly
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
    assert res.bn_images == min(2048, len(fashion_task.unlabelled))
    # phase 2 trained the shared block; afterwards each path holds a copy of it, the same weights (BatchNorm's
    # scale and shift among them) with its own BatchNorm statistics, and its own head
    a, b = nets[0].blocks[1].state_dict(), nets[1].blocks[1].state_dict()
    assert nets[1].blocks[1] is not nets[0].blocks[1]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith(stats))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))
    weights = [k for k in shared0 if k.endswith("weight")]
    assert any(not torch.equal(a[k], shared0[k]) for k in weights)
    assert nets[0].head is not nets[1].head
    # evaluation mode afterwards: the same input gives the same logits twice
    x = fashion_task.x("test")[:8]
    with torch.no_grad():
        assert torch.equal(nets[1](x), nets[1](x))


def test_each_path_gets_its_own_batchnorm_statistics(fashion_task):
    """Two paths that differ before a shared BatchNorm: afterwards each path's BatchNorm is its own copy, its
    running mean that path's features' mean over the same images (whole batches, so the cumulative average is
    exact), its scale and shift the shared ones."""
    torch.manual_seed(0)
    d = fashion_task.unlabelled.images[0].numel()
    a, b = nn.Linear(d, 4), nn.Linear(d, 4)
    with torch.no_grad():
        b.bias += 3.0  # the second path's features sit 3 higher
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
    nets = [AssembledNet([nn.Sequential(nn.Flatten(), lin), bn], [nn.Identity()], nn.Identity()) for lin in (a, b)]
    joint = JointPaths(nets)
    n = own_batchnorm(joint, fashion_task, images=256, batch=128, seed=1)
    assert n == 256 and not joint.training
    mine, theirs = nets[0].blocks[1], nets[1].blocks[1]
    assert mine is not theirs and mine.momentum == theirs.momentum == 0.1
    assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    pool = fashion_task.unlabelled
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(7919 + 1))[:256]
    x = torch.flatten(fashion_task.normalize(pool.images[perm]), 1)
    with torch.no_grad():
        assert torch.allclose(mine.running_mean, a(x).mean(0), atol=1e-4)
        assert torch.allclose(theirs.running_mean, b(x).mean(0), atol=1e-4)
    assert (theirs.running_mean - mine.running_mean).mean() > 2.5
