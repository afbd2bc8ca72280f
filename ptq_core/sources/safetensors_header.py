"""Safetensors headers parsed and validated as strictly as safetensors itself, from bytes.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, data offsets) and the tensor bytes. The same checks run on a
local shard (``read_header``) and on a header read over HTTP Range requests
(``header_length`` then ``parse_header``), so both give the same table and the same
errors. Values from a hostile file are quoted through :func:`quote` (truncated, never
deeply recursive), and JSON is parsed with bounded depth. Stdlib only.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import struct
from pathlib import Path
from typing import Callable, Iterable

from ..errors import CorruptCheckpointError

__all__ = [
    "DTYPE_SIZES",
    "FLOAT_WEIGHT_DTYPES",
    "DuplicatedKeys",
    "header_length",
    "load_json",
    "parse_header",
    "quote",
    "read_header",
    "tensor_nbytes",
]

_MAX_HEADER = 100_000_000  # safetensors' MAX_HEADER_SIZE
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
quote = _short_repr.repr


def tensor_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor of safetensors ``dtype`` and ``shape``."""
    return DTYPE_SIZES[dtype] * math.prod(shape)  # in C: a plan calls this ~10^6 times



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
    header, keys = load_json(raw, what, find_duplicates=False)
    if keys != _count_keys(header):
        header, _ = load_json(raw, what, find_duplicates=True)
    data_start = 8 + len(raw)
    return _validate_header(name, header, size - data_start), data_start, _validate_metadata(name, header)


class DuplicatedKeys(dict):
    """A JSON object in which ``key`` was given more than once (so the caller can name where)."""

    def __init__(self, pairs: list[tuple[str, object]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        return DuplicatedKeys(pairs, key)
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


def load_json(raw: bytes, what: str, *, find_duplicates: bool) -> tuple[object, int]:
    """Parse untrusted JSON with bounded depth: (value, number of keys in the text).

    With ``find_duplicates``, an object that repeats a key comes back as ``DuplicatedKeys``.

    Raises:
        CorruptCheckpointError: on ``what``: not UTF-8, too deep, not JSON, NaN/Infinity.
    """
    skeleton = _skeleton(raw)
    if not _depth_within(skeleton, _MAX_JSON_DEPTH):
        raise CorruptCheckpointError(
            f"{what} is not valid JSON (unbalanced brackets, or nested deeper than {_MAX_JSON_DEPTH} levels)."
        )
    keys = skeleton.count(b":")
    value = _parse_json(raw, what, None)
    # The hook makes parsing ~3x slower: only a text whose objects hold fewer keys than it
    # spells out repeated one, and only then is it parsed again to say which.
    if find_duplicates and _keys_in(value) != keys:
        value = _parse_json(raw, what, _no_duplicates)
    return value, keys


def _parse_json(raw: bytes, what: str, hook: Callable[[list[tuple[str, object]]], dict] | None) -> object:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=hook, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"{what} is not valid JSON ({str(err)[:200]}).") from err


def _keys_in(value: object) -> int:
    """Keys of every object in a parsed JSON value, without recursion."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        if type(item) is dict:
            count += len(item)
        stack += [c for c in children if type(c) is dict or type(c) is list]
    return count


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
    if isinstance(header, DuplicatedKeys):
        raise CorruptCheckpointError(f"{file}: the header lists {quote(header.key)} twice.")
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
            raise CorruptCheckpointError(f"{file}: tensor {quote(name)} {problem}, which safetensors refuses.")
        position = end
    if position > data_len:
        raise CorruptCheckpointError(
            f"{file}: tensor {quote(spans[-1][2])} ends at byte {position} of the data section, but the file has only "
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
    where = f"{file}: tensor {quote(name)}"
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(f"{where}: the entry is a {type(entry).__name__}, not an object.")
    if isinstance(entry, DuplicatedKeys):
        raise CorruptCheckpointError(f"{where}: key {quote(entry.key)} is given twice.")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise CorruptCheckpointError(f"{where}: the entry has no {', '.join(missing)}.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CorruptCheckpointError(
            f"{where} has unknown dtype {quote(dtype)}; supported: {', '.join(DTYPE_SIZES)}."
        )
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(type(d) is int and 0 <= d < _USIZE for d in shape)):
        raise CorruptCheckpointError(
            f"{where}: shape {quote(shape)} is not a list of at most {_MAX_DIMS} non-negative integers."
        )
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _USIZE for o in offsets) or offsets[0] > offsets[1]):
        raise CorruptCheckpointError(
            f"{where}: data_offsets {quote(offsets)} is not [begin, end] with 0 <= begin <= end."
        )
    count = 1
    for dim in shape:
        count *= dim
        if count >= _USIZE:  # safetensors: checked_mul of the dims on usize -> ValidationOverflow
            break
    expected = count * DTYPE_SIZES[dtype]
    if expected * 8 >= _USIZE:  # ... and of the element count by the dtype's bit size
        raise CorruptCheckpointError(f"{where}: shape {quote(shape)} of {dtype} overflows 64-bit sizes.")
    raise CorruptCheckpointError(
        f"{where} ({dtype}, shape {shape}) spans {offsets[1] - offsets[0]} bytes, expected {expected}."
    )


def _validate_metadata(file: str, header: dict) -> dict[str, str]:
    metadata = header.get("__metadata__")
    if metadata is None:
        return {}
    if (not isinstance(metadata, dict) or isinstance(metadata, DuplicatedKeys)
            or not all(isinstance(v, str) for v in metadata.values())):
        raise CorruptCheckpointError(
            f"{file}: __metadata__ {quote(metadata)} is not a mapping of unique keys to strings, "
            "as safetensors requires."
        )
    return metadata

