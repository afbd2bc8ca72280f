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
import reprlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .constants import WEIGHT_FILE_SUFFIXES
from .errors import CorruptCheckpointError, MissingShardError, NoSafetensorsError, UnsafePathError

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SHARD_SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
FLOAT_WEIGHT_DTYPES = ("BF16", "F16", "F32", "F64")

# Values from a hostile file can be megabytes long or deeply nested: messages quote
# them through this, which truncates and never recurses deeply.
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 2, 100, 60
_quote = _short_repr.repr


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
        extra_files: non-weight files to copy (configs, tokenizer, code, license).
        skipped_weight_files: ``*.bin`` / ``*.pt`` ... duplicates that are not copied.
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
    """Parse one safetensors header.

    Returns:
        (entries, data_start, metadata) where entries map name -> header entry.

    Raises:
        CorruptCheckpointError: truncated file, impossible header length,
            invalid JSON, unknown dtype, or offsets outside the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError(f"{path.name}: {size} bytes is too short to be a safetensors file.")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CorruptCheckpointError(
                f"{path.name}: header length {n} does not fit a {size}-byte file; the file is truncated or not safetensors."
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptCheckpointError(f"{path.name}: the safetensors header is not valid JSON ({err}).") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path.name}: the safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"{path.name}: header entry for {name!r} is malformed.") from err
        if dtype not in DTYPE_SIZES:
            raise CorruptCheckpointError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}.")
        expected = tensor_nbytes(dtype, shape)
        if end - begin != expected or begin < 0:
            raise CorruptCheckpointError(
                f"{path.name}: tensor {name!r} ({dtype}, shape {list(shape)}) spans {end - begin} bytes, expected {expected}."
            )
        if end > data_len:
            raise CorruptCheckpointError(
                f"{path.name}: tensor {name!r} ends at byte {end} of the data section, but the file has only "
                f"{data_len}; the shard is truncated (re-download it)."
            )
    return header, data_start, metadata


def validate_shard_name(name: object, root: Path | None = None) -> str:
    """Check that a shard name from an index is a plain file name inside the model folder.

    Output shards are written under the same names, so a name such as
    ``../other-model/model.safetensors`` or ``/abs/path.safetensors`` would make a run
    read, and then overwrite, a file outside both folders. Shards in subfolders are not
    supported (no checkpoint on the Hub uses them), which keeps the rule simple: one
    path component, no separators at all.

    Args:
        name: the value from the index's ``weight_map`` (or a listed file name).
        root: the model folder; when given, the name must also resolve inside it,
            symlinks followed. A snapshot folder of the Hugging Face cache
            (``models--org--name/snapshots/<rev>``) may link into its own ``blobs/``.

    Returns:
        ``name``, unchanged.

    Raises:
        UnsafePathError: not a string, empty, absolute, ``..``, NUL, a backslash or a
            path separator, not a ``*.safetensors`` name, or resolving outside ``root``.

    Example:
        >>> validate_shard_name("model-00001-of-00002.safetensors")
        'model-00001-of-00002.safetensors'
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"shard name {_quote(name)} is a {type(name).__name__}, not a file name string.")
    reason = None
    if not name:
        reason = "is empty"
    elif "\0" in name:
        reason = "contains a NUL byte"
    elif os.path.isabs(name) or name.startswith(("/", "\\")):
        reason = "is an absolute path"
    elif ".." in name:
        reason = "contains '..'"
    elif "/" in name or "\\" in name:
        reason = "contains a path separator (shards in subfolders are not supported)"
    elif not name.endswith(SHARD_SUFFIX):
        reason = f"does not end in {SHARD_SUFFIX}"
    if reason is not None:
        raise UnsafePathError(
            f"shard name {_quote(name)} {reason}; a shard must be a plain *{SHARD_SUFFIX} file name in the model folder."
        )
    if root is not None:
        target = (root / name).resolve()
        if not any(target.parent == allowed for allowed in _allowed_shard_folders(root)):
            raise UnsafePathError(
                f"shard {_quote(name)} resolves to {target}, outside the model folder {root}; "
                "replace the symlink with the file itself."
            )
    return name


def _allowed_shard_folders(root: Path) -> tuple[Path, ...]:
    """Where a shard may really live: the folder, or the HF cache's ``blobs/`` of a snapshot."""
    real = root.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real, real.parent.parent / "blobs"
    return (real,)


def _list_files(root: Path) -> list[str]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            files.append(rel)
    return files


def _read_weight_map(index_path: Path, root: Path) -> dict[str, str]:
    """The index's ``weight_map``, its shape checked and every shard name validated."""
    try:
        index = json.loads(index_path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptCheckpointError(f"{INDEX_NAME} is not valid JSON ({err}); re-download it.") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError(
            f"{INDEX_NAME} has no weight_map mapping of tensor name -> shard file "
            f"(found {type(weight_map).__name__}); re-download it or delete it to read the shards directly."
        )
    checked: set[str] = set()
    for tensor, shard in weight_map.items():
        if not isinstance(tensor, str):  # only possible with hand-built dicts; JSON keys are strings
            raise CorruptCheckpointError(f"{INDEX_NAME}: weight_map key {_quote(tensor)} is not a tensor name.")
        if isinstance(shard, str) and shard in checked:
            continue
        try:
            checked.add(validate_shard_name(shard, root))
        except UnsafePathError as err:
            raise UnsafePathError(f"{INDEX_NAME} maps tensor {_quote(tensor)} to a bad shard: {err}") from None
    return weight_map


def open_checkpoint(root: str | os.PathLike) -> Checkpoint:
    """Read and validate every header of a checkpoint folder.

    Shard names are checked before any shard is opened. Without an index, the
    ``*.safetensors`` files at the top of the folder are the shards.

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
    st_files = [f for f in files if f.endswith(SHARD_SUFFIX)]
    index_path = root / INDEX_NAME
    weight_map: dict[str, str] | None = None
    if index_path.is_file():
        weight_map = _read_weight_map(index_path, root)
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise MissingShardError(
                f"{INDEX_NAME} names shard(s) {', '.join(missing)} that are not in {root}; the download is incomplete."
            )
    else:
        shards = [validate_shard_name(f, root) for f in st_files if "/" not in f]
    unused = [f for f in st_files if f not in shards]
    if unused:
        why = f"{INDEX_NAME} does not name them" if weight_map is not None else "shards in subfolders are not supported"
        logger.warning("Not reading and not copying %s: %s.", ", ".join(unused), why)
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
    extra = tuple(f for f in files if not f.endswith(SHARD_SUFFIX) and f != INDEX_NAME and not _is_weight_file(f))
    skipped = tuple(f for f in files if _is_weight_file(f))
    return Checkpoint(root, tuple(shards), tensors, extra, skipped, metadata)


def _is_weight_file(rel: str) -> bool:
    return rel.endswith(WEIGHT_FILE_SUFFIXES) or rel.startswith("original/")


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
