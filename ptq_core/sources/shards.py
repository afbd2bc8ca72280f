"""Which safetensors files are a checkpoint's shards, and which names a shard may have.

One rule for a folder (``checkpoint.open_checkpoint``), a Hub repo's inspection
(``source.inspect_source``) and its remote reads (``remote.open_remote_checkpoint``), so
the same files give the same checkpoint wherever they are:

* the index (``model.safetensors.index.json``) decides: the shards it names, in its order;
* without one, ``model.safetensors`` alone where it exists: repos such as Mistral's also
  hold ``consolidated.safetensors``, the same weights under other names, and reading both
  would find every tensor twice;
* otherwise every ``*.safetensors`` file at the top level, in name order.

Shard names are checked before any shard is opened: output shards are written under the
same names. Stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UnsafePathError
from .safetensors_header import quote

__all__ = ["SHARD_SUFFIX", "SINGLE_FILE", "select_shards", "validate_shard_name"]

SHARD_SUFFIX = ".safetensors"
SINGLE_FILE = "model.safetensors"
"""The one-file checkpoint's name (``save_pretrained`` without sharding)."""


def select_shards(paths: Iterable[str], weight_map: Mapping[str, str] | None = None) -> list[str]:
    """The checkpoint's shards among ``paths`` (a folder's or a repo's files, relative, ``/``-separated).

    Args:
        paths: every file of the folder or repo (any order; subfolders and other files allowed).
        weight_map: the index's tensor -> shard map, or ``None`` without an index.

    Returns:
        the index's shards in index order (present or not: the caller names missing ones);
        without an index ``model.safetensors`` alone if it is there, else every top-level
        ``*.safetensors`` file, sorted.

    Example:
        >>> select_shards(["consolidated.safetensors", "model.safetensors", "config.json"])
        ['model.safetensors']
    """
    if weight_map is not None:
        return list(dict.fromkeys(weight_map.values()))
    top = sorted(p for p in paths if "/" not in p and p.endswith(SHARD_SUFFIX))
    return [SINGLE_FILE] if SINGLE_FILE in top else top


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
        raise UnsafePathError(f"shard name {quote(name)} is a {type(name).__name__}, not a file name string.")
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
            f"shard name {quote(name)} {reason}; "
            f"a shard must be a plain *{SHARD_SUFFIX} file name in the model folder."
        )
    if root is not None:
        target = (root / name).resolve()
        if not any(target.parent == allowed for allowed in _allowed_shard_folders(root)):
            raise UnsafePathError(
                f"shard {quote(name)} resolves to {target}, outside the model folder {root}; "
                "replace the symlink with the file itself."
            )
    return name


def _allowed_shard_folders(root: Path) -> tuple[Path, ...]:
    """Where a shard may really live: the folder, or the HF cache's ``blobs/`` of a snapshot."""
    real = root.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real, real.parent.parent / "blobs"
    return (real,)

