"""The imports point one way: handlers -> domain -> managers, and service/ composes
them. Read from the source (ast), so a new upward import or a new cycle fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("service", "handlers", "domain", "managers")
# What each package may import of the others (itself always).
ALLOWED = {
    "managers": set(),
    "domain": {"managers"},
    "handlers": {"domain", "managers"},
    "service": {"handlers", "domain", "managers"},
}


def first_party_imports() -> dict[str, set[str]]:
    """Module name -> the first-party modules it imports (at any depth of the file)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            module = f"{package}.{path.stem}" if path.stem != "__init__" else package
            imported: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                imported |= {name for name in names if name.split(".")[0] in PACKAGES and module_file(name)}
            graph[module] = imported - {module}
    return graph


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.exists():
            return candidate
    return None


def test_no_package_imports_one_above_it():
    upward = [
        f"{module} imports {target}"
        for module, targets in first_party_imports().items()
        for target in targets
        if (here := module.split(".")[0]) != (there := target.split(".")[0]) and there not in ALLOWED[here]
    ]
    assert upward == [], "\n".join(upward)


def test_no_module_imports_itself_back():
    graph = first_party_imports()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycle = path[path.index(target) :] + [target]
                if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in cycles]:
                    cycles.append(cycle)
            elif target in graph:
                visit(target, [*path, target])

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
