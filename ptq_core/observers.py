"""Weight observers: the names llm-compressor registers, their defaults, and the MSE search.

llm-compressor 0.14.0.1 registers these observers; for weights, model-free PTQ
runs each on the weight alone (one observation, no activations). What ptq-hub
computes for each name, byte-identical to the peer on CPU:

* ``memoryless_minmax``: min/max of each scale cell (the default).
* ``static_minmax``, ``minmax``: the same (the peer forces memoryless observers
  for weights; a moving average over one observation is that observation).
* ``memoryless_mse``: a grid search over shrunk ranges for the least
  ``sum |q - w| ** norm`` per cell.
* ``mse``: the same as ``memoryless_mse``. The peer's ``model_free_ptq`` renames
  it to ``static_mse``, which is not registered, and fails; ptq-hub runs what the
  peer's ``oneshot`` runs for weights, and logs that it does.
* ``nvfp4_expanded_mse``: the MSE search from 1.8x the range down to 0.8x (NVFP4-tuned).
* ``fouroversix``: the peer's alias of ``nvfp4_expanded_mse``.
* ``imatrix_mse``, ``nvfp4_expanded_imatrix``: refused; they weight the error by
  E[x^2] of calibration activations.

Names are matched as the peer's registry matches them (case, ``-`` and ``_``
ignored). The search is the peer's eager (CPU) ``_grid_search_mse``, evaluated
for many candidate scales at once: the same elementwise ops in the same dtypes per
candidate, and per-cell sums that round as the peer's (``numerics.mse_search``),
so the selected ranges are the same bit for bit. Its Triton path
(CUDA) differs; like every kernel here, this one follows the CPU path on any
device so that output never depends on the device.

For float32 weights torch's vectorised and scalar ``pow`` differ; the peer's
choice between them depends on how its threads split the tensor, so the
float32 bytes are the peer's when it runs with one torch thread (bf16 and f16
round the power to 16 bits identically either way).

This module holds the names, the defaults and the search's bookkeeping
(candidate ranges, the peer's improvement rule, its early stop);
``numerics.mse_search`` evaluates the errors with its kernels. It imports torch only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .errors import CalibrationRequiredError, SchemeNotSupportedError

logger = logging.getLogger(__name__)

__all__ = [
    "MINMAX",
    "MSE",
    "NVFP4_EXPANDED_MSE",
    "MseParams",
    "describe_observer",
    "list_observers",
    "mse_params",
    "resolve_observer",
]

MINMAX = "memoryless_minmax"
MSE = "memoryless_mse"
NVFP4_EXPANDED_MSE = "nvfp4_expanded_mse"

# registered name -> the behaviour it has for weights in a model-free run
_CANONICAL: dict[str, str] = {
    "memoryless_minmax": MINMAX,
    "static_minmax": MINMAX,
    "minmax": MINMAX,
    "memoryless_mse": MSE,
    "mse": MSE,
    "nvfp4_expanded_mse": NVFP4_EXPANDED_MSE,
    "fouroversix": NVFP4_EXPANDED_MSE,
}

_NEEDS_DATA: dict[str, str] = {
    "imatrix_mse": "weights its error by E[x^2] of each input channel, collected from calibration activations",
    "nvfp4_expanded_imatrix": "weights its error by E[x^2] of each input channel, collected from calibration activations",
}

# observer_kwargs each observer reads, with the peer's defaults
_DEFAULTS: dict[str, dict[str, float]] = {
    MINMAX: {},
    MSE: {"maxshrink": 0.20, "patience": 5, "grid": 100.0, "norm": 2.4, "expand": 1.0},
    NVFP4_EXPANDED_MSE: {"maxshrink": 1 - 0.8 / 1.8, "patience": 1000, "grid": 200.0, "norm": 2.4, "expand": 1.8},
}
# accepted and ignored: the Triton (CUDA) search's per-group patience, and the moving
# average of `minmax` / `mse`, which a single observation of a weight never applies
_IGNORED_KWARGS = ("triton_error_buffer", "averaging_constant")

_SUMMARY: dict[str, str] = {
    MINMAX: "min/max of each scale cell (the default; fastest).",
    MSE: "searches 20 shrunk ranges per scale cell for the least |error|^2.4; lower reconstruction error, slower.",
    NVFP4_EXPANDED_MSE: "searches 111 ranges from 1.8x down to 0.8x per cell; tuned for NVFP4, slowest.",
}


def _lookup(name: str) -> str:
    return name.replace("-", "_").replace(" ", "_").lower()


def list_observers() -> list[str]:
    """Every observer name ptq-hub accepts (the peer's data-free weight observers)."""
    return list(_CANONICAL)


def describe_observer(name: str | None) -> str:
    """One line on what an observer buys, for front ends (the Space's dropdown)."""
    observer, _ = resolve_observer(name, None)
    return _SUMMARY[observer]


def resolve_observer(name: str | None, kwargs: Mapping[str, Any] | None) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The canonical observer and its complete, hashable kwargs (defaults filled in).

    Args:
        name: ``QuantizationArgs.observer`` (``None`` means min/max).
        kwargs: ``QuantizationArgs.observer_kwargs``.

    Returns:
        ``(observer, ((key, value), ...))`` sorted by key; two spellings that run
        the same search give equal results.

    Raises:
        CalibrationRequiredError: the observer needs calibration activations.
        SchemeNotSupportedError: an unknown observer, an unknown kwarg, or a value
            the peer rejects (``expand < 1``).
    """
    key = _lookup(name) if name else "memoryless_minmax"
    if key in _NEEDS_DATA:
        raise CalibrationRequiredError(
            f"The {name!r} observer {_NEEDS_DATA[key]}; model-free quantization has no activations. "
            f"Pick a data-free observer ({', '.join(_CANONICAL)}) or use llm-compressor oneshot."
        )
    if key not in _CANONICAL:
        raise SchemeNotSupportedError(
            f"Unknown weight observer {name!r}; data-free observers: {', '.join(_CANONICAL)}."
        )
    observer = _CANONICAL[key]
    if key == "mse":
        logger.info(
            "Observer 'mse' runs as 'memoryless_mse' (llm-compressor 0.14's model_free_ptq renames it to the "
            "unregistered 'static_mse' and fails; its oneshot runs memoryless_mse for weights)."
        )
    given = dict(kwargs or {})
    defaults = _DEFAULTS[observer]
    unknown = sorted(k for k in given if k not in defaults and k not in _IGNORED_KWARGS)
    if unknown:
        known = ", ".join(defaults) or "none"
        raise SchemeNotSupportedError(
            f"observer_kwargs {unknown} do not apply to the {name!r} observer (it reads: {known})."
        )
    values = {k: given.get(k, v) for k, v in defaults.items()}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SchemeNotSupportedError(f"observer_kwargs[{k!r}] = {v!r} must be a finite number.")
    if values.get("expand", 1.0) < 1.0:
        raise SchemeNotSupportedError(f"observer_kwargs['expand'] = {values['expand']!r} must be at least 1.0.")
    if values.get("grid", 1.0) <= 0:
        raise SchemeNotSupportedError(f"observer_kwargs['grid'] = {values['grid']!r} must be positive.")
    return observer, tuple(sorted(values.items()))


@dataclass(frozen=True)
class MseParams:
    """One MSE observer's search, as the peer's ``_grid_search_mse`` runs it.

    ``shrink[i] = 1 - i / grid`` for ``i < int(maxshrink * grid)``; the search stops
    early after ``patience`` consecutive steps in which no cell of the weight improved.
    """

    shrink: tuple[float, ...]
    patience: int
    norm: float
    expand: float


def mse_params(kwargs: tuple[tuple[str, Any], ...]) -> MseParams:
    """The search an MSE observer's resolved kwargs describe."""
    kw = dict(kwargs)
    steps = int(kw["maxshrink"] * kw["grid"])
    return MseParams(tuple(1 - i / kw["grid"] for i in range(steps)), kw["patience"], kw["norm"], kw["expand"])


# --------------------------------------------------------------------------- the search
def _opmath(dtype: torch.dtype) -> torch.dtype:
    # torch computes `half_tensor * python_float` in float32, `double * float` in float64
    return torch.float64 if dtype == torch.float64 else torch.float32


def expanded(stat: torch.Tensor, expand: float) -> torch.Tensor:
    """``stat * expand`` as the peer computes it (a Python float times a tensor)."""
    if expand == 1.0:
        return stat
    return (stat.to(_opmath(stat.dtype)) * torch.tensor(expand, dtype=_opmath(stat.dtype))).to(stat.dtype)


def candidates(stat: torch.Tensor, shrink: torch.Tensor) -> torch.Tensor:
    """``stat * p`` for every shrink factor ``p``: ``[steps, *stat.shape]``, in ``stat``'s dtype."""
    wide = stat.to(_opmath(stat.dtype))
    return (wide.unsqueeze(0) * shrink.view(-1, *([1] * stat.dim()))).to(stat.dtype)


def shrink_tensor(params: MseParams, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(params.shrink, dtype=torch.float64).to(_opmath(dtype)).to(device)


def initial_best(stat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer's starting point per cell: error = the dtype's largest value, range = unshrunk (step 0)."""
    best_err = torch.full(stat.shape, torch.finfo(stat.dtype).max, dtype=_wide(stat.dtype), device=stat.device)
    return best_err, torch.zeros(stat.shape, dtype=torch.int64, device=stat.device)


def _wide(dtype: torch.dtype) -> torch.dtype:
    # every error dtype's values (and its largest finite value) are exact in this one
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Improvements:
    """One block of consecutive factors for one row chunk (``[factors, *cells]``)."""

    improved: torch.Tensor  # the peer's ``err < best_error`` at each factor
    running: torch.Tensor  # best error after each factor


def improvements(err: torch.Tensor, best_err: torch.Tensor) -> Improvements:
    """Replay the peer's ``improved = err < best_error; best_error[improved] = err[improved]``.

    ``best_error`` is the running minimum (starting from ``best_err``); a NaN error
    never improves, since every comparison with NaN is false.
    """
    e = torch.nan_to_num(err.to(best_err.dtype), nan=math.inf)
    running = torch.empty_like(e)
    improved = torch.empty(e.shape, dtype=torch.bool, device=e.device)
    before = best_err
    for i in range(e.shape[0]):  # one factor at a time: torch's cummin over dim 0 is many times slower
        torch.lt(e[i], before, out=improved[i])
        before = torch.minimum(e[i], before, out=running[i])
    return Improvements(improved, running)


def advance(improved_any: torch.Tensor, stale: int, patience: int) -> tuple[int, int, bool]:
    """The peer's early stop over a block: ``(factors it evaluates, stale count after them, stopped)``.

    It stops right after the factor that makes ``patience`` consecutive factors
    without any improvement anywhere.
    """
    for i, improved in enumerate(improved_any.tolist()):
        stale = 0 if improved else stale + 1
        if not improved and stale >= patience:
            return i + 1, stale, True
    return improved_any.numel(), stale, False


def block_size(step: int, steps: int, stale: int, patience: int, previous: int, first: int) -> int:
    """How many factors to evaluate next, from ``step`` on, given the peer's stop so far.

    Never fewer than could make the peer stop (``patience - stale``): with ``first=1``
    (the direct search, costly per factor) blocks are that short, so no factor the peer
    skips is evaluated. Where a call is cheap per factor but costly in itself (the pair
    tables), the first block holds ``first`` factors, a block that ended on an
    improvement doubles, and a block that would leave fewer than ``patience`` factors
    takes them too.
    """
    size = max(1, math.ceil(patience - stale))  # the peer's patience may be a float (``stale >= patience``)
    if first > 1:
        if step == 0:
            size = max(size, first)
        elif stale == 0:
            size = max(size, 2 * previous)
        if steps - step - size < patience:
            size = steps - step
    return min(size, steps - step)


def keep_best(found: Improvements, taken: int, first_step: int, best_err: torch.Tensor, best_step: torch.Tensor):
    """Running best error and step per cell after the block's first ``taken`` factors.

    Each cell keeps the step of its last improvement (the peer's ``best_min_val[improved]
    = ...``, factor after factor); a cell that never improved keeps ``best_step``.
    """
    step = best_step.clone()
    for i in range(taken):
        step.masked_fill_(found.improved[i], first_step + i)
    return found.running[taken - 1], step
