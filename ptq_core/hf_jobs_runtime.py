"""How a Hugging Face Job runs exactly the ptq-hub code that launched it.

ptq-hub is not on PyPI, and the code that launches a job may be a checkout with local
changes, so the container cannot ``pip install ptq-hub``. Instead:

* The running ``ptq_core`` package is zipped (deterministically: sorted names, fixed
  timestamps) and uploaded once to a private dataset repo of the token's user,
  ``{user}/ptq-hub-runtime``, under a name that carries its sha256. A second launch of
  the same code uploads nothing. A dataset repo keeps it out of the user's model list.
* The job runs in Astral's uv image (``DEFAULT_UV_IMAGE``, Python 3.12): ``uv run --with``
  installs the third-party requirements from PyPI pinned to the versions running here
  (what ran the plan is what runs the job), then a few lines of bootstrap download the
  zip at the pinned commit, check its sha256, put it on ``sys.path`` (``ptq_core`` is pure
  Python, so it imports from the zip) and call ``hf_job_entry.main``.

The alternative, a uv script depending on a git URL of ptq-hub, would run published code
only, not what the user is running, and would need the project on a public forge.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ._http import HubHttp
from .errors import HfJobsError

RUNTIME_REPO_NAME = "ptq-hub-runtime"
"""The dataset repo (under the token's user) holding uploaded ptq-hub sources."""

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
"""The job's image: Debian with Python 3.12 and uv (huggingface_hub's ``DEFAULT_UV_IMAGE``)."""

REQUIREMENTS = ("torch", "safetensors", "compressed-tensors", "huggingface_hub", "pyyaml", "regex", "tqdm")
"""pyproject.toml's runtime dependencies, pinned in the job to the versions installed here."""

BOOTSTRAP = """\
import hashlib, sys
from huggingface_hub import hf_hub_download
repo_id, revision, filename, digest = sys.argv[1:5]
path = hf_hub_download(repo_id, filename, revision=revision, repo_type="dataset")
with open(path, "rb") as f:
    if hashlib.sha256(f.read()).hexdigest() != digest:
        sys.exit(f"ptq-hub runtime {filename} does not match its sha256 {digest}")
sys.path.insert(0, path)
from ptq_core.hf_job_entry import main
sys.exit(main(sys.argv[5:]))
"""
"""``python -c`` text run in the container: fetch the pinned ptq-hub zip, check it, run the job."""

_PACKAGE = Path(__file__).resolve().parent
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Runtime:
    """What a job runs: its ptq-hub code (a file of a dataset repo at one commit, and its sha256) and its pins.

    Made once per launching run (``upload_runtime``), then shared by every job it launches.
    """

    repo_id: str
    revision: str
    filename: str
    sha256: str
    pins: tuple[str, ...] = ()


def build_runtime_zip() -> bytes:
    """The running ``ptq_core`` package as a zip, byte for byte the same for the same sources."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(_PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                info = zipfile.ZipInfo(f"ptq_core/{path.relative_to(_PACKAGE).as_posix()}", _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def pinned_requirements() -> list[str]:
    """``name==version`` for each requirement, as installed here (a local tag such as ``+cpu`` dropped).

    Raises:
        HfJobsError: a requirement is not installed here, so the job could not run what runs here.
    """
    try:
        return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]
    except metadata.PackageNotFoundError as err:
        raise HfJobsError(f"{err.name} is not installed here; the job pins what runs here. "
                          f"Install it (pip install {err.name}) and launch again.") from None


def upload_runtime(http: HubHttp, namespace: str) -> Runtime:
    """Upload the running ptq-hub source to ``{namespace}/ptq-hub-runtime`` unless it is there already.

    Raises:
        HfJobsError: a requirement is not installed here (before anything is written).
        HubPermissionError, HubNetworkError...: as any write to the Hub (``HubHttp.translate``).
    """
    pins = tuple(pinned_requirements())
    data = build_runtime_zip()
    digest = hashlib.sha256(data).hexdigest()
    filename = f"ptq_core-{digest[:16]}.zip"
    repo_id = f"{namespace}/{RUNTIME_REPO_NAME}"
    api = http.api
    http.call("create the runtime repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=True,
                                                                 exist_ok=True), role="target", repo_id=repo_id)
    info = http.call("read the runtime repo", lambda: api.dataset_info(repo_id), role="target", repo_id=repo_id)
    if filename in {s.rfilename for s in info.siblings or ()}:
        return Runtime(repo_id, str(info.sha), filename, digest, pins)
    commit = http.call("upload the ptq-hub runtime", lambda: api.upload_file(
        path_or_fileobj=data, path_in_repo=filename, repo_id=repo_id, repo_type="dataset",
        commit_message=f"ptq-hub runtime {filename}"), role="target", repo_id=repo_id)
    return Runtime(repo_id, commit.oid, filename, digest, pins)


def job_command(runtime: Runtime, spec_json: str) -> list[str]:
    """The container's command: pinned requirements from PyPI, the bootstrap, the runtime, the spec."""
    pins = [arg for pin in runtime.pins for arg in ("--with", pin)]
    return ["uv", "run", "--no-project", *pins, "python", "-c", BOOTSTRAP,
            runtime.repo_id, runtime.revision, runtime.filename, runtime.sha256, spec_json]
