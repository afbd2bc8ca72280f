"""Hub to Hub: ``quantize_to_hub`` (the one call every front end makes), parts, previews and names.

A Hub job is streamed: no input file is ever stored, and the local disk holds
only output shards waiting for upload, within a budget. One module per phase::

    prepare(job): scheme (no network at all), ids, token (whoami), write rights in
                  the target namespace, target state, source access and pinned
                  commit (config.json read once), safetensors headers over Range
                  requests -> ``job_plan.plan_job``: plan, parts, budgets, footprint
                  and its verdict: everything that can fail before the first weight byte
    stage(part):  per output shard of the part: fetch its input ranges ahead
                  (``remote``), quantize (``units``), write it locally, upload it
                  and delete it (``stream``); shards and a part manifest are committed
                  to the staging branch ``ptq-staging-<fingerprint>`` (``staging``)
    finalize(k):  every part present and consistent -> index, config.json, side
                  files, model card -> ONE commit on ``main`` that copies the shards
                  from the branch (no re-upload) -> delete the branch

``run.quantize_to_hub(job)`` runs all of it in one process (one part of one).
``many.quantize_many_to_hub(make_jobs(source, "FP8_BLOCK,W4A16"))`` runs several schemes
from one read of the source: each scheme its own target, staging branch, card and commit. With
``job.part = (i, k)`` it stages part ``i`` only (one runner of a GitHub Actions
matrix); ``finalize.finalize_hub_job(job, parts=k)`` is the last step. ``recovery``
decides what a failure leaves; ``preview`` plans without running; ``results`` holds
what is returned; ``request`` turns a call's arguments into the ``Job``.

Failures: a run that fails before anything was staged deletes a repo it created.
Once a shard is staged, the repo and its staging branch are kept, ``main``
untouched, and the error says that rerunning the same job resumes: the shards
already staged are not downloaded, quantized or uploaded again. No local file is
left behind either way; a work folder of a killed run (its name carries the pid)
is removed by the next run.

The commit on ``main`` names the head the job verified as its parent: files
committed to the target meanwhile stop the job with ``TargetChangedError`` (or,
with ``overwrite``, are replaced), never silently. A rerun of a finished job, in
any form, returns its commit; so does a run that lost the race to another run of
the same job.
"""

from __future__ import annotations

from ..source import download_checkpoint
from .finalize import finalize_hub_job
from .prepare import PreparedJob, prepare_hub_job
from .many import ManyResult, quantize_many_to_hub
from .preview import default_target_repo, plan_hub_model, plan_hub_models, plan_hub_parts, plans_to_markdown, search_models
from .results import HubResult, PartsPlan
from .run import quantize_to_hub, run_hub_job

__all__ = [
    "HubResult",
    "ManyResult",
    "PartsPlan",
    "PreparedJob",
    "default_target_repo",
    "download_checkpoint",
    "finalize_hub_job",
    "plan_hub_model",
    "plan_hub_models",
    "plan_hub_parts",
    "plans_to_markdown",
    "prepare_hub_job",
    "quantize_many_to_hub",
    "quantize_to_hub",
    "run_hub_job",
    "search_models",
]
