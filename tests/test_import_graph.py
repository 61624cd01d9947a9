"""The package's modules import each other without a cycle (function-level imports included).

A cycle works only as long as every module in it is imported in the right order; the first
refactor that moves an import to the top of a file turns it into an ImportError at start-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
    assert "easy_diffuser.refine" in graph["easy_diffuser.engine"]  # Engine.refine's import, not its type hints


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) == []
