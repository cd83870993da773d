import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from dery_deploy.dissect import dissect
from dery_deploy.errors import DeryError
from dery_deploy.zoo import get_zoo, load_donor
from dery_deploy.zoo.load import manifest
from dery_deploy.zoo.source_tasks import accuracy, fixed_subset, task_data
from tests.conftest import assert_one_line_error, run_dery


def test_embedded_zoo_requirements(fashion_zoo):
    man = manifest(fashion_zoo)["donors"]
    assert set(man) == set(fashion_zoo.donor_names)
    families = set()
    for d in fashion_zoo.donors:
        m = load_donor(fashion_zoo, d.name)
        families.add(dissect(m, d.arch, fashion_zoo.input_tensor_spec).family)
    assert len(families) >= 5
    tasks = {json.dumps(e["source_task"], sort_keys=True) for e in man.values()}
    assert len(tasks) >= 3
    # the downstream task (all 10 classes, supervised) is no donor's source task
    assert all(
        not (e["source_task"]["type"] == "supervised" and len(e["source_task"]["classes"]) == 10) for e in man.values()
    )
    total = sum((fashion_zoo.root / e["file"]).stat().st_size for e in man.values())
    assert total <= 25 * 2**20


@pytest.mark.parametrize("name", ["resnet10t_tops", "mnv3_rot", "vit_tops"])
def test_loaded_weights_reproduce_manifest_accuracy(fashion_zoo, name):
    entry = manifest(fashion_zoo)["donors"][name]
    x, y = task_data(entry["source_task"], "test")
    sub = fixed_subset(len(x))
    acc = accuracy(load_donor(fashion_zoo, name), x[sub], y[sub])
    assert abs(acc - entry["source_subset_accuracy"]) <= 0.5
    chance = 100.0 / (4 if entry["source_task"]["type"] == "rotation" else len(entry["source_task"]["classes"]))
    assert acc > chance + 30


@pytest.fixture
def zoo_copy(tmp_path, fashion_zoo):
    dst = tmp_path / "fashion"
    shutil.copytree(fashion_zoo.root, dst)
    return dst


def test_wrong_hash_refused(zoo_copy):
    f = zoo_copy / "mnv3_rot.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(DeryError, match="sha256"):
        load_donor(get_zoo(zoo_copy / "zoo.yaml"), "mnv3_rot")


def test_missing_weights_refused(zoo_copy):
    (zoo_copy / "vit_tops.safetensors").unlink()
    with pytest.raises(DeryError, match="weights file missing"):
        load_donor(get_zoo(zoo_copy / "zoo.yaml"), "vit_tops")


def test_state_dict_mismatch_lists_keys(tmp_path):
    import timm

    sd = timm.create_model("test_resnet", in_chans=1, num_classes=3).state_dict()
    missing = sorted(sd)[0]
    del sd[missing]
    reshaped = next(k for k, v in sd.items() if v.ndim == 4)
    sd[reshaped] = torch.zeros(3, 3)
    sd["bogus.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "w.safetensors"))
    (tmp_path / "zoo.yaml").write_text(
        "name: t\ninput: {channels: 1, size: 32, mean: [0.2], std: [0.3]}\n"
        "donors:\n  - {name: r, arch: test_resnet, weights: 'file:w.safetensors', num_classes: 3}\n"
    )
    with pytest.raises(DeryError) as e:
        load_donor(get_zoo(tmp_path / "zoo.yaml"), "r")
    msg = str(e.value)
    assert f"missing: {missing}" in msg and "unexpected: bogus.weight" in msg and f"wrong shape: {reshaped}" in msg


def test_file_weights_roundtrip_and_pickles_refused(tmp_path):
    import timm

    m = timm.create_model("test_resnet", in_chans=1, num_classes=3)
    torch.save(m.state_dict(), tmp_path / "w.pth")
    (tmp_path / "zoo.yaml").write_text(
        "name: t\ninput: {channels: 1, size: 32, mean: [0.2], std: [0.3]}\n"
        "donors:\n  - {name: r, arch: test_resnet, weights: 'file:w.pth', num_classes: 3}\n"
        "  - {name: evil, arch: test_resnet, weights: 'file:evil.pth', num_classes: 3}\n"
    )
    z = get_zoo(tmp_path / "zoo.yaml")
    loaded = load_donor(z, "r")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DeryError, match="weights-only"):
        load_donor(z, "evil")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["zoo", "show", "nosuchzoo"], ["Unknown zoo 'nosuchzoo'", "dery zoo list"]),
        (["zoo", "dissect", "nosuchdonor", "--zoo", "fashion"], ["Unknown donor 'nosuchdonor'"]),
        (["zoo", "dissect", "resnet_nonexistent_x"], ["Unknown timm architecture"]),
        (["zoo", "dissect", "test_nfnet", "--size", "32"], ["Unsupported model family", "convnext"]),
    ],
)
def test_cli_bad_names(args, needles):
    assert_one_line_error(run_dery(*args), *needles)


def test_cli_bad_yaml_types(tmp_path):
    p = tmp_path / "z.yaml"
    p.write_text("name: 3\ninput: {channels: x, size: 32, mean: [0.1], std: [0.2]}\ndonors: [{name: a, arch: 7}]\n")
    assert_one_line_error(run_dery("zoo", "show", str(p)), "input.channels", "arch", "3 bad field(s)")


def test_cli_dissect_prints_equivalence():
    p = run_dery(
        "zoo", "dissect", "test_vit", "--size", "32", "--kwargs", '{"img_size": 32, "patch_size": 4}', "--json"
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["family"] == "vit" and out["ok"] and out["equivalence_max_abs_diff"] <= 1e-5
    assert out["units"][0]["out"]["layout"] == "NLC" and out["units"][0]["out"]["prefix"] == 1
