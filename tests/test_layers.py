"""The package's layers (docs/design.md, "Layers"): who may import whom, and no import cycles."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src" / "degl"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imported(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions (relative imports resolved)."""
    name = name or module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def package_graph() -> dict[str, set[str]]:
    def resolve(target: str) -> str | None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    graph = {}
    for name, path in MODULES.items():
        targets = {resolve(t) for t in imported(path) if t.startswith("degl")}
        # A submodule importing its own package (for its __init__'s names) is not a cycle of layers.
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycles():
    graph = package_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


FORBIDDEN = {
    # layer: modules it must never import
    "degl.core": ("torch.distributed", "degl.run", "degl.runtime", "degl.cli", "degl.bench"),
    "degl.models": ("torch.distributed", "degl.run", "degl.runtime", "degl.cli", "degl.bench", "degl.core"),
    "degl.data": ("torch.distributed", "degl.run", "degl.runtime", "degl.cli", "degl.bench"),
    "degl.runtime": ("degl.run", "degl.cli", "degl.bench"),
    "degl.run": ("degl.cli",),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_is_below_it(layer):
    offences = []
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            for target in imported(path):
                if any(target == bad or target.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                    offences.append(f"{name} imports {target}")
    assert not offences, offences


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    import torch.distributed as dist\n    from ..run import config\n")
    found = imported(source, name="degl.core.probe")
    assert {"torch.distributed", "degl.run", "degl.run.config"} <= found
