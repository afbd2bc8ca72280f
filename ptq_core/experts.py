"""MoE experts stored fused as 3-D tensors: identified from config.json and the shape, then split
into the per-expert 2-D weights that the loaders read.

A fused expert tensor is found by its name (``gate_up_proj`` / ``down_proj``, GraniteMoE's
``input_linear`` / ``output_linear``) and a 3-D shape. Its layout is never guessed from the
position of its dimensions: the model family (``model_type`` of config.json, or of its
``text_config`` for VLMs) says which axis is in and which out and how gate and up are packed,
and the shape must then be exactly ``[experts, ...]`` with the config's expert count, hidden size
and expert intermediate size. Anything else is refused (``ExpertLayoutError``) by name.

Which layout the loaders read, per family (read in transformers 5.25 and vLLM 0.33). The per-expert
2-D layout is the one both read quantized: compressed-tensors compresses modules (``<module>.weight_packed``,
``.weight_scale``...), transformers' ``CompressedTensorsDequantize`` (integrations/compressed_tensors.py)
decompresses a list of per-expert modules and merges them through the model's conversion mapping,
and vLLM's ``RoutedExperts.load_weights`` (layers/fused_moe/routed_experts.py) maps
``experts.{e}.<gate>.`` / ``<up>.`` / ``<down>.`` through ``build_expert_params_mapping``. A fused
quantized 3-D tensor has no compressed-tensors module to decompress (transformers cannot read it;
llm-compressor PR #3183's 3-D repacking targets vLLM alone), so it is never written:

Qwen-MoE (qwen2_moe, qwen3_moe, and the families transformers converts like it: glm4_moe, olmoe,
qwen3_next, ernie4_5_moe...) and DeepSeek (deepseek_v2, deepseek_v3)
    stored:   ``mlp.experts.gate_up_proj`` [E, 2I, H] (gate rows, then up rows), ``mlp.experts.down_proj``
              [E, H, I]; I = ``moe_intermediate_size``
    written:  ``mlp.experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` ``.weight``
    evidence: transformers conversion_mapping.py ``"qwen2_moe"`` (``MergeModulelist(dim=0)`` +
              ``Concatenate(dim=1)`` of ``experts.*.gate_proj/up_proj.weight``); vLLM qwen3_moe.py and
              qwen2_moe.py ``FusedMoEFactory`` (default ckpt_names gate_proj/down_proj/up_proj),
              deepseek_v2.py ``load_weights`` (``fused_moe_make_expert_params_mapping(gate_proj, ...)``).

Mixtral (mixtral)
    stored:   transformers 5 native ``mlp.experts.gate_up_proj`` [E, 2I, H], ``mlp.experts.down_proj``
              [E, H, I], router ``mlp.gate``; I = ``intermediate_size``
    written:  the original format: ``block_sparse_moe.experts.{e}.w1`` (gate) / ``w3`` (up) / ``w2`` (down)
              ``.weight``, and every other ``.mlp.`` tensor (the router) under ``.block_sparse_moe.``
    evidence: transformers ``"mixtral"`` mapping (``.block_sparse_moe.`` -> ``.mlp.``, then
              ``.experts.*.w1/w3.weight`` -> ``gate_up_proj``, ``w2`` -> ``down_proj``); vLLM mixtral.py
              ``MixtralMoE`` (module ``block_sparse_moe``, ``ckpt_names=("w1", "w2", "w3")``; it has no
              ``.mlp.`` module, so the native names would not load at all).

Llama-4 (llama4, llama4_text; dims in ``text_config``)
    stored:   ``feed_forward.experts.gate_up_proj`` [E, H, 2I] (in x out; gate then up on the last axis),
              ``feed_forward.experts.down_proj`` [E, I, H]; I = ``intermediate_size``
    written:  ``feed_forward.experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` ``.weight`` (out x in)
    evidence: vLLM llama4.py ``load_weights`` / ``load_moe_expert_weights``: the per-expert
              ``expert_params_mapping`` (gate_proj/down_proj/up_proj), while the fused path transposes and
              chunks 3-D tensors. transformers 5.25 has no llama4 conversion (``Llama4TextExperts`` takes the
              fused parameters only): it reads neither layout once quantized.

GraniteMoE (granitemoe, granitemoeshared, granitemoehybrid)
    stored:   ``block_sparse_moe.input_linear.weight`` [E, 2I, H] (gate rows first),
              ``block_sparse_moe.output_linear.weight`` [E, H, I] (transformers 5 native:
              ``experts.gate_up_proj`` / ``experts.down_proj``, same layout); I = ``intermediate_size``
    written:  ``block_sparse_moe.experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` ``.weight``
    evidence: vLLM granitemoe.py ``FusedMoEFactory`` (default ckpt_names), granitemoehybrid.py
              ``get_expert_mapping`` (``block_sparse_moe.experts.{e}.gate_proj.``...). transformers'
              ``"granitemoe"`` mapping only renames the fused tensors: it reads no quantized layout.

GPT-OSS (gpt_oss): refused
    stored:   ``mlp.experts.gate_up_proj`` [E, H, 2I], gate/up interleaved on the last axis
              (gate = ``[..., ::2]``), ``down_proj`` [E, I, H], ``gate_up_proj_bias`` [E, 2I] (interleaved),
              ``down_proj_bias`` [E, H]
    evidence: transformers has no gpt_oss conversion (``GptOssExperts`` takes the fused 3-D parameters
              only); vLLM gpt_oss.py ``_load_weights_other`` renames only the fused and quark suffixes
              (``hf_to_vllm_mapper``) and skips any other name (``if name not in params_dict: continue``),
              so per-expert compressed weights would load as random, silently.

A family whose fused experts are refused, and any unknown family, can still be quantized with the
experts' module ignored: the fused tensors (and their biases) are then copied as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import ExpertLayoutError

__all__ = [
    "COLUMNS",
    "INTERLEAVED",
    "ROWS",
    "ExpertPart",
    "ExpertRules",
    "expert_part",
    "is_contiguous",
]

# Where part p of P sits in one expert's stored slice ``tensor[e]``:
ROWS = ""  # [P*out, in]: rows p*out .. (p+1)*out, one contiguous byte range
COLUMNS = "columns"  # [in, P*out]: columns p*out .. (p+1)*out, transposed
INTERLEAVED = "interleaved"  # [in, P*out] with the parts alternating: columns p::P, transposed


class _Family(NamedTuple):
    name: str
    model_types: tuple[str, ...]
    transposed: bool  # stored in x out (Llama-4, GPT-OSS) instead of out x in
    interleaved: bool  # gate/up alternate on the out axis (GPT-OSS)
    gate_up: tuple[str, str]  # per-expert names of the gate and the up projection
    down: str
    intermediate: tuple[str, ...]  # config keys of the expert intermediate size, first present wins
    module: tuple[str, str] | None = None  # (native, loaders') module name, renamed in every tensor
    refused: str = ""  # why no loader reads the split experts once quantized


_FAMILIES = (
    # transformers' conversion_mapping.py gives these families qwen2_moe's expert conversion (the same
    # [E, 2I, H] / [E, H, I] layout); vLLM loads each per expert with gate_proj/up_proj/down_proj.
    _Family("Qwen-MoE", ("qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_omni_moe", "qwen3_omni_moe_thinker",
                         "qwen3_omni_moe_text", "glm4_moe", "glm4_moe_lite", "glm4v_moe", "olmoe", "flex_olmo",
                         "ernie4_5_moe", "hunyuan_v1_moe", "dots1", "exaone_moe", "cohere2_moe"),
            False, False, ("gate_proj", "up_proj"), "down_proj", ("moe_intermediate_size", "intermediate_size")),
    _Family("DeepSeek", ("deepseek_v2", "deepseek_v3"), False, False, ("gate_proj", "up_proj"), "down_proj",
            ("moe_intermediate_size",)),
    _Family("Mixtral", ("mixtral", "minimax"), False, False, ("w1", "w3"), "w2", ("intermediate_size",),
            module=(".mlp.", ".block_sparse_moe.")),
    _Family("Llama-4", ("llama4", "llama4_text"), True, False, ("gate_proj", "up_proj"), "down_proj",
            ("intermediate_size",)),
    _Family("GraniteMoE", ("granitemoe", "granitemoeshared", "granitemoehybrid"), False, False,
            ("gate_proj", "up_proj"), "down_proj", ("intermediate_size",)),
    _Family("GPT-OSS", ("gpt_oss",), True, True, ("gate_proj", "up_proj"), "down_proj", ("intermediate_size",),
            refused="no loader reads its experts split per expert once quantized (transformers 5.25 has no "
                    "gpt_oss conversion and takes only the fused 3-D parameters; vLLM's gpt_oss loader skips "
                    "per-expert compressed-tensors names, so they would load as random)"),
)
_BY_MODEL_TYPE = {t: f for f in _FAMILIES for t in f.model_types}
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")

# Names that mark a tensor as fused experts (with 3 dims); the key is replaced by the expert's name.
_FUSED_NAME = re.compile(r"^(?P<prefix>.*\.)?(?P<key>gate_up_proj|down_proj|input_linear|output_linear)(?:\.weight)?$")
_GATE_UP_KEYS = ("gate_up_proj", "input_linear")
_NAME_KEYS = ("gate_up_proj", "down_proj", "input_linear", "output_linear")


class ExpertPart(NamedTuple):
    """One 2-D per-expert weight cut from a fused 3-D tensor."""

    name: str  # the per-expert name the loaders read
    expert: int
    part: int
    parts: int
    layout: str  # ROWS, COLUMNS or INTERLEAVED
    shape: tuple[int, int]  # (out, in), as written


def is_contiguous(layout: str) -> bool:
    """Whether a part is one contiguous byte range of its expert's slice (read in place)."""
    return layout == ROWS


def expert_part(expert_slice: Any, layout: str, part: int, parts: int) -> Any:
    """Part ``part`` of ``parts`` of one expert's stored 2-D slice, as an (out, in) view (not copied)."""
    if layout == ROWS:
        return expert_slice.chunk(parts, dim=0)[part]
    if layout == COLUMNS:
        return expert_slice.chunk(parts, dim=1)[part].t()
    if layout == INTERLEAVED:
        return expert_slice[:, part::parts].t()
    raise ValueError(f"unknown expert layout {layout!r}")


def _text_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The keys that describe the language model (a VLM's ``text_config`` first) and every model_type."""
    text = config.get("text_config")
    text = text if isinstance(text, Mapping) else {}
    types = {t for t in (config.get("model_type"), text.get("model_type")) if isinstance(t, str)}
    return {**config, **text}, types


class ExpertRules:
    """The fused-expert rules of one model, from its ``config.json`` (``None``: none).

    ``split(name, shape)`` turns a fused tensor into its per-expert parts, or raises
    ``ExpertLayoutError``; ``rename(name)`` gives any other tensor the module name the
    loaders read (Mixtral's native ``.mlp.`` -> ``.block_sparse_moe.``).
    """

    def __init__(self, config: Mapping[str, Any] | None) -> None:
        self._config, types = _text_config(config or {})
        self._has_config = bool(config)
        families = {_BY_MODEL_TYPE[t] for t in types if t in _BY_MODEL_TYPE}
        self.family = next(iter(families)) if len(families) == 1 else None
        self._types = sorted(types)

    def is_fused(self, name: str, shape: tuple[int, ...]) -> bool:
        """A fused expert tensor by name: 3-D and named ``gate_up_proj`` / ``down_proj`` / ``input_linear``..."""
        return len(shape) == 3 and any(key in name for key in _NAME_KEYS)

    def rename(self, name: str) -> str:
        module = self.family.module if self.family is not None else None
        return name.replace(*module) if module is not None else name

    def split(self, name: str, shape: tuple[int, ...]) -> list[ExpertPart]:
        """The per-expert parts of fused tensor ``name``, in expert order.

        Raises:
            ExpertLayoutError: the name is not a known fused form, the family is unknown or has
                no loadable split layout, or the shape does not match the config's dimensions.
        """
        match = _FUSED_NAME.match(name)
        if match is None:
            raise self._error(name, shape, "its name is not a fused-expert form ptq-hub knows "
                                           "(...experts.gate_up_proj, ...experts.down_proj, ...input_linear.weight, "
                                           "...output_linear.weight)")
        family = self.family
        if family is None:
            what = (f"model_type {', '.join(self._types)} is not a MoE family ptq-hub knows the expert layout of"
                    if self._types else "config.json does not name the model_type" if self._has_config
                    else "there is no config.json to read the expert layout from")
            raise self._error(name, shape, what)
        if family.refused:
            raise self._error(name, shape, f"{family.name}: {family.refused}", fix="")
        experts = self._dim(name, shape, _EXPERT_COUNT_KEYS)
        hidden = self._dim(name, shape, ("hidden_size",))
        inter_key = next((k for k in family.intermediate if isinstance(self._config.get(k), int)), family.intermediate[0])
        inter = self._dim(name, shape, (inter_key,))
        gate_up = match["key"] in _GATE_UP_KEYS
        parts = 2 if gate_up else 1
        out, cols = (inter, hidden) if gate_up else (hidden, inter)
        expected = (experts, cols, parts * out) if family.transposed else (experts, parts * out, cols)
        if tuple(shape) != expected:
            raise self._error(
                name, shape,
                f"{family.name} stores it as {list(expected)} ([experts, {'in, out' if family.transposed else 'out, in'}] "
                f"from num_experts={experts}, hidden_size={hidden}, {inter_key}={inter} in config.json)",
            )
        layout = (INTERLEAVED if family.interleaved and parts > 1 else COLUMNS) if family.transposed else ROWS
        names = family.gate_up if gate_up else (family.down,)
        prefix = self.rename(match["prefix"] or "")
        if match["key"] in ("input_linear", "output_linear"):
            prefix += "experts."
        return [ExpertPart(f"{prefix}{e}.{part_name}.weight", e, p, parts, layout, (out, cols))
                for e in range(experts) for p, part_name in enumerate(names)]

    def _dim(self, name: str, shape: tuple[int, ...], keys: tuple[str, ...]) -> int:
        for key in keys:
            value = self._config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        raise self._error(name, shape, f"config.json has no {' / '.join(keys)} to check its dimensions against")

    def _error(self, name: str, shape: tuple[int, ...], why: str, fix: str = "Fix config.json, or ") -> ExpertLayoutError:
        guess = " Splitting by guess would write wrong experts." if fix else ""
        add = f"{fix}add {name.rpartition('.')[0]!r} to ignore"
        return ExpertLayoutError(
            f"{name}: fused MoE experts {list(shape)} are not split, because {why}.{guess} {add[0].upper()}{add[1:]} "
            "to copy the fused tensors (and their biases) as they are."
        )
