"""Safetensors checkpoints read from their headers, validated before anything is written.

We parse headers ourselves (``sources.safetensors_header``): it costs a few KB of
reading per shard, lets ``ptq plan`` run without touching tensor data, and lets every
tensor be read with one ``pread`` (no whole-shard mapping, so memory stays bounded by
one tensor). A folder and a Hub repo read in place (``remote``) pick their shards by
one rule (``sources.shards``) and build their tensor table with one function
(:func:`tensor_table`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from .errors import CorruptCheckpointError, MissingShardError, NoSafetensorsError, UnsafePathError
from .repo_files import INDEX_NAME, WEIGHT_FILE_SUFFIXES, duplicate_weight_files, select_repo_files
from .sources.safetensors_header import DuplicatedKeys, load_json, quote, read_header, tensor_nbytes
from .sources.shards import SHARD_SUFFIX, select_shards, validate_shard_name

logger = logging.getLogger(__name__)

_MAX_INDEX = 100_000_000  # the index lists each tensor once, as a header does

ParsedHeader = tuple[dict[str, dict], int, dict[str, str]]
"""``(entries, data_start, metadata)``, as ``safetensors_header.parse_header`` returns it."""


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a large header or plan is built.

    A 300k-tensor header becomes ~1M small dicts, lists and tuples that all stay alive;
    the generational collector rescans the growing heap again and again while they are
    made, which cost two thirds of the time. Nothing built here forms a reference cycle,
    so pausing loses nothing; the previous state is restored on exit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TensorInfo(NamedTuple):
    """Where one tensor lives: shard file, absolute byte offset, dtype, shape.

    A NamedTuple: a DeepSeek-sized checkpoint has ~100k of them, built several times
    faster than frozen dataclasses.
    """

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    """A validated view of a checkpoint folder (headers only).

    Attributes:
        root: the folder.
        shards: safetensors file names (relative), in index order.
        tensors: every tensor by name.
        extra_files: non-weight files to copy (``repo_files.select_repo_files``: configs,
            tokenizer, code, license at the folder's root).
        skipped_weight_files: ``*.bin`` / ``*.pt`` / subfolder duplicates that are not copied.
    """

    root: Path
    shards: tuple[str, ...]
    tensors: Mapping[str, TensorInfo]
    extra_files: tuple[str, ...] = ()
    skipped_weight_files: tuple[str, ...] = ()
    metadata: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def tensor_table(
    parsed: Iterable[tuple[str, ParsedHeader]], weight_map: Mapping[str, str] | None
) -> tuple[dict[str, TensorInfo], dict[str, dict[str, str]]]:
    """Every tensor of a checkpoint from its parsed shard headers, checked against its index.

    The one step from headers to a table, for a folder and for a Hub repo read in place:
    absolute offsets (``data_start`` + the entry's begin), each tensor in one shard only,
    and every tensor the index names in the shard it names.

    Args:
        parsed: ``(shard, parse_header(...))`` per shard, in shard order.
        weight_map: the index's tensor -> shard map, or ``None`` without an index.

    Returns:
        (tensor name -> ``TensorInfo``, shard -> its ``__metadata__``).

    Raises:
        CorruptCheckpointError: a tensor appears in two shards.
        MissingShardError: the index maps a tensor to a shard that does not hold it.
    """
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, dict[str, str]] = {}
    new = tuple.__new__  # TensorInfo's fields in order, without NamedTuple's argument parsing (~100k of them)
    for shard, (header, data_start, meta) in parsed:
        metadata[shard] = meta
        for name, entry in header.items():
            if name in tensors:
                raise CorruptCheckpointError(f"Tensor {name!r} appears in both {tensors[name].shard} and {shard}.")
            begin, end = entry["data_offsets"]
            tensors[name] = new(TensorInfo, (name, shard, entry["dtype"], tuple(entry["shape"]), data_start + begin,
                                             end - begin))
    for name, shard in (weight_map or {}).items():
        info = tensors.get(name)
        if info is None or info.shard != shard:
            raise MissingShardError(f"{INDEX_NAME} maps tensor {name!r} to {shard}, but that shard does not contain it.")
    return tensors, metadata


def _list_files(root: Path) -> list[str]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            files.append(rel)
    return files


def _read_weight_map(index_path: Path, root: Path) -> dict[str, str]:
    """The index's ``weight_map``, its shape checked and every shard name validated."""
    size = index_path.stat().st_size
    if size > _MAX_INDEX:
        raise CorruptCheckpointError(f"{INDEX_NAME} is {size} bytes, more than any index needs; re-download it.")
    index, _ = load_json(index_path.read_bytes(), INDEX_NAME, find_duplicates=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(weight_map, DuplicatedKeys):
        raise CorruptCheckpointError(f"{INDEX_NAME} maps tensor {quote(weight_map.key)} twice; re-download it.")
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError(
            f"{INDEX_NAME} has no weight_map mapping of tensor name -> shard file "
            f"(found {type(weight_map).__name__}); re-download it or delete it to read the shards directly."
        )
    checked: set[str] = set()
    for tensor, shard in weight_map.items():
        if not isinstance(tensor, str):  # only possible with hand-built dicts; JSON keys are strings
            raise CorruptCheckpointError(f"{INDEX_NAME}: weight_map key {quote(tensor)} is not a tensor name.")
        if isinstance(shard, str) and shard in checked:
            continue
        try:
            checked.add(validate_shard_name(shard, root))
        except UnsafePathError as err:
            raise UnsafePathError(f"{INDEX_NAME} maps tensor {quote(tensor)} to a bad shard: {err}") from None
    return weight_map


@paused_gc()
def open_checkpoint(root: str | os.PathLike) -> Checkpoint:
    """Read and validate every header of a checkpoint folder.

    Shard names are checked before any shard is opened. The shards are those the index
    names, else the rule of ``sources.shards.select_shards`` (the same as for a Hub repo).

    Raises:
        NoSafetensorsError: no ``*.safetensors`` file.
        UnsafePathError: the index names a shard outside the folder (see ``validate_shard_name``).
        MissingShardError: the index names a file or a tensor that is not there.
        CorruptCheckpointError: the index or a header is invalid (see ``read_header``).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingShardError(f"{root} is not a folder.")
    files = _list_files(root)
    index_path = root / INDEX_NAME
    weight_map = _read_weight_map(index_path, root) if index_path.is_file() else None
    shards = [validate_shard_name(s, root) for s in select_shards(files, weight_map)]
    missing = [s for s in shards if not (root / s).is_file()]
    if missing:
        raise MissingShardError(
            f"{INDEX_NAME} names shard(s) {', '.join(missing)} that are not in {root}; the download is incomplete."
        )
    _warn_unused(files, shards, weight_map is not None)
    if not shards:
        others = [f for f in files if f.endswith(WEIGHT_FILE_SUFFIXES)]
        hint = f" (found {', '.join(others[:3])}: convert them to safetensors first)" if others else ""
        raise NoSafetensorsError(f"No *.safetensors weights in {root}{hint}.")
    tensors, metadata = tensor_table(((s, read_header(root / s)) for s in shards), weight_map)
    # the same rule as a Hub download, so a repo gives the same side files from either place
    extra = tuple(f for f in select_repo_files(files) if not f.endswith(".safetensors") and f != INDEX_NAME)
    skipped = tuple(duplicate_weight_files(files))
    return Checkpoint(root, tuple(shards), tensors, extra, skipped, metadata)


def _warn_unused(files: Sequence[str], shards: Sequence[str], indexed: bool) -> None:
    """Say which safetensors files are neither read nor copied, and why."""
    unused = [f for f in files if f.endswith(SHARD_SUFFIX) and f not in shards]
    if not unused:
        return
    if indexed:
        why = f"{INDEX_NAME} does not name them"
    elif any("/" not in f for f in unused):
        why = "model.safetensors is the checkpoint (files beside it hold the same weights under other names)"
    else:
        why = "shards in subfolders are not supported"
    logger.warning("Not reading and not copying %s: %s.", ", ".join(unused), why)


def read_config(root: str | os.PathLike) -> dict | None:
    """The folder's ``config.json`` as a dict, or ``None`` when there is none.

    Raises:
        CorruptCheckpointError: it exists but is not a JSON object.
    """
    path = Path(root) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"config.json is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise CorruptCheckpointError("config.json is not a JSON object.")
    return data


@paused_gc()
def headers_checkpoint(headers: Mapping[str, Mapping[str, tuple[str, Iterable[int]]]], root: Path | None = None) -> Checkpoint:
    """A header-only ``Checkpoint`` from ``{shard: {tensor: (dtype, shape)}}`` (Hub previews).

    Offsets are synthetic: such a checkpoint can be planned but not read.
    """
    tensors = {}
    for shard, entries in headers.items():
        for name, (dtype, shape) in entries.items():
            shape = tuple(int(d) for d in shape)
            tensors[name] = TensorInfo(name, shard, dtype, shape, -1, tensor_nbytes(dtype, shape))
    return Checkpoint(root or Path("."), tuple(headers), tensors)


class ShardReader:
    """Reads whole tensors (or byte ranges) with ``pread`` from open shard files.

    Thread-safe: ``os.pread`` carries its own offset, so workers share the fds.
    """

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._fds = {s: os.open(checkpoint.root / s, os.O_RDONLY) for s in checkpoint.shards}

    def fd(self, shard: str) -> int:
        return self._fds[shard]

    def read_into(self, info: TensorInfo, out, start: int = 0) -> None:
        """Fill ``out`` (a CPU uint8 tensor) with the tensor's bytes from ``start`` on.

        Reading into a caller-owned, reused buffer avoids faulting in fresh pages
        for every tensor.
        """
        view = memoryview(out.numpy())
        length = len(view)
        done = 0
        fd = self._fds[info.shard]
        while done < length:
            n = os.preadv(fd, [view[done:]], info.offset + start + done)
            if n <= 0:
                raise CorruptCheckpointError(f"{info.shard}: unexpected end of file while reading {info.name!r}.")
            done += n

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
