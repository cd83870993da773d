"""JSON Schemas of the typed artifacts, generated from their dataclasses, and those dataclasses built
back from JSON: the schema a reader of run.json checks against (`docs/run.schema.json`, written by
`python -m dery_deploy.pipeline.run_schema`) is the one the code writes, never a second description of it.

A field typed `dict` (or `list[dict]`) has no schema beyond "an object": `untyped_fields` lists them, so a
test can hold their number to a ratchet that only shrinks.

Two field metadata keys describe JSON that is not the fields' plain shape: `JSON_KEY` names the key a field is
written under where that is no Python name (an adapter's "in"), and `EMPTY_IS_NONE` marks an optional record
written as {} when it is not set (as plan.json has always written it), not as null.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union

JSON_KEY = "json_key"
EMPTY_IS_NONE = "empty_is_none"
_EMPTY_OBJECT = {"type": "object", "maxProperties": 0}

_SCALARS: dict[Any, dict] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


# a record's annotations, resolved once per class (they are strings under `from __future__ import annotations`)
_hints = functools.cache(typing.get_type_hints)


def _is_dict(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _type_schema(tp: Any, defs: dict[str, dict]) -> dict:
    """The schema of one annotation; nested dataclasses land in `defs` and are referenced."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # reserved before recursing, so that a dataclass holding itself ends here
            defs[name] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if tp is list or origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], defs)}
        return {"type": "array", "prefixItems": [_type_schema(a, defs) for a in args], "items": False}
    if _is_dict(tp):
        if len(args) == 2 and args[1] is not Any:
            return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    raise TypeError(f"no JSON schema for the annotation {tp!r}")


def json_key(f: dataclasses.Field) -> str:
    """The key a dataclass field is written under in JSON."""
    return f.metadata.get(JSON_KEY, f.name)


def _field_schema(f: dataclasses.Field, tp: Any, defs: dict[str, dict]) -> dict:
    out = _type_schema(tp, defs)
    if f.metadata.get(EMPTY_IS_NONE) and "anyOf" in out:  # not set: {} where a plain optional field has null
        out["anyOf"] = [_EMPTY_OBJECT if s == _SCALARS[type(None)] else s for s in out["anyOf"]]
    return out


def _object_schema(cls: type, defs: dict[str, dict]) -> dict:
    hints = _hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[json_key(f)] = _field_schema(f, hints[f.name], defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(json_key(f))
    out: dict = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's generated signature
        out["description"] = " ".join(doc.split("\n\n")[0].split())
    return out


def artifact_schema(cls: type) -> dict:
    """The JSON Schema of a `JsonArtifact` file: its dataclass's fields plus the kind and schema version
    that `write` adds."""
    defs: dict[str, dict] = {}
    body = _object_schema(cls, defs)
    body["properties"] = {
        "schema": {"const": cls.SCHEMA},  # type: ignore[attr-defined]
        "kind": {"const": cls.KIND},  # type: ignore[attr-defined]
        **body["properties"],
    }
    body["required"] = ["schema", "kind", *body.get("required", [])]
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"dery_deploy/{cls.KIND}.schema.json",  # type: ignore[attr-defined]
        "title": f"{cls.KIND}.json",  # type: ignore[attr-defined]
    }
    return {**head, **body, **({"$defs": dict(sorted(defs.items()))} if defs else {})}


def untyped_fields(cls: type) -> list[str]:
    """The fields of `cls` and of the dataclasses it holds whose content has no schema: `dict`,
    `dict[str, dict]`, `list[dict]` (and optional ones)."""
    hints = _hints(cls)
    return [u for f in dataclasses.fields(cls) for u in _untyped(hints[f.name], f"{cls.__name__}.{f.name}", set())]


def _untyped(tp: Any, where: str, seen: set) -> list[str]:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp in seen:
            return []
        seen.add(tp)
        hints = _hints(tp)
        return [u for f in dataclasses.fields(tp) for u in _untyped(hints[f.name], f"{tp.__name__}.{f.name}", seen)]
    args = typing.get_args(tp)
    if tp is list or tp is dict or (_is_dict(tp) and (not args or args[1] is Any)):
        return [where]
    return [u for a in args if a is not Ellipsis for u in _untyped(a, where, seen)]


def load_dataclass(tp: Any, data: Any) -> Any:
    """`data` as read from JSON, built into the annotation `tp`: nested dataclasses from their dicts (keys
    a dataclass does not have are refused with a TypeError naming them; `JSON_KEY` and `EMPTY_IS_NONE`
    fields read as they are written), lists and dicts element by element, anything else as it is."""
    if data is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        by_key = {json_key(f): f for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - set(by_key))
        if unknown:
            raise TypeError(f"{tp.__name__} has no field(s) {', '.join(unknown)}")
        values = {}
        for k, v in data.items():
            f = by_key[k]
            values[f.name] = None if f.metadata.get(EMPTY_IS_NONE) and v == {} else load_dataclass(hints[f.name], v)
        return tp(**values)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        built = [a for a in args if dataclasses.is_dataclass(a) or typing.get_origin(a) in (list, dict)]
        return load_dataclass(built[0], data) if built else data
    if origin is list and args:
        return [load_dataclass(args[0], v) for v in data]
    if origin is tuple and args:
        items = args[:1] * len(data) if args[-1] is Ellipsis else args
        return tuple(load_dataclass(a, v) for a, v in zip(items, data))
    if origin is dict and len(args) == 2:
        return {k: load_dataclass(args[1], v) for k, v in data.items()}
    return data
