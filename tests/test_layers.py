"""The package's layering (docs/design.md, "Layers"), read from the source with ``ast``: nothing is imported.

L0 errors, util, version; L1 nn/, envs/, data/, obs, checkpoint, logger, config; L2 collector,
evaluation; L3 algos/; L4 everything else. Imports point down or sideways within a layer (inside L1,
``data`` may use ``envs`` and ``nn``, but ``envs`` and ``nn`` use neither of the others), module-level
imports form no cycle, and no ``recurl`` import hides inside a function: only the two command-line
front-ends do that, so that ``recurl --help`` answers without importing torch.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recurl"

#: module or package (which then covers its submodules) -> layer
LAYERS: dict[str, int] = {
    "recurl.errors": 0, "recurl.util": 0, "recurl.version": 0,
    "recurl.nn": 1, "recurl.envs": 1, "recurl.data": 1, "recurl.obs": 1, "recurl.checkpoint": 1,
    "recurl.logger": 1, "recurl.config": 1,
    "recurl.collector": 2, "recurl.evaluation": 2, "recurl.acting": 2,
    "recurl.algos": 3,
    "recurl": 4, "recurl.runs": 4, "recurl.export": 4, "recurl.agent": 4, "recurl.record": 4, "recurl.play": 4,
    "recurl.enjoy": 4, "recurl.diagnose": 4, "recurl.presets": 4, "recurl.cli": 4,
    "recurl.melee": 1, "recurl.melee.cli": 4, "recurl.melee.evaluate": 4,
    "recurl.integrations": 4,
}
#: L1 packages and the L1 packages they must not import (``data`` may import both of the others)
L1_FORBIDDEN: dict[str, tuple[str, ...]] = {"recurl.envs": ("recurl.data", "recurl.nn"),
                                            "recurl.nn": ("recurl.data", "recurl.envs")}
#: modules allowed to import ``recurl`` modules inside functions (the lazy command dispatch)
LAZY_ALLOWED = ("recurl.cli", "recurl.melee.cli")


@dataclass(frozen=True)
class Import:
    """One import of a ``recurl`` module: who imports what, where, and whether inside a function."""

    source: str
    target: str
    path: str
    line: int
    in_function: bool

    def where(self) -> str:
        """``file:line: source -> target`` for violation messages."""
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(source: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ``recurl`` modules an import statement loads: ``from recurl.x import y`` is ``recurl.x.y`` when
    that is a module, else ``recurl.x``; relative imports are resolved against ``source``'s package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "recurl" or a.name.startswith("recurl.")]
    base = node.module or ""
    if node.level:
        package = source.split(".") if _is_package(source) else source.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if base != "recurl" and not base.startswith("recurl."):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(PACKAGE.parent))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend(Import(module, t, rel, child.lineno, in_function) for t in _resolve(module, child))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found


IMPORTS: list[Import] = [imp for module in MODULES for imp in _imports_of(module)]


def _owner(module: str) -> str | None:
    """The entry of :data:`LAYERS` that places ``module`` (the longest matching prefix), if any."""
    owners = [k for k in LAYERS if module == k or (k != "recurl" and module.startswith(k + "."))]
    return max(owners, key=len, default=None)


def test_every_module_has_a_layer() -> None:
    unplaced = [f"{MODULES[m].relative_to(PACKAGE.parent)} ({m})" for m in MODULES if _owner(m) is None]
    assert not unplaced, "modules with no layer: add them to LAYERS in tests/test_layers.py and docs/design.md:\n" \
        + "\n".join(unplaced)


def test_imports_point_down() -> None:
    bad = []
    for imp in IMPORTS:
        src, dst = _owner(imp.source), _owner(imp.target)
        if src is None or dst is None:
            bad.append(f"{imp.where()} (unplaced or missing module)")
        elif LAYERS[dst] > LAYERS[src]:
            bad.append(f"{imp.where()} (L{LAYERS[src]} -> L{LAYERS[dst]})")
        elif dst in L1_FORBIDDEN.get(src, ()):
            bad.append(f"{imp.where()} ({src.removeprefix('recurl.')} may not import {dst.removeprefix('recurl.')})")
    assert not bad, "imports pointing up a layer:\n" + "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or ``None`` (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    where: dict[tuple[str, str], Import] = {}
    for imp in IMPORTS:
        if not imp.in_function and imp.target != imp.source:
            graph[imp.source].add(imp.target)
            where.setdefault((imp.source, imp.target), imp)
    cycles = []
    # Report every cycle: cut each one found at its first edge and look again.
    while (cycle := _find_cycle(graph)) is not None:
        cycles.append("  " + " -> ".join(cycle) + "\n" + "\n".join(
            f"    {where[a, b].where()}" for a, b in itertools.pairwise(cycle)))
        graph[cycle[0]].discard(cycle[1])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_no_imports_inside_functions() -> None:
    bad = [imp.where() for imp in IMPORTS if imp.in_function and imp.source not in LAZY_ALLOWED]
    assert not bad, "recurl imports inside functions (move them to the top of the module):\n" + "\n".join(bad)
