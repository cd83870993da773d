"""`dery run`: the main job. `run.py` drives the stages; `stages.py` holds those before and around the
budgets, `budget.py` one budget's flow (with `pick.py`, the pick rule), `final_pass.py` the run's one
interleaved measurement of everything it compares; `options.py`, `manifest.py` (run.json),
`runner.py` (the reuse-or-compute helper), `context.py` and `budgets.py` are what they share."""

from dery_deploy.pipeline.budgets import choose_budgets
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.run import run

__all__ = ["RunManifest", "RunOptions", "choose_budgets", "run"]
