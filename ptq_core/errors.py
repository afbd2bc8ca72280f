"""Typed errors of ptq-hub.

Every error raised on purpose is a :class:`PtqError`, and each class also
subclasses the builtin it refines, so callers can catch ``ValueError`` or
``FileNotFoundError`` as they would with any library. Messages name the value,
the reason and the fix; front ends show them verbatim.
"""

from __future__ import annotations


class PtqError(Exception):
    """Root of every error that ptq-hub raises deliberately.

    Attributes:
        option: the ``make_job`` argument the error is about (``"source"``, ``"target"``,
            ``"scheme"``, ``"ignore"``, ``"observer"``, ``"revision"``...), set by ``make_job``;
            ``None`` elsewhere. Front ends map it back to their own input (a recipe's key and
            line, an Action input) instead of validating the value a second time.
    """

    option: str | None = None


# --- schemes and options -----------------------------------------------------
class SchemeNotSupportedError(PtqError, ValueError):
    """Unknown scheme name, or a scheme that cannot be produced data-free."""


class CalibrationRequiredError(SchemeNotSupportedError):
    """The scheme needs calibration data (static activations, input global scale)."""


class InvalidIgnoreError(PtqError, ValueError):
    """An ``ignore`` entry is not a valid exact name or ``re:`` regular expression."""


class InvalidOptionError(PtqError, ValueError):
    """An option has a value outside what the pipeline accepts (device, workers...)."""


# --- checkpoints -------------------------------------------------------------
class CheckpointError(PtqError, ValueError):
    """The source checkpoint cannot be quantized as it is."""


class NoSafetensorsError(CheckpointError):
    """The source has no ``*.safetensors`` weights (only ``*.bin``, ``*.gguf``...)."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file is truncated or its header is not valid."""


class UnsafePathError(CheckpointError):
    """The index names a shard by a path that could reach outside the model folder."""


class MissingShardError(CheckpointError, FileNotFoundError, KeyError):
    """The index names a shard file, or a tensor, that is not there.

    Also a ``KeyError``: llm-compressor's ``model_free_ptq`` raises one for a missing
    shard, so a drop-in caller's ``except KeyError`` keeps working.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class TensorShapeError(CheckpointError):
    """A tensor's shape does not fit the scheme (not divisible by the group size...)."""


class ExpertLayoutError(CheckpointError):
    """A fused 3-D MoE expert tensor whose layout cannot be identified from config.json and its shape,
    or whose family has no per-expert layout a loader reads once quantized."""


class TensorParallelError(CheckpointError):
    """vLLM could not shard the output at the requested tensor-parallel size (``--tp N``)."""


class FusedGroupError(CheckpointError):
    """Weights a loader fuses into one layer (q/k/v, gate/up) would not share one scheme,
    or part of such a group is missing where the scheme needs it whole (NVFP4's global scale).
    """


class NonFiniteWeightError(CheckpointError):
    """A weight that would be quantized holds NaN or Inf."""


class UnsupportedSourceError(CheckpointError):
    """The source checkpoint is quantized in a format ptq-hub cannot dequantize (GPTQ, bitsandbytes...)."""


class ConverterError(CheckpointError):
    """A source converter (``converter=``, or the one picked for a quantized source) failed on a module."""


class AppendError(UnsupportedSourceError):
    """New config groups cannot be merged safely into the source's compressed-tensors config."""


class NonFiniteScaleError(CheckpointError):
    """A finite weight whose scale would not be finite (its range overflows the scale's dtype)."""


# --- output ------------------------------------------------------------------
class OutputExistsError(PtqError, FileExistsError):
    """The output folder is not empty and ``overwrite`` was not given."""


class OutputLocationError(PtqError, ValueError):
    """The output folder is the input folder or lies inside it."""


class OutputNotWritableError(OutputLocationError, PermissionError):
    """The output folder (or its parent) is read-only or not ours to write (EROFS, EACCES, EPERM)."""


class DiskSpaceError(PtqError, OSError):
    """Not enough free disk space for the download or the output."""


class MemoryBudgetError(PtqError, MemoryError):
    """One unit of work (a tensor, or a fused group) needs more memory than the job may use."""


# --- Hub ---------------------------------------------------------------------
class HubError(PtqError):
    """A Hub operation failed; the message says which and what to do."""


class RepoNotFoundError(HubError, LookupError):
    """The source repo does not exist, or is private and the token cannot see it."""


class GatedRepoError(HubError, PermissionError):
    """The source repo is gated and the token's user has not been granted access."""


class TokenError(HubError, PermissionError):
    """No token, or an invalid one, where the operation needs one."""


class TargetRepoExistsError(HubError, FileExistsError):
    """The target repo already holds files and ``overwrite`` was not given."""


class TargetChangedError(TargetRepoExistsError):
    """Files were committed to the target's ``main`` while the job ran; nothing of theirs was overwritten."""


class HubPermissionError(HubError, PermissionError):
    """The token may not create or write the target repo in that namespace."""


class HubNetworkError(HubError, ConnectionError):
    """The Hub could not be reached, or a transfer broke off after retries."""


class TransferStalledError(HubNetworkError):
    """A download or upload moved fewer than ``STALL_MIN_BYTES`` in a ``STALL_WINDOW`` (retried like a reset)."""


class HubRateLimitError(HubNetworkError):
    """The Hub answered 429 and asked for a longer wait than ``RATE_LIMIT_MAX_WAIT`` allows, or kept answering it."""


class SourceChangedError(HubError, FileNotFoundError):
    """A source file pinned at the start of the job can no longer be read as it was."""


class StagingError(HubError):
    """The staged parts of a job on the target's staging branch cannot be finalized as they are."""


class MissingPartError(StagingError, LookupError):
    """A part of a multi-part job has not been staged, or not completely."""


class PartMismatchError(StagingError, ValueError):
    """A staged part was made by a different job (source revision, scheme, ignore list...)."""


class RecipeError(PtqError, ValueError):
    """A YAML recipe (Action / CLI) has an unknown key or an invalid value."""



# --- Hugging Face Jobs (hf_jobs.py) -------------------------------------------
class HfJobsError(PtqError):
    """A Hugging Face Job could not be launched, or did not finish its work."""


class JobsPermissionError(HfJobsError, PermissionError):
    """The token may not run Jobs in that namespace (no ``jobs`` scope, or no write role there)."""


class JobsCreditsError(HfJobsError, PermissionError):
    """The namespace has no credit left for Jobs (the Hub answers 402 Payment Required)."""


class UnknownFlavorError(HfJobsError, ValueError):
    """The hardware flavor is not one the Jobs API runs."""


class JobFailedError(HfJobsError, RuntimeError):
    """A launched Job ended in ERROR, CANCELED or DELETED; its staged shards stay for a rerun."""


class JobTimedOutError(JobFailedError, TimeoutError):
    """A launched Job ran past its timeout and was stopped; its staged shards stay for a rerun."""


__all__ = [name for name, obj in globals().items() if isinstance(obj, type) and issubclass(obj, PtqError)]
