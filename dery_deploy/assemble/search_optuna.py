"""Black-box alternative to CP-SAT: Optuna's TPE over the same block choices, maximising the
proxy directly, the budgets as constraints. It gets the same number of proxy evaluations as the
CP-SAT top-N rerank; infeasible or repeated choices cost no proxy evaluation."""

from __future__ import annotations

import time

import torch

from dery_deploy.assemble.program import ProgramData, to_us


def optuna_search(data: ProgramData, zoo, partition, dissections, fitter, proxy: str, images, labels,
                  latency_ms: float, memory_mb: float | None, params_max: int | None, evaluations: int, seed: int):
    import optuna

    from dery_deploy.assemble.proxies import get_proxy
    from dery_deploy.assemble.stage import Candidate, plan_from_choice
    from dery_deploy.assemble.plan import build_net

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fn = get_proxy(proxy)
    seen: dict[tuple[int, ...], Candidate | None] = {}

    def feasible(ev) -> bool:
        return (to_us(ev["latency_ms"]) <= to_us(latency_ms) and (memory_mb is None or ev["memory_mb"] <= memory_mb)
                and (params_max is None or ev["params"] <= params_max))

    def objective(trial):
        choice = tuple(trial.suggest_categorical(f"set{k}", list(range(len(data.options[k])))) for k in range(data.K))
        ev = data.evaluate(choice)
        violation = max(0.0, ev["latency_ms"] - latency_ms)
        if hasattr(trial, "set_constraint"):  # optuna >= 5
            trial.set_constraint("latency", violation)
        trial.set_user_attr("violation", violation)
        if not feasible(ev):
            seen.setdefault(choice, None)
            return -1e9
        if choice not in seen or seen[choice] is None:
            c = Candidate(plan_from_choice(zoo, partition, choice), choice, ev["latency_ms"], ev["params"], ev["memory_mb"],
                          ev["quality"])
            torch.manual_seed(0)
            net = build_net(c.plan, zoo, dissections)
            c.stitch_errors = fitter.init(net, c.plan)
            c.proxy = fn(net, images, labels)
            c.net = net
            seen[choice] = c
        return seen[choice].proxy

    kwargs = {} if hasattr(optuna.trial.Trial, "set_constraint") else \
        {"constraints_func": lambda t: (t.user_attrs["violation"],)}
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, evaluations), **kwargs)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    t0 = time.perf_counter()
    trials = 0
    total = 1
    for n in data.options:
        total *= len(n)
    while sum(1 for c in seen.values() if c is not None) < evaluations and trials < 50 * evaluations and len(seen) < total:
        study.optimize(objective, n_trials=1)
        trials += 1
    cands = [c for c in seen.values() if c is not None]
    return cands, {"name": "optuna-tpe", "status": "DONE", "trials": trials, "proxy_evaluations": len(cands),
                   "seconds_top": round(time.perf_counter() - t0, 4)}
