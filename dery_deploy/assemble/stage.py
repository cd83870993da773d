"""The assemble stage: partition + similarity + profile + budget -> ranked candidates -> plan.

CP-SAT enumerates the top-N assemblies by the quality estimate under the budget; each candidate is
built with least-squares-initialised adapters and scored by a training-free proxy on seeded
batches of the target task; the best proxy score becomes the plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dery_deploy.assemble.adapters import Adapter, fit_least_squares
from dery_deploy.assemble.plan import BlockRef, Plan, build_net, stitch_specs
from dery_deploy.assemble.program import ProgramData, solve
from dery_deploy.errors import DeryError
from dery_deploy.profile.items import adapter_key, block_key, head_key
from dery_deploy.profile.calibration import reference_ms, speed_factor
from dery_deploy.profile.latency_model import overhead_ms, plan_items, predict

NUM_CLASSES = 10


def program_data(zoo, partition: dict, dissections: dict, sim, profile: dict, profile_path: str,
                 num_classes: int = NUM_CLASSES, capacity_weight: float = 0.5) -> ProgramData:
    """Index the partition's blocks and adapters with their profiled cost and stitch CKA."""
    recs = profile["records"]
    ref = reference_ms(profile)

    def ms(r: dict) -> float:  # at the profile's reference machine speed
        return r["median_ms"] * speed_factor(r, ref)

    def rec(key: str) -> dict:
        if key not in recs:
            raise DeryError(f"profile {profile_path} lacks item {key!r}; run `dery profile --zoo {zoo.name} --device "
                            f"{profile['device']} --backend {profile['backend']} --precision {profile['precision']} "
                            f"--batch {profile['batch']}` on the current partition", "assemble")
        return recs[key]

    sets = partition["sets"]
    options = [[b["donor"] for b in s["blocks"]] for s in sets]
    block_ms, block_params, block_mem = [], [], []
    for s in sets:
        row_ms, row_p, row_m = [], [], []
        for b in s["blocks"]:
            d = dissections[b["donor"]]
            r = rec(block_key(zoo, b["donor"], b["start"], b["end"], d.boundary_spec(b["start"])))
            row_ms.append(ms(r))
            row_m.append(r.get("peak_memory_mb") or 0.0)
            row_p.append(sum(p.numel() for p in d.block(b["start"], b["end"]).parameters()))
        block_ms.append(row_ms), block_params.append(row_p), block_mem.append(row_m)
    adapter_ms, adapter_params, adapter_mem, stitch = [], [], [], []
    for k in range(len(sets) - 1):
        lat, ps, mm, ck = {}, {}, {}, {}
        for ia, a in enumerate(sets[k]["blocks"]):
            for ib, b in enumerate(sets[k + 1]["blocks"]):
                if a["donor"] == b["donor"]:
                    continue
                src = dissections[a["donor"]].boundary_spec(a["end"])
                dst = dissections[b["donor"]].boundary_spec(b["start"])
                r = rec(adapter_key(src, dst))
                lat[(ia, ib)] = ms(r)
                mm[(ia, ib)] = r.get("peak_memory_mb") or 0.0
                ps[(ia, ib)] = sum(p.numel() for p in Adapter(src, dst).parameters())
                ck[(ia, ib)] = float(sim.matrix(a["donor"], b["donor"])[a["end"], b["start"]])
        adapter_ms.append(lat), adapter_params.append(ps), adapter_mem.append(mm), stitch.append(ck)
    head_ms, head_params = [], []
    for b in sets[-1]["blocks"]:
        src = dissections[b["donor"]].boundary_spec(b["end"])
        head_ms.append(ms(rec(head_key(src, num_classes))))
        head_params.append(src.channels * (num_classes + 2) + num_classes)
    return ProgramData(options, block_ms, block_params, block_mem, adapter_ms, adapter_params, adapter_mem, stitch,
                       head_ms, head_params, overhead_ms(profile), capacity_weight)


def plan_from_choice(zoo, partition: dict, choice: tuple[int, ...], num_classes: int = NUM_CLASSES) -> Plan:
    blocks = []
    for k, o in enumerate(choice):
        b = partition["sets"][k]["blocks"][o]
        blocks.append(BlockRef(k, b["donor"], b["start"], b["end"]))
    return Plan(zoo.name, zoo.hash(), blocks, num_classes, zoo_ref=zoo.ref)


class AdapterFitter:
    """Least-squares adapter init from probe features, cached per (donor, boundary) pair."""

    def __init__(self, dissections: dict, probe: torch.Tensor):
        self.dis = dissections
        self.probe = probe
        self._feats: dict[tuple[str, int], torch.Tensor] = {}
        self._fits: dict[tuple[str, int, str, int], dict] = {}

    @torch.no_grad()
    def features(self, donor: str, boundary: int) -> torch.Tensor:
        """The donor's own representation at a boundary on the probe images."""
        key = (donor, boundary)
        if key not in self._feats:
            x = self.probe
            if boundary:
                x = self.dis[donor].block(0, boundary).eval()(x)
            self._feats[key] = x
        return self._feats[key]

    def init(self, net, plan: Plan) -> list[float]:
        """Fit every adapter of `net` in place; returns the stitch errors after fitting."""
        errors = []
        specs = stitch_specs(plan, self.dis)
        for i, (a, b) in enumerate(zip(plan.blocks, plan.blocks[1:])):
            if specs[i] is None:
                continue
            key = (a.donor, a.end, b.donor, b.start)
            adapter = net.adapters[i]
            if key not in self._fits:
                err = fit_least_squares(adapter, self.features(a.donor, a.end), self.features(b.donor, b.start))
                self._fits[key] = ({k: v.clone() for k, v in adapter.state_dict().items()}, err)
            adapter.load_state_dict(self._fits[key][0])
            errors.append(self._fits[key][1])
        return errors


@dataclass
class Candidate:
    plan: Plan
    choice: tuple[int, ...]
    predicted_ms: float
    params: int
    memory_mb: float
    quality: float
    proxy: float = float("nan")
    stitch_errors: list[float] | None = None


def score_candidates(cands: list[Candidate], zoo, dissections: dict, fitter: AdapterFitter, proxy: str,
                     images: torch.Tensor, labels: torch.Tensor, progress=None) -> None:
    from dery_deploy.assemble.proxies import get_proxy

    fn = get_proxy(proxy)
    task = progress.add_task(f"proxy {proxy}", total=len(cands)) if progress else None
    for c in cands:
        torch.manual_seed(0)  # the head's init is part of the scored network
        net = build_net(c.plan, zoo, dissections)
        c.stitch_errors = fitter.init(net, c.plan)
        c.proxy = fn(net, images, labels)
        c.net = net
        if progress:
            progress.advance(task)


# Labelled images each proxy scores on: NASWOT / ZiCo use one small batch as in their papers; the
# linear probe needs enough samples per class for its leave-one-out estimate.
PROXY_IMAGES = {"naswot": 64, "zico": 64, "probe": 500}


def proxy_batch(zoo, n: int = 64, seed: int = 0, labels_per_class: int = 100):
    """Seeded batch of the target task's training data (Fashion-MNIST, 10 classes)."""
    from dery_deploy.data.fashion_mnist import load_split, per_class_subset, preprocess

    sub = per_class_subset(load_split("train"), labels_per_class, seed=0)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(sub), generator=g)[:n]
    return preprocess(sub.images[idx], zoo.input.size, zoo.input.mean[0], zoo.input.std[0]), sub.labels[idx]


def probe_for_adapters(zoo, n: int = 256, seed: int = 1):
    from dery_deploy.data.fashion_mnist import preprocess, probe_set

    images, _ = probe_set(n, seed)
    return preprocess(images, zoo.input.size, zoo.input.mean[0], zoo.input.std[0])


def assemble(zoo, partition: dict, dissections: dict, sim, profile: dict, profile_path: str, latency_ms: float,
             memory_mb: float | None = None, params_m: float | None = None, top: int = 10, proxy: str = "probe",
             search: str = "cpsat", seed: int = 0, progress=None, fitter: AdapterFitter | None = None) -> dict:
    """Candidates for one budget, ranked; returns {'plan', 'candidates', 'solver', ...}."""
    if memory_mb is not None and not memory_mb > 0:
        raise DeryError(f"--memory-mb must be > 0, got {memory_mb}", "assemble")
    if params_m is not None and not params_m > 0:
        raise DeryError(f"--params-m must be > 0, got {params_m}", "assemble")
    data = program_data(zoo, partition, dissections, sim, profile, profile_path)
    fitter = fitter or AdapterFitter(dissections, probe_for_adapters(zoo))
    images, labels = proxy_batch(zoo, PROXY_IMAGES.get(proxy, 64), seed=seed)
    t0 = time.perf_counter()
    if search == "cpsat":
        res = solve(data, latency_ms, memory_mb, None if params_m is None else int(params_m * 1e6), top)
        if not res.solutions:
            raise DeryError(res.infeasible_reason + "; raise the budget", "assemble")
        solver = {"name": "cp-sat", "status": res.status, "seconds_first": round(res.seconds_first, 4),
                  "seconds_top": round(res.seconds, 4), "top": len(res.solutions)}
        cands = [Candidate(plan_from_choice(zoo, partition, s.choice), s.choice, s.latency_ms, s.params, s.memory_mb,
                           s.quality) for s in res.solutions]
        score_candidates(cands, zoo, dissections, fitter, proxy, images, labels, progress)
    elif search == "optuna":
        from dery_deploy.assemble.search_optuna import optuna_search

        cands, solver = optuna_search(data, zoo, partition, dissections, fitter, proxy, images, labels, latency_ms,
                                      memory_mb, None if params_m is None else int(params_m * 1e6), top, seed)
        if not cands:
            from dery_deploy.assemble.program import fastest_latency

            raise DeryError(f"no assembly meets {latency_ms:g} ms; the fastest assembly is predicted at "
                            f"{fastest_latency(data):.4f} ms; raise the budget", "assemble")
    else:
        raise DeryError(f"--search must be cpsat or optuna, got {search!r}", "assemble")
    seconds = time.perf_counter() - t0
    cands.sort(key=lambda c: c.proxy, reverse=True)
    best = cands[0]
    plan = best.plan
    # cross-check the program's arithmetic against the latency model on the plan itself
    plan.predicted = {"latency_ms": round(predict(plan_items(plan, zoo, dissections), profile, path=profile_path), 5),
                      "memory_mb": round(best.memory_mb, 3), "params_m": round(best.params / 1e6, 4),
                      # the latency model's measured error on this profile (`dery profile --verify`), if any
                      "model_max_rel_error": profile.get("verify", {}).get("max_abs_rel_error"),
                      "model_median_rel_error": profile.get("verify", {}).get("median_abs_rel_error"),
                      # the machine speed the prediction is expressed at (reference workload, same backend)
                      "reference_ms": reference_ms(profile)}
    assert abs(plan.predicted["latency_ms"] - best.predicted_ms) < 1e-3 + 1e-3 * best.predicted_ms
    plan.device, plan.backend, plan.precision, plan.batch = (profile["device"], profile["backend"], profile["precision"],
                                                              profile["batch"])
    plan.budget = {"latency_ms": latency_ms, "memory_mb": memory_mb, "params_m": params_m}
    plan.proxy = {"name": proxy, "score": best.proxy, "stitch_errors": [round(e, 4) for e in best.stitch_errors or []]}
    plan.solver = {**solver, "quality": round(best.quality, 4), "search_seconds": round(seconds, 3)}
    return {"plan": plan, "net": best.net, "candidates": cands, "solver": solver, "data": data}
