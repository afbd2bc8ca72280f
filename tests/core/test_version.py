"""_version: one version string, the one pyproject.toml publishes, read by the card and the HTTP user agent."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import ptq_core
from ptq_core import _version
from ptq_core._http import tool_version

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_pyproject_s():
    assert _version.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert ptq_core.__version__ is _version.__version__ and tool_version() == _version.__version__


def test_it_is_a_leaf():
    tree = ast.parse((ROOT / "ptq_core" / "_version.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
