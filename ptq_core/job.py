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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError, PtqError
from .matching import validate_ignore
from .observers import resolve_observer
from .schemes import (
    DEFAULT_IGNORE,
    ResolvedConfig,
    canonical_scheme_name,
    list_schemes,
    resolve_config,
    scheme_repo_suffix,
)
from .sizes import parse_size
from .sources.formats import check_converters
from .workers import parse_count, resolve_workers

__all__ = [
    "MAX_PARTS",
    "Job",
    "check_source",
    "check_target",
    "default_repo_name",
    "is_default_target",
    "make_job",
    "make_jobs",
    "parse_part",
    "parse_schemes",
]


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
        workers: threads, each quantizing one weight or fused group at a time (``make_job`` resolves
            ``"auto"`` to a number: ``workers.auto_workers``).
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
        rotate: fold SpinQuant rotations into the weights before quantizing (R1 + R2; R1
            only for MLA models), after the source is made dense (``rotation.py``).

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
    rotate: bool = False

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
        names = {w["observer"] for w in self.resolved.weights.values()}
        return ", ".join(sorted(n or "memoryless_minmax" for n in names))

    @property
    def label(self) -> str:
        return f"{self.source} -> {self.scheme_name}"


# Linux's PATH_MAX and NAME_MAX: longer text cannot name a folder (stat says ENAMETOOLONG).
MAX_PATH_LENGTH = 4096
MAX_NAME_BYTES = 255
MAX_REPO_ID_LENGTH = 96  # huggingface_hub's validate_repo_id
MAX_REVISION_LENGTH = 255  # a git ref name component; a commit is 40 hex digits
_REVISION_FORBIDDEN = set("~^:?*[\\")  # git check-ref-format refuses these in a branch or tag name


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} characters)"


def _check_source_length(source: str) -> None:
    """Text too long to be a folder or a repo id is refused here, not as ``OSError`` from ``stat``."""
    names = source.replace(os.sep, "/").split("/")  # a backslash is part of a name on POSIX
    if len(source) > MAX_PATH_LENGTH or any(len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for name in names):
        raise InvalidOptionError(
            f"source {_short(source)} is too long to be a checkpoint folder (paths are at most {MAX_PATH_LENGTH} "
            f"characters, {MAX_NAME_BYTES} bytes per name) or a Hub repo id (at most {MAX_REPO_ID_LENGTH} characters)."
        )


def check_hub_source(source: str) -> None:
    """Refuse a source that is not a Hub repo id ``namespace/name``, without touching the file system.

    For front ends that plan Hub repos only (the Space): a path (``/``, ``~``, ``./x``,
    ``..``) is refused as one, whether or not such a folder exists here.

    Raises:
        InvalidOptionError: a path, or text that huggingface_hub's ``validate_repo_id`` refuses,
            or a name without its namespace.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidOptionError(f"The source must be a Hub repo id such as 'org/Model', got {source!r}.")
    if source.startswith(("/", "~", ".", "\\")) or "\\" in source or ".." in source or source.count("/") > 1:
        raise InvalidOptionError(
            f"{_short(source)} is a file-system path; only Hub repos can be quantized here. "
            "Give a repo id such as 'org/Model'."
        )
    if len(source) > MAX_REPO_ID_LENGTH:
        raise InvalidOptionError(
            f"{_short(source)} is not a Hub repo id: repo ids are at most {MAX_REPO_ID_LENGTH} characters."
        )
    problem = _repo_id_problem(source)
    if problem is not None:
        raise InvalidOptionError(f"{_short(source)} is not a valid Hub repo id: {problem}")
    if "/" not in source:
        raise InvalidOptionError(f"The source repo id {source!r} needs its namespace: 'org/{source}'.")


def check_revision(revision: object) -> str:
    """A branch, tag or commit, checked before it reaches a URL: returns it without surrounding spaces.

    Raises:
        InvalidOptionError: not a string, empty, longer than ``MAX_REVISION_LENGTH``, or holding
            a control character, whitespace, ``..``, a leading ``-``, ``@{``, a trailing ``/`` or
            ``.``, ``//``, or one of ``~^:?*[\\`` (what git refuses in a ref name).
    """
    if not isinstance(revision, str) or not revision.strip():
        raise InvalidOptionError(f"revision={revision!r} must be a branch, tag or commit.")
    value = revision.strip()
    if len(value) > MAX_REVISION_LENGTH:
        raise InvalidOptionError(
            f"revision={_short(value)} is too long for a branch, tag or commit (at most {MAX_REVISION_LENGTH} characters)."
        )
    bad = next((c for c in value if c.isspace() or ord(c) < 32 or ord(c) == 127 or c in _REVISION_FORBIDDEN), None)
    if bad is not None:
        raise InvalidOptionError(
            f"revision={_short(value)} holds {bad!r}, which no branch, tag or commit has; "
            "give a name such as 'main', 'v1.0' or 'refs/pr/1', or a 40-digit commit hash."
        )
    if value.startswith("-") or ".." in value or "@{" in value or "//" in value or value.endswith(("/", ".")):
        raise InvalidOptionError(
            f"revision={_short(value)} is not a branch, tag or commit name (no leading '-', '..', '@{{', '//', "
            "or trailing '/' or '.'); give e.g. 'main', 'v1.0' or a 40-digit commit hash."
        )
    return value


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


def _check_rotate(rotate: object, append: bool) -> bool:
    """``rotate`` as a bool; refused with ``append`` (a rotated model has no compressed module left)."""
    if not isinstance(rotate, bool):
        raise InvalidOptionError(f"rotate must be True or False, got {rotate!r}.")
    if rotate and append:
        raise InvalidOptionError("rotate needs every weight dense, but append keeps a compressed-tensors source's "
                                 "modules compressed; pass a dequantizer (or no converter) without append.")
    return rotate


def check_source(source: str | os.PathLike[str], *, hub_only: bool = False) -> str:
    """The source, stripped: a Hub repo id, or (unless ``hub_only``) a local path.

    Text that is not a valid repo id is taken as a path when it reads as one (it starts
    with ``/``, ``~`` or ``.``, or has more than one ``/``) or names something that exists
    here; anything else (``org/My Model``, ``org/--x``) is refused before a request is made.

    Raises:
        InvalidOptionError: empty or over-long, not a repo id and not a path, or (``hub_only``)
            not a Hub repo id ``namespace/name`` (see ``check_hub_source``).
    """
    if isinstance(source, os.PathLike):
        source = str(Path(source))
    if not isinstance(source, str) or not source.strip():
        raise InvalidOptionError(f"source must be a checkpoint folder or a Hub repo id, got {source!r}.")
    source = source.strip()
    if hub_only:
        check_hub_source(source)
        return source
    _check_source_length(source)
    reads_as_path = source.startswith(("/", "~", ".")) or source.count("/") > 1
    if _repo_id_problem(source) is None or reads_as_path or os.path.lexists(os.path.expanduser(source)):
        return source
    raise InvalidOptionError(
        f"source {_short(source)} is neither a folder here nor a valid Hub repo id: {_repo_id_problem(source)}"
    )


def check_target(target: object) -> str:
    """The target repo, stripped: ``namespace/name``, or a bare ``name`` (created under the token's user).

    Raises:
        InvalidOptionError: not a string, empty, more than one ``/``, or a name the Hub refuses.
    """
    if not isinstance(target, str) or not target.strip():
        raise InvalidOptionError(f"target={target!r} is not a repo id; give 'namespace/name' or leave it out.")
    target = target.strip()
    problem = "it has more than one '/'" if target.count("/") > 1 else _repo_id_problem(target)
    if problem is not None:
        raise InvalidOptionError(f"target {_short(target)} is not a valid repo id ('namespace/name'): {problem}")
    return target


def _repo_id_problem(text: str) -> str | None:
    """Why huggingface_hub's ``validate_repo_id`` refuses ``text``, or ``None`` if it is a repo id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        return str(err).strip()[:300]
    return None


def default_repo_name(source: str, scheme: str) -> str:
    """The default target's name, without its namespace: ``org/Model`` + ``fp8_block`` -> ``Model-FP8-BLOCK``."""
    return f"{source.rstrip('/').split('/')[-1]}-{scheme_repo_suffix(canonical_scheme_name(scheme))}"


def is_default_target(target: str, source: str) -> bool:
    """Whether ``target`` has the default name of ``source`` under some data-free scheme.

    A front end renames such a target when the scheme changes (``Model-FP8-BLOCK`` ->
    ``Model-W4A16``), and keeps a name the user chose.
    """
    tail = (target or "").strip().split("/")[-1]
    return any(tail == default_repo_name(source, info.name) for info in list_schemes())


@contextmanager
def _about(option: str) -> Iterator[None]:
    """Tag a ``PtqError`` raised while checking ``option`` with its name (``PtqError.option``)."""
    try:
        yield
    except PtqError as err:
        if err.option is None:
            err.option = option
        raise


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
    workers: int | str = 1,
    disk_budget: int | str | None = None,
    part: tuple[int, int] | str | None = None,
    converters: object = None,
    append: bool = False,
    tp: int | str | None = None,
    rotate: bool = False,
    hub_only: bool = False,
) -> Job:
    """Validate a request once and return it as a ``Job``; no network, no file reads.

    Args: see :class:`Job`; in addition ``scheme`` (a preset name in any case, or a
    ``QuantizationScheme``) or ``config`` (a ``QuantizationConfig``); ``ignore`` (names or
    ``re:`` regexes, added to ``DEFAULT_IGNORE`` unless ``default_ignore`` is false);
    ``observer`` (a data-free weight observer for every group); ``workers`` (a whole number,
    or ``"auto"``: ``workers.auto_workers``); ``disk_budget`` (bytes or ``"20GB"``); ``part``
    (``(i, k)`` or ``"i/k"``); ``hub_only`` (the source must be a Hub repo id, never a path:
    a front end that takes text from strangers, the Space); ``rotate`` (SpinQuant R1+R2 folded
    into the weights first, see :class:`Job`).

    Raises (each error's ``option`` names the argument it is about):
        SchemeNotSupportedError / CalibrationRequiredError: unknown or not data-free scheme or observer.
        InvalidIgnoreError: ``ignore`` is a single string, or an entry is invalid.
        InvalidOptionError: a source that is neither a repo id nor a path (with ``hub_only``: not a
            repo id), an invalid target repo id, a bad revision, worker count, tensor-parallel size,
            device list, disk budget or part, or a converter without the ``Converter`` methods,
            or ``rotate`` with ``append`` (rotated weights are dense).

    Example:
        >>> make_job("org/Model", "fp8_block").scheme_name
        'FP8_BLOCK'
    """
    with _about("source"):
        source = check_source(source, hub_only=hub_only)
    with _about("revision"):
        revision = None if revision is None else check_revision(revision)
    with _about("ignore"):
        extra = validate_ignore(ignore)
    with _about("observer"):
        observer = None if observer is None else resolve_observer(observer, None)[0]
    with _about("scheme"):
        base = list(DEFAULT_IGNORE) if default_ignore else []
        resolved = resolve_config(scheme, config, base + [p for p in extra if p not in base], observer=observer,
                                  model_defaults=default_ignore)
    with _about("target"):
        target = None if target is None else check_target(target)
    with _about("device"):
        devices = _device_tuple(device)
    with _about("workers"):
        workers = resolve_workers(workers, devices)
    with _about("disk_budget"):
        budget = None if disk_budget is None else parse_size(disk_budget, name="disk_budget")
    with _about("part"):
        part = None if part is None else parse_part(part)
    with _about("converters"):
        chain = check_converters(converters)
    with _about("rotate"):
        rotate = _check_rotate(rotate, append)
    with _about("tp"):
        tp = None if tp is None else parse_count(tp, name="tp")
    return Job(source=source, resolved=resolved, revision=revision, target=target, private=bool(private),
               overwrite=bool(overwrite), device=devices, workers=workers, disk_budget=budget, part=part,
               converters=chain, append=bool(append), tp=tp, rotate=rotate)


def parse_schemes(schemes: object) -> tuple[object, ...]:
    """``"FP8_BLOCK,NVFP4A16"`` (commas, lines or spaces), or a list -> the schemes in order.

    Text entries are stripped and empty ones dropped; other entries (a
    ``QuantizationScheme``) are kept as they are. Duplicates are refused by ``make_jobs``,
    once the names are canonical.

    Raises:
        InvalidOptionError: nothing left.
    """
    items = [schemes] if isinstance(schemes, str) or not isinstance(schemes, (list, tuple)) else list(schemes)
    names: list[object] = []
    for item in items:
        if isinstance(item, str):
            names += [name for name in item.replace(",", " ").split() if name]
        elif item is not None:
            names.append(item)
    if not names:
        with _about("scheme"):
            raise InvalidOptionError(f"scheme={schemes!r} names no scheme; give e.g. 'FP8_BLOCK' or 'FP8_BLOCK,W4A16'.")
    return tuple(names)


def make_jobs(source: str | os.PathLike[str], schemes: object, **options: Any) -> tuple[Job, ...]:
    """Several schemes of one source: one ``Job`` per scheme, sharing source, revision and every option.

    The request of one read of the source quantized into several schemes (``hubjob.many``):
    each ``Job`` stays single-scheme and gets its own default target ``{Model}-{SCHEME}``.
    One scheme gives a tuple of one ``make_job``.

    A ``target`` ending in ``/`` (``"my-org/"``) is a namespace: each scheme's default name
    under it (``my-org/{Model}-{SCHEME}``), how a publisher puts every variant in its org.

    Raises:
        the errors of ``make_job`` (the first scheme that fails), and InvalidOptionError: a
        scheme given twice, or a repo ``target`` / ``config`` next to several schemes (one
        target cannot hold several models; a config is one scheme). ``part`` is allowed: part
        ``i`` of each scheme's own cut.
    """
    names = parse_schemes(schemes)
    target = options.pop("target", None)
    namespace = target.strip()[:-1] if isinstance(target, str) and target.strip().endswith("/") else None
    if len(names) > 1:
        for option, value in (("target", None if namespace is not None else target), ("config", options.get("config"))):
            if value is not None:
                with _about(option):
                    raise InvalidOptionError(
                        f"{option} cannot be given with several schemes ({len(names)} given): each scheme gets its "
                        "own target, named {Model}-{SCHEME}; a target ending in '/' ('my-org/') puts them all "
                        "under that namespace. Run one scheme per command to choose its target.")
    jobs = tuple(make_job(source, name, target=target if namespace is None else
                          f"{namespace}/{default_repo_name(str(source), name)}", **options) for name in names)
    seen: set[str] = set()
    for job in jobs:
        if job.scheme_name in seen:
            with _about("scheme"):
                raise InvalidOptionError(f"scheme {job.scheme_name} is given twice in {schemes!r}.")
        seen.add(job.scheme_name)
    return jobs
