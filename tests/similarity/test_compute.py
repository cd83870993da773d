import json

import pytest
import torch
from safetensors.torch import save_file

from dery_deploy.errors import DeryError
from dery_deploy.similarity.compute import compute_similarity, pair_path
from dery_deploy.zoo import get_zoo
from tests.conftest import TINY_ZOO, run_dery


def test_cache_reused_and_keyed(tmp_path):
    zoo = get_zoo(TINY_ZOO)
    sim, st = compute_similarity(zoo, 64, cache=tmp_path)
    assert (st.pairs, st.reused, st.computed, st.probe_images) == (6, 0, 6, 64)
    m = sim.matrix("res", "vit")
    n_res, n_vit = 5, 7  # body units of test_resnet / test_vit
    assert m.shape == (n_res + 1, n_vit + 1)
    assert m[0, 0] == pytest.approx(1.0)  # both see the same input images
    assert torch.allclose(sim.matrix("vit", "res"), m.T)
    assert torch.allclose(torch.diagonal(sim.matrix("cnx", "cnx")), torch.ones(14, dtype=torch.float64))

    again, st2 = compute_similarity(zoo, 64, cache=tmp_path)
    assert st2.computed == 0 and torch.equal(again.matrix("res", "vit"), m)
    # another probe set is another key: recomputed, not reused
    _, st3 = compute_similarity(zoo, 64, seed=1, cache=tmp_path)
    assert st3.computed == 6
    # a file whose keys do not match (copied from another zoo version) is recomputed
    path = pair_path(tmp_path, zoo, sim.key, "res", "vit")
    data = json.loads(path.read_text())
    data["zoo_hash"] = "another-zoo"
    path.write_text(json.dumps(data))
    _, st4 = compute_similarity(zoo, 64, cache=tmp_path)
    assert st4.computed == 1


def _zoo_with_weights(tmp_path, fill):
    import timm

    m = timm.create_model("test_resnet", in_chans=1, num_classes=5)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    fill(sd)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    (tmp_path / "zoo.yaml").write_text(
        "name: bad\ninput: {channels: 1, size: 32, mean: [0.2190], std: [0.3318]}\ndonors:\n"
        "  - {name: good, arch: test_convnext, num_classes: 5, weights: none}\n"
        "  - {name: broken, arch: test_resnet, num_classes: 5, weights: 'file:bad.safetensors'}\n"
    )
    return get_zoo(tmp_path / "zoo.yaml")


def test_nan_features_name_the_donor(tmp_path):
    zoo = _zoo_with_weights(tmp_path, lambda sd: sd["layer2.0.conv1.weight"].fill_(float("nan")))
    with pytest.raises(
        DeryError, match=r"donor 'broken' produces NaN/inf features at boundary \d+ \(after unit 'layer2.0'\)"
    ):
        compute_similarity(zoo, 32, cache=tmp_path / "c")


def test_constant_features_name_the_donor(tmp_path):
    def zero(sd):
        for k in sd:
            if k.startswith("layer3.0.") and k.endswith("weight"):
                sd[k].zero_()
            if k.startswith("layer3.0.") and k.endswith("bias"):
                sd[k].zero_()

    zoo = _zoo_with_weights(tmp_path, zero)
    with pytest.raises(DeryError, match="donor 'broken' produces constant features at boundary"):
        compute_similarity(zoo, 32, cache=tmp_path / "c")


def test_cli_show_writes_heatmap(tmp_path):
    png = tmp_path / "h.png"
    p = run_dery(
        "similarity",
        "--zoo",
        str(TINY_ZOO),
        "--probe",
        "32",
        "--cache",
        str(tmp_path),
        "--show",
        "res",
        "vit",
        "--png",
        str(png),
    )
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "CKA by boundary" in p.stdout


def _rgb_folder(root, n: int, size: int = 48, seed: int = 0):
    """n random-texture RGB images (smooth noise, so features vary across images) in root/."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")
        Image.fromarray((img[0].permute(1, 2, 0) * 255).byte().numpy()).save(root / f"{i}.png")
    return root


def test_probe_folder_smaller_than_probe_is_capped_with_a_note(tmp_path):
    folder = _rgb_folder(tmp_path / "imgs", 12)
    (tmp_path / "zoo.yaml").write_text(
        "name: rgb\ninput: {channels: 3, size: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\ndonors:\n"
        "  - {name: a, arch: test_resnet, num_classes: 5, weights: none}\n"
        "  - {name: b, arch: test_convnext, num_classes: 5, weights: none}\n"
    )
    sim, st = compute_similarity(get_zoo(tmp_path / "zoo.yaml"), 512, cache=tmp_path / "c", probe_data=str(folder))
    assert st.probe_images == 12 and any("capped at the 12 images" in n for n in sim.notes)
    assert sim.matrix("a", "b")[0, 0] == pytest.approx(1.0)


def test_imagenet_zoo_with_random_init_passes_similarity_and_partition(tmp_path):
    """Randomly initialised deep nets have features of tiny scale, not constant ones: the
    degenerate-feature test is scale-free, so the shipped imagenet zoo passes."""
    from dery_deploy.partition.cover_set import optimise
    from dery_deploy.partition.stage import make_partition, problem_from
    from dery_deploy.zoo.load import dissect_zoo

    zoo = get_zoo("imagenet")
    folder = _rgb_folder(tmp_path / "imgs", 16, size=224)
    sim, st = compute_similarity(zoo, 16, batch=8, cache=tmp_path / "c", probe_data=str(folder))
    assert st.computed == len(zoo.donors) * (len(zoo.donors) + 1) // 2
    dis = dissect_zoo(zoo)
    part = make_partition(
        zoo, sim, problem_from(zoo, sim, 4, 0.2, dis), optimise(problem_from(zoo, sim, 4, 0.2, dis), 3, 0), dis, 0
    )
    assert part.K == 4 and all(len(s.blocks) == len(zoo.donors) for s in part.sets)


def test_cuda_results_have_keys_of_their_own(tmp_path):
    """CKA on CUDA may run in TF32 (cuDNN's default): its results must not be served as CPU ones, nor the other
    way round. CPU keys are what they always were, so existing caches and partitions stay valid."""
    from dery_deploy.artifacts import sha256_json
    from dery_deploy.similarity.compute import METHOD, cuda_numerics, numerics, similarity_key

    zoo = get_zoo(TINY_ZOO)
    sim, _ = compute_similarity(zoo, 32, cache=tmp_path)
    assert numerics("cpu") is None and sim.numerics is None
    assert sim.key == sha256_json([zoo.hash(), sim.probe_hash, METHOD])[:16]
    keys = {
        sim.key,
        similarity_key(zoo.hash(), sim.probe_hash, cuda_numerics("NVIDIA H200", False, True)),
        similarity_key(zoo.hash(), sim.probe_hash, cuda_numerics("NVIDIA H200", False, False)),
        similarity_key(zoo.hash(), sim.probe_hash, cuda_numerics("NVIDIA H100 80GB HBM3", False, True)),
    }
    assert len(keys) == 4
    # a pair file computed another way, found under this key (copied caches), is recomputed, not reused
    path = pair_path(tmp_path, zoo, sim.key, "res", "vit")
    data = json.loads(path.read_text())
    assert data["numerics"] is None
    data["numerics"] = cuda_numerics("NVIDIA H200", False, True)
    path.write_text(json.dumps(data))
    _, st = compute_similarity(zoo, 32, cache=tmp_path)
    assert st.computed == 1


@pytest.mark.gpu
def test_similarity_on_cuda_does_not_reuse_cpu_results(tmp_path):
    zoo = get_zoo(TINY_ZOO)
    cpu, _ = compute_similarity(zoo, 32, cache=tmp_path)
    gpu, st = compute_similarity(zoo, 32, device="cuda", cache=tmp_path)
    assert st.computed == st.pairs and gpu.key != cpu.key and "tf32" in gpu.numerics
    assert torch.allclose(gpu.matrix("res", "vit"), cpu.matrix("res", "vit"), atol=2e-2)
