import pytest
import timm
import torch

from dery_deploy.dissect import TensorSpec, dissect, equivalence_error, list_families
from dery_deploy.errors import DeryError

IN = TensorSpec("NCHW", 1, 32, 32, 0, 1.0)
# Tiny configs of every supported family, at the embedded zoo's input (1x32x32).
TINY = {
    "resnet": ("test_resnet", {}),
    "resnet-d stem": ("resnet10t", {"channels": (16, 32, 64, 128)}),
    "regnet": ("regnetx_002", {}),
    "efficientnet": ("test_efficientnet", {}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
    "convnext": ("test_convnext", {}),
    "vit": ("test_vit", {"img_size": 32, "patch_size": 4}),
    "deit (distilled, 2 prefix tokens)": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2},
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {
            "img_size": 32,
            "patch_size": 2,
            "window_size": 4,
            "embed_dim": 24,
            "depths": (1, 1, 2),
            "num_heads": (1, 2, 4),
        },
    ),
    "byobnet (mobilevit)": ("mobilevit_xxs", {}),
}


@pytest.fixture(scope="module", params=list(TINY), ids=list(TINY))
def tiny(request):
    arch, kw = TINY[request.param]
    torch.manual_seed(0)
    model = timm.create_model(arch, in_chans=1, num_classes=7, **kw).eval()
    return arch, model, dissect(model, arch, IN)


def test_every_family_registered():
    assert set(list_families()) == {
        "resnet",
        "regnet",
        "efficientnet",
        "mobilenetv3",
        "convnext",
        "vit",
        "swin",
        "byobnet",
    }


def test_units_reproduce_model(tiny):
    arch, model, d = tiny
    err = equivalence_error(model, d, torch.randn(3, 1, 32, 32))
    assert err <= 1e-5, f"{arch}: {err}"


def test_specs_chain_and_match_tensors(tiny):
    arch, model, d = tiny
    assert d.units[0].kind == "stem" and d.units[-1].kind == "head"
    assert d.units[-1].out_spec == TensorSpec("NC", 7)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for prev, u in zip([None] + d.units[:-1], d.units):
            if prev is not None:
                assert prev.out_spec == u.in_spec, f"{arch}: {prev.name} -> {u.name}"
            assert tuple(x.shape[1:]) == u.in_spec.shape
            x = u.module(x)
            assert tuple(x.shape[1:]) == u.out_spec.shape, f"{arch}: {u.name}"


def test_block_runs_alone_from_its_boundary(tiny):
    arch, model, d = tiny
    n = d.num_body_units
    s, e = n // 3, 2 * n // 3 + 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        h = d.block(0, s)(x) if s else x
        ref = d.block(s, e)(h)
        direct = d.block(0, e)(x)
    assert torch.allclose(ref, direct, atol=1e-6)
    assert tuple(ref.shape[1:]) == d.boundary_spec(e).shape


def test_vit_prefix_tokens_and_layouts():
    m = timm.create_model(
        "deit_tiny_distilled_patch16_224", in_chans=1, num_classes=3, img_size=32, patch_size=8, depth=2
    )
    d = dissect(m.eval(), "deit", IN)
    spec = d.units[0].out_spec
    assert (spec.layout, spec.prefix, spec.height, spec.width, spec.reduction) == ("NLC", 2, 4, 4, 8.0)


def test_swin_is_channels_last():
    arch, kw = TINY["swin"]
    d = dissect(timm.create_model(arch, in_chans=1, **kw).eval(), arch, IN)
    assert {u.out_spec.layout for u in d.body} == {"NHWC"}
    assert [u.kind for u in d.units].count("downsample") == 2


def test_unsupported_family_lists_supported():
    m = timm.create_model("test_nfnet", in_chans=1)
    with pytest.raises(DeryError) as e:
        dissect(m, "test_nfnet", IN)
    assert "Unsupported model family" in str(e.value) and "resnet" in str(e.value) and "swin" in str(e.value)
