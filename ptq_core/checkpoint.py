"""Safetensors checkpoints read from their headers, validated before anything is written.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, data offsets) and the tensor bytes. We parse headers
ourselves: it costs a few KB of reading per shard, lets ``ptq plan`` run
without touching tensor data, and lets every tensor be read with one
``pread`` (no whole-shard mapping, so memory stays bounded by one tensor).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .errors import CorruptCheckpointError, MissingShardError, NoSafetensorsError
from .repo_files import INDEX_NAME, WEIGHT_FILE_SUFFIXES, is_duplicate_weights, select_repo_files

logger = logging.getLogger(__name__)

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
FLOAT_WEIGHT_DTYPES = ("BF16", "F16", "F32", "F64")


def tensor_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor of safetensors ``dtype`` and ``shape``."""
    n = DTYPE_SIZES[dtype]
    for dim in shape:
        n *= dim
    return n


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shard file, absolute byte offset, dtype, shape."""

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


def read_header(path: Path) -> tuple[dict[str, dict], int, dict[str, str]]:
    """Parse one safetensors header of a local file (see ``parse_header``).

    Raises:
        CorruptCheckpointError: truncated file, impossible header length,
            invalid JSON, unknown dtype, or offsets outside the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = header_length(f.read(8), size, path.name)
        raw = f.read(n)
    return parse_header(raw, size, path.name)


def header_length(prefix: bytes, size: int, name: str) -> int:
    """The JSON header's length from a file's first 8 bytes, checked against the file's ``size``.

    Raises:
        CorruptCheckpointError: fewer than 8 bytes, or a length that cannot fit the file.
    """
    if len(prefix) < 8:
        raise CorruptCheckpointError(f"{name}: {size} bytes is too short to be a safetensors file.")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > _MAX_HEADER or 8 + n > size:
        raise CorruptCheckpointError(
            f"{name}: header length {n} does not fit a {size}-byte file; the file is truncated or not safetensors."
        )
    return n


def parse_header(raw: bytes, size: int, name: str) -> tuple[dict[str, dict], int, dict[str, str]]:
    """Parse and validate the JSON header ``raw`` of a safetensors file of ``size`` bytes.

    The same rules for a local shard and for one read over HTTP Range requests
    (``raw`` is the ``header_length`` bytes after the 8-byte prefix).

    Returns:
        (entries, data_start, metadata) where entries map name -> header entry.

    Raises:
        CorruptCheckpointError: truncated header, invalid JSON, unknown dtype, or offsets outside the file.
    """
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{name}: the safetensors header is not valid JSON ({err}).") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{name}: the safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + len(raw)
    data_len = size - data_start
    for tensor, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"{name}: header entry for {tensor!r} is malformed.") from err
        if dtype not in DTYPE_SIZES:
            raise CorruptCheckpointError(f"{name}: tensor {tensor!r} has unknown dtype {dtype!r}.")
        expected = tensor_nbytes(dtype, shape)
        if end - begin != expected or begin < 0:
            raise CorruptCheckpointError(
                f"{name}: tensor {tensor!r} ({dtype}, shape {list(shape)}) spans {end - begin} bytes, expected {expected}."
            )
        if end > data_len:
            raise CorruptCheckpointError(
                f"{name}: tensor {tensor!r} ends at byte {end} of the data section, but the file has only "
                f"{data_len}; the shard is truncated (re-download it)."
            )
    return header, data_start, metadata


def _list_files(root: Path) -> list[str]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            files.append(rel)
    return files


def open_checkpoint(root: str | os.PathLike) -> Checkpoint:
    """Read and validate every header of a checkpoint folder.

    Raises:
        NoSafetensorsError: no ``*.safetensors`` file.
        MissingShardError: the index names a file or a tensor that is not there.
        CorruptCheckpointError: a header is invalid (see ``read_header``).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingShardError(f"{root} is not a folder.")
    files = _list_files(root)
    st_files = [f for f in files if f.endswith(".safetensors")]
    index_path = root / INDEX_NAME
    weight_map: dict[str, str] | None = None
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"{INDEX_NAME} is not a valid index (no weight_map): {err}.") from err
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise MissingShardError(
                f"{INDEX_NAME} names shard(s) {', '.join(missing)} that are not in {root}; the download is incomplete."
            )
    else:
        shards = st_files
    if not shards:
        others = [f for f in files if f.endswith(WEIGHT_FILE_SUFFIXES)]
        hint = f" (found {', '.join(others[:3])}: convert them to safetensors first)" if others else ""
        raise NoSafetensorsError(f"No *.safetensors weights in {root}{hint}.")

    tensors: dict[str, TensorInfo] = {}
    metadata = {}
    for shard in shards:
        header, data_start, meta = read_header(root / shard)
        metadata[shard] = meta
        for name, entry in header.items():
            if name in tensors:
                raise CorruptCheckpointError(f"Tensor {name!r} appears in both {tensors[name].shard} and {shard}.")
            begin, end = entry["data_offsets"]
            tensors[name] = TensorInfo(name, shard, entry["dtype"], tuple(entry["shape"]), data_start + begin, end - begin)
    if weight_map is not None:
        for name, shard in weight_map.items():
            info = tensors.get(name)
            if info is None or info.shard != shard:
                raise MissingShardError(
                    f"{INDEX_NAME} maps tensor {name!r} to {shard}, but that shard does not contain it."
                )
    # the same rule as a Hub download, so a repo gives the same side files from either place
    extra = tuple(f for f in select_repo_files(files) if not f.endswith(".safetensors") and f != INDEX_NAME)
    skipped = tuple(f for f in files if is_duplicate_weights(f))
    return Checkpoint(root, tuple(shards), tensors, extra, skipped, metadata)


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
