"""`dery run`: the main job, one function per stage, each reused when its artifact still matches
(`run.py`); the run's one final measurement pass over everything it compares (`final_pass.py`)."""

from dery_deploy.pipeline.run import RunManifest, RunOptions, choose_budgets, run

__all__ = ["RunManifest", "RunOptions", "choose_budgets", "run"]
