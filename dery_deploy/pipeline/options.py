"""The options of one `dery run`, checked all at once before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dery_deploy.data.task import DEFAULT_DATA
from dery_deploy.errors import DeryError
from dery_deploy.runtime.harness import PERCENTILES


@dataclass
class RunOptions:
    zoo: str = "fashion"
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    budgets: list[float] | None = None
    data: str = DEFAULT_DATA
    probe_data: str | None = None  # unlabelled images for similarity (default: the task's own)
    K: int = 4
    epochs_adapter: int = 4
    epochs_full: int = 6
    top: int = 10
    verify: int = 10
    probe: int = 512
    restarts: int = 50
    aoti: bool = False  # an AOTInductor package for the middle budget: opt-in (--aoti), it never ships on a CPU
    quick: bool = False
    seed: int = 0
    out: str = "runs/default"
    allow_over_budget: bool = False  # else a shipped artifact measured over its budget fails the run
    batch: int = 1  # images per call the budgets are for (32: a throughput budget)
    percentile: int = 50  # of single calls, what every budget promises
    threads: int | None = None  # CPU threads the runtime computes with (None: the device spec's)
    targets: list[str] | None = None  # backend/precision pairs to search (None: the device spec's `search`)
    time_limit: float | None = None  # minutes the run fits itself to (pipeline/time_limit.py); None: no limit
    # every profiled target searched in selection, even one the pick rule could never choose (pipeline/targets.py)
    keep_all_targets: bool = False
    family: bool = False  # --family: a family of paths over the budgets too (pipeline/family.py)
    # how the family's paths train: "joint" (option (b), family_joint.py) | "frozen" (option (a), family.py)
    family_training: str = "joint"
    heal_every_mix: bool = False  # heal a best mix selection already rules out (pick.mix_ruled_out)
    train_every_donor: bool = False  # train a donor the short recipe found dominated (budgets.dominated_donors)

    def check(self) -> None:
        """Every bad option at once, before any work starts."""
        bad = []
        if self.K < 1:
            bad.append(f"-K must be >= 1, got {self.K}")
        if self.family_training not in ("frozen", "joint"):
            bad.append(f"--family-training must be frozen or joint, got {self.family_training!r}")
        elif self.family_training != "joint" and not self.family:
            bad.append(f"--family-training {self.family_training} trains a family's paths: give --family too")
        if self.epochs_adapter < 0 or self.epochs_full < 0 or self.epochs_adapter + self.epochs_full == 0:
            bad.append(f"epochs must be >= 0 and not both 0, got {self.epochs_adapter} and {self.epochs_full}")
        if self.top < 1:
            bad.append(f"--top must be >= 1, got {self.top}")
        if self.verify < 3:
            bad.append(f"--verify must be >= 3 (mixed assemblies to judge the latency model), got {self.verify}")
        if self.probe < 8:
            bad.append(f"--probe must be >= 8, got {self.probe}")
        if self.budgets is not None and any(not 0 < b < math.inf for b in self.budgets):
            bad.append(f"--budgets must be positive finite numbers, got {self.budgets}")
        if self.batch < 1:
            bad.append(f"--batch must be >= 1, got {self.batch}")
        if self.percentile not in PERCENTILES:
            bad.append(f"--percentile must be one of {', '.join(map(str, PERCENTILES))}, got {self.percentile}")
        if self.time_limit is not None and not 0 < self.time_limit < math.inf:
            bad.append(f"--time-limit must be a positive number of minutes, got {self.time_limit:g}")
        if self.threads is not None and self.threads < 1:
            bad.append(f"--threads must be >= 1, got {self.threads}")
        if bad:
            raise DeryError("; ".join(bad), "run")

    def apply_quick(self) -> None:
        """--quick: one budget, short training, fewer candidates; same stages."""
        self.epochs_adapter, self.epochs_full = min(self.epochs_adapter, 1), min(self.epochs_full, 2)
        self.top, self.verify, self.probe, self.restarts = (
            min(self.top, 4),
            min(self.verify, 5),
            min(self.probe, 256),
            20,
        )
        self.aoti = False
