"""Deploy the ptq-hub Space: ``space/`` and ``ptq_core/`` in one commit to a Space repo.

Usage (from the repository root)::

    HF_TOKEN=hf_... python space/deploy.py --space-id your-name/ptq-hub

What it does:

* creates the Space repo if needed (``sdk: gradio``; hardware and visibility as asked);
* stages ``space/app.py`` and the modules it imports (``SPACE_FILES``), ``space/README.md``
  (the Space front matter),
  ``space/requirements.txt`` at the Space root and the ``ptq_core`` package beside
  them, so ``import ptq_core`` works on the Space without a PyPI release;
* pushes them in **one** commit that also deletes files the Space holds but the
  new deployment does not (a renamed module never lingers);
* optionally asks for hardware (``--hardware zero-a10g``, ``t4-small``...).

The token needs write access to the Space's namespace. ``HF_ENDPOINT`` is honoured,
so the script is tested against the loopback Hub server like the rest of the project.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = ROOT / "space"
CORE_DIR = ROOT / "ptq_core"

SPACE_FILES = (
    "app.py", "jobs_panel.py", "page_text.py", "preview.py", "signin.py", "README.md", "requirements.txt",
)
"""Files of ``space/`` that go to the Space root (``deploy.py`` itself stays here)."""

logger = logging.getLogger("ptq_space.deploy")


def deployment_files() -> dict[str, Path]:
    """``path in the Space -> local file``: the Space files and every ``ptq_core`` source file."""
    files = {name: SPACE_DIR / name for name in SPACE_FILES}
    for path in sorted(CORE_DIR.rglob("*")):
        relative = path.relative_to(CORE_DIR)
        if path.is_file() and "__pycache__" not in relative.parts and path.suffix not in (".pyc", ".pyo"):
            files[f"ptq_core/{relative.as_posix()}"] = path
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Cannot deploy: missing {', '.join(missing)}")
    return files


def deploy(
    space_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    hardware: str | None = None,
    message: str | None = None,
) -> str:
    """Create or update the Space; return the URL of the commit's Space page.

    Raises:
        FileNotFoundError: a file of the deployment is missing locally.
        huggingface_hub.errors.HfHubHTTPError: the Hub refused (token, namespace...).
    """
    sys.path.insert(0, str(ROOT))
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from ptq_core import __version__, constants

    api = HfApi(endpoint=constants.HF_ENDPOINT, token=token or constants.hf_token_from_env())
    files = deployment_files()
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    existing = set(api.list_repo_files(space_id, repo_type="space"))
    additions = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local in files.items()]
    deletions = [
        CommitOperationDelete(path_in_repo=path) for path in sorted(existing - set(files)) if path != ".gitattributes"
    ]
    info = api.create_commit(
        space_id,
        [*additions, *deletions],
        repo_type="space",
        commit_message=message or f"Deploy ptq-hub {__version__} Space",
    )
    logger.info("Pushed %d file(s), removed %d, commit %s", len(additions), len(deletions), info.oid[:10])
    if hardware:
        api.request_space_hardware(space_id, hardware)
        logger.info("Requested %s hardware", hardware)
    return f"{constants.HF_ENDPOINT}/spaces/{space_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy space/ + ptq_core/ to a Hugging Face Space.")
    parser.add_argument("--space-id", required=True, help="e.g. your-name/ptq-hub")
    parser.add_argument("--token", default=None, help="default: HF_TOKEN, then the cached `hf auth login`")
    parser.add_argument("--private", action="store_true", help="create the Space private (new Spaces only)")
    parser.add_argument("--hardware", default=None, help="e.g. cpu-upgrade, t4-small, zero-a10g (billing applies)")
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        url = deploy(
            args.space_id, token=args.token, private=args.private, hardware=args.hardware, message=args.message
        )
    except Exception as err:  # noqa: BLE001 - a one-line reason, never the token (the client's messages hold none)
        logger.error("Deploy failed: %s: %s", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return 1
    logger.info("Space: %s", url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
