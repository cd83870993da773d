import torch

from dery_deploy.runtime.resources import rss_rise_mb


def test_cpu_peak_memory_sees_a_large_allocation():
    def alloc():
        x = torch.ones(64, 1024, 1024)  # 256 MB
        return float(x.sum())

    assert rss_rise_mb(alloc) > 150
