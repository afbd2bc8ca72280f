"""hubjob (the package): its public names are ptq_core's, one object each, and nothing else leaks out."""

from __future__ import annotations

import ptq_core
from ptq_core import hubjob


def test_every_public_name_is_exported_by_ptq_core_as_the_same_object():
    for name in hubjob.__all__:
        assert getattr(ptq_core, name) is getattr(hubjob, name), name


def test_the_package_defines_nothing_itself():
    own = [name for name in hubjob.__all__ if getattr(getattr(hubjob, name), "__module__", "").endswith("hubjob")]
    assert own == [], "the package's __init__ only re-exports its phases' names"
