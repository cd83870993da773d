"""A TensorRT package's session (`deploy.engine`): what it asks of TensorRT and of CUDA is checked with
the recording fakes (`tests/runtime/recording_tensorrt`): the binding names, input shape, profile and
buffers come from deploy.json. None of this shows an engine running: the `tensorrt`-marked test at the
end loads a real engine, skipped where TensorRT and a GPU are missing (as on the CPU machines)."""

import json

import numpy as np
import pytest

import dery_deploy
from dery_deploy.deploy.bench import measure_package
from dery_deploy.deploy.info import FILE
from dery_deploy.errors import DeryError
from tests.deploy.packages import tiny_onnx, write_package
from tests.runtime.recording_tensorrt import RecordingCuda, fake_engine, install_runtime

# not the export's x / y, batch 2, 1 x 32 x 32: a session that hard-codes any of those fails here
NAMES = {"input": "images", "output": "logits"}
SHAPES = {"min_shape": [1, 3, 24, 24], "opt_shape": [3, 3, 24, 24], "max_shape": [16, 3, 24, 24]}


def engine_package(folder, engine: bytes | None = None, session: dict | None = None, **kw):
    data = engine or fake_engine(**NAMES, chw=(3, 24, 24), profile_batches=(1, 3, 16))
    kw = {**NAMES, "batch": 3, "channels": 3, "size": 24, **kw}
    return write_package(folder, "model.engine", data, "tensorrt", session=session or dict(SHAPES), **kw)


def test_a_package_runs_with_the_names_shapes_and_profile_deploy_json_records(monkeypatch, tmp_path):
    record = install_runtime(monkeypatch)
    model = dery_deploy.load(engine_package(tmp_path / "pkg"))
    assert record.of("get_tensor_profile_shape") == [("images", 0)]
    assert record.of("set_input_shape") == [("images", (3, 3, 24, 24))]
    x_ptr, y_ptr = (ptr for _, ptr in record.of("set_tensor_address"))
    assert [name for name, _ in record.of("set_tensor_address")] == ["images", "logits"]
    assert record.of("cuMemAlloc") == [(4 * 3 * 3 * 24 * 24,), (4 * 3 * 10,)]
    out = model.logits(np.zeros((5, 30, 40, 3), np.uint8))  # 5 images: two calls at batch 3, the last padded
    assert out.shape == (5, 10)
    stream = RecordingCuda.STREAM
    assert record.of("to_device") == [(x_ptr, (3, 3, 24, 24), "float32", stream)] * 2
    assert record.of("to_host") == [(y_ptr, (3, 10), "float32", stream)] * 2
    assert record.of("execute_async_v3") == [(stream,)] * 2
    # each call waits for its copies and the engine on the session's stream before its logits are read
    order = [name for name, _ in record.calls if name in ("to_device", "execute_async_v3", "to_host", "synchronize")]
    assert order == ["to_device", "execute_async_v3", "to_host", "synchronize"] * 2
    eff = model.session.effective()
    assert eff["input_shape"] == [3, 3, 24, 24] and eff["output_shape"] == [3, 10]
    assert eff["profile"] == [SHAPES["min_shape"], SHAPES["opt_shape"], SHAPES["max_shape"]]


@pytest.mark.parametrize(
    "damage,needle",
    [
        ({"engine": fake_engine(input="x", output="logits", chw=(3, 24, 24), profile_batches=(1, 3, 16))}, "'images'"),
        ({"engine": fake_engine(input="images", output="y", chw=(3, 24, 24), profile_batches=(1, 3, 16))}, "'logits'"),
        ({"session": {**SHAPES, "opt_shape": [4, 3, 24, 24]}}, "built for shapes"),
        ({"engine": fake_engine(**NAMES, chw=(3, 24, 24), profile_batches=(1, 3, 16), dtype="HALF")}, "not float32"),
        ({"engine": b"not an engine at all"}, "cannot deserialise"),
        ({"batch": 32}, "of shape (32, 3, 24, 24)"),
    ],
    ids=["input name", "output name", "profile", "dtype", "not an engine", "batch outside the profile"],
)
def test_an_engine_that_disagrees_with_deploy_json_is_refused_in_one_line(monkeypatch, tmp_path, damage, needle):
    install_runtime(monkeypatch)
    pkg = engine_package(tmp_path / "pkg", **damage)
    with pytest.raises(DeryError, match="model.engine") as e:
        dery_deploy.load(pkg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_failed_enqueue_is_an_error_not_logits(monkeypatch, tmp_path):
    record = install_runtime(monkeypatch)
    model = dery_deploy.load(engine_package(tmp_path / "pkg"))
    record.enqueue_result = False
    with pytest.raises(DeryError, match="execute_async_v3 returned False"):
        model.logits(np.zeros((3, 3, 24, 24), np.float32))


def test_bench_binds_the_input_once_and_times_each_enqueue_with_events_on_the_stream(monkeypatch, tmp_path):
    record = install_runtime(monkeypatch)
    res = measure_package(engine_package(tmp_path / "pkg"), calls=100, seconds=0.0)
    assert record.of("to_device") == [(record.of("set_tensor_address")[0][1], (3, 3, 24, 24), "float32", 7)]
    assert record.of("to_host") == []  # a timed call leaves its output on the device, as the export timed it
    # each enqueue between a start and an end event on the session's stream (runtime/harness.time_calls)
    timed = [(n, a) for n, a in record.calls if n in ("cuEventRecord", "execute_async_v3")]
    enqueues = len(record.of("execute_async_v3"))
    assert len(timed) == 3 * enqueues and enqueues >= res.calls >= 100
    for k in range(0, len(timed), 3):
        (first, (start, s1)), run, (last, (end, s2)) = timed[k : k + 3]
        assert (first, last, run, s1, s2) == ("cuEventRecord", "cuEventRecord", ("execute_async_v3", (7,)), 7, 7)
        assert start != end
    assert len(record.of("cuEventElapsedTime")) == enqueues and res.p50_ms == 0.25  # the fake's made-up time
    assert res.runtime == "tensorrt" and res.batch == 3 and res.settings["input_shape"] == [3, 3, 24, 24]
    assert res.fingerprint["kind"] == "cuda"


def test_dery_bench_measures_a_tensorrt_package(monkeypatch, tmp_path, capsys):
    from dery_deploy.cli.main import cli

    install_runtime(monkeypatch)
    assert cli(["bench", str(engine_package(tmp_path / "pkg")), "--calls", "100", "--seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "model.engine on tensorrt (fp32, batch 3, cuda)" in out and "measured only, nothing judged" in out


def test_without_tensorrt_the_package_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(DeryError, match="install NVIDIA TensorRT"):
        dery_deploy.load(engine_package(tmp_path / "pkg"))


@pytest.mark.tensorrt
def test_a_real_engine_package_gives_onnx_runtimes_logits(tmp_path):
    from dery_deploy.runtime.tensorrt import engine_from_onnx

    onnx_bytes = tiny_onnx()
    engine, _ = engine_from_onnx(onnx_bytes, (2, 1, 32, 32), "fp32", max_batch=8)
    session = {"min_shape": [1, 1, 32, 32], "opt_shape": [2, 1, 32, 32], "max_shape": [8, 1, 32, 32]}
    pkg = write_package(tmp_path / "trt", "model.engine", engine, "tensorrt", session=session)
    ref = write_package(tmp_path / "ort", "model.onnx", onnx_bytes)
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(dery_deploy.load(pkg).logits(x), dery_deploy.load(ref).logits(x), atol=1e-4)
    recorded = json.loads((pkg / FILE).read_text())["runtime"]["session"]
    assert measure_package(pkg, calls=100, seconds=0.0).settings["profile"][1] == recorded["opt_shape"]
