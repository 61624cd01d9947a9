"""The package's modules import each other without a cycle (function-level imports included).

A cycle works only as long as every module in it is imported in the right order; the first
refactor that moves an import to the top of a file turns it into an ImportError at start-up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import easy_diffuser

PACKAGE = Path(easy_diffuser.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in it (relative or absolute)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(_without_type_checking_blocks(tree)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            # "from . import cli" imports the module cli; "from .cli import main" the module .cli
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return (found & modules) - {name}


def _without_type_checking_blocks(tree: ast.Module) -> ast.Module:
    """`if TYPE_CHECKING:` imports never run (annotations only), so they make no cycle."""

    class Drop(ast.NodeTransformer):
        def visit_If(self, node: ast.If) -> ast.AST | None:
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            return None if name == "TYPE_CHECKING" and not node.orelse else self.generic_visit(node)

    return Drop().visit(tree)


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return trail[trail.index(name) :] + [name]
        if name in done:
            return []
        for imported in sorted(graph[name]):
            cycle = visit(imported, trail + [name])
            if cycle:
                return cycle
        done.add(name)
        return []

    return next((cycle for name in sorted(graph) if (cycle := visit(name, []))), [])


def test_the_graph_sees_the_imports_it_must_see():
    graph = import_graph()
    assert "easy_diffuser.calibration.cli" in graph["easy_diffuser.cli"]  # a function-level import
    assert "easy_diffuser.options" in graph["easy_diffuser.calibration.cli"]  # a two-dot relative import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert "easy_diffuser.kinds.clip_loading" in graph["easy_diffuser.scorers"]  # a module in a sub-package


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) == []


# The calibration layer (calibration/, refine.py and its CLI) and the webui layer sit on the core, never under it.
UPPER_LAYERS = ("easy_diffuser.calibration", "easy_diffuser.refine", "easy_diffuser.refine_cli", "easy_diffuser.webui")


def is_upper(module: str) -> bool:
    return any(module == layer or module.startswith(f"{layer}.") for layer in UPPER_LAYERS)


def test_the_core_imports_nothing_of_the_calibration_or_webui_layers_not_even_lazily():
    graph = import_graph()
    # The surfaces that dispatch to subcommands (cli.py, the package's lazy API) may call up; nothing else may.
    dispatchers = {"easy_diffuser.cli", "easy_diffuser.command", "easy_diffuser", "easy_diffuser.__main__"}
    dispatchers.add("easy_diffuser.session")
    upward = {
        (module, imported)
        for module, imports in graph.items()
        if not is_upper(module) and module not in dispatchers and not module.endswith("_train")  # trainers are tools
        for imported in imports
        if is_upper(imported)
    }
    assert upward == set()
    assert not is_upper("easy_diffuser.engine") and is_upper("easy_diffuser.calibration.metric")


def test_every_module_of_the_package_imports():
    """A module that names one that is gone (a trainer importing easy_diffuser.metric) fails here, not in a user's
    hands. The webui layer needs gradio, which the UI venvs test."""
    import importlib

    for name in sorted(import_graph()):
        if not name.startswith("easy_diffuser.webui") and name != "easy_diffuser.__main__":  # __main__ runs the CLI
            importlib.import_module(name)


@pytest.mark.parametrize("trainer", ["train", "cooccur_train", "booru_train"])
def test_every_shipped_models_training_script_starts(trainer):
    """The scripts that made data/shapes-demo, shapes-cooccur and shapes-booru still start and explain themselves."""
    process = subprocess.run(
        [sys.executable, "-m", f"easy_diffuser.shapes.{trainer}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("usage:") and "--out" in process.stdout
