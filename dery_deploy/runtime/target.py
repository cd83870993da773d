"""What a latency is measured on and an artifact ships for: a runtime (backend), a precision and, where a run
searches more than one, the CPU thread count the runtime computes with.

Written `backend/precision` (`openvino/int8`), or `backend/precision/tN` (`onnxruntime/fp32/t2`) where the
count is part of the name, on the command line, in device specs and in every artifact; built and parsed here
only. A run names its targets with their counts only when it searches several counts, so a run of one count
(`--threads 1`, or a 1-core machine where 1 is every core) names them as before counts were searched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dery_deploy.errors import DeryError

_COUNT = re.compile(r"t([1-9][0-9]*)")


@dataclass(frozen=True, order=True)
class Target:
    backend: str
    precision: str
    threads: int | None = None  # part of the name only where the run searches several counts

    def __str__(self) -> str:
        t = f"/t{self.threads}" if self.threads else ""
        return f"{self.backend}/{self.precision}{t}"

    @property
    def name(self) -> str:
        """`backend/precision` or `backend/precision/tN`, as artifacts and the command line spell it."""
        return str(self)

    @property
    def is_int8(self) -> bool:
        return self.precision == "int8"

    @classmethod
    def parse(cls, text: str, stage: str = "run", option: str = "a target") -> Target:
        """`backend/precision[/tN]` -> Target; anything else is one line naming the bad value and the form."""
        parts = text.split("/") if isinstance(text, str) else []
        count = _COUNT.fullmatch(parts[2]) if len(parts) == 3 else None
        if len(parts) not in (2, 3) or "" in parts or (len(parts) == 3 and not count):
            raise DeryError(
                f"{option} takes backend/precision pairs (e.g. openvino/int8), optionally with a thread count "
                f"(onnxruntime/fp32/t2), got {text!r}",
                stage,
            )
        return cls(parts[0], parts[1], int(count.group(1)) if count else None)

    @classmethod
    def of(cls, obj, counted: bool = False) -> Target:
        """The target of anything with `backend`, `precision` and `threads` (a profile, a plan); its count in
        the name only where `counted` (the run searches several counts)."""
        return cls(obj.backend, obj.precision, getattr(obj, "threads", None) if counted else None)


def is_int8(target: str) -> bool:
    """Is a target string an int8 target (empty or malformed: no)."""
    try:
        return Target.parse(target).is_int8
    except DeryError:
        return False


def backend_of(target: str) -> str:
    return Target.parse(target).backend
