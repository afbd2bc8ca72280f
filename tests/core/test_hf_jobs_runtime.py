"""What a job runs: the running ptq_core, zipped the same way every time, uploaded once, pinned."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from importlib import metadata
from io import BytesIO
from pathlib import Path

import pytest

from ptq_core import _http, hf_jobs_runtime
from ptq_core.hf_jobs_runtime import build_runtime_zip, job_command, pinned_requirements, upload_runtime

ALICE = "hf_test_alice"
PACKAGE = Path(hf_jobs_runtime.__file__).parent


def test_the_zip_is_the_package_byte_for_byte_and_deterministic():
    data = build_runtime_zip()
    assert data == build_runtime_zip()
    names = zipfile.ZipFile(BytesIO(data)).namelist()
    expected = sorted(f"ptq_core/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")
                      if "__pycache__" not in p.parts)
    assert sorted(names) == expected
    assert zipfile.ZipFile(BytesIO(data)).read("ptq_core/hf_jobs.py") == (PACKAGE / "hf_jobs.py").read_bytes()


def test_the_package_imports_from_the_zip_alone(tmp_path):
    archive = tmp_path / "runtime.zip"
    archive.write_bytes(build_runtime_zip())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ptq_core.hf_job_entry as e; "
            "print(e.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(archive)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip().startswith(str(archive))


def test_requirements_are_pinned_to_what_runs_here():
    pins = dict(p.split("==") for p in pinned_requirements())
    assert pins["torch"] == metadata.version("torch").split("+")[0]
    assert set(pins) == set(hf_jobs_runtime.REQUIREMENTS)


def test_the_runtime_is_uploaded_once_and_pinned_to_its_commit(hub):
    http = _http.HubHttp(ALICE)
    first = upload_runtime(http, "alice")
    second = upload_runtime(http, "alice")
    assert first == second and first.repo_id == "alice/ptq-hub-runtime"
    assert hub.stats.commits.get(("alice/ptq-hub-runtime", "main")) == 1
    data = hub.read_file(first.repo_id, first.filename, repo_type="dataset", revision=first.revision)
    assert hashlib.sha256(data).hexdigest() == first.sha256 and data == build_runtime_zip()
    command = job_command(first, '{"source": "bob/tiny"}')
    assert command[:3] == ["uv", "run", "--no-project"] and command[-5:] == [
        first.repo_id, first.revision, first.filename, first.sha256, '{"source": "bob/tiny"}']
    assert ALICE not in " ".join(command)
    # The pins are read once, with the runtime, and every job of the launch gets them.
    assert first.pins == tuple(pinned_requirements()) and command[3:5] == ["--with", first.pins[0]]


def test_a_requirement_missing_here_is_a_typed_error_naming_it(monkeypatch):
    from ptq_core.errors import HfJobsError

    monkeypatch.setattr(hf_jobs_runtime, "REQUIREMENTS", ("torch", "ptq-hub-no-such-package"))
    with pytest.raises(HfJobsError, match="ptq-hub-no-such-package is not installed"):
        hf_jobs_runtime.pinned_requirements()
