"""Load an AOTInductor package and run it, in a child process.

`aoti_load_package` can crash the process (seen: segfault on a CUDA package with torch 2.11), so
the exporter runs this module as a subprocess and reads one JSON line from it:
    python -m dery_deploy.export.aoti_check PACKAGE INPUTS.safetensors OUT.safetensors
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from dery_deploy.profile.harness import measure

    pkg, inputs, out = sys.argv[1:4]
    t0 = time.perf_counter()
    runner = torch._inductor.aoti_load_package(pkg)
    load_s = time.perf_counter() - t0
    tensors = load_file(inputs)
    x = tensors["x"]
    device = tensors.get("device_cuda") is not None and torch.cuda.is_available()
    if device:
        x = x.cuda()
    with torch.inference_mode():
        y = runner(x)
        x1 = x[:1].contiguous()
        m = measure(lambda: runner(x1), cuda=bool(device))
    save_file({"y": y.float().cpu().contiguous()}, out)
    print(json.dumps({"load_s": load_s, "latency_ms": m.median_ms, "p90_ms": m.p90_ms, "stable": m.stable}))


if __name__ == "__main__":
    main()
