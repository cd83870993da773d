"""The package's layering, checked on its import graph (module-level and function-level imports
alike, read with `ast`): every import runs down or sideways a layer, never up, and no module
imports itself back through a circle."""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dery_deploy"

# lowest first; a module may import only from its own layer or below (README: Architecture)
LAYERS = [
    {"errors", "artifacts", "schema"},
    {"deploy"},  # shipped packages: runs with numpy and the package's runtime alone
    {"data"},
    {"dissect", "zoo"},
    {"network"},
    {"runtime"},
    {"similarity", "partition", "profile"},
    {"assemble"},
    {"train"},
    {"export"},
    {"report", "pipeline"},
    {"cli"},
]
# standalone scripts copied onto other machines: they must not import the package at all
STANDALONE = {"dery_deploy.profile.bundle_runner", "dery_deploy.export.engine_check"}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and the README")


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (the module itself for `from pkg import module`)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("dery_deploy") and t in known:
                found.add(t)
    found.discard(name)
    return found


def test_every_import_runs_down_or_sideways():
    mods = modules()
    known = set(mods)
    upward = []
    for name, path in mods.items():
        if name == "dery_deploy":
            continue
        for target in imports(name, path, known):
            if target == "dery_deploy":
                continue
            if name in STANDALONE:
                upward.append(f"{name} (standalone) imports {target}")
            elif layer_of(target) > layer_of(name):
                upward.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles():
    mods = modules()
    known = set(mods)
    graph = {n: {t for t in imports(n, p, known) if t != "dery_deploy"} for n, p in mods.items()}
    # a package's __init__ re-exporting its modules is not a circle of ideas: drop package -> own-child edges
    for n in graph:
        graph[n] = {t for t in graph[n] if not t.startswith(n + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for t in graph.get(n, ()):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(STANDALONE))
def test_standalone_scripts_import_nothing_of_the_package(module):
    tree = ast.parse(modules()[module].read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("dery_deploy")], names


# what a deployment machine has: the runtime-only install (pyproject's base dependencies, no [train])
RUNTIME_ONLY_IMPORTS = {"numpy", "onnxruntime", "openvino", "tensorrt", "PIL", "pynvml", "rich", "typer"}


def test_the_deploy_layer_imports_only_numpy_and_runtimes():
    """The loader and bench must run without the training stack: not even a function-level torch import."""
    found = {}
    for name, path in modules().items():
        if not (name.startswith("dery_deploy.deploy") or name in ("dery_deploy.cli.predict", "dery_deploy.cli.bench")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in RUNTIME_ONLY_IMPORTS and top != "dery_deploy" and top not in STDLIB:
                    found.setdefault(name, []).append(n)
    assert not found, found


STDLIB = set(sys.stdlib_module_names)
