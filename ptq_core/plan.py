"""Planning: which tensor gets which scheme, what is written where, and how big.

Everything here is derived from safetensors headers alone, so ``ptq plan`` and
the Space's preview never read tensor data, and the writer can lay out every
output header before a single weight is quantized. No network access.
"""

from __future__ import annotations

from collections import Counter, defaultdict
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple

from compressed_tensors.quantization import QuantizationConfig

from .checkpoint import (
    FLOAT_WEIGHT_DTYPES,
    Checkpoint,
    TensorInfo,
    headers_checkpoint,
    open_checkpoint,
    paused_gc,
    read_config,
    tensor_nbytes,
)
from .convert import ST_TO_TORCH, TORCH_TO_ST, auto_converters, chain_label, native_fp8_plan, plan_conversion
from .converters import (
    COMPRESSED_TENSORS,
    FP8_BLOCK,
    Dequantization,
    SourceFormat,
    SourcePlan,
    check_decoded,
    check_no_packed_copies,
    check_source_shapes,
    detect_source,
)
from .default_ignore import DefaultIgnore, loader_pattern, model_default_ignore
from .errors import (
    AppendError,
    CheckpointError,
    ExpertLayoutError,
    FusedGroupError,
    InvalidOptionError,
    TensorParallelError,
    TensorShapeError,
)
from .experts import ROWS, ExpertRules
from .matching import IgnoreMatcher, match_name
from .numerics import WeightSpec, output_layout
from .schemes import DEFAULT_IGNORE, DEFAULT_IGNORE_REASONS, ResolvedConfig, gpu_support, resolve_config, weight_spec
from .sizes import compression_ratio, format_bytes
from .tensor_parallel import TP_SIZES, TensorParallelReport, tensor_parallel_report

__all__ = [
    "FusedGroup",
    "OutputTensor",
    "Plan",
    "PlannedWeight",
    "WeightSource",
    "build_plan",
    "check_merged_config",
    "find_fused_sets",
    "match_name",
    "plan_checkpoint",
    "plan_model",
    "suggest_ignore",
]

# Weights that inference engines fuse into one GEMM and that must therefore share
# one NVFP4 global scale: kind -> member names in canonical order. Every member
# name belongs to one kind, so a weight belongs to at most one set.
_FUSED_KINDS: dict[str, tuple[str, ...]] = {
    "q/k/v": ("q_proj", "k_proj", "v_proj"),
    "mla q_a/kv_a": ("q_a_proj", "kv_a_proj_with_mqa"),
    "mla wq_a/wkv_a": ("wq_a", "wkv_a_with_mqa"),
    "gate/up": ("gate_proj", "up_proj"),
    "w1/w3": ("w1", "w3"),
}
# Members that are layers of their own when alone: MLA without q-LoRA (DeepSeek-V2-Lite) has
# q_proj without k/v and kv_a_proj_with_mqa without q_a_proj.
_LONE_LAYERS = frozenset({"q_proj", "kv_a_proj_with_mqa", "wkv_a_with_mqa"})
_FUSED_MEMBER_KIND = {member: kind for kind, members in _FUSED_KINDS.items() for member in members}


DENSE_SOURCE = SourcePlan(SourceFormat("dense", "dense weights"))
# FP8-block sources (DeepSeek, Kimi, Qwen -FP8) are bf16 models: their weights decode to bf16.
DEQUANTIZED_DTYPE = "BF16"

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


# A NamedTuple's own constructor is a Python function; building the tuple directly skips
# that frame, which is most of the cost of the ~1M records a 300k-tensor plan makes.
_new = tuple.__new__


class _Unit(NamedTuple):
    """One 2-D-or-other input unit before layout: a tensor, or one part of a 3-D expert tensor."""

    name: str
    source: WeightSource
    dtype: str
    shape: tuple[int, ...]
    shard: str
    group: str | None = None


def _source_tensors(ckpt: Checkpoint, source: SourcePlan) -> Iterator[TensorInfo]:
    """The tensors the output is made of: the stored ones, each converted one in its source's place.

    A converter's outputs (an AWQ module's dense ``weight`` from its ``qweight``) take the
    place, and the shard, of the module's first stored tensor; the tensors read only to
    convert are left out. FP8-block weights keep their name and shape (decoded to BF16).
    """
    made = source.by_tensor if source.converters else {}
    skip = source.consumed - source.by_output.keys() if not source.converters else source.consumed
    for info in ckpt.tensors.values():
        if info.name in made:
            for step in made[info.name]:
                yield _new(TensorInfo, (step.output, info.shard, step.dtype, step.shape, -1, tensor_nbytes(step.dtype, step.shape)))
        elif info.name in skip:
            continue
        elif info.name in source.by_output:  # an FP8-block weight: decoded in the quantize step
            yield info._replace(dtype=DEQUANTIZED_DTYPE)
        else:
            yield info


def _expand_sources(
    tensors: Iterable[TensorInfo], experts: ExpertRules, keep_fused: Callable[[str], bool],
) -> Iterator[tuple[str, WeightSource, str, tuple[int, ...], str]]:
    """Every unit of the checkpoint, 3-D fused experts split per expert and part (``experts``).

    A fused tensor that cannot be split is refused, unless ``keep_fused(module)`` (its module
    is ignored): then it is copied as it is. Other tensors get the loaders' module names.
    """
    for info in tensors:
        if experts.is_fused(info.name, info.shape):
            try:
                parts = experts.split(info.name, info.shape)
            except ExpertLayoutError:
                if not keep_fused(info.name.rpartition(".")[0]):
                    raise
                yield info.name, _new(WeightSource, (info.name, None, 0, 1, ROWS)), info.dtype, info.shape, info.shard
                continue
            for p in parts:
                src = _new(WeightSource, (info.name, p.expert, p.part, p.parts, p.layout))
                yield p.name, src, info.dtype, p.shape, info.shard
        else:
            name = experts.rename(info.name)
            yield name, _new(WeightSource, (info.name, None, 0, 1, ROWS)), info.dtype, info.shape, info.shard


def plan_checkpoint(
    model_dir: str | os.PathLike[str] | None = None,
    scheme=None,
    config=None,
    ignore: Iterable[str] = (),
    *,
    headers: Mapping[str, Mapping[str, tuple[str, Iterable[int]]]] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> Plan:
    """Decide the whole job from headers (dry run; no tensor data is read).

    Args:
        model_dir: a local checkpoint folder (headers are read and validated).
        scheme, config, ignore: as for ``model_free_ptq`` (``ignore`` is exactly
            what is given; the front ends add the loader-safe defaults through ``make_job``).
        headers: instead of a folder, ``{shard: {tensor: (dtype, shape)}}`` (Hub previews).
        model_config: with ``headers``, the model's ``config.json`` (fused 3-D experts are split by it).

    Returns:
        the ``Plan``.

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: bad request.
        TensorShapeError: a targeted weight's columns are not divisible by the group size.
        CheckpointError: a targeted weight is not a 16/32-bit float tensor.
        ExpertLayoutError: a fused 3-D expert tensor whose layout config.json does not identify.
    """
    if (model_dir is None) == (headers is None):
        raise InvalidOptionError("plan_checkpoint takes a model folder or headers=, exactly one of them.")
    resolved = resolve_config(scheme, config, ignore)
    if headers is not None:
        return build_plan(headers_checkpoint(headers), resolved, config=model_config)
    checkpoint = open_checkpoint(model_dir)
    return plan_model(checkpoint, resolved, read_config(model_dir))


def source_plan(
    checkpoint: Checkpoint,
    config: Mapping[str, Any] | None,
    converters: Sequence[Any] = (),
    *,
    append: bool = False,
) -> SourcePlan:
    """What the source's weights are and how each becomes dense, from config.json and headers.

    Args:
        checkpoint: the source's headers.
        config: its ``config.json`` (``None``: none).
        converters: a caller's compressed-tensors ``Converter`` chain (``model_free_ptq(converter=)``);
            empty: detect the source's format and pick the chain (FP8 blocks: ptq-hub's own decode).
        append: a compressed-tensors source keeps its compressed modules as they are and
            the new groups are merged into its config (llm-compressor's behaviour without a
            converter), instead of being dequantized and quantized again.

    Raises:
        UnsupportedSourceError: a quantized format ptq-hub cannot decode (GPTQ, bitsandbytes...).
        CheckpointError / ConverterError: the chain cannot convert this checkpoint.
    """
    config = config or {}
    shapes = {n: (i.dtype, i.shape) for n, i in checkpoint.tensors.items()}
    if converters:
        native = native_fp8_plan(converters, checkpoint, config)
        if native is not None:
            check_source_shapes(native, shapes)
            return native
        planned = plan_conversion(checkpoint, converters)
        if _chain_config(config, converters) is None:  # the output's config describes no stored compression
            check_no_packed_copies(planned, shapes, f"compressed ({chain_label(converters)} leaves them)")
        return planned
    source = detect_source(config, checkpoint.tensors)
    if source.format.name == DENSE_SOURCE.format.name:
        return source
    # Before any read (a Hub job creates nothing until its plan stands): scales that do not fit
    # their weights, absurd block or group sizes.
    check_source_shapes(source, shapes, config)
    if source.format.name == FP8_BLOCK:
        return source
    planned = plan_conversion(checkpoint, auto_converters(source, config), source.format)
    # Decode or refuse, never copy: a module the config does not describe would keep its packed
    # integers, published under the new config. With ``append`` the modules are kept compressed
    # under the source's own config, which must then describe them: the proof is that it decodes them.
    check_decoded(source, planned, config, shapes)
    if append and source.format.name == COMPRESSED_TENSORS:
        kept = frozenset(d.module for d in source.dequantize)
        fmt = replace(source.format, summary="compressed-tensors, its compressed modules kept as they are")
        return SourcePlan(fmt, append=True, kept=kept)
    return planned


def _chain_config(config: Mapping[str, Any], converters: Sequence[Any]) -> Any:
    """What a caller's chain leaves of the source's compressed-tensors config (as
    ``convert.output_quantization_config`` seeds it): ``None`` when it dequantizes everything."""
    quant = config.get("quantization_config")
    incoming = None
    if isinstance(quant, Mapping) and str(quant.get("quant_method", "")).lower() == COMPRESSED_TENSORS:
        try:
            incoming = QuantizationConfig.model_validate({k: v for k, v in quant.items() if k != "version"})
        except ValueError as err:  # pydantic's ValidationError
            raise CheckpointError(f"config.json's compressed-tensors quantization_config cannot be read: {err}") from err
    for converter in converters:
        incoming = converter.update_config(incoming)
    return incoming


def plan_model(
    checkpoint: Checkpoint,
    resolved: ResolvedConfig,
    config: Mapping[str, Any] | None,
    converters: Sequence[Any] = (),
    *,
    append: bool = False,
    tp: int | None = None,
) -> Plan:
    """The one way a job is planned: what the source is (``source_plan``), then ``build_plan``.

    Args:
        checkpoint: the source's headers (a folder, or a Hub repo read in place).
        resolved: the request.
        config: the source's ``config.json`` (``None``: none).
        converters, append: as ``source_plan``.
        tp: refuse the plan unless vLLM can shard the output at this tensor-parallel size.
    """
    source = source_plan(checkpoint, config, converters, append=append)
    return build_plan(checkpoint, resolved, source, config=config, tp=tp)


@paused_gc()
def build_plan(
    checkpoint: Checkpoint,
    resolved: ResolvedConfig,
    source: SourcePlan | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    tp: int | None = None,
) -> Plan:
    """The plan of an opened checkpoint for a resolved request, in one pass over its tensors.

    Args:
        checkpoint: the source's headers.
        resolved: the request. With ``resolved.model_defaults`` the model's own loader-safe
            entries (``model_default_ignore``) are added to its ignore list first.
        source: from ``source_plan``; FP8-block weights are planned as the dense weights they
            decode to (their ``weight_scale_inv`` is consumed, never written).
        config: the source's ``config.json``, for the model's defaults and head counts, and to
            identify and split fused 3-D experts (``experts.ExpertRules``; without it they are
            refused unless ignored).
        tp: a tensor-parallel size the output must load at in vLLM.

    Ignoring one member of a fused group (``re:.*q_proj$``) ignores its siblings too: vLLM
    builds one layer of q/k/v (or gate/up) and refuses shards with different schemes. The
    siblings' entries are added to the ignore list, and the plan says why.

    Raises:
        TensorShapeError / CheckpointError / ExpertLayoutError: as ``plan_checkpoint``.
        FusedGroupError: members of a fused group fall into different config groups, or an
            NVFP4 fused group lacks a member (its global scale would not be the loader's).
        TensorParallelError: ``tp`` is given and vLLM could not shard the output at it.
    """
    source = source or DENSE_SOURCE
    decoded = source.by_output
    specs = {g: weight_spec(s, resolved.formats[g]) for g, s in resolved.groups}
    defaults: tuple[DefaultIgnore, ...] = ()
    reasons: dict[str, str] = {}
    if resolved.model_defaults:
        defaults = model_default_ignore(config, checkpoint.tensors.values(), resolved.ignore)
        resolved = resolved.with_ignore(d.entry for d in defaults)
        reasons = {e: f"default: {r}" for e, r in DEFAULT_IGNORE_REASONS.items()}
        reasons.update((d.entry, f"default: {d.reason}") for d in defaults)

    experts = ExpertRules(config)
    units, skipped, ignore = _match_units(checkpoint, source, resolved, specs, reasons, experts)
    siblings = _fused_siblings_to_ignore(units, skipped)
    if siblings:
        for module, reason in siblings.items():
            reasons[loader_pattern(module)] = reason
        resolved = resolved.with_ignore(loader_pattern(m) for m in siblings)
        units, skipped, ignore = _match_units(checkpoint, source, resolved, specs, reasons, experts)
        if _fused_siblings_to_ignore(units, skipped):  # the patterns match differently than planned
            raise FusedGroupError("Could not extend the ignore list to whole fused groups; ignore whole q/k/v and "
                                  "gate/up groups explicitly.")

    fused_groups, fused_index = _find_fused_groups(units, specs)
    shard_of = {u.name: u.shard for u in units}
    # Experts repeat a handful of shapes: lay each (group, shape, dtype) out once.
    layouts: dict[tuple[str, tuple[int, ...], str], tuple[list[tuple[str, str, tuple[int, ...]]], int]] = {}
    planned = []
    size_after = 0
    for unit in units:
        shard = unit.shard
        fused = fused_index.get(unit.name)
        if fused is not None:  # a fused group is written whole into its first member's shard
            shard = shard_of[fused_groups[fused].members[0]]
        if unit.group is not None:
            key = (unit.group, unit.shape, unit.dtype)
            if key not in layouts:
                layout = [(local, TORCH_TO_ST[dt], tuple(shape))
                          for local, dt, shape in output_layout(specs[unit.group], unit.shape, ST_TO_TORCH[unit.dtype])]
                layouts[key] = (layout, sum(tensor_nbytes(dt, shape) for _, dt, shape in layout))
            layout, nbytes = layouts[key]
            prefix = unit.name.rpartition(".")[0]
            outputs = tuple(_new(OutputTensor, (f"{prefix}.{local}", dt, shape)) for local, dt, shape in layout)
        else:
            outputs = (_new(OutputTensor, (unit.name, unit.dtype, unit.shape)),)
            nbytes = tensor_nbytes(unit.dtype, unit.shape)
        size_after += nbytes
        planned.append(_new(PlannedWeight, (unit.name, unit.source, unit.dtype, unit.shape, shard, outputs, unit.group,
                                            fused, decoded.get(unit.source.tensor))))

    used = {p.shard for p in planned}
    shards = tuple(s for s in checkpoint.shards if s in used)
    # Only the caller's own entries warn: the defaults are offered for every model.
    unmatched = tuple(e for e in ignore.unused() if e not in DEFAULT_IGNORE and e not in reasons)
    parallel = tensor_parallel_report(((p.module, p.shape, specs[p.group]) for p in planned if p.group is not None),
                                      config, TP_SIZES + ((tp,) if tp else ()))
    if tp and tp not in parallel.loads:
        raise TensorParallelError(
            f"vLLM could not load this output at tensor parallel size {tp}: {parallel.blocked[tp]}. It loads at TP "
            f"{', '.join(map(str, parallel.loads)) or 'none of ' + ', '.join(map(str, TP_SIZES))}; "
            + ("pick one of those, ignore that layer, or pick a scheme without blocks or groups (FP8_DYNAMIC)."
               if "FP8 block" in parallel.blocked[tp] or "groups of" in parallel.blocked[tp]
               else "pick one of those: the layer's shape does not split that many ways.")
        )
    return Plan(resolved, tuple(planned), skipped, tuple(fused_groups), shards, checkpoint.total_bytes, size_after,
                specs, unmatched, source, defaults=defaults, tensor_parallel=parallel)


def _match_units(
    checkpoint: Checkpoint,
    source: SourcePlan,
    resolved: ResolvedConfig,
    specs: Mapping[str, WeightSpec],
    reasons: Mapping[str, str],
    experts: ExpertRules,
) -> tuple[list[_Unit], dict[str, str], IgnoreMatcher]:
    """Every unit with its config group (or None), and why each weight is not quantized;
    fused 3-D experts split by ``experts`` (kept fused when refused and their module is ignored)."""
    ignore = IgnoreMatcher(resolved.ignore)
    match_module = _module_matcher(resolved, ignore, reasons)
    units: list[_Unit] = []
    skipped: dict[str, str] = {}
    keep_fused = lambda module: ignore.match(module) is not None  # noqa: E731
    expanded = _expand_sources(_source_tensors(checkpoint, source), experts, keep_fused)
    for name, origin, dtype, shape, shard in expanded:
        module, _, param = name.rpartition(".")
        group = None
        if module.endswith("norm"):
            skipped[name] = "norm layer"
        elif module in source.kept:  # copied as is, scales included
            if param in ("weight", "weight_packed"):
                skipped[name] = "already quantized in the source"
        elif experts.is_fused(name, shape):  # kept fused: its module is ignored (the plan says by what)
            skipped[name] = match_module(module)[1]
        elif param == "weight":  # biases, buffers, scales: not weights, copied silently
            group, reason = match_module(module)
            if group is None:
                skipped[name] = reason
            elif len(shape) != 2:
                skipped[name] = f"not 2-D: shape {list(shape)}"
                group = None
            elif 0 in shape:
                skipped[name] = f"empty: shape {list(shape)}"
                group = None
            elif dtype not in FLOAT_WEIGHT_DTYPES:
                raise CheckpointError(
                    f"{name} has dtype {dtype}; only BF16/F16/F32 weights can be quantized (is the checkpoint "
                    f"already quantized?). Add '{loader_pattern(module)}' to ignore to copy it as is."
                )
            else:
                _check_shape(name, shape, specs[group])
        units.append(_new(_Unit, (name, origin, dtype, shape, shard, group)))
    return units, skipped, ignore


def _fused_siblings_to_ignore(units: list[_Unit], skipped: Mapping[str, str]) -> dict[str, str]:
    """Quantized members of fused groups whose other members are ignored: module -> why.

    Raises:
        FusedGroupError: quantized members of one fused group fall into different config groups.
    """
    state = {u.name: u.group for u in units if u.group is not None or skipped.get(u.name, "").startswith(
        ("ignored", "default"))}
    out: dict[str, str] = {}
    for kind, members in find_fused_sets(state):
        groups = {state[m] for m in members}
        quantized = [m for m in members if state[m] is not None]
        if len(groups - {None}) > 1:
            raise FusedGroupError(
                f"{', '.join(members)} are one {kind} layer in vLLM, but would be quantized with different config "
                f"groups ({', '.join(sorted(g for g in groups if g))}); vLLM refuses that. Give them one group."
            )
        if None in groups and quantized:
            ignored = next(m for m in members if state[m] is None)
            for member in quantized:
                out[member.rpartition(".")[0]] = (f"ignored with its fused sibling {ignored.rpartition('.')[0].rpartition('.')[2]} "
                                                  f"({kind} is one layer in vLLM)")
    return out


def _module_matcher(
    resolved: ResolvedConfig, ignore: IgnoreMatcher, reasons: Mapping[str, str],
) -> Callable[[str], tuple[str | None, str]]:
    """``module -> (config group, "")`` or ``(None, reason)``: first group whose targets match
    and whose ignore list does not (the peer's semantics), compiled once for the whole plan.
    ``reasons`` names why a default entry is there ("default: embedding (name)").
    """
    rules = [(group, None if not s.targets or "Linear" in s.targets else list(s.targets)) for group, s in resolved.groups]

    def match(module: str) -> tuple[str | None, str]:
        entry = ignore.match(module)
        if entry is not None:
            return None, reasons.get(entry) or f"ignored: matches `{entry}`"
        for group, targets in rules:
            if targets is None or any(match_name(module, t) for t in targets):
                return group, ""
        return None, "not targeted by any config group"

    return match


def _check_shape(name: str, shape: tuple[int, ...], spec: WeightSpec) -> None:
    cols = shape[1]
    if spec.strategy in ("group", "tensor_group") and cols % spec.group_size:
        raise TensorShapeError(
            f"{name}: {cols} columns are not divisible by the group size {spec.group_size} of this scheme; "
            f"add '{loader_pattern(name.rpartition('.')[0])}' to ignore (it matches the module under any loader "
            "prefix), or pick a scheme without groups (e.g. FP8_BLOCK pads)."
        )


def find_fused_sets(names: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Sibling weights engines fuse into one GEMM: ``[(kind, members in canonical order)]``.

    Only sets of two or more present members count; a weight belongs to one set.
    One pass: a fused member is ``<prefix>.<member>.weight`` with a known member name.
    """
    return [(kind, members) for kind, members, _missing in _fused_sets(names) if len(members) >= 2]


def _fused_sets(names: Iterable[str]) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Every fused set with at least one present member: (kind, present members, missing member names)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for name in names:
        if not name.endswith(".weight"):
            continue
        prefix, _, member = name[: -len(".weight")].rpartition(".")
        kind = _FUSED_MEMBER_KIND.get(member)
        if kind is None or not prefix:
            continue
        found.setdefault((kind, prefix), {})[member] = name
    return [(kind, tuple(by_member[m] for m in _FUSED_KINDS[kind] if m in by_member),
             tuple(f"{prefix}.{m}" for m in _FUSED_KINDS[kind] if m not in by_member))
            for (kind, prefix), by_member in found.items()]


def _find_fused_groups(units: list[_Unit], specs: Mapping[str, WeightSpec]) -> tuple[list[FusedGroup], dict[str, int]]:
    """Fused sets among the weights quantized with a global scale (NVFP4's tensor_group).

    Raises:
        FusedGroupError: a set with a member missing (q and k without v, gate without up), as
            llm-compressor refuses: the loader's fused layer would not have the global scale
            computed here. A lone ``q_proj`` or ``kv_a_proj_with_mqa`` is a layer of its own (MLA
            without q-LoRA), not a partial set.
    """
    candidates = {u.name: u for u in units if u.group is not None and specs[u.group].strategy == "tensor_group"}
    groups: list[FusedGroup] = []
    index: dict[str, int] = {}
    for kind, members, missing in _fused_sets(candidates):
        lone = len(members) == 1 and members[0].rpartition(".")[0].rpartition(".")[2] in _LONE_LAYERS
        if missing and not lone:
            raise FusedGroupError(
                f"{', '.join(m.rpartition('.')[0] for m in members)} belong to a {kind} layer that loaders fuse, but "
                f"{', '.join(missing)} is not quantized with it (missing from the checkpoint, or ignored or in "
                "another group): one NVFP4 global scale must cover the whole layer. Quantize the whole set, or "
                "ignore all of it."
            )
        if len(members) < 2:
            continue
        for n in members:
            index[n] = len(groups)
        groups.append(FusedGroup(kind, members, tuple(candidates[n].shard for n in members)))
    return groups, index


def suggest_ignore(source: Plan | Iterable[str]) -> list[str]:
    """The loader-safe defaults this model needs: the name rules (``DEFAULT_IGNORE``) that match
    one of its modules, then, given a ``Plan`` made with the defaults, the model's own entries
    (``Plan.defaults``: vocab-sized weights, routers by shape, towers, MTP layers).
    """
    names = (i.name for i in source.items) if isinstance(source, Plan) else source
    modules = {n.rpartition(".")[0] for n in names}
    found = [p for p in DEFAULT_IGNORE if any(match_name(m, p) for m in modules)]
    return found + ([d.entry for d in source.defaults] if isinstance(source, Plan) else [])


def check_merged_config(plan: Plan, merged: Mapping[str, Any], earlier_groups: int) -> None:
    """Refuse a merged config that a loader would read wrongly (append, or converters that keep
    modules compressed).

    Each module is resolved as vLLM resolves it: an ignored module has no scheme; else
    the first group whose targets name it (exact or ``re:``) wins; else the one group
    targeting its class (``Linear``, taken to mean every module with a 2-D weight, as
    the planner does), and two such groups cannot be told apart. Then every module must
    resolve to where it is stored: a module compressed before this run to one of the
    ``earlier_groups`` (the first ones), a module quantized now to its own group, a
    dense 2-D weight to nothing.

    Raises:
        AppendError: the first module that would load with the wrong scheme, and how to fix it.
    """
    groups = list((merged.get("config_groups") or {}).items())
    ignore = IgnoreMatcher(merged.get("ignore") or [])
    by_name = [(i, [t for t in g.get("targets") or [] if t != "Linear"]) for i, (_, g) in enumerate(groups)]
    by_class = [i for i, (_, g) in enumerate(groups) if not g.get("targets") or "Linear" in g["targets"]]

    def resolve(module: str) -> str | int | None:
        if ignore.match(module) is not None:
            return None
        for i, targets in by_name:
            if any(match_name(module, t) for t in targets):
                return i
        if len(by_class) > 1:
            return "several groups that target Linear (" + ", ".join(groups[i][0] for i in by_class) + ")"
        return by_class[0] if by_class else None

    names = [name for name, _ in groups]
    # merge() appends our groups in order, renaming one whose name is taken (a second stacked
    # run's config_group_0 becomes config_group_1): compare with the name it was given.
    given = {group: names[earlier_groups + i] for i, (group, _) in enumerate(plan.resolved.groups)
             if earlier_groups + i < len(names)}
    quantized = {item.module: given.get(item.group, item.group) for item in plan.quantized}
    states: dict[str, str] = {}
    for item in plan.items:
        module, _, param = item.name.rpartition(".")
        if module in quantized:
            states[module] = "quantized now"
        elif module in plan.source.kept or param == "weight_packed" or (
                param == "weight" and item.dtype not in FLOAT_WEIGHT_DTYPES):
            states[module] = "compressed before this run"
        elif param == "weight" and len(item.shape) == 2 and not module.endswith("norm"):
            states.setdefault(module, "dense")
    for module, state in states.items():
        got = resolve(module)
        if state == "dense":
            ok = got is None
        elif state == "quantized now":
            ok = isinstance(got, int) and names[got] == quantized[module]
        else:
            ok = isinstance(got, int) and got < earlier_groups
        if not ok:
            seen = got if isinstance(got, str) else "no config group" if got is None else f"group {names[got]}"
            raise AppendError(
                f"Cannot merge the new config groups into the source's compressed-tensors config safely: {module} "
                f"is {state}, but a loader would give it {seen}. Give the new scheme targets and an ignore list that "
                "separate the modules compressed before from the ones to quantize, or let ptq dequantize the source "
                "and quantize it all again (the `ptq` CLI, the Action and the Space do)."
            )
