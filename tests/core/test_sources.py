"""sources (the package): its map names every module it holds, and holds no code of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ptq_core.sources as package

FOLDER = Path(package.__file__).parent


def test_the_map_names_exactly_the_package_s_modules():
    named = set(re.findall(r"``(\w+)``", package.__doc__))
    modules = {p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__"}
    assert named == modules


def test_importing_the_package_imports_nothing():
    tree = ast.parse((FOLDER / "__init__.py").read_text())
    assert [type(n).__name__ for n in tree.body] == ["Expr"]  # the docstring alone
