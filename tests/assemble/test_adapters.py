import itertools

import pytest
import torch

from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.network.adapters import Adapter, Head, fit_least_squares, stitch_error

SPECS = [
    TensorSpec("NCHW", 16, 8, 8, 0, 4.0),
    TensorSpec("NCHW", 24, 16, 16, 0, 2.0),
    TensorSpec("NHWC", 12, 4, 4, 0, 8.0),
    TensorSpec("NLC", 32, 8, 8, 1, 4.0),  # ViT tokens with a class token
    TensorSpec("NLC", 20, 4, 4, 0, 8.0),  # tokens without prefix
    TensorSpec("NLC", 20, 6, 6, 2, 5.33),  # non-integer resampling, two prefix tokens
]


@pytest.mark.parametrize("src,dst", list(itertools.product(SPECS, SPECS)))
def test_adapter_shapes_for_every_layout_pair(src, dst):
    a = Adapter(src, dst)
    y = a(torch.randn(3, *src.shape))
    assert tuple(y.shape) == (3, *dst.shape)


def test_head_pools_every_layout():
    for s in SPECS:
        assert Head(s, 10)(torch.randn(2, *s.shape)).shape == (2, 10)


def test_least_squares_beats_random_init_on_real_features(tiny_ws, fashion_task):
    from dery_deploy.assemble.candidates import AdapterFitter

    fitter = AdapterFitter.for_task(tiny_ws.dis, fashion_task, n=96)
    pairs = [("res", 2, "vit", 2), ("vit", 3, "cnx", 4), ("cnx", 3, "res", 2)]
    for a, ea, b, sb in pairs:
        x, t = fitter.features(a, ea), fitter.features(b, sb)
        ad = Adapter(tiny_ws.dis[a].boundary_spec(ea), tiny_ws.dis[b].boundary_spec(sb))
        torch.manual_seed(0)
        rand = stitch_error(ad, x, t)
        fitted = fit_least_squares(ad, x, t)
        assert fitted < rand and fitted < 1.0, (a, b, fitted, rand)


@pytest.mark.parametrize("upstream", [("convnext_lower", 0, 6), ("vit_tops", 0, 3), ("resnet10t_tops", 0, 2)])
def test_every_block_of_a_mix_receives_a_contiguous_tensor(fashion_zoo, upstream):
    """A ConvNeXt stage's output and ViT tokens turned into a grid are channels-last views; fed to
    MobileNetV3's blocks they made every convolution after the stitch run channels-last, 41% slower than
    profiled on an H200 (the adapter's docstring). Batch 4, since at batch 1 a tiny grid passes for both
    memory formats."""
    from dery_deploy.network.plan import BlockRef, Plan, build_net
    from dery_deploy.zoo.load import dissect_zoo

    blocks = [upstream, ("mnv3_rot", 5, 13)]
    plan = Plan(
        zoo="fashion",
        zoo_hash=fashion_zoo.hash(),
        blocks=[BlockRef(i, d, s, e) for i, (d, s, e) in enumerate(blocks)],
        num_classes=10,
    )
    net = build_net(plan, fashion_zoo, dissect_zoo(fashion_zoo), copy_blocks=False)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous())) for b in net.blocks]
    with torch.no_grad():
        net(torch.randn(4, *fashion_zoo.input_tensor_spec.shape))
    for h in hooks:
        h.remove()
    assert seen == [True, True]
