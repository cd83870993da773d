"""Black-box alternative to the integer program: Optuna's TPE over the same block choices,
maximising the proxy directly, the budget as a constraint. It gets the same number of proxy
evaluations as the program's top-N rerank; infeasible or repeated choices cost no proxy evaluation."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from dery_deploy.assemble.candidates import Candidate, plan_from_choice
from dery_deploy.assemble.program import Budget, ProgramData
from dery_deploy.assemble.proxies import get_proxy
from dery_deploy.network.plan import build_net
from dery_deploy.profile.latency_model import us_to_ms


def optuna_search(
    data: ProgramData,
    zoo,
    partition,
    dissections,
    fitter,
    proxy: str,
    images,
    labels,
    budget: Budget,
    evaluations: int,
    seed: int,
    num_classes: int,
):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fn = get_proxy(proxy)
    seen: dict[tuple[int, ...], Candidate | None] = {}

    def objective(trial):
        choice = tuple(trial.suggest_categorical(f"set{k}", list(range(len(data.options[k])))) for k in range(data.K))
        ev = data.evaluate(choice)
        violation = max(0.0, us_to_ms(ev.latency_us - budget.latency_us))
        if hasattr(trial, "set_constraint"):  # optuna >= 5
            trial.set_constraint("latency", violation)
        trial.set_user_attr("violation", violation)
        if not budget.admits(ev):
            seen.setdefault(choice, None)
            return -1e9
        if seen.get(choice) is None:
            c = Candidate.of(plan_from_choice(zoo, partition, choice, num_classes), ev, "optuna")
            torch.manual_seed(0)
            net = build_net(c.plan, zoo, dissections)
            c.stitch_errors = fitter.init(net, c.plan)
            c.proxy = fn(net, images, labels)
            c.net = net
            seen[choice] = c
        return seen[choice].proxy

    older: dict[str, Any] = (
        {}
        if hasattr(optuna.trial.Trial, "set_constraint")
        else {"constraints_func": lambda t: (t.user_attrs["violation"],)}
    )
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, evaluations), **older)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    t0 = time.perf_counter()
    trials = 0
    total = math.prod(len(o) for o in data.options)
    while (
        sum(1 for c in seen.values() if c is not None) < evaluations and trials < 50 * evaluations and len(seen) < total
    ):
        study.optimize(objective, n_trials=1)
        trials += 1
    cands = [c for c in seen.values() if c is not None]
    return cands, {
        "name": "optuna-tpe",
        "status": "DONE",
        "trials": trials,
        "proxy_evaluations": len(cands),
        "seconds_top": round(time.perf_counter() - t0, 4),
    }
