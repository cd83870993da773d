"""Atomic artifact writing, content hashing and schema-checked reading.

Every artifact is written to a temporary file in the same directory and renamed into place, so a
reader never sees half a file and an interrupted run leaves either the old artifact or the new one.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, TypeVar

from dery_deploy.errors import DeryError

A = TypeVar("A", bound="JsonArtifact")


def cache_root() -> Path:
    """Where computed artifacts are cached: $DERY_CACHE, else .dery_cache in the working directory."""
    return Path(os.environ.get("DERY_CACHE", ".dery_cache"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_output_dir(path: Path, what: str, stage: str | None = None) -> Path:
    """Create an output folder (`what` names it in the error: "run folder", "output folder");
    one clear line naming the folder when the file system refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeryError(f"cannot create the {what} {path} ({e.strerror}); choose a writable -o", stage) from None
    return path


def _atomic_write(path: Path, write: Callable[[Path], None], mode: int = 0o666) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DeryError(f"cannot write {path} ({e.strerror}); choose a writable location") from None
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600; an artifact gets the mode a plain new file would have (umask)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_with(path: str | Path, write: Callable[[Path], None], mode: int = 0o666) -> Path:
    """Atomically create `path` with a writer that takes a temporary path (safetensors, ONNX, PNG).
    `mode` 0o777 makes an executable (scripts), before the umask."""
    return _atomic_write(Path(path), write, mode)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# a JSON value as `json.loads` returns it: what a record's `to_dict` writes, or a source whose keys are
# whatever its writer chose
JsonValue: TypeAlias = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def read_json_artifact(
    path: str | Path, kind: str, schema: int, stage: str | None = None, fix: str = "delete it and recompute"
) -> dict:
    """Read a JSON artifact, refusing truncated files and other schema versions with a clear line.

    This is the one validating reader: every typed artifact (`JsonArtifact.read`) goes through it.
    `fix` ends the line where the file is corrupt (a cache is recomputed, a shipped package is copied again).
    """
    path = Path(path)
    if not path.is_file():
        raise DeryError(f"{kind} file not found: {path}", stage)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeryError(f"{kind} {path} is truncated or corrupt ({e.msg} at line {e.lineno}); {fix}", stage) from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        # a whole file of another kind was passed where this kind belongs: the file is fine, the argument is not
        other = data.get("kind") if isinstance(data, dict) else None
        what = f"a {other} artifact" if other else "not an artifact of this tool (no 'kind')"
        raise DeryError(f"{path} is {what}, not a {kind} one: pass a {kind} file here", stage)
    if data.get("schema") != schema:
        raise DeryError(
            f"{kind} {path} has schema {data.get('schema')!r}, this version reads schema {schema}; "
            "recompute it with this version",
            stage,
        )
    return data


class JsonArtifact(abc.ABC):
    """The thin base of typed artifacts (Partition, Profile, Plan, RunManifest): a dataclass that
    writes itself atomically with its kind and schema, and reads itself through `read_json_artifact`."""

    KIND: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1
    STAGE: ClassVar[str] = ""
    FIX: ClassVar[str] = "delete it and recompute"  # what a user does about a corrupt file of this kind

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """The artifact's content (kind and schema are added by `write`)."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls: type[A], data: dict) -> A:
        """The artifact from what `to_dict` wrote."""

    def write(self, path: str | Path) -> Path:
        self.check_replaceable(path)
        return atomic_write_json(path, {"schema": self.SCHEMA, "kind": self.KIND, **self.to_dict()})

    @classmethod
    def check_replaceable(cls, path: str | Path) -> None:
        """Refuse an output path that holds something other than an artifact of this kind (a folder,
        a user's own file): one line, before any work is done."""
        path = Path(path)
        if path.is_dir():
            raise DeryError(f"{path} is a folder: give -o a file path for the {cls.KIND} (e.g. {path}/{cls.KIND}.json)")
        if not path.exists():
            return
        try:
            kind = json.loads(path.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != cls.KIND:
            raise DeryError(
                f"{path} exists and is not a {cls.KIND} file: choose another -o or remove it (nothing was overwritten)",
                cls.STAGE,
            )

    @classmethod
    def read(cls: type[A], path: str | Path) -> A:
        data = read_json_artifact(path, cls.KIND, cls.SCHEMA, cls.STAGE, cls.FIX)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise DeryError(
                f"{cls.KIND} {path} lacks or misstates a field ({type(e).__name__}: {e}); {cls.FIX}",
                cls.STAGE,
            ) from None

    @classmethod
    def is_current(cls, path: str | Path) -> bool:
        """True when `path` holds a readable artifact of this kind and schema (for reuse-or-compute)."""
        try:
            cls.read(path)
        except DeryError:
            return False
        return True
