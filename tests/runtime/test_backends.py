import logging

import numpy as np
import pytest
import torch
from torch import nn

from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.backends.torch_eager import TorchEager
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.measure import measure_module


def tiny_item(i: int) -> nn.Sequential:
    """The i-th of a run of structurally distinct items, as profiling sees them: nn.Sequentials sharing one forward."""
    c = 2 + i
    pool = (nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(nn.Conv2d(4, c, 3, padding=1), nn.ReLU(), *pool, nn.Linear(c, 3))


class DynamoWatch(logging.Handler):
    """Counts the graphs Dynamo compiles and catches its recompile-limit warning, after which it runs frames eager."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.limit_hits: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        # torch >= 2.7 says recompile_limit, older releases cache_size_limit
        if "recompile_limit" in msg or "cache_size_limit" in msg:
            self.limit_hits.append(msg.splitlines()[0])

    def __enter__(self):
        from torch._dynamo.utils import counters

        self.counters = counters
        self.graphs0 = counters["stats"]["unique_graphs"]
        logging.getLogger("torch._dynamo").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("torch._dynamo").removeHandler(self)

    @property
    def graphs(self) -> int:
        return self.counters["stats"]["unique_graphs"] - self.graphs0


def test_dynamo_watch_sees_the_eager_fallback():
    # the control: without a reset between items Dynamo gives up after its limit (2 here, to keep it cheap)
    import torch._dynamo

    x = torch.randn(1, 4, 8, 8)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2), DynamoWatch() as watch, torch.inference_mode():
        for i in range(3):
            torch.compile(tiny_item(i).eval(), dynamic=False)(x)
    torch._dynamo.reset()
    assert watch.graphs == 2 and len(watch.limit_hits) == 1, (watch.graphs, watch.limit_hits)


def test_torch_compile_backend_compiles_every_item_of_a_long_run():
    from dery_deploy.runtime.harness import TimingOptions
    from dery_deploy.runtime.measure import measure_modules

    be = get_backend("torch-compile", threads=1)
    if be.unavailable("cpu"):
        pytest.skip(be.unavailable("cpu"))
    n = torch._dynamo.config.recompile_limit + 2
    x = torch.randn(1, 4, 8, 8)
    items = [tiny_item(i).eval() for i in range(n)]
    with DynamoWatch() as watch:
        out, passes = measure_modules(
            be,
            {f"{i}": (lambda i=i: (items[i], x)) for i in range(n)},
            "fp32",
            "cpu",
            TimingOptions(min_windows=3, max_s=0.0),
            reference_batch=1,
        )
    # every item and each group's reference compiled; none fell back to eager at the recompile limit
    assert watch.limit_hits == [] and watch.graphs >= n + len(passes), (watch.graphs, watch.limit_hits)
    assert len(passes) == -(-n // be.max_live) and all(o.timing.median_ms > 0 for o in out.values())


def test_torch_compile_runner_matches_eager():
    be = get_backend("torch-compile", threads=1)
    if be.unavailable("cpu"):
        pytest.skip(be.unavailable("cpu"))
    x = torch.randn(1, 4, 8, 8)
    item = tiny_item(0).eval()
    be.reset()
    runner = be.prepare(item, x, "fp32", "cpu")
    with torch.no_grad():
        np.testing.assert_allclose(runner.run(x), item(x).numpy(), rtol=1e-4, atol=1e-5)


def test_torch_compile_runs_new_input_through_its_static_input_without_recompiling():
    """The compiled item's input is marked static (so CUDA-graph trees do not copy it per call, as
    torch-cudagraph does not); new input is copied into it, and the same graph serves it. The per-call
    copy itself only exists under CUDA graphs: the GPU-marked test below checks the timing there."""
    be = get_backend("torch-compile", threads=1)
    if be.unavailable("cpu"):
        pytest.skip(be.unavailable("cpu"))
    x, y = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    item = tiny_item(1).eval()
    be.reset()
    with DynamoWatch() as watch:
        runner = be.prepare(item, x, "fp32", "cpu")
        graphs = watch.graphs
        with torch.no_grad():
            np.testing.assert_allclose(runner.run(y), item(y).numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(runner.run(x), item(x).numpy(), rtol=1e-4, atol=1e-5)
        runner.call()
    assert graphs >= 1 and watch.graphs == graphs  # nothing recompiled for new input


@pytest.mark.gpu
def test_torch_compile_call_copies_no_input_on_cuda():
    """Under reduce-overhead, CUDA-graph trees copy a non-static input into the graph's buffer on every
    call (2-3 us that torch-cudagraph does not pay); the runner's static input leaves no copy to time."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from torch.profiler import ProfilerActivity, profile

    be = get_backend("torch-compile")
    be.reset()
    item = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    runner = be.prepare(item, torch.randn(1, 3, 32, 32), "fp16", "cuda")
    runner.call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runner.call()
        torch.cuda.synchronize()
    copies = sorted({e.name for e in prof.events() if "copy" in e.name.lower() or "memcpy" in e.name.lower()})
    assert copies == [], copies


def test_onnxruntime_without_cuda_ep_says_what_to_install():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA execution provider")
    why = get_backend("onnxruntime").unavailable("cuda")
    assert why is not None and "onnxruntime-gpu" in why


@pytest.mark.gpu
def test_onnxruntime_cuda_binds_input_and_output_on_the_gpu():
    be = get_backend("onnxruntime")
    why = be.unavailable("cuda")
    if why:
        pytest.skip(why)
    item = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1)).eval()
    x = torch.randn(8, 4, 32, 32)
    with torch.no_grad():
        ref = item(x).numpy()
    runner = be.prepare(item, x, "fp32", "cuda")
    assert runner.cuda and runner.info["io_binding"] == "cuda"
    out = runner.call()  # the bound output: a CUDA tensor ORT wrote in place, no copy back to the host
    torch.cuda.synchronize()
    assert out.is_cuda and tuple(out.shape) == ref.shape
    # the CUDA EP may run convolutions in TF32: compare at its precision
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-2, atol=1e-2)
    x2 = torch.randn(3, 4, 32, 32)  # another batch runs through a binding of its own
    with torch.no_grad():
        np.testing.assert_allclose(runner.run(x2), item(x2).numpy(), rtol=1e-2, atol=1e-2)
    m = measure_module(be, item, x, "fp32", "cuda", TimingOptions(max_s=2.0))
    assert m.timing.median_ms > 0 and m.peak_memory_mb is not None and m.peak_memory_mb >= 0
    assert list(item.parameters())[0].device.type == "cpu"  # the caller's module is untouched


class RecordingEager(TorchEager):
    """torch-eager that records when measure_modules resets its state and when it prepares an item
    (a recording wrapper around a real backend: the items are still built and timed for real)."""

    def __init__(self):
        super().__init__(threads=1)
        self.events: list[str] = []

    def reset(self):
        self.events.append("reset")

    def prepare(self, module, example, precision, device):
        self.events.append("prepare")
        return super().prepare(module, example, precision, device)


def test_compiler_state_is_reset_before_the_memory_baseline():
    """torch-compile's reset frees what earlier graphs held (the reference workload's); read after the
    baseline, that freed memory was subtracted from the item's peak. The peak itself is a CUDA reading
    (see the gpu test below); on a CPU what can be checked is that the reset comes first."""
    from dery_deploy.runtime.measure import measure_modules

    be = RecordingEager()
    x = torch.randn(1, 4, 8, 8)
    out, _ = measure_modules(
        be,
        {"a": lambda: (tiny_item(0).eval(), x), "b": lambda: (tiny_item(1).eval(), x)},
        "fp32",
        "cpu",
        TimingOptions(min_windows=3, max_s=0.2),
    )
    assert be.events == ["reset", "prepare", "prepare"] and out["a"].timing.median_ms > 0


@pytest.mark.gpu
def test_torch_compile_peak_memory_is_not_lowered_by_an_earlier_graph():
    """An item whose CUDA graph pool holds large activations first, then one with 16 MB of weights: with the
    reset after the baseline, the first pool (freed by the reset) was subtracted from the second item's peak."""
    be = get_backend("torch-compile")
    wide = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(4)])
    quick = TimingOptions(min_windows=3, max_s=0.5)
    measure_module(be, wide, torch.randn(8192, 1024), "fp32", "cuda", quick)  # ~32 MB per activation
    m = measure_module(
        be, nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(4)]), torch.randn(1, 1024), "fp32", "cuda", quick
    )
    assert m.peak_memory_mb is not None and m.peak_memory_mb >= 0.9 * 16, m.peak_memory_mb


@pytest.mark.gpu
def test_cudagraph_replay_outlives_the_module_it_was_captured_from():
    """The graph reads its weights by address: after prepare() returns, its module must still be owned by
    the runner. Not reproducible on a CPU (no CUDA graphs); the freed memory is refilled here before replay."""
    import gc

    be = get_backend("torch-cudagraph")
    item = nn.Sequential(nn.Conv2d(4, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 3, padding=1)).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        ref = item(x).numpy()
    runner = be.prepare(item, x, "fp32", "cuda")
    gc.collect()
    torch.cuda.empty_cache()
    junk = [torch.full((1 << 20,), float("nan"), device="cuda") for _ in range(64)]  # reuse what was freed
    out = runner.run(x)
    del junk
    assert any(isinstance(k, nn.Module) for k in runner.keeps)
    np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2)  # cuDNN may run the convolutions in TF32


def test_aoti_check_turns_tf32_off_for_fp32_packages(monkeypatch):
    """The AOTInductor check runs in a process of its own; for an fp32 package cuBLAS and cuDNN must not
    use TF32 (cuDNN does by default), else parity at 1e-4 fails on Ampere and later. The flags are torch's
    own and readable on a CPU; their effect on a GPU's kernels is not."""
    from dery_deploy.runtime.aoti_check import strict_fp32

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after the test
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    strict_fp32(torch.float16)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    strict_fp32(torch.float32)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_openvino_fp32_matches_torch_and_computes_with_the_threads_asked():
    be = get_backend("openvino", threads=1)
    if be.unavailable("cpu"):
        pytest.skip(be.unavailable("cpu"))
    item = tiny_item(3).eval()
    x = torch.randn(4, 4, 8, 8)
    runner = be.prepare(item, x, "fp32", "cpu")
    with torch.no_grad():
        np.testing.assert_allclose(runner.run(x), item(x).numpy(), rtol=1e-4, atol=1e-4)
        x2 = torch.randn(7, 4, 8, 8)  # another batch than the one it was compiled for
        np.testing.assert_allclose(runner.run(x2), item(x2).numpy(), rtol=1e-4, atol=1e-4)
    # read back from the compiled model: one thread, one stream, fp32 (not the bf16 default of AVX512-BF16 CPUs)
    assert runner.info["threads"] == 1 and runner.info["streams"] == 1 and runner.info["inference_precision"] == "f32"
    assert get_backend("openvino", threads=2).prepare(item, x, "fp32", "cpu").info["threads"] == 2
    assert get_backend("onnxruntime", threads=2).prepare(item, x, "fp32", "cpu").info["threads"] == 2


def test_int8_items_are_measured_on_both_cpu_backends():
    items = [tiny_item(i).eval() for i in range(2)]
    x = torch.randn(2, 4, 8, 8)
    for name in ("openvino", "onnxruntime"):
        be = get_backend(name, threads=1)
        be.check("cpu", "int8")
        runner = be.prepare(items[0], x, "int8", "cpu")
        with torch.no_grad():  # calibrated on the example: int8 logits close to fp32 on it
            assert np.abs(runner.run(x) - items[0](x).numpy()).max() < 0.05
        from dery_deploy.runtime.harness import TimingOptions
        from dery_deploy.runtime.measure import measure_modules

        out, [summary] = measure_modules(
            be,
            {str(i): (lambda i=i: (items[i], x)) for i in range(2)},
            "int8",
            "cpu",
            TimingOptions(min_windows=3, max_s=0.0),
            reference_batch=1,
        )
        assert summary.items == 3 and all(o.timing.median_ms > 0 for o in out.values())
        assert all(o.peak_memory_mb is not None and o.peak_memory_mb >= 0 for o in out.values())
        # `memory` names the items whose fresh instance is compiled again to measure it; the rest are timed only
        out, _ = measure_modules(
            be, {str(i): (lambda i=i: (items[i], x)) for i in range(2)}, "int8", "cpu",
            TimingOptions(min_windows=3, max_s=0.0), memory=["1"],
        )  # fmt: skip
        assert out["0"].peak_memory_mb is None and out["1"].peak_memory_mb is not None
        assert out["0"].timing.median_ms > 0
    # a given QDQ file (a finalist's, calibrated on task images) runs as it is on either backend
    from dery_deploy.runtime.quantize import qdq_from_module

    qdq = qdq_from_module(items[1], torch.randn(16, 4, 8, 8))
    a, b = (get_backend(n, threads=1).runner_from_onnx(qdq, x).run(x) for n in ("openvino", "onnxruntime"))
    assert a.shape == (2, 3) and np.abs(a - b).max() < 0.05


def test_int8_precision_is_refused_where_it_does_not_run():
    from dery_deploy.errors import DeryError

    with pytest.raises(DeryError, match="int8 on the CPU only.*--backend tensorrt --precision int8"):
        get_backend("onnxruntime").check("cuda", "int8")
    with pytest.raises(DeryError, match="supports precision fp32, int8, not fp16"):
        get_backend("openvino").check("cpu", "fp16")


def test_openvino_missing_says_what_to_install():
    # a Python whose `import openvino` fails, as on a machine without the package
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "from dery_deploy.runtime.backends import get_backend\n"
        "print(get_backend('openvino').unavailable('cpu'))\n"
        "from dery_deploy.cli.main import main\n"
        "sys.argv = ['dery', 'profile', '--zoo', 'tests/tiny_zoo.yaml', '--backend', 'openvino']\n"
        "main()\n"
    )
    import subprocess
    import sys

    from tests.conftest import ROOT

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.stdout.strip() == "backend openvino needs the openvino package (pip install openvino)"
    # one error line, before the note that no partition exists yet (or any work), no traceback
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "error: [profile] " + p.stdout.strip()
