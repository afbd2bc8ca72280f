"""The core's import graph follows docs/ARCHITECTURE.md's layers: no cycles, no upward imports.

Read from the source (``ast``), so a new import that breaks the layering fails here
before it becomes a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ptq_core"

# docs/ARCHITECTURE.md's table: a module may import only from strictly lower layers.
LAYERS: dict[str, int] = {
    "errors": 0, "job_events": 1, "sources": 0, "_version": 0,
    "constants": 1, "sizes": 1, "redact": 1, "repo_files": 1, "matching": 1, "experts": 1,
    "stages": 1, "ignore_text": 1, "workers": 1, "output_errors": 1, "http_errors": 1, "presets": 1,
    "preset_notes": 1, "rotation_layout": 1, "rotation_fast": 1,
    "sources.safetensors_header": 1, "sources.formats": 1,
    "observers": 1, "sources.shards": 2, "sources.detect": 2, "sources.decode_checks": 2,
    "work_folders": 2, "http_deadlines": 2,
    # the kernels: a package, one module per topic, its __init__ the public API
    "numerics.spec": 2, "numerics.scales": 3, "numerics.table_sums": 3, "numerics.gathered_errors": 3, "numerics.mse_search": 4, "numerics.int_codes": 4, "numerics.float_codes": 4, "numerics": 5, "output_folder": 3,
    "schemes": 6, "fused_groups": 6,
    "job": 7, "checkpoint": 7,
    "convert": 8, "default_ignore": 8, "one_read": 8, "tensor_parallel": 6,
    "plan": 9, "rotation": 9,
    "_http": 10, "parts": 10, "planner": 10, "output_config": 10,
    "source": 11, "writer": 11, "hf_jobs_runtime": 11, "hub_collections": 11,
    "units": 12, "reindex": 12, "remote": 12,
    "job_plan": 13, "card": 13, "stream": 13,
    "pipeline": 14, "publish": 14, "staging": 14, "fanout": 14,
    # the Hub job: a package, one module per phase (a dotted name is a module of a subpackage)
    "hubjob.results": 15, "hubjob.request": 15, "pipeline_many": 15,
    "hubjob.prepare": 16, "hubjob.preview": 16,
    "hubjob.recovery": 17,
    "hubjob.stage": 18,
    "hubjob.finalize": 19,
    "hubjob.run": 20, "hubjob.many": 20,
    "hubjob": 21, "hf_job_results": 21,
    "recipe": 22, "demo": 22, "hf_jobs": 22, "hf_job_entry": 22,
    "cli_jobs": 23,
    "cli": 24,
}
# Only these may import inside functions: they stay cheap to import (`ptq --help`).
LAZY_IMPORTERS = {"cli", "cli_jobs", "__init__"}


def _module_path(module: str) -> Path:
    """``sources.shards`` -> ptq_core/sources/shards.py; a subpackage's own name -> its ``__init__.py``."""
    path = CORE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module_name(path: Path) -> str:
    """The inverse of ``_module_path``: ptq_core/sources/shards.py -> ``sources.shards``."""
    parts = path.relative_to(CORE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The core modules a relative import names, seen from ``module`` (``sources.x``: ``..errors``
    is ``errors``, ``.formats`` is ``sources.formats``; ``from .sources import shards`` names
    ``sources.shards``)."""
    package = module.split(".")[:-1] if not _module_path(module).name == "__init__.py" else module.split(".")
    base = package[: len(package) - (node.level - 1)]
    target = ".".join(base + (node.module.split(".") if node.module else []))
    found = []
    for alias in node.names:
        full = f"{target}.{alias.name}" if target else alias.name
        if full in LAYERS:
            found.append(full)
        elif target and alias.name != "__version__":  # __version__: the package's constant, not a module
            found.append(target)
    return list(dict.fromkeys(found))


def _core_imports(module: str) -> list[tuple[str, bool]]:
    """(imported core module, imported at module level?) for every relative import of ``module``."""
    tree = ast.parse(_module_path(module).read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            found += [(name, id(node) in top_level) for name in _resolve(module, node)]
    return found


def test_every_core_module_has_a_layer():
    modules = {_module_name(p) for p in CORE.rglob("*.py")} - {""}
    assert modules == set(LAYERS), "add the module to LAYERS and to docs/ARCHITECTURE.md"


def test_subpackage_imports_are_resolved():
    """The resolution itself: a subpackage module's ``..`` and ``.`` imports name the right modules."""
    source = "from ..errors import PtqError\nfrom .safetensors_header import quote\n"
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.ImportFrom)]
    assert [_resolve("sources.shards", n) for n in nodes] == [["errors"], ["sources.safetensors_header"]]
    top = ast.parse("from .sources import shards\nfrom .sources.detect import detect_source\n").body
    assert [_resolve("planner", n) for n in top] == [["sources.shards"], ["sources.detect"]]


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_only_go_down(module):
    for imported, _ in _core_imports(module):
        assert imported in LAYERS, f"{module} imports {imported}, which is not a core module"
        assert LAYERS[imported] < LAYERS[module], f"{module} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})"


@pytest.mark.parametrize("module", sorted(set(LAYERS) - LAZY_IMPORTERS))
def test_imports_are_at_module_level(module):
    lazy = [name for name, top in _core_imports(module) if not top]
    assert not lazy, f"{module} imports {lazy} inside a function"


# compressed-tensors imports transformers and torch.distributed (seconds): the core imports it
# inside the functions that build a scheme's objects, convert a source or merge a config, so
# planning a preset never loads it (tests/core/test_presets.py runs that case).
@pytest.mark.parametrize("module", sorted(LAYERS))
def test_compressed_tensors_is_imported_where_it_is_used(module):
    at_load = []
    for node in ast.parse(_module_path(module).read_text()).body:  # module level only; TYPE_CHECKING is an `if`
        if isinstance(node, ast.Import):
            at_load += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            at_load.append(node.module)
    heavy = [name for name in at_load if name.split(".")[0] in ("compressed_tensors", "transformers")]
    assert not heavy, f"{module} imports {heavy} when it is loaded; import it in the function that uses it"


def test_every_core_package_is_in_the_wheel():
    """A subpackage missing from the build's package list installs a core that cannot import.

    ``pip install .`` (not ``-e``) ships only what setuptools finds under pyproject's rule; the
    checkout's tests would pass while an installed ptq_core lacked ``sources/`` or ``hubjob/``.
    """
    import tomllib

    from setuptools import find_packages

    rule = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(ROOT), include=rule["include"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ptq_core").rglob("__init__.py")}
    assert on_disk and on_disk <= shipped, f"not shipped: {sorted(on_disk - shipped)}"
