"""What a latency is measured on and an artifact ships for: a runtime (backend) and a precision.

Written `backend/precision` (`openvino/int8`) on the command line, in device specs and in every
artifact; built and parsed here only."""

from __future__ import annotations

from dataclasses import dataclass

from dery_deploy.errors import DeryError


@dataclass(frozen=True, order=True)
class Target:
    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}"

    @property
    def name(self) -> str:
        """`backend/precision`, as artifacts and the command line spell it."""
        return str(self)

    @property
    def is_int8(self) -> bool:
        return self.precision == "int8"

    @classmethod
    def parse(cls, text: str, stage: str = "run", option: str = "a target") -> Target:
        """`backend/precision` -> Target; anything else is one line naming the bad value and the form."""
        if not isinstance(text, str) or text.count("/") != 1 or "" in text.split("/"):
            raise DeryError(f"{option} takes backend/precision pairs (e.g. openvino/int8), got {text!r}", stage)
        backend, precision = text.split("/")
        return cls(backend, precision)

    @classmethod
    def of(cls, obj) -> Target:
        """The target of anything with `backend` and `precision` (a profile, a backend and its precision)."""
        return cls(obj.backend, obj.precision)


def is_int8(target: str) -> bool:
    """Is a `backend/precision` string an int8 target (empty or malformed: no)."""
    return target.count("/") == 1 and Target.parse(target).is_int8


def backend_of(target: str) -> str:
    return Target.parse(target).backend
