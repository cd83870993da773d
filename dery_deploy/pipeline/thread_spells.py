"""Whether this machine's speed at a further thread count repeats from one stretch of seconds to the next.

On this project's 2-core VM, a whole donor at two OpenVINO threads switched between two speeds every few to
tens of seconds while the same file at one thread, timed in turn with it, did not move (resnet10t_tops,
fp32, one process, 0.5 s slices over 60 s, nothing else running): 0.226 ms in one spell and 0.300 ms in the
next, which is the one-thread time (0.289-0.299 ms). A run that measured it in a fast spell shipped it at
0.193 ms, and a later `dery bench` read 0.176 or 0.244 ms depending on the spell. The harness's noise index
does not see this: each pass sits in one spell. The host decides whether the second core is there.

The check: one whole donor at the first count and at the further count, interleaved window by window in one
pass of `SPELL_S` seconds, its windows cut in time order into `SPELLS` stretches; per stretch, the median
window at the further count over the median window at the first. Interleaving cancels the machine's drift,
which hits both counts alike; what is left is the further count's own speed. If those ratios spread by more
than `SPREAD` (max over min), the count does not repeat on this machine, and the target is not searched:
what would ship at it could not be reproduced (issue 26). It runs on each further count that passes its
screen (`thread_screen.py`), on the donor that may fit a budget and gains most from the count (where a
missing core shows most), once before the count's full profile and, if it held, again after the count's
latency check or, where the other targets' profiles separated them by `SPELL_GAP_S`, before its full profile
(`target_profiles.profile_targets`), the two pooled: a clean-clone default run's single check sat in
one good spell (0.72-0.73x in all 8 stretches), shipped two threads, and its final pass measured that file
33% slower than its finalist pass had. Its result is kept in the run's cache for a rerun.
Measured here (six checks in a row each, resnet10t_tops): OpenVINO fp32 at two threads ran 0.72-0.74x its
one-thread time in a good stretch and 0.98-1.05x in a bad one, a spread of 41-42% in 4 of 6 checks (7.3% and
1.6% in the others); ONNX Runtime fp32, which gains nothing from a second thread here (1.04-1.16x), spread
2.7-7.9%; vit_tops, the slowest donor, held 0.63-0.66x in all of eight checks. A check can pass in a spell
that lasts all `SPELL_S` seconds: then the final pass and `dery bench` are what tell.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.pipeline.thread_screen import ScreenedCount, SpellCheck, may_fit, stretch_ratios
from dery_deploy.profile.items import donor_items, example_input
from dery_deploy.profile.store import Profile
from dery_deploy.runtime.backends import get_backend
from dery_deploy.runtime.harness import TimingOptions
from dery_deploy.runtime.measure import isolated, measure_across

if TYPE_CHECKING:
    from dery_deploy.pipeline.runner import Run

SPELL_S = 16.0  # the pass's length: spells on the 2-core VM lasted 2-40 s
# the second check of a count comes at least this long after the first (the docstring's "half a minute or more
# later"): after the other targets' profiles where they took that long, else after the count's own
SPELL_GAP_S = 30.0


def gaining_donor(extra: Profile, first: Profile, within_ms: float | None) -> str | None:
    """The whole donor that may fit a budget (`thread_screen.may_fit`) whose time drops most at the further
    count, or None. Not the slowest donor: vit_tops at two threads held 0.63-0.66x its one-thread time in every
    stretch of eight checks while resnet10t_tops, timed minutes later, moved from 0.73x to 1.03x."""
    fit = may_fit(extra, first, within_ms)
    if not fit:
        return None
    return min(fit, key=lambda k: (extra.records[k].median_ms / first.records[k].median_ms, k))


def spell_path(cache: Path, extra: Profile) -> Path:
    return (
        cache
        / "profiles"
        / extra.device
        / f"thread-spells-{extra.zoo}-{extra.backend}-{extra.precision}-t{extra.threads}.json"
    )


def check_spells(
    zoo, device, first: Profile, extra: Profile, num_classes: int, within_ms: float | None, progress=None
) -> SpellCheck | None:
    """The check above for `extra`'s thread count against `first` (the same runtime and precision), measured
    in a measurement worker; None where the two profiles share no whole donor that may fit a budget
    (`within_ms`: as `thread_screen.screened` takes it)."""
    key = gaining_donor(extra, first, within_ms)
    if key is None:
        return None
    name = extra.records[key].info.get("donor", key)
    item = next(it for it in donor_items(zoo, num_classes) if it.info["donor"] == name)
    x = example_input(item.in_spec, extra.batch)
    builds = {
        f"t{p.threads}": (get_backend(p.backend, p.threads), p.precision, lambda: (item.build().eval(), x))
        for p in (first, extra)
    }
    if not all(isolated(be, device) for be, _, _ in builds.values()):
        return None  # in-process backends time different counts in passes apart: no drift-free ratio
    opts = replace(TimingOptions(), min_s=SPELL_S, max_s=0.0)
    t0 = time.time()
    measured, _ = measure_across(builds, device, opts, progress, label=f"thread spells: {name}", memory=())
    a, b = (measured[f"t{p.threads}"].timing.window_medians_ms for p in (extra, first))
    ratios = stretch_ratios(a, b)
    return SpellCheck(name, _target(first), _target(extra), extra.threads or 0, ratios, round(time.time() - t0, 1))


def _target(p: Profile) -> str:
    return f"{p.backend}/{p.precision}/t{p.threads}"


def read_spells(path: Path) -> SpellCheck | None:
    try:
        return SpellCheck(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_spells(path: Path, check: SpellCheck) -> None:
    atomic_write_json(path, asdict(check))


def spell_cut(
    r: Run, zoo, first: Profile, extra: Profile, num_classes: int, name: str, within_ms: float | None, moment: int = 1
):
    """The check above for target `name` (`extra`'s count) at its `moment`: 1 before the count's full profile,
    2 after its latency check, pooled with the first. Each is made once per run folder and target (kept in its
    cache, recorded in run.json). Returns a ScreenedCount saying why where the count does not repeat, else None."""
    path = spell_path(r.cache, extra)
    check = read_spells(path)
    if check is None or check.checks < moment:
        r.say("[bold cyan]> thread spells[/]" if r.console else "> thread spells")
        t = time.time()
        with r.progress() as prog:
            new = check_spells(zoo, "cpu", first, extra, num_classes, within_ms, prog)
        if new is None:
            return None
        check = new if check is None else check.pooled(new)
        write_spells(path, check)
        r.record(f"thread spells {check.extra} ({check.checks} of 2)", "computed", time.time() - t)
        r.say(f"  {check.extra} against {check.first} on {check.donor}: {', '.join(f'{v:.2f}' for v in new.ratios)}")
    r.manifest.thread_spells = [c for c in r.manifest.thread_spells if c.extra != check.extra] + [check]
    return None if check.repeats else ScreenedCount(name, check.first, check.why(name))
