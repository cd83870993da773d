"""Load an AOTInductor package and run it, in a child process.

`aoti_load_package` can crash the process (seen: segfault on a CUDA package with torch 2.11), so
the exporter runs this module as a subprocess and reads one JSON line from it:
    python -m dery_deploy.runtime.aoti_check PACKAGE INPUTS.safetensors OUT.safetensors BATCH
INPUTS holds `x` (the parity images, in the package's dtype) and, for CUDA packages, `device_cuda`.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file

from dery_deploy.runtime.harness import TimingOptions, measure


def strict_fp32(dtype: torch.dtype) -> None:
    """An fp32 package is held to PyTorch's fp32 logits within 1e-4: its matmuls (cuBLAS) and convolutions
    (cuDNN, which torch lets use TF32 by default) must not round to TF32's 10-bit mantissas. This process
    is the package's own, so the setting is not restored."""
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def main() -> None:
    pkg, inputs, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 and int(sys.argv[5]) > 0 else None
    percentile = int(sys.argv[6]) if len(sys.argv) > 6 else 50
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    runner = torch._inductor.aoti_load_package(pkg)
    load_s = time.perf_counter() - t0
    tensors = load_file(inputs)
    x = tensors["x"]
    strict_fp32(x.dtype)
    cuda = "device_cuda" in tensors and torch.cuda.is_available()
    if cuda:
        x = x.cuda()
    with torch.inference_mode():
        y = runner(x)
        xb = x[:batch].contiguous() if x.shape[0] >= batch else x[:1].expand(batch, *x.shape[1:]).contiguous()
        m = measure(lambda: runner(xb), cuda=cuda, opts=TimingOptions.for_budget(percentile), threads=threads)
    save_file({"y": y.float().cpu().contiguous()}, out)
    print(
        json.dumps(
            {
                "load_s": load_s,
                "measurement": m.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()
