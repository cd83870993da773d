import time

import pytest
import torch

from dery_deploy.profile.harness import measure, peak_memory_mb


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

    assert peak_memory_mb(alloc, cuda=False) > 150


@pytest.mark.gpu
def test_cuda_events_and_allocator_peak():
    x = torch.randn(2048, 2048, device="cuda")
    m = measure(lambda: x @ x, cuda=True)
    assert m.median_ms > 0 and m.stable
    assert peak_memory_mb(lambda: torch.empty(256, 1024, 1024, device="cuda"), cuda=True) >= 1000
