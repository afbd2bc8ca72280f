"""The core's import graph follows docs/ARCHITECTURE.md's layers: no cycles, no upward imports.

Read from the source (``ast``), so a new import that breaks the layering fails here
before it becomes a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "ptq_core"

# docs/ARCHITECTURE.md's table: a module may import only from strictly lower layers.
LAYERS: dict[str, int] = {
    "errors": 0, "_version": 0,
    "constants": 1, "sizes": 1, "redact": 1, "repo_files": 1, "matching": 1, "converters": 1,
    "experts": 1, "stages": 1, "ignore_text": 1, "workers": 1,
    "observers": 2,
    "numerics": 3,
    "schemes": 4,
    "job": 5, "checkpoint": 5,
    "convert": 6, "default_ignore": 6, "tensor_parallel": 4,
    "plan": 7,
    "_http": 8, "parts": 8,
    "source": 9, "writer": 9,
    "pipeline": 10, "reindex": 10, "remote": 10,
    "card": 11, "stream": 11,
    "publish": 12, "staging": 12,
    "hub": 13,
    "recipe": 14, "demo": 14, "cli": 15,
}
# Only these may import inside functions: they stay cheap to import (`ptq --help`).
LAZY_IMPORTERS = {"cli", "__init__"}


def _core_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported core module, imported at module level?) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                found.append((name.split(".")[0], id(node) in top_level))
    return found


def test_every_core_module_has_a_layer():
    modules = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS), "add the module to LAYERS and to docs/ARCHITECTURE.md"


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_only_go_down(module):
    for imported, _ in _core_imports(CORE / f"{module}.py"):
        assert LAYERS[imported] < LAYERS[module], f"{module} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})"


@pytest.mark.parametrize("module", sorted(set(LAYERS) - LAZY_IMPORTERS))
def test_imports_are_at_module_level(module):
    lazy = [name for name, top in _core_imports(CORE / f"{module}.py") if not top]
    assert not lazy, f"{module} imports {lazy} inside a function"
