"""What a measurement pass was (`PassSummary`) and how the machine disturbed it, told apart from the networks
it timed: other processes' CPU load (`busy_note`, from /proc, `resources.MachineLoad`) and machine-wide slow
spells (`spell_masks`).

A slow spell: on this project's 2-core VMs the whole machine sometimes runs 1.2-1.6x slower for about a
second with no other process running (the hypervisor's, not the network's). In an interleaved pass it
shows as rounds in which most items, the reference workload among them, ran well above their own quiet
windows at once. A three-second final pass at batch 32 spent 0.8 s in one: every item's windows in rounds
35-52 ran 1.2-1.6x their quiet ones, and the shipped file's p90 over all calls read 2.28 ms where the same
file alone, three thousand calls back to back, gave 1.89 ms (AMD EPYC, 2 cores, `scripts/bench_reproduce.py`
at ca8ced2). The per-call figures a promise is judged by leave such rounds out, and the pass says how many;
a spell that covers most of a pass is the machine's speed at the time, and nothing is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

BUSY_CORES = 0.15  # other processes' average CPU use during a pass (cores) above which it was a busy machine
SPELL = 0.15  # a window this much slower than its item's quiet windows is slow
QUIET = 25  # the windows' percentile an item's quiet window is taken at (as the harness ranks items)


@dataclass
class PassSummary:
    """What one interleaved pass was: how many items and windows, its time, and how noisy the machine was."""

    items: int
    windows: int
    seconds: float
    noise_index: float  # median over items of Measurement.noise
    unstable: int
    threads: int | None
    when: str
    # cores' worth of CPU time other processes took while the pass timed (None: not readable here)
    other_load_cores: float | None = None
    cores: int | None = None
    # the reference workload's per-call median over all calls in this pass, where the pass timed it:
    # the machine's speed at the time, which figures of different passes and processes are related by
    reference_ms: float | None = None
    # the final pass's reference per runtime and threads ("openvino/t1" -> ms): each package is related
    # to the machine's speed as its own runtime measured it
    references_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    spell_rounds: int = 0  # rounds in a machine-wide slow spell (`disturbance.py`): out of the per-call figures

    @property
    def busy(self) -> bool:
        """Whether other processes loaded the machine during the pass (its figures include their load)."""
        return self.other_load_cores is not None and self.other_load_cores > BUSY_CORES

    def to_dict(self) -> dict:
        return asdict(self)

    def load_line(self) -> str:
        """A warning when the machine was busy, else empty."""
        if not self.busy:
            return ""
        return (
            f"other processes used {self.other_load_cores:.2f} of {self.cores} cores while this pass timed: its "
            "figures are a busy machine's, not the device's; measure again with nothing else running"
        )

    def spell_line(self) -> str:
        """What the per-call figures left out as the machine's slow spells, or empty."""
        if not self.spell_rounds:
            return ""
        return (
            f"{self.spell_rounds} of {self.rounds} rounds ran in a machine-wide slow spell (most items slower "
            f"than their quiet windows by more than {100 * SPELL:.0f}% at once): left out of the per-call figures"
        )

    def line(self) -> str:
        extra = "".join(f"; {x}" for x in (self.load_line(), self.spell_line()) if x)
        return (
            f"{self.items} items in {self.seconds:.1f} s, noise index {100 * self.noise_index:.1f}% "
            f"(typical window vs quiet window), {self.unstable} not stable{extra}"
        )


def spell_rounds(medians: dict[str, list[float]], rounds: dict[str, list[int]]) -> set[int]:
    """The rounds of a pass in which at least half of the items timed then (and at least two) ran more than
    SPELL above their own quiet window: per item, its windows' median call (ms) and each window's round."""
    slow: dict[int, int] = {}
    seen: dict[int, int] = {}
    for k, meds in medians.items():
        m = np.asarray(meds, dtype=float)
        if len(m) < 3:
            continue
        quiet = np.percentile(m, QUIET)
        for r, is_slow in zip(rounds[k], m > quiet * (1 + SPELL)):
            seen[r] = seen.get(r, 0) + 1
            slow[r] = slow.get(r, 0) + bool(is_slow)
    return {r for r, n in seen.items() if slow[r] >= max(2, -(-n // 2))}


def spell_masks(medians: dict[str, list[float]], rounds: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Per item, which of its windows were timed in a slow spell (`spell_rounds`); none where the spells
    cover more than half of the item's windows (then they are the machine's speed at the time)."""
    spells = spell_rounds(medians, rounds)
    out = {}
    for k, rs in rounds.items():
        mask = np.array([r in spells for r in rs], dtype=bool)
        out[k] = mask if 2 * mask.sum() <= len(mask) else np.zeros(len(rs), dtype=bool)
    return out


def busy_note(passes: list[dict]) -> str:
    """One line on the passes (as recorded, `PassSummary.to_dict`) that other processes loaded, or empty."""
    busy = [p for p in passes if (p.get("other_load_cores") or 0) > BUSY_CORES]
    if not busy:
        return ""
    worst = max(p["other_load_cores"] for p in busy)
    return (
        f"{len(busy)} of {len(passes)} measurement passes ran while other processes used up to {worst:.2f} of "
        f"{busy[0].get('cores')} cores: those figures are a busy machine's, not the device's; profile again "
        "with nothing else running (a rerun measures only what is missing: delete the profile to redo it)"
    )
