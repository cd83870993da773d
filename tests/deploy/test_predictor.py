"""The package a `dery export` ships, loaded with its runtime alone: the predictor's outputs are the
exported file's outputs on the task's own inputs, its preprocessing is the data pipeline's, a copied
package loads, a damaged one is refused in one line, and no torch is needed."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dery_deploy
from dery_deploy.data import fashion_mnist, folder
from dery_deploy.data.task import InputSpec
from dery_deploy.deploy.info import FILE, DeployInfo, Preprocess
from dery_deploy.deploy.preprocess import preprocess
from dery_deploy.errors import DeryError
from dery_deploy.runtime.evaluate import artifact_runner, logits_in_batches
from tests.conftest import ROOT, assert_one_line_error, run_dery, write_folder


def raw_test_images(per_class: int = 30):
    """The fashion task's test images as the data set stores them: uint8 28x28 grey, before any padding."""
    test = fashion_mnist.load_split("test")
    return test.subset(fashion_mnist.per_class_indices(test.labels, per_class, seed=0))


def test_preprocessing_is_the_data_pipelines(fashion_task, shipped):
    info = DeployInfo.read(shipped["onnx"] / FILE)
    assert info.preprocess.fit == "pad" and info.preprocess.pad_to == 32 and info.preprocess.color == "L"
    x = preprocess(raw_test_images().images.numpy(), info.preprocess)
    np.testing.assert_array_equal(x, fashion_task.x("test").numpy())


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_folder_preprocessing_is_the_data_pipelines(tmp_path, mode, channels):
    root = write_folder(tmp_path / "imgs", n_train=2, n_test=1, size=45, mode=mode)
    spec = InputSpec(channels, 32, (0.5,) * channels, (0.25,) * channels)
    want = folder.read_labelled(root / "train", spec, [])
    files = sorted((root / "train").rglob("*.png"))
    from PIL import Image

    raw = [np.asarray(Image.open(f).convert("RGB")) for f in files]  # colour given to a grey package is made grey
    p = Preprocess(mode, "resize-crop", 32, mean=list(spec.mean), std=list(spec.std))
    got = preprocess(raw, p)
    np.testing.assert_array_equal(got, ((want.images.numpy() / np.float32(255) - 0.5) / 0.25).astype(np.float32))


@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_load_predicts_what_the_eval_path_computes(fashion_task, shipped, fmt, runtime):
    model = dery_deploy.load(shipped[fmt])
    info = model.info
    assert model.classes == list(fashion_mnist.CLASSES) and info.runtime.name == runtime
    assert info.runtime.batch == 2 and info.runtime.threads == 1
    raw = raw_test_images()
    got = model.logits(raw.images.numpy())  # uint8 28x28 images: the package pads and normalises
    want = logits_in_batches(artifact_runner(shipped[fmt] / info.model, runtime, 1), fashion_task.x("test"))
    assert (got.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the accuracy deploy.json states is the file's own on these test images
    top1 = 100 * float((got.argmax(1) == raw.labels.numpy()).mean())
    assert info.accuracy["top1"] == pytest.approx(top1, abs=5e-4) and info.accuracy["images"] == len(raw)
    # a float NCHW batch is taken as the network's input, as is
    np.testing.assert_allclose(model.logits(fashion_task.x("test")[:5].numpy()), want[:5], atol=1e-4)
    [[(name, p)]] = model.predict(raw.images[0].numpy())
    assert name == fashion_mnist.CLASSES[int(want[0].argmax())] and 0 < p <= 1


def test_deploy_json_records_the_measurement(shipped):
    info = DeployInfo.read(shipped["openvino"] / FILE)
    r = info.runtime
    assert r.session["INFERENCE_PRECISION_HINT"] == "f32" and r.session["INFERENCE_NUM_THREADS"] == 1
    assert info.budget.latency_ms == 50.0 and info.budget.percentile == 90 and "within budget" in info.budget.verdict
    lat = info.latency
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms and lat.calls >= 1024 and set(lat.standard_error) >= {"p90"}
    assert info.fingerprint["kind"] == "cpu" and info.fingerprint["cores"] == os.cpu_count()
    # the machine-speed probe timed beside the file ships with it, its speed then recorded
    assert sorted(info.files) == ["model.bin", "model.xml", "reference.onnx"] and lat.reference_ms > 0
    ort = DeployInfo.read(shipped["onnx"] / FILE).runtime.session
    assert ort["intra_op_num_threads"] == 1 and ort["config_entries"] == {"session.intra_op.allow_spinning": "0"}


def test_openvino_ir_is_static_at_the_plans_batch_and_precision_is_the_loaders(shipped):
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(shipped["openvino"] / "model.xml"))
    assert list(m.input(0).get_shape()) == [2, 1, 32, 32]  # a plain compile_model runs the measured shape
    # OpenVINO ignores INFERENCE_PRECISION_HINT in rt_info, so it cannot travel in the IR: the loader sets it
    m.set_rt_info("f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    plain = core.compile_model(m, "CPU").get_property("INFERENCE_PRECISION_HINT").to_string()
    loaded = dery_deploy.load(shipped["openvino"]).session.effective()["INFERENCE_PRECISION_HINT"]
    assert loaded == "f32"
    has_bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() or "amx_bf16" in open("/proc/cpuinfo").read()
    assert plain == ("bf16" if has_bf16 else "f32")


def test_a_copied_package_loads_and_holds_no_absolute_path(shipped, tmp_path):
    for fmt, src in shipped.items():
        dst = shutil.copytree(src, tmp_path / fmt)
        for f in dst.iterdir():
            if f.suffix == ".json":
                assert str(src.parent) not in f.read_text() and "/tmp" not in f.read_text(), f
        x = np.zeros((3, 28, 28), np.uint8)
        np.testing.assert_allclose(dery_deploy.load(dst).logits(x), dery_deploy.load(src).logits(x), atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate deploy.json", "edit deploy.json", "truncate model", "edit model"])
def test_a_damaged_package_is_refused_in_one_line(shipped, tmp_path, damage):
    pkg = shutil.copytree(shipped["onnx"], tmp_path / "pkg")
    what, name = damage.split(" ")
    path = pkg / (FILE if name == "deploy.json" else "model.onnx")
    data = path.read_bytes()
    if what == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif name == "deploy.json":
        d = json.loads(data)
        d["input"]["channels"] = 3  # disagrees with its grey preprocessing
        path.write_text(json.dumps(d))
    else:
        path.write_bytes(data[:-20] + bytes(20))
    with pytest.raises(DeryError, match=str(path).replace(".", r"\.")):
        dery_deploy.load(pkg)
    proc = run_dery("predict", str(pkg), str(pkg / FILE))
    assert_one_line_error(proc, str(path))


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError(f'{name} is blocked: a deployment machine has no training stack')
sys.meta_path.insert(0, Block())
"""


def test_load_works_where_torch_does_not_import(shipped):
    code = BLOCK_TORCH + (
        "import numpy as np, dery_deploy\n"
        f"for p in {[str(p) for p in shipped.values()]!r}:\n"
        "    m = dery_deploy.load(p)\n"
        "    print(m.predict(np.zeros((28, 28), np.uint8))[0][0][0])\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('torch', 'timm')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert all(line in fashion_mnist.CLASSES for line in proc.stdout.split("\n") if line)
