"""The code's shape, checked on its AST: no function body over 60 lines and no module over 400, except
named drivers (at most 110) and a ratchet of older code that may only shrink (CONVENTIONS: a module
that grows past a few hundred lines is usually two ideas)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dery_deploy"
MAX_BODY, MAX_DRIVER, MAX_MODULE = 60, 110, 400

# drivers that read best whole: the run's stage sequence, the program's model, and the standalone device
# scripts copied to a Jetson as single files
DRIVERS = {
    "pipeline/run.py::_run_stages",
    "assemble/program.py::solve",
    "profile/bundle_runner.py::main",
    "export/engine_check.py::main",
}
# older functions and modules over the limit, at their size when the limit came in: each may only shrink
RATCHET: dict[str, int] = {}
MODULE_RATCHET: dict[str, int] = {}
# standalone device scripts, copied to a Jetson as single files (so one module each, by design)
STANDALONE = {"profile/bundle_runner.py": 475}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = fn.body[0]
    docstring = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    start = first.end_lineno + 1 if docstring and len(fn.body) > 1 else first.lineno
    return fn.end_lineno - start + 1


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    functions, modules = {}, {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        src = path.read_text()
        modules[rel] = len(src.splitlines())
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{rel}::{node.name}"
                functions[name] = max(functions.get(name, 0), _body_lines(node))
    return functions, modules


def test_no_function_body_is_over_sixty_lines():
    functions, _ = sizes()
    over = {
        name: n for name, n in functions.items() if n > (MAX_DRIVER if name in DRIVERS else RATCHET.get(name, MAX_BODY))
    }
    assert not over, f"function bodies over their limit (split them, or shrink the ratchet): {over}"


def test_no_module_is_over_four_hundred_lines():
    _, modules = sizes()
    limit = {**MODULE_RATCHET, **STANDALONE}
    over = {rel: n for rel, n in modules.items() if n > limit.get(rel, MAX_MODULE)}
    assert not over, f"modules over their limit: {over}"


def test_the_ratchet_only_names_what_is_still_over():
    """An entry whose code shrank under the limit is dropped, so the ratchet cannot hide new growth."""
    functions, modules = sizes()
    stale = [n for n in RATCHET if functions.get(n, 0) <= MAX_BODY]
    stale += [m for m in MODULE_RATCHET if modules.get(m, 0) <= MAX_MODULE]
    assert not stale, f"drop these from the ratchet, they are within the limit now: {stale}"
