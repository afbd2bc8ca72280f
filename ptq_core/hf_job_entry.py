"""What runs inside a Hugging Face Job: one streamed Hub job (or one read for several schemes), as event lines.

``hf_jobs`` launches ``python -c BOOTSTRAP ... SPEC`` in the container; the bootstrap
puts the uploaded ptq-hub source on ``sys.path`` and calls :func:`main` with the job
spec (JSON). The spec holds ``make_job``'s keyword arguments, never the token: the
token reaches the container only as the job's ``HF_TOKEN`` secret, which
``huggingface_hub`` (and ``_http.resolve_token``) read from the environment.

Output: ``job_events`` lines on stdout (progress, then one ``result`` or ``error``; the
``result`` fields are ``hf_job_results.result_event``'s);
INFO logs on stderr, tokens redacted, as a local ``ptq run -v`` would show them.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Sequence, TextIO

from .constants import hf_token_from_env
from .errors import PtqError
from .hf_job_results import result_event
from .hub_collections import add_to_collection
from .hubjob import finalize_hub_job, quantize_many_to_hub, quantize_to_hub
from .job import make_jobs
from .job_events import ProgressLines
from .redact import install_redaction

logger = logging.getLogger(__name__)


def run_spec(spec: dict[str, Any], out: TextIO) -> int:
    """Run one job spec; 0 on success, 1 on a ``PtqError`` or a scheme that failed.

    The spec: ``{"source", "scheme", "options", "finalize", "collection"}``. ``scheme`` may
    name several (``"FP8_BLOCK,W4A16"`` or a list): one read of the source, every scheme
    (``quantize_many_to_hub``), as a local ``ptq run --scheme A,B`` does; its ``result`` event
    then lists each scheme's result or error. ``collection``: the finished repos are added
    to it here, with the job's token (the user's).
    """
    lines = ProgressLines(out)
    collection = spec.get("collection")
    try:
        jobs = make_jobs(spec["source"], spec.get("scheme"), hub_only=True, **spec.get("options", {}))
        if len(jobs) > 1:
            many = quantize_many_to_hub(jobs, progress=lines, collection=collection)
            lines.emit("result", **result_event(many))
            return 0 if many.ok else 1
        if spec.get("finalize"):
            result = finalize_hub_job(jobs[0], parts=int(spec["finalize"]), progress=lines)
        else:
            result = quantize_to_hub(jobs[0], progress=lines)
        url = add_to_collection(collection, [result.repo_id]) if collection and result.part is None else None
    except PtqError as err:
        lines.emit("error", type=type(err).__name__, message=str(err))
        return 1
    lines.emit("result", **result_event(result, collection=url))
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
