"""The plan: which tensor gets which scheme, what is written where, and how big.

A ``Plan`` is decided from safetensors headers alone (``planner``), so ``ptq plan`` and
the Space's preview never read tensor data, and the writer can lay out every output
header before a single weight is quantized. This module holds the plan's values and
how they read (``summary``, ``to_markdown``); no network access.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from typing import NamedTuple

from .default_ignore import DefaultIgnore
from .experts import ROWS
from .fused_groups import FusedGroup
from .numerics import WeightSpec
from .schemes import ResolvedConfig, gpu_support
from .sizes import compression_ratio, format_bytes
from .sources.formats import DENSE, Dequantization, SourceFormat, SourcePlan
from .sources.safetensors_header import DTYPE_SIZES, tensor_nbytes
from .tensor_parallel import TensorParallelReport

__all__ = [
    "DENSE_SOURCE",
    "OutputTensor",
    "Plan",
    "PlannedWeight",
    "WeightSource",
]

DENSE_SOURCE = SourcePlan(SourceFormat(DENSE, "dense weights"))


# The per-tensor records are NamedTuples: a DeepSeek-sized plan makes ~300k of them,
# and a tuple is built several times faster than a frozen dataclass.
class WeightSource(NamedTuple):
    """Where a 2-D output weight's values come from.

    ``expert``/``part``/``parts``/``layout`` select ``experts.expert_part(tensor[expert],
    layout, part, parts)`` of a 3-D fused expert tensor (``layout`` ``ROWS``: a contiguous
    byte range; else the whole expert slice is read and cut in memory); ``None``/0/1/``ROWS``
    for an ordinary tensor. Build it with all five fields (the plan skips the defaults).
    """

    tensor: str
    expert: int | None = None
    part: int = 0
    parts: int = 1
    layout: str = ROWS


class OutputTensor(NamedTuple):
    """One tensor of an output shard."""

    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


class PlannedWeight(NamedTuple):
    """One unit of output: a quantized weight, or a tensor copied as is."""

    name: str
    source: WeightSource
    dtype: str
    shape: tuple[int, ...]
    shard: str
    outputs: tuple[OutputTensor, ...]
    group: str | None = None  # config group when quantized
    fused: int | None = None  # index into Plan.fused_groups
    dequantize: Dequantization | None = None  # a quantized source weight, decoded in memory first

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]




@dataclass(frozen=True)
class Plan:
    """The whole job, decided before any tensor is read.

    Attributes:
        resolved: the validated quantization request.
        items: every output unit, quantized or copied.
        skipped: input-or-split weight name -> why it is not quantized (copied as is).
        fused_groups: groups sharing an NVFP4 global scale.
        shards: output shard names in order.
        size_before: bytes of all input tensors.
        size_after: bytes of all output tensors (exact).
        specs: the kernel spec of each config group.
        unmatched_ignore: ignore entries the caller added that match no module (likely typos).
        source: what the source's weights are (dense, or FP8 blocks dequantized in memory).
        defaults: the ignore entries the model itself needed beyond the name rules, with why
            (already part of ``resolved.ignore``).
        tensor_parallel: the TP sizes vLLM can shard the output at, and why not at the others.
    """

    resolved: ResolvedConfig
    items: tuple[PlannedWeight, ...]
    skipped: Mapping[str, str]
    fused_groups: tuple[FusedGroup, ...]
    shards: tuple[str, ...]
    size_before: int
    size_after: int
    specs: Mapping[str, WeightSpec] = field(default_factory=dict)
    unmatched_ignore: tuple[str, ...] = ()
    source: SourcePlan = field(default_factory=lambda: DENSE_SOURCE)
    defaults: tuple[DefaultIgnore, ...] = ()
    tensor_parallel: TensorParallelReport | None = None

    @property
    def scheme_name(self) -> str:
        return self.resolved.name

    # Derived views are computed once per plan: a DeepSeek-sized plan has ~100k items.
    @cached_property
    def quantized(self) -> tuple[PlannedWeight, ...]:
        return tuple(i for i in self.items if i.group is not None)

    @property
    def ratio(self) -> float:
        return compression_ratio(self.size_before, self.size_after)

    @cached_property
    def _outputs_by_shard(self) -> dict[str, list[OutputTensor]]:
        by_shard: dict[str, list[OutputTensor]] = {s: [] for s in self.shards}
        for item in self.items:
            by_shard[item.shard].extend(item.outputs)
        return by_shard

    @cached_property
    def shard_totals(self) -> dict[str, tuple[int, int, int]]:
        """Each output shard's (input bytes read, output bytes written, output tensors), summed once:
        sizing shards, balancing parts and the footprint all read them."""
        totals = {s: [0, 0, 0] for s in self.shards}
        for _, _, dtype, shape, shard, outputs, *_ in self.items:  # ~100k items: unpacked, the sizes inline
            row = totals[shard]
            row[0] += DTYPE_SIZES[dtype] * prod(shape)
            for _, out_dtype, out_shape in outputs:
                row[1] += DTYPE_SIZES[out_dtype] * prod(out_shape)
            row[2] += len(outputs)
        return {s: (i, o, n) for s, (i, o, n) in totals.items()}

    def shard_outputs(self, shard: str) -> list[OutputTensor]:
        """The tensors written into output shard ``shard``."""
        return list(self._outputs_by_shard.get(shard, ()))

    def weight_map(self) -> dict[str, str]:
        """Output tensor name -> output shard, as the index records it."""
        return {o.name: i.shard for i in self.items for o in i.outputs}

    def summary(self) -> dict:
        """Counts and sizes, JSON-ready (used by the Action and the Space)."""
        per_group = Counter(i.group for i in self.quantized)
        reasons = Counter(_reason_kind(r) for r in self.skipped.values())
        return {
            "scheme": self.scheme_name,
            "formats": dict(self.resolved.formats),
            "quantized": dict(per_group),
            "skipped": dict(reasons),
            "fused_groups": len(self.fused_groups),
            "fused_groups_split": sum(g.split for g in self.fused_groups),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "ratio": round(self.ratio, 3),
            "source": self.source.format.name,
            "ignore": self.resolved.ignore,
            "unmatched_ignore": list(self.unmatched_ignore),
        }

    def to_markdown(self, *, max_examples: int = 3) -> str:
        """Tables a person reads at a glance: what gets quantized, what not and why, sizes."""
        lines = [f"### Plan: {self.scheme_name}", ""]
        converted = self.source.format.is_quantized
        if converted:  # rows count the dense tensors the quantize step sees, the total the files
            lines += [f"source: {self.source.format.summary} ({len(self.source.dequantize):,} weights), "
                      f"{format_bytes(self.size_before)} as stored", ""]
        lines += [f"| | tensors | {'dequantized' if converted else 'before'} | after |", "|---|---:|---:|---:|"]
        per_group: dict[str, list[int]] = {}  # group -> [tensors, bytes before, bytes after]
        for i in self.quantized:
            row = per_group.setdefault(i.group, [0, 0, 0])
            row[0] += 1
            row[1] += tensor_nbytes(i.dtype, i.shape)
            row[2] += sum(o.nbytes for o in i.outputs)
        for group, (count, before, after) in per_group.items():
            lines.append(f"| quantized: {group} ({self.resolved.formats[group]}) | {count} | {format_bytes(before)} | {format_bytes(after)} |")
        copied = [i for i in self.items if i.group is None]
        copied_bytes = sum(o.nbytes for i in copied for o in i.outputs)
        lines.append(f"| kept as is | {len(copied)} | {format_bytes(copied_bytes)} | {format_bytes(copied_bytes)} |")
        before = sum(row[1] for row in per_group.values()) + copied_bytes if converted else self.size_before
        than = " than the source as stored" if converted else ""
        lines.append(f"| **total** | {len(self.items)} | **{format_bytes(before)}** | **{format_bytes(self.size_after)}** "
                     f"({self.ratio:.2f}x smaller{than}) |")
        if self.skipped:
            by_reason: dict[str, list[str]] = defaultdict(list)
            for name, reason in self.skipped.items():
                by_reason[reason].append(name)
            lines += ["", "| not quantized because | tensors | e.g. |", "|---|---:|---|"]
            for reason, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
                examples = ", ".join(f"`{n}`" for n in names[:max_examples])
                lines.append(f"| {reason} | {len(names)} | {examples} |")
        if self.fused_groups:
            kinds = Counter(g.kind for g in self.fused_groups)
            split = Counter(g.kind for g in self.fused_groups if g.split)
            lines += ["", "| fused group (one global scale) | groups | split across shards |", "|---|---:|---:|"]
            for kind, count in kinds.items():
                lines.append(f"| {kind} | {count} | {split.get(kind, 0)} |")
        lines += self._loader_lines()
        if self.resolved.ignore:
            lines += ["", "ignore: " + ", ".join(f"`{p}`" for p in self.resolved.ignore)]
        if self.unmatched_ignore:
            lines += ["", "**warning:** ignore entries that match no module (a typo?): "
                      + ", ".join(f"`{p}`" for p in self.unmatched_ignore)]
        if not self.quantized:
            lines += ["", "**warning:** nothing to quantize with this scheme and ignore list: the output would "
                      "be a copy of the input, written without a quantization_config."]
        return "\n".join(lines) + "\n"


    def _loader_lines(self) -> list[str]:
        """Where vLLM can serve the output: GPU generations and tensor-parallel sizes."""
        rows = []
        gpus = gpu_support(self.scheme_name)
        if gpus and self.quantized:
            rows.append(f"| GPUs | {gpus} |")
        if self.tensor_parallel is not None and self.quantized:
            rows.append(f"| tensor parallel | {self.tensor_parallel.summary()} |")
        return ["", "| vLLM 0.33 | |", "|---|---|", *rows] if rows else []


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]
