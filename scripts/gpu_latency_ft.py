"""gpu_check's latency-ft step: a fine-tuned run folder's network measured as its plan will run it (the plan's
backend, precision, batch and threads, on the plan's device), printed as JSON.

Usage: python3 scripts/gpu_latency_ft.py RUN
"""

import json
import sys

from dery_deploy.profile.items import example_input
from dery_deploy.profile.run import device_for, resolve_backend
from dery_deploy.runtime.devices import get_device
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.measure import measure_module
from dery_deploy.train.finetune import load_run_model
from dery_deploy.zoo import get_zoo

model, cfg = load_run_model(sys.argv[1])
plan = cfg.source.plan
if plan is None:
    raise SystemExit(f"{sys.argv[1]} trained donor {cfg.source.donor!r} whole: it has no plan to measure as")
spec = get_device(plan.device)
be, prec = resolve_backend(spec, plan.backend, plan.precision, plan.threads)
x = example_input(get_zoo(cfg.zoo_ref or cfg.zoo).input_tensor_spec, plan.batch)
m = measure_module(be, model.eval(), x, prec, device_for(spec), TimingOptions.for_budget())
budget = plan.budget.latency_ms if plan.budget else None
out = {
    "backend": be.name,
    "precision": prec,
    "batch": x.shape[0],
    "device": spec.id,
    "measured": m.timing.to_dict() | {"window_medians_ms": None},
    "peak_memory_mb": m.peak_memory_mb,
    "predicted_ms": plan.predicted.latency_ms if plan.predicted else None,
    "budget_ms": budget,
    "within_budget": None if budget is None else m.timing.median_ms <= budget,
}
print(json.dumps(out, indent=1))
