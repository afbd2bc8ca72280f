"""Are two quantized checkpoints the same bytes, tensor by tensor?

Why per tensor and not per file: the two tools may order tensors or split
shards differently and still produce the same model; what must match is every
tensor name, dtype, shape and byte. ``config.json``'s ``quantization_config``
is diffed too, but only reported: a differing version string is expected.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open


@dataclass
class Comparison:
    """Result of comparing output folder ``a`` (ours) with ``b`` (peer)."""

    tensors: int = 0
    differing: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    differing_bytes: int = 0  # bytes that differ, summed over the differing tensors
    compared_bytes: int = 0  # bytes of all common tensors
    same_shard_layout: bool = True
    config_diff: list[str] = field(default_factory=list)  # readable lines, empty = identical

    @property
    def identical(self) -> bool:
        return not (self.differing or self.only_a or self.only_b)

    def cell(self) -> str:
        """The table's ``identical`` column."""
        if self.identical:
            return f"yes ({self.tensors} tensors)"
        parts = []
        if self.differing:
            share = self.differing_bytes / max(self.compared_bytes, 1)
            parts.append(f"{len(self.differing)}/{self.tensors} tensors differ, in {share:.4%} of bytes")
        if self.only_a or self.only_b:
            parts.append(f"keys: {len(self.only_a)} only ours, {len(self.only_b)} only peer")
        return "**no** (" + "; ".join(parts) + ")"


def _key_to_file(folder: Path) -> dict[str, Path]:
    keys: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            keys.update(dict.fromkeys(fh.keys(), path))
    return keys


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _differing_bytes(a: torch.Tensor, b: torch.Tensor) -> int:
    """0 when identical; how many bytes differ otherwise (all of them if dtype or shape differ).

    The count tells a one-ulp rounding difference in a few elements apart from
    a different algorithm."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return max(a.nbytes, b.nbytes, 1)
    return int((_as_bytes(a) != _as_bytes(b)).sum())


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()


EMPTY = (None, {}, [])


def diff_json(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, ours, peer) for every leaf where two JSON values differ; a key
    missing on one side is reported with the sentinel ``MISSING``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out += diff_json(a.get(key, MISSING), b.get(key, MISSING), sub)
        return out
    return [] if a == b else [(path, a, b)]


def is_cosmetic(ours: Any, peer: Any) -> bool:
    """A field one side spells out as null/{}/[] and the other leaves out: the
    pydantic defaults of two compressed-tensors releases, same meaning."""
    return (ours is MISSING and peer in EMPTY) or (peer is MISSING and ours in EMPTY)


def _show(value: Any) -> str:
    return repr(value) if value is MISSING else json.dumps(value)


def describe_diff(diffs: list[tuple[str, Any, Any]]) -> list[str]:
    """Readable lines: substantive differences first, cosmetic ones counted."""
    real = [f"`{p}`: ours {_show(a)} vs peer {_show(b)}" for p, a, b in diffs if not is_cosmetic(a, b)]
    cosmetic = sum(is_cosmetic(a, b) for _, a, b in diffs)
    if cosmetic:
        real.append(f"{cosmetic} field(s) present on one side only as null/empty (same meaning)")
    return real


def _quantization_config(folder: Path) -> Any:
    config = folder / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("quantization_config")


def compare_outputs(a: Path, b: Path) -> Comparison:
    """Compare every tensor of two output folders by raw bytes (a uint8 view)."""
    files_a, files_b = _key_to_file(a), _key_to_file(b)
    result = Comparison(
        only_a=sorted(set(files_a) - set(files_b)),
        only_b=sorted(set(files_b) - set(files_a)),
    )
    common = sorted(set(files_a) & set(files_b))
    result.tensors = len(common)
    result.same_shard_layout = all(files_a[k].name == files_b[k].name for k in common)
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def handle(path: Path) -> Any:
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            return handles[path]

        for key in common:
            ta, tb = handle(files_a[key]).get_tensor(key), handle(files_b[key]).get_tensor(key)
            result.compared_bytes += ta.nbytes
            if ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(_as_bytes(ta), _as_bytes(tb)):
                continue
            result.differing.append(key)
            result.differing_bytes += _differing_bytes(ta, tb)
    result.config_diff = describe_diff(
        diff_json(_quantization_config(a), _quantization_config(b), "quantization_config")
    )
    return result
