"""What the run's final pass writes: `final_pass.json` (the pass, then every look at a shipped file alone) and
run.json's record of the pass, with how long and how often a shipped file is measured again."""

from __future__ import annotations

from dataclasses import dataclass, field

from dery_deploy.runtime.disturbance import PassSummary
from dery_deploy.runtime.harness import Measurement
from dery_deploy.schema import load_dataclass

# a shipped file whose final-pass figure is over its budget, undecided, or far from its admission
# (`second_look.ship_suspects`) is measured again, alone with the machine's reference, this many times
REMEASURES = 2
# each re-measurement lasts at least this long: a host whose speed moves in spells of seconds showed a
# 0.19 s re-measurement one fast spell (two read 0.1167 and 0.1161 ms of a file that `dery bench` then
# measured at 0.144-0.168 ms alone)
REMEASURE_SECONDS = 10.0
# every shipped package on the CPU is first looked at alone, as `dery bench` measures it, for at least this long
# (as the final pass lasts at least FINAL_MIN_S: a shorter look is one moment of a host whose speed moves)
LOOK_SECONDS = 3.0


@dataclass
class SecondLook:
    """Shipped files measured again, alone with the machine's reference: which, and that pass (or look)."""

    keys: list[str]
    summary: PassSummary
    measurements: dict[str, Measurement]
    # a shipped package measured as `dery bench` measures it (`second_look.look_at_ships`), the verdict's source
    package: bool = False

    def to_dict(self) -> dict:
        return {
            "keys": self.keys,
            "summary": self.summary.to_dict(),
            "measurements": {k: v.to_dict() for k, v in self.measurements.items()},
            "package": self.package,
        }


@dataclass
class FinalPassFile:
    """`final_pass.json`: the one interleaved pass over every compared network-target pair (filed under
    `second_look.compared_key`), the shipped files measured again after it, and the reuse key it was made for."""

    key: dict  # what was compared (files and their stamps) and how: reused only for the same key
    summary: PassSummary
    measurements: dict[str, Measurement]
    remeasured: list[SecondLook] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "summary": self.summary.to_dict(),
            "measurements": {k: v.to_dict() for k, v in self.measurements.items()},
            "remeasured": [s.to_dict() for s in self.remeasured],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FinalPassFile:
        return load_dataclass(cls, {"remeasured": [], **d})

    def passes(self) -> list[tuple[PassSummary, dict[str, Measurement]]]:
        """The final pass, then each second look, in order."""
        return [(self.summary, self.measurements)] + [(s.summary, s.measurements) for s in self.remeasured]


@dataclass
class FinalPassRecord(PassSummary):
    """run.json's final pass: the pass's summary, the percentile its figures are read at, and every
    network-target pair's measurement (the second looks stay in `final_pass.json`)."""

    percentile: int = 50
    measurements: dict[str, Measurement] = field(default_factory=dict)
