"""ptq-hub core: data-free quantization of safetensors checkpoints into compressed-tensors.

Public names are listed here once and imported lazily, so ``import ptq_core``
(and ``ptq --help``) stays cheap: torch and compressed-tensors load only when a
quantization entry point is first touched.

Example:
    >>> from ptq_core import model_free_ptq
    >>> model_free_ptq("meta-llama/Llama-3.2-1B", "Llama-3.2-1B-FP8-BLOCK", scheme="FP8_BLOCK",
    ...                ignore=["lm_head"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F401,F403  (errors are a leaf module: cheap to import)
from .errors import __all__ as _error_names

from ._version import __version__

_LAZY: dict[str, str] = {
    # one request value, built once by every front end
    "make_job": "job",
    "make_jobs": "job",
    "Job": "job",
    "is_default_target": "job",
    # the front ends' shared surface (cheap leaves: no torch)
    "DEFAULT_SCHEME": "constants",
    "Stage": "stages",
    "parse_ignore_text": "ignore_text",
    # quantize a local folder or a Hub id into a local folder (llm-compressor drop-in)
    "model_free_ptq": "pipeline",
    "quantize_job": "pipeline",
    "QuantizeResult": "pipeline",
    # several schemes from one read, a local folder each
    "quantize_jobs": "pipeline_many",
    "QuantizeJobsResult": "pipeline_many",
    "ProgressCallback": "source",
    # the one planning of a job (local or Hub), with its budgets and footprint
    "plan_job": "job_plan",
    "JobPlan": "job_plan",
    # rewrite shards so every fused group sits in one file
    "reindex_fused_weights": "reindex",
    "ReindexResult": "reindex",
    # dry run from safetensors headers only
    "plan_checkpoint": "planner",
    "build_plan": "planner",
    "plan_model": "planner",
    "source_plan": "planner",
    "Plan": "plan",
    "suggest_ignore": "planner",
    # schemes
    "list_schemes": "schemes",
    "SchemeInfo": "schemes",
    "DEFAULT_IGNORE": "schemes",
    "canonical_scheme_name": "schemes",
    "scheme_repo_suffix": "schemes",
    # data-free SpinQuant rotations, a converter (``converter=`` or ``make_job(rotate=True)``)
    "SpinQuant": "rotation",
    "build_spinquant": "rotation",
    # the one call the front ends make
    "quantize_to_hub": "hubjob",
    "quantize_many_to_hub": "hubjob",
    "ManyResult": "hubjob",
    "plan_hub_models": "hubjob",
    "plans_to_markdown": "hubjob",
    "plan_hub_model": "hubjob",
    "default_target_repo": "hubjob",
    "prepare_hub_job": "hubjob",
    "PreparedJob": "hubjob",
    "run_hub_job": "hubjob",
    "finalize_hub_job": "hubjob",
    "plan_hub_parts": "hubjob",
    "HubResult": "hubjob",
    "PartsPlan": "hubjob",
    "search_models": "hubjob",
    "download_checkpoint": "hubjob",
    # safety helpers the front ends share
    "IgnoreMatcher": "matching",
    "validate_ignore": "matching",
    "redact": "redact",
    "install_redaction": "redact",
    "validate_shard_name": "sources.shards",
    # recipes (Action / CLI)
    "load_recipe": "recipe",
    "RecipeJob": "recipe",
    # the same job on Hugging Face Jobs, on the caller's account (--on-jobs)
    "run_on_hf_jobs": "hf_jobs",
    "launch_hf_job": "hf_jobs",
    "follow_hf_job": "hf_jobs",
    "cancel_hf_job": "hf_jobs",
    "HfJob": "hf_job_results",
    "HfJobResult": "hf_job_results",
    # a release's variants side by side
    "add_to_collection": "hub_collections",
}

__all__ = sorted([*_LAZY, *_error_names, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptq_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .hubjob import (
        HubResult,
        ManyResult,
        PartsPlan,
        PreparedJob,
        default_target_repo,
        download_checkpoint,
        finalize_hub_job,
        plan_hub_model,
        plan_hub_parts,
        prepare_hub_job,
        plan_hub_models,
        plans_to_markdown,
        quantize_many_to_hub,
        quantize_to_hub,
        run_hub_job,
        search_models,
    )
    from .constants import DEFAULT_SCHEME
    from .ignore_text import parse_ignore_text
    from .job import Job, is_default_target, make_job, make_jobs
    from .job_plan import JobPlan, plan_job
    from .stages import Stage
    from .pipeline import QuantizeResult, model_free_ptq, quantize_job
    from .pipeline_many import QuantizeJobsResult, quantize_jobs
    from .plan import Plan
    from .planner import build_plan, plan_checkpoint, plan_model, source_plan, suggest_ignore
    from .recipe import RecipeJob, load_recipe
    from .rotation import SpinQuant, build_spinquant
    from .reindex import ReindexResult, reindex_fused_weights
    from .source import ProgressCallback
    from .schemes import DEFAULT_IGNORE, SchemeInfo, canonical_scheme_name, list_schemes, scheme_repo_suffix
