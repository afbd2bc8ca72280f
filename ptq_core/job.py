"""One request, resolved once: the frozen ``Job`` every layer below the front ends takes.

Each front end (the ``ptq`` CLI, YAML recipes, the GitHub Action, the Space, the
Python calls) turns its own inputs into a ``Job`` through :func:`make_job`, and
nothing below re-parses a scheme string, an ignore list or a worker count.

The ignore rule, the same for every front end: ``ignore`` **adds** to the
loader-safe defaults (the name rules of ``schemes.DEFAULT_IGNORE``, and at plan time
what the model itself needs: ``default_ignore.model_default_ignore``); ``default_ignore=False`` (``--no-default-ignore``, ``default-ignore:
false``) drops them. ``model_free_ptq`` is the one exception by design: as a
drop-in for llm-compressor's function it ignores only what it is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .converters import check_converters
from .errors import InvalidOptionError
from .matching import validate_ignore
from .schemes import DEFAULT_IGNORE, ResolvedConfig, resolve_config, scheme_repo_suffix
from .sizes import parse_size

__all__ = ["MAX_PARTS", "Job", "make_job", "parse_part", "validate_workers"]


@dataclass(frozen=True)
class Job:
    """A validated quantization request.

    Attributes:
        source: a local checkpoint folder or a Hub repo id (``org/Model``).
        resolved: the scheme or config, resolved once, with the final ignore list.
        revision: Hub branch, tag or commit of the source (``None``: main).
        target: target Hub repo (``ns/name``, or a bare name under the token's
            user); ``None`` means ``{user}/{model}-{SCHEME}``.
        private: create the target repo private.
        overwrite: replace an existing output folder or non-empty target repo.
        device: devices for the kernels (``("cuda:0",)``); ``None`` means every GPU if any, else CPU.
        workers: threads, each quantizing one weight or fused group at a time.
        disk_budget: bytes of local disk a Hub job may fill at once (output shards
            waiting for upload); ``None`` means derived from the free space of the work folder.
        part: ``(i, k)``: a Hub job stages only part ``i`` of ``k`` (1-based) on the target's
            staging branch and returns; ``finalize_hub_job`` later makes the one commit.
        converters: a compressed-tensors ``Converter`` chain run on the source before
            quantizing (``model_free_ptq(converter=...)``); empty: the source's format is
            detected and the chain picked for it.
        append: a compressed-tensors source keeps its compressed modules and the new
            groups are merged into its config (``model_free_ptq``'s default, as the peer);
            otherwise it is dequantized in memory and quantized again (the front ends).
        tp: a tensor-parallel size the output must load at in vLLM (``--tp``); the plan
            is refused before anything is written if it cannot.

    The weight observer lives in ``resolved`` (every group's ``weights.observer``).
    """

    source: str
    resolved: ResolvedConfig
    revision: str | None = None
    target: str | None = None
    private: bool = False
    overwrite: bool = False
    device: tuple[str, ...] | None = None
    workers: int = 1
    disk_budget: int | None = None
    part: tuple[int, int] | None = None
    converters: tuple[Any, ...] = ()
    append: bool = False
    tp: int | None = None

    @property
    def scheme_name(self) -> str:
        """The canonical scheme name (``FP8_BLOCK``), or the config group's name."""
        return self.resolved.name

    @property
    def ignore(self) -> tuple[str, ...]:
        """The requested ignore list: the name rules when they apply, and the caller's entries.

        The model's own defaults are added when it is planned (``Plan.resolved.ignore``).
        """
        return tuple(self.resolved.ignore)

    @property
    def repo_suffix(self) -> str:
        """``FP8-BLOCK``: how the scheme appears in default repo and folder names."""
        return scheme_repo_suffix(self.scheme_name)

    @property
    def observer(self) -> str:
        """The weight observer every group runs (``memoryless_minmax`` unless asked otherwise)."""
        names = {s.weights.observer for _, s in self.resolved.groups if s.weights is not None}
        return ", ".join(sorted(n or "memoryless_minmax" for n in names))

    @property
    def label(self) -> str:
        return f"{self.source} -> {self.scheme_name}"


def validate_workers(workers: object, *, name: str = "max_workers") -> int:
    """The one check of a count (workers, tensor-parallel size): a whole number >= 1 (``True`` is not one).

    Raises:
        InvalidOptionError: anything else.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InvalidOptionError(f"{name}={workers!r} must be a whole number >= 1.")
    return workers


MAX_PARTS = 32
"""The most parts one Hub job may be split into: what keeps the target repo under the Hub's
128 commits per hour (per repo) while every part stages into it.

The arithmetic (``staging.ShardStager``, ``hub.STAGE_COMMIT_INTERVAL`` = 60 s): with K
parts each part commits to the staging branch at most once per 60*K s, the first time 60*K s
after its run starts, so in any hour a part makes at most floor(60/K) + 1 such commits, however
often it is rerun (a rerun's first commit also waits 60*K s, and comes after the run before it
ended). Each run then ends with one more, unspaced commit (the part's final manifest, or the
pending shards after a failure), and the job with one commit on ``main``. In the worst hour:
K * (floor(60/K) + 1) + R + 1 commits, R the runs that end in it. One run per part:
K = 1: 63; K = 32: 97; K = 42: 127; K = 43: 130 and K = 64: 129, over the limit. At 32 the
margin (31) absorbs a rerun of every second part within the same hour. Creating and deleting
the staging branch are not commits."""


def parse_part(part: object, *, name: str = "part") -> tuple[int, int]:
    """``"2/3"`` or ``(2, 3)`` -> ``(2, 3)``: part ``i`` of ``k``, 1-based.

    Raises:
        InvalidOptionError: not ``I/K`` with ``1 <= I <= K``, or ``K`` above ``MAX_PARTS``.
    """
    if isinstance(part, str):
        index, sep, count = part.strip().partition("/")
        values = (index.strip(), count.strip()) if sep else ()
        if len(values) == 2 and all(v.isdigit() for v in values):
            part = (int(values[0]), int(values[1]))
    if (isinstance(part, tuple) and len(part) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in part)
            and 1 <= part[0] <= part[1]):
        if part[1] > MAX_PARTS:
            raise InvalidOptionError(
                f"{name}={part[0]}/{part[1]}: at most {MAX_PARTS} parts, so that the staging commits of all parts "
                "stay under the Hub's 128 commits per hour on the target repo; give each part more shards."
            )
        return part
    raise InvalidOptionError(f"{name}={part!r} is not a part: write I/K with 1 <= I <= K, e.g. 2/3.")


def _device_tuple(device: str | object | Sequence[str | object] | None) -> tuple[str, ...] | None:
    """``"cuda:0,cuda:1"``, a list, or a ``torch.device`` -> a tuple of device strings."""
    if device is None:
        return None
    items: Iterable[object]
    if isinstance(device, str):
        items = [part.strip() for part in device.split(",") if part.strip()]
    elif isinstance(device, (list, tuple)):
        items = device
    else:  # a torch.device
        items = [device]
    names = tuple(str(item) for item in items)
    if not names:
        raise InvalidOptionError("The device list is empty; pass e.g. 'cpu' or 'cuda:0'.")
    return names


def make_job(
    source: str | os.PathLike[str],
    scheme: object = None,
    *,
    config: object = None,
    ignore: Iterable[str] = (),
    default_ignore: bool = True,
    observer: str | None = None,
    revision: str | None = None,
    target: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    device: str | object | Sequence[str | object] | None = None,
    workers: int = 1,
    disk_budget: int | str | None = None,
    part: tuple[int, int] | str | None = None,
    converters: object = None,
    append: bool = False,
    tp: int | None = None,
) -> Job:
    """Validate a request once and return it as a ``Job``; no network, no file reads.

    Args:
        source: a checkpoint folder or a Hub repo id.
        scheme: a preset name (any case: ``fp8_block`` is ``FP8_BLOCK``) or a ``QuantizationScheme``.
        config: a ``QuantizationConfig`` instead of ``scheme``.
        ignore: module names or ``re:`` regexes kept unquantized, added to the defaults.
        default_ignore: start from ``DEFAULT_IGNORE`` (the loader-safe list).
        observer: a data-free weight observer (``memoryless_mse``...) for every group;
            ``None`` keeps the scheme's own (min/max for the presets).
        revision, target, private, overwrite, device, workers: see :class:`Job`.
        disk_budget: bytes, or a size such as ``"20GB"`` (see :class:`Job`).
        part: ``(i, k)`` or ``"i/k"`` (see :class:`Job`).
        converters: one compressed-tensors ``Converter`` or a list (see :class:`Job`).
        append, tp: see :class:`Job`.

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError: unknown or not data-free scheme.
        InvalidIgnoreError: ``ignore`` is a single string, or an entry is invalid.
        InvalidOptionError: an empty source or target, a bad worker count, tensor-parallel size,
            device list, disk budget or part, or a converter without the ``Converter`` methods.

    Example:
        >>> make_job("org/Model", "fp8_block").scheme_name
        'FP8_BLOCK'
    """
    if isinstance(source, os.PathLike):
        source = str(Path(source))
    if not isinstance(source, str) or not source.strip():
        raise InvalidOptionError(f"source must be a checkpoint folder or a Hub repo id, got {source!r}.")
    extra = validate_ignore(ignore)
    base = list(DEFAULT_IGNORE) if default_ignore else []
    resolved = resolve_config(scheme, config, base + [p for p in extra if p not in base], observer=observer,
                              model_defaults=default_ignore)
    if target is not None:
        if not isinstance(target, str) or not target.strip():
            raise InvalidOptionError(f"target={target!r} is not a repo id; give 'namespace/name' or leave it out.")
        target = target.strip()
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise InvalidOptionError(f"revision={revision!r} must be a branch, tag or commit.")
    return Job(
        source=source.strip(),
        resolved=resolved,
        revision=revision.strip() if revision else None,
        target=target,
        private=bool(private),
        overwrite=bool(overwrite),
        device=_device_tuple(device),
        workers=validate_workers(workers),
        disk_budget=None if disk_budget is None else parse_size(disk_budget, name="disk_budget"),
        part=None if part is None else parse_part(part),
        converters=check_converters(converters),
        append=bool(append),
        tp=None if tp is None else validate_workers(tp, name="tp"),
    )
