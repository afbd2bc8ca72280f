"""errors: every deliberate error is a PtqError and also the builtin a caller would catch."""

from __future__ import annotations

import ptq_core
from ptq_core import errors


# Roots of a family (a failed Hub call, staging, Hugging Face Jobs) with no one builtin meaning;
# every other error is also the builtin a caller would catch (docs/ARCHITECTURE.md, layer 0).
FAMILY_ROOTS = {"PtqError", "HubError", "StagingError", "HfJobsError"}


def test_every_error_is_rooted_at_ptq_error_exported_and_also_a_builtin():
    assert set(errors.__all__) <= set(ptq_core.__all__)
    plain = set()
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.PtqError) and getattr(ptq_core, name) is cls
        if not [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]:
            plain.add(name)
    assert plain == FAMILY_ROOTS


def test_builtin_bases_a_caller_may_rely_on():
    assert issubclass(errors.MissingShardError, FileNotFoundError) and issubclass(errors.MissingShardError, KeyError)
    assert issubclass(errors.InvalidOptionError, ValueError) and issubclass(errors.CheckpointError, ValueError)
    assert issubclass(errors.CalibrationRequiredError, errors.SchemeNotSupportedError)
    assert issubclass(errors.DiskSpaceError, OSError)


def test_option_names_the_argument_and_defaults_to_none():
    error = errors.InvalidOptionError("bad")
    assert error.option is None
    error.option = "target"
    assert errors.InvalidOptionError("other").option is None
