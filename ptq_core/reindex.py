"""``reindex_fused_weights``: move every fused group into one shard, bytes unchanged.

llm-compressor's NVFP4 guide runs this first so that each shard holds whole
q/k/v, gate/up, MLA and w1/w3 groups. ``model_free_ptq`` does not need it (it
reads partners from other shards), but a reindexed checkpoint is handy for
other tools and gives identical quantized output, which the tests check.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import ShardReader, open_checkpoint
from .fused_groups import find_fused_sets
from .plan import OutputTensor
from .workers import parse_count
from .source import ProgressCallback, resolve_source
from .output_folder import discard_output, prepare_output, publish_output
from .writer import ShardWriter, copy_extra_files, write_index

logger = logging.getLogger(__name__)

__all__ = ["ReindexResult", "reindex_fused_weights"]


@dataclass(frozen=True)
class ReindexResult:
    """What moved: tensor name -> (from shard, to shard)."""

    save_directory: Path
    moved: dict[str, tuple[str, str]]
    fused_sets: int


def reindex_fused_weights(
    model_stub: str | os.PathLike,
    save_directory: str | os.PathLike,
    num_workers: int = 1,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> ReindexResult:
    """Rewrite a checkpoint so that each fused group sits in one shard file.

    A group's members move to the shard of its first member (q_proj, gate_proj,
    q_a_proj, w1). Every tensor keeps its exact bytes; shard names stay; the
    index is rewritten; other files are copied.

    Args:
        model_stub: local folder or Hub repo id.
        save_directory: output folder (must be empty unless ``overwrite``).
        num_workers: accepted for compatibility; copies run in the kernel
            (``copy_file_range``), so extra threads would not speed them up.
        overwrite, progress, revision, token: as for ``model_free_ptq``.

    Raises:
        the checkpoint and output errors of ``model_free_ptq``.
    """
    parse_count(num_workers, name="num_workers")
    notify = progress or (lambda stage, done, total: None)
    source = resolve_source(str(model_stub), revision=revision, token=token, progress=progress)
    ckpt = open_checkpoint(source)
    target_shard = {name: info.shard for name, info in ckpt.tensors.items()}
    moved: dict[str, tuple[str, str]] = {}
    sets = find_fused_sets(ckpt.tensors)
    for _kind, members in sets:
        home = ckpt.tensors[members[0]].shard
        for name in members[1:]:
            if target_shard[name] != home:
                moved[name] = (target_shard[name], home)
                target_shard[name] = home
    work = prepare_output(source, Path(save_directory), overwrite=overwrite)
    writers: dict[str, ShardWriter] = {}
    try:
        copy_extra_files(source, work, ckpt.extra_files)
        layout: dict[str, list[OutputTensor]] = {s: [] for s in ckpt.shards}
        for name, info in ckpt.tensors.items():
            layout[target_shard[name]].append(OutputTensor(name, info.dtype, info.shape))
        writers = {s: ShardWriter(work / s, entries, dict(ckpt.metadata.get(s) or {"format": "pt"}))
                   for s, entries in layout.items() if entries}
        total = len(ckpt.tensors)
        with ShardReader(ckpt) as reader:
            for done, (name, info) in enumerate(ckpt.tensors.items(), 1):
                writers[target_shard[name]].copy_from(name, reader.fd(info.shard), info.offset)
                notify("write", done, total)
        for writer in writers.values():
            writer.close()
        write_index(work, {n: target_shard[n] for n in ckpt.tensors}, ckpt.total_bytes)
        publish_output(work)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        discard_output(work)
        raise
    logger.info("Reindexed %d fused sets; moved %d tensors", len(sets), len(moved))
    return ReindexResult(Path(save_directory), moved, len(sets))
