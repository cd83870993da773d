"""A family as shipped (`export/family.py`): shared blocks stored once, each graph reading its tensors
from the one weights file by offset, parity against PyTorch per path, a damaged weights file refused in
one line, and family.json read back through its dataclass."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from dery_deploy.deploy.family import load_family
from dery_deploy.deploy.family_info import FAMILY_FILE, WEIGHTS_FILE, FamilyInfo
from dery_deploy.errors import DeryError
from tests.conftest import assert_one_line_error, run_dery


def test_shared_blocks_are_the_same_tensors_in_pytorch(shipped_family):
    mix, whole = shipped_family.members[1].net, shipped_family.members[2].net
    ours, theirs = list(mix.blocks[1].parameters()), list(whole.blocks[0][1:].parameters())
    assert len(ours) == len(theirs) > 0 and all(a is b for a, b in zip(ours, theirs))


def test_shared_tensors_are_stored_once(shipped_family):
    info = FamilyInfo.read(shipped_family.folder / FAMILY_FILE)
    w = info.weights
    paths = {p.name: set(p.tensors) for p in info.paths}
    shared = paths["path-1"] & paths["path-2"]
    # resnet10t_tops[1:5] holds nearly all of that donor's weights: the mix and the whole donor share them
    shared_bytes = sum(w.tensors[t][1] for t in shared)
    assert shared_bytes > 0.9 * info.path("path-1").weight_bytes
    assert w.distinct_bytes == (shipped_family.folder / WEIGHTS_FILE).stat().st_size
    assert w.paths_bytes == sum(p.weight_bytes for p in info.paths)
    assert w.distinct_bytes < 0.6 * w.paths_bytes, w.ratio
    assert len(w.tensors) < sum(len(p.tensors) for p in info.paths)


def test_every_initializer_points_into_the_weights_file_and_matches_its_name(shipped_family):
    import onnx
    from onnx import numpy_helper

    info = FamilyInfo.read(shipped_family.folder / FAMILY_FILE)
    for p in info.paths:
        bare = onnx.load(str(shipped_family.folder / p.model), load_external_data=False)
        assert bare.graph.initializer and all(
            t.data_location == onnx.TensorProto.EXTERNAL for t in bare.graph.initializer
        )
        assert {e.value for t in bare.graph.initializer for e in t.external_data if e.key == "location"} == {
            WEIGHTS_FILE
        }
        full = onnx.load(str(shipped_family.folder / p.model))  # onnx's own reader follows the offsets
        digests = {hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in full.graph.initializer}
        assert digests == set(p.tensors)


def test_each_path_matches_its_network(shipped_family, fashion_task):
    import onnxruntime as ort
    import torch

    x = fashion_task.x("test")[:4]
    for p, m in zip(shipped_family.info.paths, shipped_family.members):
        assert 0 <= p.parity_max_abs <= 1e-4
        sess = ort.InferenceSession(str(shipped_family.folder / p.model), providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(None, {"x": x[i : i + 1].numpy()})[0] for i in range(len(x))])
        with torch.inference_mode():
            want = m.net(x).numpy()
        assert np.abs(got - want).max() <= 1e-4, p.name


def test_family_json_records_each_path(shipped_family):
    data = json.loads((shipped_family.folder / FAMILY_FILE).read_text())
    assert data["kind"] == "family" and data["schema"] == 1
    assert str(shipped_family.folder) not in json.dumps(data)  # file names only: the folder can move
    info = FamilyInfo.from_dict(data)
    assert [p.plan for p in info.paths] == [m.plan.describe() for m in shipped_family.members]
    for p in info.paths:
        assert p.runtime.name == "onnxruntime" and p.runtime.batch == 1 and p.runtime.threads == 1
        assert p.runtime.session["intra_op_num_threads"] == 1
        assert p.latency is not None and p.latency.p50_ms <= p.latency.p90_ms <= p.latency.p99_ms
        assert set(p.latency.standard_error) == {"p50", "p90", "p99"}
        assert p.budget.verdict.startswith("within budget")
    assert info.fingerprint["kind"] == "cpu"


def test_a_damaged_weights_file_is_refused_in_one_line(shipped_family, tmp_path):
    bad = tmp_path / "family"
    shutil.copytree(shipped_family.folder, bad)
    info = FamilyInfo.read(bad / FAMILY_FILE)
    offset, length = info.weights.tensors[info.path("path-2").tensors[-3]]
    with open(bad / WEIGHTS_FILE, "r+b") as f:
        f.seek(offset + length // 2)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(DeryError, match=f"{bad / WEIGHTS_FILE}.*path-2.*does not match its sha256"):
        load_family(bad)
    assert_one_line_error(run_dery("bench", str(bad)), str(bad / WEIGHTS_FILE), "sha256")


def test_a_broken_family_json_names_the_field(shipped_family, tmp_path):
    bad = tmp_path / "family"
    shutil.copytree(shipped_family.folder, bad)
    data = json.loads((bad / FAMILY_FILE).read_text())
    data["paths"][0]["tensors"].append("0" * 64)
    (bad / FAMILY_FILE).write_text(json.dumps(data))
    with pytest.raises(DeryError, match="path-0 reads tensors the weights file lacks"):
        load_family(bad)


def test_openvino_reads_the_same_files(shipped_family):
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32), np.float32)
    for p in shipped_family.info.paths:
        path = str(shipped_family.folder / p.model)
        # f32: a plain compile_model computes in bfloat16 on CPUs that have it (`deploy.settings`)
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(np.asarray(compiled(x)[0]) - want).max() <= 1e-5, p.name
