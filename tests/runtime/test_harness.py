import time

import pytest
import torch

from dery_deploy.runtime.harness import measure, rss_rise_mb, window_noise


def test_known_duration_is_measured():
    m = measure(lambda: time.sleep(0.002), tol=0.2)
    assert 1.9 <= m.median_ms <= 3.5
    assert m.p90_ms >= m.median_ms and m.runs >= 15 and m.windows >= 3


def test_matmul_faster_than_bigger_matmul():
    a, b = torch.randn(64, 64), torch.randn(256, 256)
    small = measure(lambda: a @ a)
    big = measure(lambda: b @ b)
    assert big.median_ms > 4 * small.median_ms


def test_unstable_item_is_marked():
    state = {"i": 0}

    def erratic():
        state["i"] += 1
        # window medians keep growing: never three within 3% of each other
        time.sleep(0.0002 * (1 + state["i"] // 5))

    m = measure(erratic, window_s=0.002, min_window_runs=5, max_windows=8)
    assert not m.stable and m.windows == 8


def test_cpu_peak_memory_sees_a_large_allocation():
    def alloc():
        x = torch.ones(64, 1024, 1024)  # 256 MB
        return float(x.sum())

    assert rss_rise_mb(alloc) > 150


def test_window_noise_is_the_half_spread_of_the_last_three_windows():
    assert window_noise([5.0, 1.0, 1.1, 1.0]) == pytest.approx(0.05)
    assert window_noise([1.0]) == 0.0


def test_onnxruntime_items_measure_a_fresh_sessions_memory():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_module

    big = torch.nn.Linear(4096, 4096)  # 64 MB of fp32 weights
    m = measure_module(get_backend("onnxruntime"), big, torch.randn(1, 4096), "fp32", "cpu")
    assert 40 < m.peak_memory_mb < 400 and m.timing.median_ms > 0
    eager = measure_module(get_backend("torch-eager"), big, torch.randn(1, 4096), "fp32", "cpu")
    assert eager.peak_memory_mb is None  # not measurable apart from the process: None, not a fake 0


@pytest.mark.gpu
def test_cuda_events_and_allocator_peak_including_capture():
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.measure import measure_module

    x = torch.randn(2048, 2048, device="cuda")
    m = measure(lambda: x @ x, cuda=True)
    assert m.median_ms > 0 and m.stable
    lin = torch.nn.Linear(4096, 4096)
    g = measure_module(get_backend("torch-cudagraph"), lin, torch.randn(256, 4096), "fp16", "cuda")
    assert g.peak_memory_mb >= 30  # weights (32 MB in fp16) and the captured graph's pool
