"""Results are types, not dicts whose keys two modules spell (CONVENTIONS): no function in `pipeline/`,
`train/`, `export/` or `report/` returns a bare `dict` (or `dict[str, Any]` / `dict[str, object]`), apart
from the serialisers (`to_dict`) and a ratchet of older functions that may only shrink. A typed mapping
(`dict[str, Measurement]`, name -> figure) is a mapping, not a record, and is fine."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dery_deploy"
CHECKED = ("pipeline", "train", "export", "report")
# serialisers: a record's JSON, and a stage's reuse key (what it depends on, compared with the stored one
# as JSON: a serialisation by design)
SERIALISERS = {"to_dict", "key", "selection_key"}

# older functions still returning a record as a dict: each may only leave this list (typed), never join it
RATCHET = {
    "export/bundle.py::jetson_bundle",
    "export/formats/aoti.py::_load_and_time",
    "export/package.py::session_settings",
    "export/report.py::extra",
    "export/report.py::write",
    "export/run.py::export_run",
    "export/run.py::ship_bundle",
    "pipeline/stages.py::stage_zoo",
    "train/checkpoint.py::_flat_optimizer",
    "train/select/halving.py::identity",
}


def _bare_dict(node: ast.expr | None) -> bool:
    """`dict` used without its key and value types (a record), or with Any / object values."""
    if node is None:
        return False
    subscripted = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Subscript)}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "dict" and id(n) not in subscripted:
            return True
    return _untyped_values(node)


def _untyped_values(node: ast.expr) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == "dict":
            value = n.slice.elts[-1] if isinstance(n.slice, ast.Tuple) else n.slice
            if isinstance(value, ast.Name) and value.id in ("Any", "object"):
                return True
    return False


def record_dict_returns() -> set[str]:
    out = set()
    for sub in CHECKED:
        for path in sorted((PKG / sub).rglob("*.py")):
            rel = path.relative_to(PKG).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in SERIALISERS:
                    if _bare_dict(node.returns):
                        out.add(f"{rel}::{node.name}")
    return out


def test_no_new_function_returns_a_record_as_a_dict():
    now = record_dict_returns()
    assert now <= RATCHET, f"return a dataclass, not a dict: {sorted(now - RATCHET)}"


def test_the_ratchet_only_names_what_still_returns_a_dict():
    stale = RATCHET - record_dict_returns()
    assert not stale, f"typed now: drop them from RATCHET: {sorted(stale)}"


def test_the_check_sees_a_bare_dict_and_passes_a_typed_mapping():
    def returns(src: str) -> ast.expr | None:
        fn = ast.parse(src).body[0]
        assert isinstance(fn, ast.FunctionDef)
        return fn.returns

    assert _bare_dict(returns("def f() -> dict: ..."))
    assert _bare_dict(returns("def f() -> dict | None: ..."))
    assert _bare_dict(returns("def f() -> tuple[Measurement, dict]: ..."))
    assert _bare_dict(returns("def f() -> list[dict]: ..."))
    assert _bare_dict(returns("def f() -> dict[str, object]: ..."))
    assert not _bare_dict(returns("def f() -> dict[str, Measurement]: ..."))
    assert not _bare_dict(returns("def f() -> Selection | None: ..."))
    assert not _bare_dict(returns("def f(): ..."))
