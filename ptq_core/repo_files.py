"""Which files of a model repo travel with the quantized copy: one rule for folders and the Hub.

A quantized repo needs the safetensors weights and their index, the configs,
the tokenizer, chat templates, custom code and license/notice files, all at the
repo root. Other weight formats (``*.bin``, ``*.pt``, ``*.gguf``...) and every
subfolder (``original/``, ``onnx/``...) duplicate the weights; the source README
is replaced by the new card. Leaf module (stdlib only).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

__all__ = ["INDEX_NAME", "WEIGHT_FILE_SUFFIXES", "is_duplicate_weights", "select_repo_files"]

INDEX_NAME = "model.safetensors.index.json"

WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".tflite")
"""Weights in formats other than safetensors: never copied (they duplicate the weights)."""

_SIDE_FILE_SUFFIXES = (".json", ".jinja", ".py", ".tiktoken", ".txt", ".model")
_LICENSE_PREFIXES = ("license", "licence", "notice", "use_policy", "copying")
_NEVER = frozenset({"readme.md", ".gitattributes", "pytorch_model.bin.index.json", "tf_model.h5"})


def is_duplicate_weights(path: str) -> bool:
    """True for weights in another format, or anything under a subfolder such as ``original/``."""
    return path.lower().endswith(WEIGHT_FILE_SUFFIXES) or "/" in path


def select_repo_files(paths: Iterable[str]) -> list[str]:
    """The files of a model repo (or folder) that the quantized repo needs, sorted.

    Example:
        >>> select_repo_files(["model.safetensors", "pytorch_model.bin", "config.json", "original/x.pth"])
        ['config.json', 'model.safetensors']
    """
    keep = []
    for path in paths:
        name = PurePosixPath(path).name
        lower = name.lower()
        if "/" in path or name.startswith(".") or lower in _NEVER or lower.endswith(WEIGHT_FILE_SUFFIXES):
            continue
        if lower.endswith((".safetensors", *_SIDE_FILE_SUFFIXES)) or lower.startswith(_LICENSE_PREFIXES):
            keep.append(path)
    return sorted(keep)
