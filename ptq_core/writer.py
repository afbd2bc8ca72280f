"""Output files: streaming safetensors shards, the index, config.json and the side files.

Every output shard's header is known from the plan before any tensor is
computed, so each shard is created at its final size up front and tensors are
written into place with ``pwrite`` as workers finish them (copied tensors go
through ``copy_file_range``, never through Python memory). Nothing of a shard
is held in memory. Where the files go and how they are published:
``output_folder.py`` (a local output) and ``work_folders.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterable

import torch

from .output_errors import DISK_FULL, NOT_WRITABLE, output_error
from .plan import OutputTensor
from .repo_files import INDEX_NAME
from .sizes import format_bytes
from .sources.safetensors_header import DTYPE_SIZES
from .work_folders import WorkFolder

logger = logging.getLogger(__name__)

__all__ = [
    "ShardWriter",
    "copy_extra_files",
    "write_config",
    "write_index",
]


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
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            raise output_error(err, path, "create") from err
        try:
            os.pwrite(self._fd, len(raw).to_bytes(8, "little") + raw, 0)
            os.ftruncate(self._fd, self.size)
        except OSError as err:
            os.close(self._fd)
            raise output_error(err, path, f"allocate {format_bytes(self.size)} for") from err

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
        try:
            while done < size:
                done += os.pwrite(self._fd, view[done:], self._data_start + start + rel + done)
        except OSError as err:
            raise output_error(err, self.path, "write") from err
        self._mark(name, size)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Copy a tensor's bytes straight from an input shard (kernel-side when possible)."""
        start, nbytes = self._spans[name]
        done = 0
        while done < nbytes:
            try:
                try:
                    n = os.copy_file_range(src_fd, self._fd, nbytes - done, src_offset + done,
                                           self._data_start + start + done)
                except OSError as err:
                    if err.errno in DISK_FULL or err.errno in NOT_WRITABLE:
                        raise
                    # cross-filesystem on old kernels, or unsupported: plain copy
                    n = os.pwrite(self._fd, os.pread(src_fd, min(nbytes - done, 64 << 20), src_offset + done),
                                  self._data_start + start + done)
            except OSError as err:
                raise output_error(err, self.path, "write") from err
            if n <= 0:
                raise OSError(f"short copy for {name}")
            done += n
        self._mark(name, nbytes)

    def _mark(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._written[name] = self._written.get(name, 0) + nbytes

    def close(self) -> None:
        """Close; raises if a planned tensor was never written (a bug, never silent)."""
        try:
            os.close(self._fd)  # NFS and quota file systems report a failed write-back here
        except OSError as err:
            raise output_error(err, self.path, "write") from err
        missing = [n for n, (_, nbytes) in self._spans.items() if self._written.get(n, 0) != nbytes]
        if missing:
            raise RuntimeError(f"{self.path.name}: tensors not fully written: {sorted(missing)[:5]}")

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def copy_extra_files(source: Path, work: WorkFolder | Path, files: Iterable[str]) -> None:
    """Copy the non-weight files (configs, tokenizer, code, license) into the work folder.

    Raises:
        DiskSpaceError / OutputNotWritableError: the copy could not be written.
    """
    folder = Path(work)
    for rel in files:
        target = folder / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
        except OSError as err:
            raise output_error(err, target, "write") from err


def write_index(folder: WorkFolder | Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    _write_text(Path(folder) / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def write_config(folder: WorkFolder | Path, quantization_config: dict | None,
                 update: Callable[[dict], dict] | None = None) -> None:
    """Set ``quantization_config`` in config.json (written like the peer: sorted keys).

    ``None`` removes it: a dequantized copy of a quantized source must not keep the
    source's config, or loaders would expect its packed weights. ``update``: the converter
    chain's ``update_model_config`` hooks (``convert.model_config_update``), applied last.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        if quantization_config is not None:
            logger.warning("No config.json in the checkpoint; quantization_config is written to "
                           "quantization_config.json")
            text = json.dumps(quantization_config, indent=2, sort_keys=True)
            _write_text(path.with_name("quantization_config.json"), text)
        return
    data = json.loads(path.read_text())
    changed = quantization_config is not None or update is not None
    if quantization_config is None:
        changed |= data.pop("quantization_config", None) is not None
    else:
        data["quantization_config"] = quantization_config
    if update is not None:
        data = update(data)
    if changed:
        _write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise output_error(err, path, "write") from err
