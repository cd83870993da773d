"""One run's folder and the reuse-or-compute helper every stage goes through."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dery_deploy.errors import DeryError
from dery_deploy.pipeline.estimate import Eta
from dery_deploy.pipeline.manifest import RunManifest, StageRecord
from dery_deploy.pipeline.options import RunOptions

T = TypeVar("T")
# where a run sets aside the budget folders of earlier runs in its folder with other budgets
EARLIER = "earlier"


class Run:
    """One `dery run`: its options, folder, manifest and the reuse-or-compute helper every stage uses."""

    manifest: RunManifest  # set once the run folder exists
    current: str = "setup"  # the stage running now, which a failed run's manifest names
    eta: Eta | None = None  # the whole run's remaining time, once estimated
    fitted: tuple | None = None  # under --time-limit: the plan fitted to it and the seconds per measured item

    def __init__(self, opts: RunOptions, console=None, progress_factory=None):
        self.opts = opts
        self.out = Path(opts.out)
        self.cache = self.out / "cache"
        self.console = console
        self.progress_factory = progress_factory
        self.t0 = time.time()
        self.budget_dirs: set[str] = set()  # the budget folders this run worked in (`set_aside_earlier`)

    def budget_dir(self, b: float) -> Path:
        """A budget's folder, taken back from `EARLIER` where an earlier run in this folder left it set aside
        (its stages are reused where they still match, as if it had stayed)."""
        d = self.out / f"budget-{b:g}ms"
        self.budget_dirs.add(d.name)
        kept = self.out / EARLIER / d.name
        if not d.exists() and kept.is_dir():
            kept.rename(d)
        return d

    def set_aside_earlier(self) -> list[str]:
        """Move the budget folders no stage of this run worked in (an earlier run's in this folder, with other
        budgets) into `EARLIER`, so that the folder's `budget-*/export` are this run's packages; their names."""
        moved = []
        for d in sorted(self.out.glob("budget-*ms")):
            if d.is_dir() and d.name not in self.budget_dirs:
                dest = self.out / EARLIER / d.name
                if dest.exists():
                    shutil.rmtree(dest)  # an older copy of the same budget's folder
                dest.parent.mkdir(exist_ok=True)
                d.rename(dest)
                moved.append(d.name)
        if moved:
            self.say(
                f"  note: {len(moved)} budget folder(s) of an earlier run here with other budgets set aside in "
                f"{self.out / EARLIER} ({', '.join(moved)}): this folder's budget-*/export are this run's packages"
            )
        return moved

    def say(self, text: str) -> None:
        if self.console:
            self.console.print(text)
        else:
            print(text)

    def progress(self):
        from contextlib import nullcontext

        return self.progress_factory() if self.progress_factory else nullcontext(None)

    def stage(
        self, name: str, reuse: Callable[[], T | None], compute: Callable[[], T], note: Callable[[T], str] | None = None
    ) -> T:
        """Reuse-or-compute: `reuse()` returns the stage's still-valid result (or None), else `compute()`."""
        self.say(f"[bold cyan]> {name}[/]" if self.console else f"> {name}")
        self.current = name
        t = time.time()
        result = reuse()
        status = "reused"
        if result is None:
            result = compute()
            status = "computed"
        self.manifest.stages.append(
            StageRecord(name, status, round(time.time() - t, 2), note(result) if note is not None else "")
        )
        self._tick(name, time.time() - t, status == "reused")
        self.save()
        return result

    def record(self, name: str, status: str, seconds: float, note: str = "") -> None:
        self.manifest.stages.append(StageRecord(name, status, round(seconds, 2), note))
        self._tick(name, seconds, status != "computed")
        self.save()

    def _tick(self, name: str, seconds: float, reused: bool) -> None:
        """The whole run's line after a stage the estimate expected, and its record in the manifest."""
        if self.eta is None or not self.eta.finished(name, seconds, reused):
            return
        if self.manifest.estimate is not None:
            self.manifest.estimate.actual = self.eta.record()
        line = self.eta.line(time.time() - self.t0)
        self.say(f"  [dim]{line}[/]" if self.console else f"  {line}")

    def save(self) -> None:
        self.manifest.seconds = round(time.time() - self.t0, 1)
        self.manifest.write(self.out / "run.json")


def check_run_dir(out: Path, zoo, device: str) -> None:
    """Refuse an -o folder that belongs to another zoo or device, or that holds a shipped package."""
    path = out / "run.json"
    if (out / "deploy.json").is_file() and not path.is_file():
        raise DeryError(f"{out} holds a shipped package (deploy.json), not a run; choose another -o", "run")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            return  # a torn manifest from a killed run: rewritten below
        if old.get("zoo") != zoo.name or old.get("device") != device:
            raise DeryError(
                f"run directory {out} belongs to zoo {old.get('zoo')!r} on device {old.get('device')!r}, "
                f"not {zoo.name!r} on {device!r}; choose another -o",
                "run",
            )
