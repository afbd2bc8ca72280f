"""Output: streaming safetensors shards, the index, config.json, atomic publication.

Every output shard's header is known from the plan before any tensor is
computed, so each shard is created at its final size up front and tensors are
written into place with ``pwrite`` as workers finish them (copied tensors go
through ``copy_file_range``, never through Python memory). Nothing of a shard
is held in memory. The whole output is built in a hidden sibling folder and
renamed into place at the end, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterable

import torch

from .checkpoint import DTYPE_SIZES, INDEX_NAME
from .errors import OutputExistsError, OutputLocationError
from .plan import OutputTensor

logger = logging.getLogger(__name__)

__all__ = ["ShardWriter", "prepare_output", "publish_output", "write_config", "write_index"]


class ShardWriter:
    """A safetensors file whose layout is fixed at creation; tensors arrive in any order.

    Tensors are laid out like safetensors' own serializer (largest element size
    first, then by name) so every tensor starts aligned to its element size.
    """

    def __init__(self, path: Path, tensors: Iterable[OutputTensor], metadata: dict[str, str] | None = None):
        ordered = sorted(tensors, key=lambda t: (-DTYPE_SIZES[t.dtype], t.name))
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._spans: dict[str, tuple[int, int]] = {}
        self._row_bytes: dict[str, int] = {}
        for t in ordered:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            self._spans[t.name] = (offset, t.nbytes)
            self._row_bytes[t.name] = t.nbytes // t.shape[0] if t.shape and t.shape[0] else t.nbytes
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        self._data_start = 8 + len(raw)
        self.path = path
        self.size = self._data_start + offset
        self._written: dict[str, int] = {}
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, len(raw).to_bytes(8, "little") + raw, 0)
        os.ftruncate(self._fd, self.size)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor (any device; moved to CPU, made contiguous)."""
        self._pwrite(name, 0, tensor, whole=True)

    def write_rows(self, name: str, first_row: int, rows: torch.Tensor) -> None:
        """Write a chunk of consecutive rows of a tensor (streamed quantizer output)."""
        self._pwrite(name, first_row * self._row_bytes[name], rows, whole=False)

    def _pwrite(self, name: str, rel: int, tensor: torch.Tensor, *, whole: bool) -> None:
        start, nbytes = self._spans[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        size = data.numel()
        if (whole and size != nbytes) or rel + size > nbytes:
            raise ValueError(f"{name}: {size} bytes at {rel} do not fit the planned {nbytes}")
        view = memoryview(data.numpy()) if size else memoryview(b"")
        done = 0
        while done < size:
            done += os.pwrite(self._fd, view[done:], self._data_start + start + rel + done)
        self._mark(name, size)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Copy a tensor's bytes straight from an input shard (kernel-side when possible)."""
        start, nbytes = self._spans[name]
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(src_fd, self._fd, nbytes - done, src_offset + done, self._data_start + start + done)
            except OSError:  # cross-filesystem on old kernels, or unsupported: plain copy
                n = os.pwrite(self._fd, os.pread(src_fd, min(nbytes - done, 64 << 20), src_offset + done),
                              self._data_start + start + done)
            if n <= 0:
                raise OSError(f"short copy for {name}")
            done += n
        self._mark(name, nbytes)

    def _mark(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._written[name] = self._written.get(name, 0) + nbytes

    def close(self) -> None:
        """Close; raises if a planned tensor was never written (a bug, never silent)."""
        os.close(self._fd)
        missing = [n for n, (_, nbytes) in self._spans.items() if self._written.get(n, 0) != nbytes]
        if missing:
            raise RuntimeError(f"{self.path.name}: tensors not fully written: {sorted(missing)[:5]}")

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def prepare_output(source: Path, save_directory: Path, *, overwrite: bool) -> Path:
    """Check the target and return a fresh hidden work folder next to it.

    Raises:
        OutputLocationError: the target is the source, inside it, or contains it.
        OutputExistsError: the target holds files and ``overwrite`` is False.
    """
    src = source.resolve()
    dst = save_directory.resolve()
    if dst == src or src in dst.parents:
        raise OutputLocationError(f"Output folder {save_directory} is the input folder or inside it; choose another.")
    if dst in src.parents:
        raise OutputLocationError(f"Output folder {save_directory} contains the input folder; choose another.")
    if dst.exists():
        if not dst.is_dir():
            raise OutputExistsError(f"{save_directory} exists and is not a folder.")
        if any(dst.iterdir()) and not overwrite:
            raise OutputExistsError(f"{save_directory} is not empty; pass overwrite=True (--overwrite) to replace it.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = dst.parent / f".{dst.name}.ptq-tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return work


def publish_output(work: Path, save_directory: Path) -> None:
    """Atomically replace ``save_directory`` with the finished work folder."""
    dst = save_directory.resolve()
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.ptq-old-{uuid.uuid4().hex[:8]}"
        dst.rename(old)
    work.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_config(folder: Path, quantization_config: dict) -> None:
    """Add ``quantization_config`` to config.json (written like the peer: sorted keys)."""
    path = folder / "config.json"
    if not path.is_file():
        logger.warning("No config.json in the checkpoint; quantization_config is written to quantization_config.json")
        path.with_name("quantization_config.json").write_text(json.dumps(quantization_config, indent=2, sort_keys=True))
        return
    data = json.loads(path.read_text())
    data["quantization_config"] = quantization_config
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
