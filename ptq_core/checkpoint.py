"""Safetensors checkpoints read from their headers, validated before anything is written.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, data offsets) and the tensor bytes. We parse headers
ourselves: it costs a few KB of reading per shard, lets ``ptq plan`` run
without touching tensor data, and lets every tensor be read with one
``pread`` (no whole-shard mapping, so memory stays bounded by one tensor).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import reprlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from .errors import CorruptCheckpointError, MissingShardError, NoSafetensorsError, UnsafePathError
from .repo_files import INDEX_NAME, WEIGHT_FILE_SUFFIXES, duplicate_weight_files, select_repo_files

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".safetensors"
_MAX_HEADER = 100_000_000  # safetensors' MAX_HEADER_SIZE
_MAX_INDEX = 100_000_000  # the index lists each tensor once, as a header does
_MAX_JSON_DEPTH = 16  # a header needs 3 levels; serde_json (safetensors) stops at 128
_MAX_DIMS = 64  # weights have at most 5; bounds the work per shape (safetensors has no limit)
_USIZE = 1 << 64  # safetensors stores dims and offsets as u64 (usize)

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


def tensor_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor of safetensors ``dtype`` and ``shape``."""
    n = DTYPE_SIZES[dtype]
    for dim in shape:
        n *= dim
    return n


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


def read_header(path: Path) -> tuple[dict[str, dict], int, dict[str, str]]:
    """Parse and validate one safetensors header, as strictly as safetensors itself.

    The rules follow safetensors' Rust reader (``SafeTensors::read_metadata`` and
    ``Metadata::validate`` in ``safetensors/src/tensor.rs``): a header of at most
    100,000,000 bytes of UTF-8 JSON; ``__metadata__`` absent, null or a str -> str
    mapping; per tensor a known ``dtype``, a ``shape`` of non-negative integers
    (booleans and floats are not integers) and two ``data_offsets``; sorted by offset,
    the tensors tile the data section from byte 0 with no gap and no overlap, and end
    exactly where the file ends; the byte size computed from dtype and shape must not
    overflow 64 bits and must equal ``end - begin``. Two rules are stricter than
    safetensors 0.8: a key given twice is refused (safetensors keeps the last
    duplicate tensor silently, and then which one is meant is ambiguous), and nesting
    deeper than 16 levels is refused before parsing (no valid header needs more than 3).

    Returns:
        (entries, data_start, metadata) where entries map name -> header entry.

    Raises:
        CorruptCheckpointError: the file is too short or truncated, or the header is
            not valid (the message names the file, the tensor and the rule).
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
    if n > _MAX_HEADER:
        raise CorruptCheckpointError(
            f"{name}: header length {n:,} bytes is too large: safetensors allows at most {_MAX_HEADER:,}; "
            "the file is corrupt or not safetensors."
        )
    if 8 + n > size:
        raise CorruptCheckpointError(
            f"{name}: header length {n} does not fit a {size}-byte file; the file is truncated or not safetensors."
        )
    return n


def parse_header(raw: bytes, size: int, name: str) -> tuple[dict[str, dict], int, dict[str, str]]:
    """Validate the JSON header ``raw`` of a ``size``-byte safetensors file (see ``read_header``).

    The same rules for a local shard and for one read over HTTP Range requests
    (``raw`` is the ``header_length`` bytes after the 8-byte prefix).
    """
    what = f"{name}: the safetensors header"
    # Parsing without a duplicate check is 3x faster on a 300k-tensor header; the key
    # count of the text tells whether a key was repeated, and only then is it parsed again.
    header, keys = _load_json(raw, what, find_duplicates=False)
    if keys != _count_keys(header):
        header, _ = _load_json(raw, what, find_duplicates=True)
    data_start = 8 + len(raw)
    return _validate_header(name, header, size - data_start), data_start, _validate_metadata(name, header)


class _Duplicated(dict):
    """A JSON object in which ``key`` was given more than once (so the caller can name where)."""

    def __init__(self, pairs: list[tuple[str, object]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        return _Duplicated(pairs, key)
    return obj


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Everything but what opens or closes a level, separates a key (":"), or delimits a string.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}:')
_STRING = re.compile(rb'"[^"]*"')


def _skeleton(raw: bytes) -> bytes:
    """The brackets and key colons of a JSON text, strings removed, without parsing it.

    Escaped backslashes and quotes go first (left to right, as JSON reads them); then
    every byte but quotes, brackets and colons. Removing ``""`` next removes empty
    strings, or joins two strings that only commas and spaces separated: either way the
    structure outside strings is unchanged, and most headers have no string left after it.
    """
    skeleton = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    return _STRING.sub(b"", skeleton.replace(b'""', b""))


def _depth_within(skeleton: bytes, limit: int) -> bool:
    """Whether every bracket closes within ``limit`` levels, checked without recursion.

    Each pass removes the innermost ``[]`` and ``{}`` pairs (one or two levels), so a
    document refused after ``limit`` passes is deeper than ``limit``; a 200,000-deep one
    costs ``limit`` passes over its bytes, never a RecursionError.
    """
    skeleton = skeleton.replace(b":", b"")
    for _ in range(limit):
        if not skeleton:
            return True
        shorter = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(skeleton):
            return False
        skeleton = shorter
    return not skeleton


def _load_json(raw: bytes, what: str, *, find_duplicates: bool) -> tuple[object, int]:
    """Parse untrusted JSON with bounded depth: (value, number of keys in the text).

    With ``find_duplicates``, an object that repeats a key comes back as ``_Duplicated``.

    Raises:
        CorruptCheckpointError: on ``what``: not UTF-8, too deep, not JSON, NaN/Infinity.
    """
    skeleton = _skeleton(raw)
    if not _depth_within(skeleton, _MAX_JSON_DEPTH):
        raise CorruptCheckpointError(
            f"{what} is not valid JSON (unbalanced brackets, or nested deeper than {_MAX_JSON_DEPTH} levels)."
        )
    hook = _no_duplicates if find_duplicates else None
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=hook, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"{what} is not valid JSON ({str(err)[:200]}).") from err
    return value, skeleton.count(b":")


def _count_keys(header: object) -> int:
    """Keys of a header object and of its values that are objects (all a valid header has)."""
    if type(header) is not dict:
        return -1
    return len(header) + sum(len(entry) for entry in header.values() if type(entry) is dict)


def _validate_header(file: str, header: object, data_len: int) -> dict[str, dict]:
    if not isinstance(header, dict):
        raise CorruptCheckpointError(
            f"{file}: the safetensors header is a JSON {type(header).__name__}, not an object."
        )
    if isinstance(header, _Duplicated):
        raise CorruptCheckpointError(f"{file}: the header lists {_quote(header.key)} twice.")
    entries = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        # The common case inline (a 300k-tensor header), the messages only on failure.
        if type(entry) is dict:
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            size = DTYPE_SIZES.get(dtype) if type(dtype) is str else None
            if size is not None and type(shape) is list and len(shape) <= _MAX_DIMS and type(offsets) is list \
                    and len(offsets) == 2:
                count = 1
                for dim in shape:
                    if type(dim) is not int or dim < 0 or count >= _USIZE:
                        break
                    count *= dim
                else:
                    begin, end = offsets
                    if (type(begin) is int and type(end) is int and 0 <= begin <= end < _USIZE
                            and count < _USIZE and count * size * 8 < _USIZE and end - begin == count * size):
                        entries[name] = entry
                        spans.append((begin, end, name))
                        continue
        _explain_entry(file, name, entry)
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            problem = (f"starts at byte {begin} but the previous tensor ends at {position}; tensors overlap"
                       if begin < position else f"starts at byte {begin}, leaving bytes {position}..{begin} unused")
            raise CorruptCheckpointError(f"{file}: tensor {_quote(name)} {problem}, which safetensors refuses.")
        position = end
    if position > data_len:
        raise CorruptCheckpointError(
            f"{file}: tensor {_quote(spans[-1][2])} ends at byte {position} of the data section, but the file has only "
            f"{data_len}; the shard is truncated (re-download it)."
        )
    if position < data_len:
        raise CorruptCheckpointError(
            f"{file}: {data_len - position} bytes follow the last tensor, which safetensors refuses; "
            "the file is damaged (re-download it)."
        )
    return entries


def _explain_entry(file: str, name: str, entry: object) -> None:
    """Raise the error that says what is wrong with a tensor entry the fast check refused."""
    where = f"{file}: tensor {_quote(name)}"
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(f"{where}: the entry is a {type(entry).__name__}, not an object.")
    if isinstance(entry, _Duplicated):
        raise CorruptCheckpointError(f"{where}: key {_quote(entry.key)} is given twice.")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise CorruptCheckpointError(f"{where}: the entry has no {', '.join(missing)}.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CorruptCheckpointError(
            f"{where} has unknown dtype {_quote(dtype)}; supported: {', '.join(DTYPE_SIZES)}."
        )
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(type(d) is int and 0 <= d < _USIZE for d in shape)):
        raise CorruptCheckpointError(
            f"{where}: shape {_quote(shape)} is not a list of at most {_MAX_DIMS} non-negative integers."
        )
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _USIZE for o in offsets) or offsets[0] > offsets[1]):
        raise CorruptCheckpointError(
            f"{where}: data_offsets {_quote(offsets)} is not [begin, end] with 0 <= begin <= end."
        )
    count = 1
    for dim in shape:
        count *= dim
        if count >= _USIZE:  # safetensors: checked_mul of the dims on usize -> ValidationOverflow
            break
    expected = count * DTYPE_SIZES[dtype]
    if expected * 8 >= _USIZE:  # ... and of the element count by the dtype's bit size
        raise CorruptCheckpointError(f"{where}: shape {_quote(shape)} of {dtype} overflows 64-bit sizes.")
    raise CorruptCheckpointError(
        f"{where} ({dtype}, shape {shape}) spans {offsets[1] - offsets[0]} bytes, expected {expected}."
    )


def _validate_metadata(file: str, header: dict) -> dict[str, str]:
    metadata = header.get("__metadata__")
    if metadata is None:
        return {}
    if (not isinstance(metadata, dict) or isinstance(metadata, _Duplicated)
            or not all(isinstance(v, str) for v in metadata.values())):
        raise CorruptCheckpointError(
            f"{file}: __metadata__ {_quote(metadata)} is not a mapping of unique keys to strings, "
            "as safetensors requires."
        )
    return metadata


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
            f"shard name {_quote(name)} {reason}; "
            f"a shard must be a plain *{SHARD_SUFFIX} file name in the model folder."
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
    size = index_path.stat().st_size
    if size > _MAX_INDEX:
        raise CorruptCheckpointError(f"{INDEX_NAME} is {size} bytes, more than any index needs; re-download it.")
    index, _ = _load_json(index_path.read_bytes(), INDEX_NAME, find_duplicates=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(weight_map, _Duplicated):
        raise CorruptCheckpointError(f"{INDEX_NAME} maps tensor {_quote(weight_map.key)} twice; re-download it.")
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


@paused_gc()
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
    # the same rule as a Hub download, so a repo gives the same side files from either place
    extra = tuple(f for f in select_repo_files(files) if not f.endswith(".safetensors") and f != INDEX_NAME)
    skipped = tuple(duplicate_weight_files(files))
    return Checkpoint(root, tuple(shards), tensors, extra, skipped, metadata)


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
