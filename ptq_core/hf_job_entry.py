"""What runs inside a Hugging Face Job: one streamed Hub job, reported as event lines.

``hf_jobs`` launches ``python -c BOOTSTRAP ... SPEC`` in the container; the bootstrap
puts the uploaded ptq-hub source on ``sys.path`` and calls :func:`main` with the job
spec (JSON). The spec holds ``make_job``'s keyword arguments, never the token: the
token reaches the container only as the job's ``HF_TOKEN`` secret, which
``huggingface_hub`` (and ``_http.resolve_token``) read from the environment.

Output: ``job_events`` lines on stdout (progress, then one ``result`` or ``error``);
INFO logs on stderr, tokens redacted, as a local ``ptq run -v`` would show them.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Sequence, TextIO

from .constants import hf_token_from_env
from .errors import PtqError
from .hubjob import HubResult, finalize_hub_job, quantize_to_hub
from .job import make_job
from .job_events import ProgressLines
from .redact import install_redaction

logger = logging.getLogger(__name__)


def result_fields(result: HubResult) -> dict[str, Any]:
    """The ``result`` event of a finished job: what the follower prints and returns."""
    return {
        "repo_id": result.repo_id,
        "repo_url": result.repo_url,
        "commit_sha": result.commit_sha,
        "scheme": result.scheme,
        "size_before": result.size_before,
        "size_after": result.size_after,
        "ratio": result.ratio,
        "part": list(result.part) if result.part else None,
        "branch": result.branch,
        "markdown": result.to_markdown(),
    }


def run_spec(spec: dict[str, Any], out: TextIO) -> int:
    """Run one job spec (``{"source", "scheme", "options", "finalize"}``); 0 on success, 1 on a ``PtqError``."""
    lines = ProgressLines(out)
    try:
        job = make_job(spec["source"], spec.get("scheme"), hub_only=True, **spec.get("options", {}))
        if spec.get("finalize"):
            result = finalize_hub_job(job, parts=int(spec["finalize"]), progress=lines)
        else:
            result = quantize_to_hub(job, progress=lines)
    except PtqError as err:
        lines.emit("error", type=type(err).__name__, message=str(err))
        return 1
    lines.emit("result", **result_fields(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``main([SPEC_JSON])``: the container's entry point (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m ptq_core.hf_job_entry SPEC_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_redaction(hf_token_from_env)
    return run_spec(json.loads(args[0]), sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
