"""The package's import graph: no circle between imgcap's modules, and the model code stays
usable alone (no Lightning, Hydra or OmegaConf under imgcap/models)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imgcap"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every absolute import in the file, module-level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """imgcap module -> the imgcap modules it imports (a package and its own modules apart:
    ``__init__`` re-exporting its children is not a circle)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {
            target
            for target in _imports(path)
            if target in files
            and target != name
            and not target.startswith(name + ".")
            and not name.startswith(target + ".")
        }
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_imgcap_modules_import_each_other_without_circles():
    assert circles(import_graph()) == []


def test_the_models_import_torch_and_not_the_run_layer():
    banned = (
        "lightning",
        "hydra",
        "omegaconf",
        "imgcap.run.tasks",
        "imgcap.captioning_module",
        "imgcap.run.loggers",
    )
    for path in (PACKAGE / "models").rglob("*.py"):
        bad = sorted(n for n in _imports(path) if n.split(".")[0] in banned or n in banned)
        assert not bad, f"{path.name} imports {bad}"
