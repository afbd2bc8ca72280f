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
    "errors": 0,
    "constants": 1, "sizes": 1, "redact": 1, "repo_files": 1, "matching": 1, "converters": 1,
    "experts": 1,
    "observers": 2,
    "numerics": 3,
    "schemes": 4,
    "job": 5, "checkpoint": 5,
    "convert": 6, "default_ignore": 6, "tensor_parallel": 4,
    "plan": 7, "rotation": 7,
    "_http": 8, "parts": 8,
    "source": 9, "writer": 9,
    "units": 10, "reindex": 10, "remote": 10,
    "job_plan": 11, "card": 11, "stream": 11,
    "pipeline": 12, "publish": 12, "staging": 12,
    # the Hub job: a package, one module per phase (a dotted name is a module of a subpackage)
    "hubjob.results": 13, "hubjob.request": 13,
    "hubjob.prepare": 14, "hubjob.preview": 14,
    "hubjob.recovery": 15,
    "hubjob.stage": 16,
    "hubjob.finalize": 17,
    "hubjob.run": 18,
    "hubjob": 19,
    "recipe": 20, "demo": 20, "cli": 21,
}
# Only these may import inside functions: they stay cheap to import (`ptq --help`).
LAZY_IMPORTERS = {"cli", "__init__"}


def _module_path(module: str) -> Path:
    """``"hub"`` -> ptq_core/hub.py; ``"hubjob"`` -> ptq_core/hubjob/__init__.py; ``"hubjob.stage"`` -> its file."""
    path = CORE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _core_imports(module: str) -> list[tuple[str, bool]]:
    """(imported core module, imported at module level?) for every relative import of ``module``.

    Resolved against the module's package, to the names ``LAYERS`` uses (``from ..plan`` in
    ``hubjob.stage`` is ``plan``; ``from .prepare`` there is ``hubjob.prepare``).
    """
    path = _module_path(module)
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                if name == "__version__":  # the package's version constant, not a module
                    continue
                parts = [*base, *name.split(".")]
                # the deepest prefix LAYERS knows: "hubjob.stage", or "plan" for "plan.Plan"
                known = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in LAYERS),
                             ".".join(parts))
                found.append((known, id(node) in top_level))
    return found


def test_every_core_module_has_a_layer():
    modules = {".".join(p.relative_to(CORE).with_suffix("").parts) for p in CORE.rglob("*.py")}
    modules = {m.removesuffix(".__init__") for m in modules} - {"__init__"}
    assert modules == set(LAYERS), "add the module to LAYERS and to docs/ARCHITECTURE.md"


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_only_go_down(module):
    for imported, _ in _core_imports(module):
        assert LAYERS[imported] < LAYERS[module], f"{module} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})"


@pytest.mark.parametrize("module", sorted(set(LAYERS) - LAZY_IMPORTERS))
def test_imports_are_at_module_level(module):
    lazy = [name for name, top in _core_imports(module) if not top]
    assert not lazy, f"{module} imports {lazy} inside a function"
