import math

import pytest
import timm
import torch

from dery_deploy.assemble.proxies import get_proxy, list_proxies
from dery_deploy.errors import DeryError


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 1, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)


def _net(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", in_chans=1, num_classes=10)


@pytest.mark.parametrize("name", ["naswot", "zico"])
def test_finite_and_deterministic(name, batch):
    fn = get_proxy(name)
    a, b = fn(_net(), *batch), fn(_net(), *batch)
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-9)


@pytest.mark.parametrize("name", ["naswot", "zico"])
def test_dead_relus_rank_below_healthy(name, batch):
    fn = get_proxy(name)
    healthy, dead = _net(), _net()
    with torch.no_grad():
        for m in dead.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.fill_(-50.0)  # every ReLU after a BN is off
    assert fn(dead, *batch) < fn(healthy, *batch)


def test_registry():
    assert {"naswot", "zico"} <= set(list_proxies())
    with pytest.raises(DeryError, match="Unknown proxy 'synflux'"):
        get_proxy("synflux")


def test_naswot_on_mobilevit_which_folds_patches_into_the_batch(batch):
    net = timm.create_model("mobilevit_xxs", in_chans=1, num_classes=10)
    assert math.isfinite(get_proxy("naswot")(net, batch[0]))


def test_probe_proxy_separates_informative_from_random_features(tiny_ws, fashion_task):
    from dery_deploy.assemble.candidates import AdapterFitter
    from dery_deploy.network.plan import BlockRef, Plan, build_net

    blocks = [
        BlockRef(k, "res", s.block_of("res").start, s.block_of("res").end) for k, s in enumerate(tiny_ws.partition.sets)
    ]
    plan = Plan(tiny_ws.zoo.name, tiny_ws.zoo.hash(), blocks, 10)
    net = build_net(plan, tiny_ws.zoo, tiny_ws.dis)
    AdapterFitter.for_task(tiny_ws.dis, fashion_task, 64).init(net, plan)
    x, y = fashion_task.labelled_sample(300)
    probe = get_proxy("probe")
    real = probe(net, x, y)
    shuffled = probe(net, x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])
    assert real == probe(net, x, y)  # deterministic
    assert real > 35 and shuffled < 20  # chance is 10%; labels carry the signal, shuffled ones do not
