"""Planning: which tensor gets which scheme, what is written where, and how big.

Everything here is derived from safetensors headers alone, so ``ptq plan`` and
the Space's preview never read tensor data, and the writer can lay out every
output header before a single weight is quantized. No network access.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from .checkpoint import FLOAT_WEIGHT_DTYPES, Checkpoint, headers_checkpoint, open_checkpoint, tensor_nbytes
from .errors import CheckpointError, TensorShapeError
from .numerics import WeightSpec, output_layout
from .schemes import DEFAULT_IGNORE, ResolvedConfig, resolve_config, weight_spec
from .sizes import format_bytes

__all__ = ["FusedGroup", "find_fused_sets", "OutputTensor", "Plan", "PlannedWeight", "WeightSource", "plan_checkpoint", "suggest_ignore"]

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}

# 3-D fused MoE expert tensors (transformers 5 `save_original_format=False`) and
# the per-expert 2-D names compressed-tensors loaders expect, as llm-compressor splits them.
_EXPERT_SPLITS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}

# Weights that inference engines fuse into one GEMM and that must therefore share
# one NVFP4 global scale. (kind, pattern with a common prefix, canonical member order)
_FUSED_PATTERNS: tuple[tuple[str, re.Pattern, tuple[str, ...]], ...] = (
    ("q/k/v", re.compile(r"^(?P<p>.+)\.(?P<m>q_proj|k_proj|v_proj)\.weight$"), ("q_proj", "k_proj", "v_proj")),
    ("mla q_a/kv_a", re.compile(r"^(?P<p>.+)\.(?P<m>q_a_proj|kv_a_proj_with_mqa)\.weight$"), ("q_a_proj", "kv_a_proj_with_mqa")),
    ("mla wq_a/wkv_a", re.compile(r"^(?P<p>.+)\.(?P<m>wq_a|wkv_a_with_mqa)\.weight$"), ("wq_a", "wkv_a_with_mqa")),
    ("gate/up", re.compile(r"^(?P<p>.+)\.(?P<m>gate_proj|up_proj)\.weight$"), ("gate_proj", "up_proj")),
    ("w1/w3", re.compile(r"^(?P<p>.+)\.(?P<m>w1|w3)\.weight$"), ("w1", "w3")),
)


def match_name(name: str, target: str) -> bool:
    """compressed-tensors' rule: ``re:`` prefix means ``re.match``, else exact equality."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


@dataclass(frozen=True)
class WeightSource:
    """Where a 2-D output weight's values come from.

    ``expert``/``part`` select ``tensor[expert].chunk(parts, dim=0)[part]`` of a
    3-D fused expert tensor; both are ``None``/0 for an ordinary tensor.
    """

    tensor: str
    expert: int | None = None
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True)
class PlannedWeight:
    """One unit of output: a quantized weight, or a tensor copied as is."""

    name: str
    source: WeightSource
    dtype: str
    shape: tuple[int, ...]
    shard: str
    outputs: tuple[OutputTensor, ...]
    group: str | None = None  # config group when quantized
    fused: int | None = None  # index into Plan.fused_groups

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]


@dataclass(frozen=True)
class FusedGroup:
    kind: str
    members: tuple[str, ...]
    source_shards: tuple[str, ...]

    @property
    def split(self) -> bool:
        """True when the members sit in different input shards."""
        return len(set(self.source_shards)) > 1


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
    """

    resolved: ResolvedConfig
    items: tuple[PlannedWeight, ...]
    skipped: Mapping[str, str]
    fused_groups: tuple[FusedGroup, ...]
    shards: tuple[str, ...]
    size_before: int
    size_after: int
    specs: Mapping[str, WeightSpec] = field(default_factory=dict)

    @property
    def scheme_name(self) -> str:
        return self.resolved.name

    @property
    def quantized(self) -> list[PlannedWeight]:
        return [i for i in self.items if i.group is not None]

    @property
    def ratio(self) -> float:
        return self.size_before / self.size_after if self.size_after else 0.0

    def shard_outputs(self, shard: str) -> list[OutputTensor]:
        return [o for i in self.items if i.shard == shard for o in i.outputs]

    def weight_map(self) -> dict[str, str]:
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
            "ignore": self.resolved.ignore,
        }

    def to_markdown(self, *, max_examples: int = 3) -> str:
        """Tables a person reads at a glance: what gets quantized, what not and why, sizes."""
        lines = [f"### Plan: {self.scheme_name}", "", "| | tensors | before | after |", "|---|---:|---:|---:|"]
        for group, count in Counter(i.group for i in self.quantized).items():
            members = [i for i in self.quantized if i.group == group]
            before = sum(tensor_nbytes(i.dtype, i.shape) for i in members)
            after = sum(o.nbytes for i in members for o in i.outputs)
            lines.append(f"| quantized: {group} ({self.resolved.formats[group]}) | {count} | {format_bytes(before)} | {format_bytes(after)} |")
        copied = [i for i in self.items if i.group is None]
        copied_bytes = sum(o.nbytes for i in copied for o in i.outputs)
        lines.append(f"| kept as is | {len(copied)} | {format_bytes(copied_bytes)} | {format_bytes(copied_bytes)} |")
        lines.append(f"| **total** | {len(self.items)} | **{format_bytes(self.size_before)}** | **{format_bytes(self.size_after)}** ({self.ratio:.2f}x smaller) |")
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
        if self.resolved.ignore:
            lines += ["", "ignore: " + ", ".join(f"`{p}`" for p in self.resolved.ignore)]
        return "\n".join(lines) + "\n"


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]



def _split_name(name: str, key: str, expert: int, part_name: str) -> str:
    out = name.replace(key, f"{expert}.{part_name}")
    return out if out.endswith(".weight") else out + ".weight"


def _expand_sources(ckpt: Checkpoint) -> list[tuple[str, WeightSource, str, tuple[int, ...], str]]:
    """Every 2-D-or-other unit: (name, source, dtype, shape, input shard), 3-D experts split."""
    units = []
    for info in ckpt.tensors.values():
        keys = [k for k in _EXPERT_SPLITS if k in info.name]
        if len(keys) > 1:
            raise CheckpointError(f"Tensor {info.name!r} matches several fused-expert names {keys}.")
        if keys and len(info.shape) == 3:
            parts = _EXPERT_SPLITS[keys[0]]
            experts, rows, cols = info.shape
            if rows % len(parts):
                raise TensorShapeError(
                    f"{info.name}: fused experts {list(info.shape)} cannot be split into {len(parts)} equal parts on dim 1."
                )
            for e in range(experts):
                for p, part_name in enumerate(parts):
                    src = WeightSource(info.name, e, p, len(parts))
                    units.append((_split_name(info.name, keys[0], e, part_name), src, info.dtype, (rows // len(parts), cols), info.shard))
        else:
            units.append((info.name, WeightSource(info.name), info.dtype, info.shape, info.shard))
    return units


def plan_checkpoint(
    model_dir=None,
    scheme=None,
    config=None,
    ignore: Iterable[str] = (),
    *,
    headers: Mapping[str, Mapping[str, tuple[str, Iterable[int]]]] | None = None,
    checkpoint: Checkpoint | None = None,
    resolved: ResolvedConfig | None = None,
) -> Plan:
    """Decide the whole job from headers.

    Args:
        model_dir: a local checkpoint folder (headers are read and validated).
        scheme, config, ignore: as for ``model_free_ptq``.
        headers: instead of a folder, ``{shard: {tensor: (dtype, shape)}}`` (Hub previews).
        checkpoint, resolved: already-opened inputs (the pipeline passes them).

    Returns:
        the ``Plan``.

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: bad request.
        TensorShapeError: a targeted weight's columns are not divisible by the group size.
        CheckpointError: a targeted weight is not a 16/32-bit float tensor.
    """
    resolved = resolved or resolve_config(scheme, config, ignore)
    if checkpoint is None:
        checkpoint = headers_checkpoint(headers) if headers is not None else open_checkpoint(model_dir)
    specs = {g: weight_spec(s, resolved.formats[g]) for g, s in resolved.groups}
    ignore_list = resolved.ignore

    items: list[dict] = []
    skipped: dict[str, str] = {}
    for name, src, dtype, shape, shard in _expand_sources(checkpoint):
        module, _, param = name.rpartition(".")
        group = None
        if module.endswith("norm"):
            skipped[name] = "norm layer"
        elif param != "weight":
            pass  # biases, buffers, scales: not weights, copied silently
        else:
            group, reason = _match_group(module, resolved, ignore_list)
            if group is None:
                skipped[name] = reason
            elif len(shape) != 2:
                skipped[name] = f"not 2-D: shape {list(shape)}"
                group = None
            elif dtype not in FLOAT_WEIGHT_DTYPES:
                raise CheckpointError(
                    f"{name} has dtype {dtype}; only BF16/F16/F32 weights can be quantized (is the checkpoint "
                    f"already quantized?). Add {module!r} to ignore to copy it as is."
                )
            else:
                _check_shape(name, shape, specs[group])
        items.append(dict(name=name, source=src, dtype=dtype, shape=tuple(shape), shard=shard, group=group))

    fused_groups, fused_index = _find_fused_groups(items, specs)
    planned = []
    for it in items:
        shard = it["shard"]
        fused = fused_index.get(it["name"])
        if fused is not None:  # a fused group is written whole into its first member's shard
            first = fused_groups[fused].members[0]
            shard = next(x["shard"] for x in items if x["name"] == first)
        if it["group"] is not None:
            layout = output_layout(specs[it["group"]], it["shape"], ST_TO_TORCH[it["dtype"]])
            outputs = tuple(OutputTensor(f"{it['name'].rpartition('.')[0]}.{local}", TORCH_TO_ST[dt], tuple(shape)) for local, dt, shape in layout)
        else:
            outputs = (OutputTensor(it["name"], it["dtype"], it["shape"]),)
        planned.append(PlannedWeight(it["name"], it["source"], it["dtype"], it["shape"], shard, outputs, it["group"], fused))

    shards = tuple(dict.fromkeys(s for s in checkpoint.shards if any(p.shard == s for p in planned)))
    size_after = sum(o.nbytes for p in planned for o in p.outputs)
    return Plan(resolved, tuple(planned), skipped, tuple(fused_groups), shards, checkpoint.total_bytes, size_after, specs)


def _match_group(module: str, resolved: ResolvedConfig, ignore: list[str]) -> tuple[str | None, str]:
    """First config group whose targets match and whose ignore list does not (peer semantics)."""
    for pattern in ignore:
        if match_name(module, pattern):
            return None, f"ignored: matches `{pattern}`"
    for group, scheme in resolved.groups:
        targets = scheme.targets
        if not targets or "Linear" in targets or any(match_name(module, t) for t in targets):
            return group, ""
    return None, "not targeted by any config group"


def _check_shape(name: str, shape: tuple[int, ...], spec: WeightSpec) -> None:
    cols = shape[1]
    if spec.strategy in ("group", "tensor_group") and cols % spec.group_size:
        raise TensorShapeError(
            f"{name}: {cols} columns are not divisible by the group size {spec.group_size} of this scheme; "
            f"add {name.rpartition('.')[0]!r} to ignore, or pick a scheme without groups (e.g. FP8_BLOCK pads)."
        )


def find_fused_sets(names: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Sibling weights engines fuse into one GEMM: ``[(kind, members in canonical order)]``.

    Only sets of two or more present members count; a weight belongs to one set.
    """
    found: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for kind, pattern, _members in _FUSED_PATTERNS:
        for name in names:
            m = pattern.match(name)
            if m:
                found[(kind, m.group("p"))][m.group("m")] = name
    canonical = {kind: members for kind, _, members in _FUSED_PATTERNS}
    sets, seen = [], set()
    for (kind, _prefix), by_member in found.items():
        members = tuple(by_member[m] for m in canonical[kind] if m in by_member)
        if len(members) >= 2 and not seen.intersection(members):
            seen.update(members)
            sets.append((kind, members))
    return sets


def _find_fused_groups(items: list[dict], specs: Mapping[str, WeightSpec]) -> tuple[list[FusedGroup], dict[str, int]]:
    """Fused sets among the weights quantized with a global scale (NVFP4's tensor_group)."""
    candidates = {
        it["name"]: it for it in items if it["group"] is not None and specs[it["group"]].strategy == "tensor_group"
    }
    groups: list[FusedGroup] = []
    index: dict[str, int] = {}
    for kind, members in find_fused_sets(candidates):
        for n in members:
            index[n] = len(groups)
        groups.append(FusedGroup(kind, members, tuple(candidates[n]["shard"] for n in members)))
    return groups, index


def suggest_ignore(tensor_names: Iterable[str]) -> list[str]:
    """The loader-safe defaults (``DEFAULT_IGNORE``) that match a module of this model."""
    modules = {n.rpartition(".")[0] for n in tensor_names}
    return [p for p in DEFAULT_IGNORE if any(match_name(m, p) for m in modules)]
