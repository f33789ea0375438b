"""The rules of direction (ARCHITECTURE.md), read from the source: cli -> parallel -> core -> kernels, core without
DeepSpeed, kernels without models, and no import cycle between mawstron modules, function-local imports counted.

Walks every module's AST (imports inside functions included; ``if TYPE_CHECKING:`` blocks left out, they never
run), so a circle hidden behind a function-local import fails here as a module-level one would.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"core": "mawstron.core", "kernels": "mawstron.kernels", "parallel": "mawstron.parallel",
           "cli": "mawstron.cli"}  # setup.py's package_dir


def _modules() -> dict[str, str]:
    """Module name -> file, for every .py under the package folders."""
    out = {}
    for folder, package in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__pycache__" in dirpath:
                continue
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(ROOT, folder))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([package, *rel])] = os.path.join(dirpath, name)
    return out


MODULES = _modules()


def _type_checking_nodes(tree) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(module: str, path: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import the module can execute: external names as written, mawstron names
    resolved to the module they load (``from pkg import sub`` -> ``pkg.sub``, ``from pkg import name`` -> pkg)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    skip = _type_checking_nodes(tree)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{MODULES[m]}:{line} imports {name}" for m, imports in IMPORTS.items() if m.startswith(layer + ".")
            or m == layer for name, line in imports if name.split(".")[0] in forbidden or name.startswith(forbidden)]


def test_the_walk_sees_every_package():
    assert {"mawstron.core.vit", "mawstron.kernels.ops", "mawstron.parallel.training.trainer",
            "mawstron.cli.main"} <= set(MODULES)
    # a function-local import is seen (launch imports the trainer at module level, load_encoder deepspeed lazily)
    assert any(name == "deepspeed" for name, _ in IMPORTS["mawstron.parallel.engine.build"])


def test_core_imports_neither_parallel_nor_deepspeed_nor_cli():
    assert _violations("mawstron.core", ("deepspeed", "mawstron.parallel", "mawstron.cli")) == []


def test_kernels_import_no_models_and_nothing_above_them():
    assert _violations("mawstron.kernels", ("mawstron.core", "mawstron.parallel", "mawstron.cli")) == []


def test_parallel_never_imports_the_cli():
    assert _violations("mawstron.parallel", ("mawstron.cli",)) == []


def _cycle() -> list[str] | None:
    """One import cycle between mawstron modules (as a path a -> b -> ... -> a), or None."""
    graph = {m: sorted({n for n, _ in imports if n in MODULES and n != m}) for m, imports in IMPORTS.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_between_mawstron_modules():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_would_be_found(monkeypatch):
    """The check itself: a function-local import of the trainer from the checkpoint store closes a circle."""
    monkeypatch.setitem(IMPORTS, "mawstron.parallel.checkpoints.store",
                        IMPORTS["mawstron.parallel.checkpoints.store"] + [("mawstron.parallel.training.trainer", 1)])
    cycle = _cycle()
    assert cycle is not None and "mawstron.parallel.checkpoints.store" in cycle


@pytest.mark.parametrize("package", sorted(FOLDERS.values()))
def test_every_module_imports(package):
    import importlib

    for module in sorted(m for m in MODULES if m == package or m.startswith(package + ".")):
        importlib.import_module(module)
