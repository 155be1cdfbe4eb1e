"""The package's import graph: no circle between imgcap's modules, no import from a lower layer
to a higher one (the layers of ARCHITECTURE.md), and the networks stay usable alone (no
Lightning, Hydra or OmegaConf under imgcap/decoders and imgcap/encoders.py)."""

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


# Lowest first. A module may import its own unit and the units of lower layers; units of one
# layer do not import each other, except on the ground floor (layer 0), whose small modules
# build on one another (atomic writes raise errors). ARCHITECTURE.md draws the same table.
LAYERS: list[tuple[str, ...]] = [
    (
        "errors",
        "tokens",
        "vocab",
        "registry",
        "config_aliases",
        "atomic",
        "phase_timing",
        "checkpoint",
        "settings",
    ),
    ("data", "encoders", "decoders", "metrics"),
    ("objectives",),
    ("captioning_module",),
    ("api",),
    ("callbacks",),
    ("run",),
    ("sweep",),
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``imgcap.run.tasks`` -> ``run``; ``imgcap`` (the package itself) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module -> target`` for every import of a unit of the same layer or a higher one."""
    wrong = []
    for module, targets in sorted(graph.items()):
        unit = _unit(module)
        if not unit:  # imgcap/__init__.py: the lazy `Captioner` export of the API
            continue
        for target in sorted(targets):
            other = _unit(target)
            same_floor = LAYER_OF[other] == LAYER_OF[unit] == 0
            if other != unit and LAYER_OF[other] >= LAYER_OF[unit] and not same_floor:
                wrong.append(f"{module} -> {target}")
    return wrong


def test_every_module_has_a_layer():
    units = {_unit(m) for m in import_graph()} - {""}
    assert not sorted(units - set(LAYER_OF)), "add the new module or package to LAYERS"


def test_no_module_imports_a_higher_layer_or_a_peer():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_upward_and_peer_imports():
    graph = {
        "imgcap.decoders.x": {"imgcap.run.tasks", "imgcap.errors"},
        "imgcap.data.y": {"imgcap.metrics.z"},
        "imgcap.run.tasks": {"imgcap.decoders.x"},
    }
    graph["imgcap.atomic"] = {"imgcap.errors"}  # the ground floor's modules may
    assert upward_imports(graph) == [
        "imgcap.data.y -> imgcap.metrics.z",
        "imgcap.decoders.x -> imgcap.run.tasks",
    ]


def test_the_networks_import_torch_and_not_the_run_layer():
    banned = ("lightning", "hydra", "omegaconf")
    paths = [*(PACKAGE / "decoders").rglob("*.py"), PACKAGE / "encoders.py"]
    assert len(paths) > 3
    for path in paths:
        names = _imports(path)
        bad = sorted(n for n in names if n.split(".")[0] in banned)
        bad += sorted(
            n
            for n in names
            if n.startswith("imgcap.") and LAYER_OF[_unit(n)] > LAYER_OF["decoders"]
        )
        assert not bad, f"{path.name} imports {bad}"
