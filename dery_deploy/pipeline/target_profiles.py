"""Each target's profile and latency check, in the order the run searches them, with the checks that leave a
further thread count out before or after its full profile (`thread_screen.py`, `thread_spells.py`) and the
repeatability rule over the profiles (`repeatability.py`)."""

from __future__ import annotations

import time

from dery_deploy.assemble.candidates import DONOR_NEAR
from dery_deploy.assemble.pool import target_of
from dery_deploy.data.task import Task
from dery_deploy.pipeline.records import TimeLimitRecord
from dery_deploy.pipeline.repeatability import repeatable
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.stages import stage_donor_profile, stage_profile, stage_verify
from dery_deploy.pipeline.thread_screen import ScreenedCount, screened
from dery_deploy.pipeline.thread_spells import SPELL_GAP_S, spell_cut
from dery_deploy.pipeline.time_limit import keeps_profiling
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.store import Profile
from dery_deploy.runtime.backends import Backend
from dery_deploy.runtime.devices import DeviceSpec
from dery_deploy.runtime.target import Target


def counts_named(targets: list[tuple[Backend, str]]) -> bool:
    """Whether the run searches more than one thread count, so that its targets are named with their counts."""
    return len({b.threads for b, _ in targets}) > 1


def target_names(targets: list[tuple[Backend, str]]) -> list[str]:
    """Each target's name: `backend/precision`, with `/tN` where the run searches more than one thread count."""
    counted = counts_named(targets)
    return [str(Target(b.name, p, b.threads if counted else None)) for b, p in targets]


def left_out(r: Run, cut: ScreenedCount | None) -> bool:
    """Whether a further count was left out; if so, recorded in run.json and said."""
    if cut is not None:
        r.manifest.screened.append(cut)
        r.say(f"  [yellow]note:[/] {cut.why}" if r.console else f"  note: {cut.why}")
    return cut is not None


def out_of_time(r: Run, names: list[str], i: int) -> None:
    """Under --time-limit, the targets from the i-th on are not searched: recorded in run.json and said."""
    left = ", ".join(names[i:])
    r.manifest.time_limit = TimeLimitRecord(cuts=[f"targets {left} not searched (the profiles used the time for them)"])
    r.manifest.targets = r.manifest.targets[:i]
    r.say(f"  time limit {r.opts.time_limit:g} min: {left} not searched; the profiles so far used its share")


def profile_targets(r: Run, zoo, spec: DeviceSpec, targets, part, dis, task: Task) -> list[LatencyModel]:
    """Each target's profile and latency check, in order; under --time-limit, the device spec's further
    targets only while the profiles fit their share of it (`time_limit.keeps_profiling`); a further thread
    count of a runtime and precision only past its whole donors' screen (`thread_screen.py`) and its spells,
    checked twice, half a minute or more apart (`thread_spells.py`). Returns the latency models of the targets
    whose measurements repeat (`repeatability.py`; the others recorded in run.json with why).

    Without a time limit, a further count is screened and its spells checked once right after its first count's
    profile, so that the other targets' profiles separate its two spell checks, and the second comes before its
    own full profile: a count that does not repeat is left out without being profiled (a default run's OpenVINO
    fp32 at two threads had spent 44 s on a profile and latency check before its second check left it out; AMD
    EPYC 2 cores). Where less than `SPELL_GAP_S` separates them (a run of one runtime, a reused first profile),
    the second check comes after the count's latency check, as before."""
    opts = r.opts
    names = target_names(targets)
    models: list[LatencyModel] = []
    r.manifest.screened = []
    limit, last = (60 * opts.time_limit if opts.time_limit else None), 0.0
    within = max(opts.budgets) * (1 + DONOR_NEAR) if opts.budgets else None
    early: dict[int, bool] = {}  # further counts screened ahead: index -> left out
    spelled: dict[int, tuple[float, Profile]] = {}  # a further count's first spell check: when it ended, its donors

    def first_of(i: int) -> LatencyModel | None:
        backend, precision = targets[i]
        return next((m for m in models if Target.of(m.profile) == Target(backend.name, precision)), None)

    def screen(i: int, first: LatencyModel) -> bool:
        """Target i's whole donors' screen and first spell check; whether it is left out (recorded and said)."""
        backend, precision = targets[i]
        donors = stage_donor_profile(r, zoo, spec, backend, precision, part, dis, task, names[i])
        cut = screened(donors, first.profile, names[i], target_of(first), within)
        if cut is None:
            cut = spell_cut(r, zoo, first.profile, donors, task.num_classes, names[i], within)
            spelled[i] = (time.time(), donors)
        return left_out(r, cut)

    def spells_again(i: int, first: LatencyModel, prof: Profile) -> bool:
        return left_out(r, spell_cut(r, zoo, first.profile, prof, task.num_classes, names[i], within, moment=2))

    for i, (backend, precision) in enumerate(targets):
        if i and not opts.targets and not keeps_profiling(limit, time.time() - r.t0, last):
            out_of_time(r, names, i)
            break
        t = time.time()
        first = first_of(i)
        screens = not opts.keep_all_targets  # a further count (`first` is its first count's) is screened
        spells_done = False
        if first is not None and screens:
            out = early.pop(i) if i in early else screen(i, first)
            if not out and i in spelled and time.time() - spelled[i][0] >= SPELL_GAP_S:
                spells_done = True
                out = spells_again(i, first, spelled[i][1])
            if out:
                last = time.time() - t
                continue
        prof_file = stage_profile(r, zoo, spec, backend, precision, part, dis, task, names[i])
        prof = stage_verify(r, zoo, spec, prof_file, part, dis, names[i])
        if first is not None and screens and not spells_done and spells_again(i, first, prof):
            last = time.time() - t
            continue
        models.append(LatencyModel.of(prof, str(prof_file), opts.percentile))
        models[-1].threads_named = counts_named(targets)
        last = time.time() - t
        if first is None and limit is None and screens:  # its further counts, screened ahead
            for j in range(i + 1, len(targets)):
                if (targets[j][0].name, targets[j][1]) == (backend.name, precision):
                    early[j] = screen(j, models[-1])
    kept, r.manifest.unrepeatable = repeatable(models)
    for d in r.manifest.unrepeatable:
        r.say(f"  [yellow]note:[/] {d.why}" if r.console else f"  note: {d.why}")
    return kept
