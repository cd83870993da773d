"""The one exception type for user errors.

A `DeryError` is a mistake the user can fix (a bad name, a missing file, a wrong value). The CLI
prints it as one line and exits non-zero without a traceback; any other exception is a bug and
keeps its full traceback.
"""


class DeryError(Exception):
    """A user-facing error; the message names the bad value and the fix."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage

    def __str__(self) -> str:
        msg = super().__str__()
        return f"[{self.stage}] {msg}" if self.stage else msg
