"""Which files of a model repo travel with the quantized copy: one rule for folders and the Hub.

A quantized repo needs the safetensors weights and their index, the configs, the
tokenizer, chat templates, custom code and license/notice files. Weights in other
formats (``*.bin``, ``*.pt``, ``*.gguf``...) duplicate the weights and never travel, nor
does any subfolder that holds weights in any format (``original/``, ``onnx/``,
``metal/``). A subfolder of side files only travels: sentence-transformers'
``1_Pooling/config.json`` and ``2_Normalize/``, ``additional_chat_templates/``; without
them the copy no longer loads as the model did. The source README is replaced by the
new card. Leaf module (stdlib only).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["INDEX_NAME", "WEIGHT_FILE_SUFFIXES", "duplicate_weight_files", "select_repo_files"]

INDEX_NAME = "model.safetensors.index.json"

WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".tflite")
"""Weights in formats other than safetensors: never copied (they duplicate the weights)."""

_SIDE_FILE_SUFFIXES = (".json", ".jinja", ".py", ".tiktoken", ".txt", ".model")
_LICENSE_PREFIXES = ("license", "licence", "notice", "use_policy", "copying")
_NEVER = frozenset({"readme.md", ".gitattributes", "pytorch_model.bin.index.json", "tf_model.h5"})


def _is_weights(path: str) -> bool:
    return path.lower().endswith((".safetensors", *WEIGHT_FILE_SUFFIXES))


def _weight_folders(paths: Iterable[str]) -> set[str]:
    """Top-level subfolders holding weights in any format (``original/``, ``onnx/``)."""
    return {path.partition("/")[0] for path in paths if "/" in path and _is_weights(path)}


def duplicate_weight_files(paths: Iterable[str]) -> list[str]:
    """Weights in another format anywhere, and every file of a subfolder holding weights: not copied."""
    paths = list(paths)
    folders = _weight_folders(paths)
    return [p for p in paths if p.lower().endswith(WEIGHT_FILE_SUFFIXES) or ("/" in p and p.partition("/")[0] in folders)]


def select_repo_files(paths: Iterable[str]) -> list[str]:
    """The files of a model repo (or folder) that the quantized repo needs, sorted.

    Example:
        >>> select_repo_files(["model.safetensors", "pytorch_model.bin", "config.json", "original/x.pth",
        ...                    "original/params.json", "1_Pooling/config.json"])
        ['1_Pooling/config.json', 'config.json', 'model.safetensors']
    """
    paths = list(paths)
    folders = _weight_folders(paths)
    keep = []
    for path in paths:
        parts = path.split("/")
        lower = parts[-1].lower()
        if any(part.startswith(".") for part in parts) or lower in _NEVER or lower.endswith(WEIGHT_FILE_SUFFIXES):
            continue
        if len(parts) > 1 and parts[0] in folders:
            continue
        if lower.endswith((".safetensors", *_SIDE_FILE_SUFFIXES)) or lower.startswith(_LICENSE_PREFIXES):
            keep.append(path)
    return sorted(keep)
