"""Planning: a checkpoint's headers and a request -> the ``Plan``, in one pass over the tensors.

:func:`source_plan` says what the source's weights are and how each becomes dense
(detected, or the caller's converter chain); :func:`build_plan` then decides per tensor
its config group or why it is skipped, splits fused 3-D experts (``experts``), extends
an ignored fused-group member to its siblings (``fused_groups``), lays out every output
tensor and shard, and checks the tensor-parallel sizes. Headers only, no network;
compressed-tensors is imported only for a caller's converter chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from .checkpoint import Checkpoint, TensorInfo, headers_checkpoint, open_checkpoint, paused_gc, read_config
from .convert import (
    ST_TO_TORCH,
    TORCH_TO_ST,
    auto_converters,
    chain_label,
    chain_output_config,
    native_fp8_plan,
    plan_conversion,
)
from .default_ignore import DefaultIgnore, loader_pattern, model_default_ignore
from .errors import (
    CheckpointError,
    ExpertLayoutError,
    FusedGroupError,
    InvalidOptionError,
    TensorParallelError,
    TensorShapeError,
)
from .experts import ROWS, ExpertRules
from .fused_groups import FusedGroup, find_fused_groups, fused_siblings_to_ignore
from .matching import IgnoreMatcher, match_name
from .numerics import WeightSpec, output_layout
from .plan import DENSE_SOURCE, OutputTensor, Plan, PlannedWeight, WeightSource
from .schemes import DEFAULT_IGNORE, DEFAULT_IGNORE_REASONS, ResolvedConfig, resolve_config, weight_spec
from .sources.decode_checks import check_decoded, check_no_packed_copies, check_source_shapes
from .sources.detect import detect_source
from .sources.formats import COMPRESSED_TENSORS, FP8_BLOCK, Dequantization, SourcePlan
from .sources.safetensors_header import FLOAT_WEIGHT_DTYPES, tensor_nbytes
from .tensor_parallel import TP_SIZES, TensorParallelReport, tensor_parallel_report

__all__ = ["build_plan", "plan_checkpoint", "plan_model", "source_plan", "suggest_ignore"]

# FP8-block sources (DeepSeek, Kimi, Qwen -FP8) are bf16 models: their weights decode to bf16.
DEQUANTIZED_DTYPE = "BF16"

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
    if not source.dequantize:  # a dense source: every stored tensor, as it is
        yield from ckpt.tensors.values()
        return
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
        if len(info.shape) == 3 and experts.is_fused(info.name, info.shape):  # the length first: ~100k tensors
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
    if not converters:
        source = detect_source(config, checkpoint.tensors)
        if source.format.name == DENSE_SOURCE.format.name:
            return source
    shapes = {n: (i.dtype, i.shape) for n, i in checkpoint.tensors.items()}  # a quantized source's checks read them
    if converters:
        native = native_fp8_plan(converters, checkpoint, config)
        if native is not None:
            check_source_shapes(native, shapes)
            return native
        planned = plan_conversion(checkpoint, converters)
        if chain_output_config(config, converters) is None:  # the output's config describes no stored compression
            check_no_packed_copies(planned, shapes, f"compressed ({chain_label(converters)} leaves them)")
        return planned
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
    specs = {g: weight_spec(w, resolved.formats[g]) for g, w in resolved.weights.items()}
    resolved, defaults, reasons = _with_model_defaults(resolved, config, checkpoint)
    experts = ExpertRules(config)
    resolved, units, skipped, ignore = _match_whole_groups(checkpoint, source, resolved, specs, reasons, experts)
    fused_groups, fused_index = find_fused_groups(units, specs)
    planned, size_after = _lay_out(units, specs, fused_groups, fused_index, source.by_output)
    used = {p.shard for p in planned}
    shards = tuple(s for s in checkpoint.shards if s in used)
    # Only the caller's own entries warn: the defaults are offered for every model.
    unmatched = tuple(e for e in ignore.unused() if e not in DEFAULT_IGNORE and e not in reasons)
    parallel = _tensor_parallel(planned, specs, config, tp)
    return Plan(resolved, tuple(planned), skipped, tuple(fused_groups), shards, checkpoint.total_bytes, size_after,
                specs, unmatched, source, defaults=defaults, tensor_parallel=parallel)


def _with_model_defaults(
    resolved: ResolvedConfig, config: Mapping[str, Any] | None, checkpoint: Checkpoint
) -> tuple[ResolvedConfig, tuple[DefaultIgnore, ...], dict[str, str]]:
    """With ``resolved.model_defaults``: the model's own loader-safe entries added to the ignore
    list, and ignore entry -> why it is there (the name rules' reasons and the model's)."""
    if not resolved.model_defaults:
        return resolved, (), {}
    defaults = model_default_ignore(config, checkpoint.tensors.values(), resolved.ignore)
    reasons = {e: f"default: {r}" for e, r in DEFAULT_IGNORE_REASONS.items()}
    reasons.update((d.entry, f"default: {d.reason}") for d in defaults)
    return resolved.with_ignore(d.entry for d in defaults), defaults, reasons


def _match_whole_groups(
    checkpoint: Checkpoint,
    source: SourcePlan,
    resolved: ResolvedConfig,
    specs: Mapping[str, WeightSpec],
    reasons: dict[str, str],
    experts: ExpertRules,
) -> tuple[ResolvedConfig, list[_Unit], dict[str, str], IgnoreMatcher]:
    """``_match_units``, with the siblings of an ignored fused-group member ignored too
    (their entries added to the ignore list and to ``reasons``)."""
    units, skipped, ignore = _match_units(checkpoint, source, resolved, specs, reasons, experts)
    siblings = fused_siblings_to_ignore(units, skipped)
    if not siblings:
        return resolved, units, skipped, ignore
    for module, reason in siblings.items():
        reasons[loader_pattern(module)] = reason
    resolved = resolved.with_ignore(loader_pattern(m) for m in siblings)
    units, skipped, ignore = _match_units(checkpoint, source, resolved, specs, reasons, experts)
    if fused_siblings_to_ignore(units, skipped):  # the patterns match differently than planned
        raise FusedGroupError("Could not extend the ignore list to whole fused groups; ignore whole q/k/v and "
                              "gate/up groups explicitly.")
    return resolved, units, skipped, ignore


def _lay_out(
    units: Sequence[_Unit],
    specs: Mapping[str, WeightSpec],
    fused_groups: Sequence[FusedGroup],
    fused_index: Mapping[str, int],
    decoded: Mapping[str, Dequantization],
) -> tuple[list[PlannedWeight], int]:
    """Every unit's output tensors and shard (a fused group is written whole into its first
    member's shard), and the output's exact size in bytes."""
    shard_of = {u.name: u.shard for u in units} if fused_groups else {}
    # Experts repeat a handful of shapes: lay each (group, shape, dtype) out once.
    layouts: dict[tuple[str, tuple[int, ...], str], tuple[list[tuple[str, str, tuple[int, ...]]], int]] = {}
    planned = []
    size_after = 0
    for name, source, dtype, shape, shard, group in units:  # unpacked: ~100k units, attribute reads cost
        fused = fused_index.get(name)
        if fused is not None:
            shard = shard_of[fused_groups[fused].members[0]]
        if group is not None:
            key = (group, shape, dtype)
            if key not in layouts:
                layout = [(local, TORCH_TO_ST[dt], tuple(dims))
                          for local, dt, dims in output_layout(specs[group], shape, ST_TO_TORCH[dtype])]
                layouts[key] = (layout, sum(tensor_nbytes(dt, dims) for _, dt, dims in layout))
            layout, nbytes = layouts[key]
            prefix = name.rpartition(".")[0]
            outputs = tuple([_new(OutputTensor, (f"{prefix}.{local}", dt, dims)) for local, dt, dims in layout])
        else:
            outputs = (_new(OutputTensor, (name, dtype, shape)),)
            nbytes = tensor_nbytes(dtype, shape)
        size_after += nbytes
        planned.append(_new(PlannedWeight, (name, source, dtype, shape, shard, outputs, group, fused,
                                            decoded.get(source.tensor))))
    return planned, size_after


def _tensor_parallel(
    planned: Sequence[PlannedWeight], specs: Mapping[str, WeightSpec], config: Mapping[str, Any] | None, tp: int | None
) -> TensorParallelReport:
    """The TP sizes vLLM can shard the output at.

    Raises:
        TensorParallelError: ``tp`` is given and vLLM could not shard the output at it.
    """
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
    return parallel


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
        elif len(shape) == 3 and experts.is_fused(name, shape):  # kept fused: its module is ignored (the plan says by what)
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


def _module_matcher(
    resolved: ResolvedConfig, ignore: IgnoreMatcher, reasons: Mapping[str, str],
) -> Callable[[str], tuple[str | None, str]]:
    """``module -> (config group, "")`` or ``(None, reason)``: first group whose targets match
    and whose ignore list does not (the peer's semantics), compiled once for the whole plan.
    ``reasons`` names why a default entry is there ("default: embedding (name)").
    """
    rules = [(group, None if not t or "Linear" in t else list(t)) for group, t in resolved.targets.items()]

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


def suggest_ignore(source: Plan | Iterable[str]) -> list[str]:
    """The loader-safe defaults this model needs: the name rules (``DEFAULT_IGNORE``) that match
    one of its modules, then, given a ``Plan`` made with the defaults, the model's own entries
    (``Plan.defaults``: vocab-sized weights, routers by shape, towers, MTP layers).
    """
    names = (i.name for i in source.items) if isinstance(source, Plan) else source
    modules = {n.rpartition(".")[0] for n in names}
    found = [p for p in DEFAULT_IGNORE if any(match_name(m, p) for m in modules)]
    return found + ([d.entry for d in source.defaults] if isinstance(source, Plan) else [])
