"""The layers of udm import one way only (docs/architecture.md): no import circles, no import from a lower layer into a higher one.

The test reads every module of ``src/udm`` with ``ast`` (imports inside
functions and under ``TYPE_CHECKING`` count: a lazy import is still a
dependency), resolves each import to the most specific udm module it names,
and checks the graph against :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "udm"

#: Lowest first. A module may import modules of its own layer (without a circle) and of the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("udm.errors", "udm._version", "udm.registry", "udm.rng", "udm.brownian", "udm.numerics", "udm.atomic")),
    ("processes", ("udm.processes",)),
    ("models and data", ("udm.denoiser", "udm.kernels", "udm.nets", "udm.data", "udm.metrics", "udm.features")),
    ("algorithms", ("udm.samplers", "udm.losses", "udm.classifier", "udm.guidance", "udm.conditioning", "udm.likelihood", "udm.theory")),
    ("objectives and checks", ("udm.objectives", "udm.checks")),
    ("config", ("udm.config",)),
    ("outputs", ("udm.viz", "udm.evaluate")),
    ("training", ("udm.training",)),
    ("interop and sources", ("udm.interop", "udm.sources")),
    ("applications", ("udm.demo", "udm.cli", "udm.__main__")),
    ("package face", ("udm",)),
]


def module_name(path: Path) -> tuple[str, list[str]]:
    """(dotted name, package parts) of a file under src/udm."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def imports(path: Path) -> set[str]:
    """Every udm name ``path`` imports, as absolute dotted names (``from . import x`` gives ``pkg.x``)."""
    _, package = module_name(path)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("udm"):
                continue
            if node.module:
                out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("udm"))
    return out


def graph() -> dict[str, set[str]]:
    """module -> the udm modules it imports (each name resolved to the longest module prefix)."""
    files = {module_name(p)[0]: p for p in SRC.rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in files:
            name = name.rsplit(".", 1)[0]
        return name

    return {m: {resolve(n) for n in imports(p)} - {m} for m, p in files.items()}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest declared prefix of ``module``."""
    best, index = "", None
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > len(best):
                best, index = member, i
    if index is None:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS in tests/test_layers.py and docs/architecture.md")
    return index


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``edges`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    for module in graph():
        layer_of(module)


def test_no_import_circles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_upward_imports() -> None:
    bad = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_the_checker_finds_circles_and_upward_imports(tmp_path: Path) -> None:
    """The checks themselves can fail: a planted circle and a planted upward import are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("udm.processes.gaussian") < layer_of("udm.samplers.grids") < layer_of("udm.training.trainer")
    assert layer_of("udm") == len(LAYERS) - 1
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("udm_other.module")
