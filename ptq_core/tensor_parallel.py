"""At which tensor-parallel sizes vLLM can shard a quantized checkpoint, decided from the plan.

vLLM splits every linear layer across ``tp`` GPUs: column-parallel layers (q/k/v,
gate/up, experts' gate/up) split their output rows, row-parallel layers (o_proj,
down_proj, experts' down) their input columns, and MLA's ``q_a_proj`` /
``kv_a_proj_with_mqa`` and the routers are replicated. Quantized weights add rules
that the server checks only when it starts (vLLM 0.33, read in its source):

* FP8 blocks (``fp8_utils.validate_fp8_block_shape``): each column-parallel part, and each
  member but the last of a merged layer (q/k/v, gate/up) even at TP 1, must be a multiple
  of the block's rows; each row-parallel part (TP > 1) a multiple of its columns. MoE
  experts (``validate_fp8_block_shape_moe``): the intermediate size per GPU must be a
  multiple of the block at any TP.
* groups (W4A16, NVFP4A16, MXFP4A16...): each row-parallel part must hold whole groups
  (``marlin_utils.verify_group_size_divides_partition``).
* every split must be exact: rows or columns divisible by ``tp`` (k/v heads fewer than
  ``tp`` are replicated, as vLLM does).

:func:`tensor_parallel_report` applies them to every quantized weight for TP 1, 2, 4 and 8;
the plan, the card and the Space show the result and ``--tp N`` refuses a plan that cannot
load at N. The first failing layer is named, so a user knows what to ignore.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .numerics import WeightSpec

__all__ = ["TP_SIZES", "TensorParallelReport", "tensor_parallel_report"]

TP_SIZES = (1, 2, 4, 8)

_ROW_PARALLEL = frozenset({"o_proj", "down_proj", "w2", "dense", "fc2", "dense_4h_to_h", "out_proj", "wo",
                           "c_proj", "output_linear", "proj_out"})
_REPLICATED = frozenset({"q_a_proj", "kv_a_proj_with_mqa", "wq_a", "wkv_a_with_mqa", "gate", "router"})
_MERGED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up",
           "w1": "gate_up", "w3": "gate_up"}
_LAST_OF_MERGED = frozenset({"v_proj", "up_proj", "w3"})
_EXPERT = re.compile(r"\.experts\.\d+\.")
_KV = frozenset({"k_proj", "v_proj"})


class TensorParallelReport(NamedTuple):
    """``loads``: TP sizes vLLM can shard the output at; ``blocked``: tp -> the first reason it cannot."""

    loads: tuple[int, ...]
    blocked: Mapping[int, str]

    def summary(self) -> str:
        """One line: "loads at TP 1, 2, 4; TP 8: <why>"."""
        text = "loads at TP " + ", ".join(map(str, self.loads)) if self.loads else "loads at no TP size"
        return text + "".join(f"; TP {tp}: {why}" for tp, why in sorted(self.blocked.items()))


def _kv_heads(config: Mapping[str, Any]) -> int | None:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    value = text.get("num_key_value_heads") or text.get("num_attention_heads")
    return value if isinstance(value, int) and value > 0 else None


def _problem(module: str, shape: tuple[int, int], spec: WeightSpec, tp: int, kv_heads: int | None) -> str | None:
    """Why vLLM cannot shard this quantized weight at ``tp`` (None: it can)."""
    leaf = module.rpartition(".")[2]
    rows, cols = shape
    expert = _EXPERT.search(module) is not None
    if leaf in _REPLICATED and not expert:
        return None
    row_parallel = leaf in _ROW_PARALLEL
    if row_parallel:
        if cols % tp:
            return f"{module} has {cols} input columns, not divisible by {tp}"
        part, axis = cols // tp, "input columns"
    else:
        split = tp
        if leaf in _KV and kv_heads and kv_heads < tp:
            split = kv_heads if tp % kv_heads == 0 else tp  # fewer k/v heads than GPUs: replicated per head
        if rows % split:
            return f"{module} has {rows} output rows, not divisible by {split}"
        part, axis = rows // split, "output rows"
    if spec.strategy == "block" and spec.block:
        block_n, block_k = spec.block
        if expert and leaf != "down_proj" and leaf != "w2" and part % block_n:
            return f"{module}: {part} {axis} per GPU are not a multiple of the {block_n}-row FP8 block (MoE experts)"
        if expert and tp > 1 and (leaf in ("down_proj", "w2")) and part % block_k:
            return f"{module}: {part} {axis} per GPU are not a multiple of the {block_k}-column FP8 block (MoE experts)"
        if not expert and row_parallel and tp > 1 and part % block_k:
            return f"{module}: {part} {axis} per GPU are not a multiple of the {block_k}-column FP8 block"
        merged_not_last = leaf in _MERGED and leaf not in _LAST_OF_MERGED
        if not expert and not row_parallel and (tp > 1 or merged_not_last) and part % block_n:
            return f"{module}: {part} {axis} per GPU are not a multiple of the {block_n}-row FP8 block"
    if spec.strategy in ("group", "tensor_group") and spec.group_size and row_parallel and part % spec.group_size:
        return f"{module}: {part} {axis} per GPU are not whole groups of {spec.group_size}"
    return None


def tensor_parallel_report(
    weights: Iterable[tuple[str, tuple[int, ...], WeightSpec]],
    config: Mapping[str, Any] | None,
    sizes: Iterable[int] = TP_SIZES,
) -> TensorParallelReport:
    """The TP sizes (of ``sizes``) at which vLLM can load these quantized weights.

    Args:
        weights: ``(module, shape, spec)`` of every quantized 2-D weight.
        config: the source's ``config.json`` (k/v head count).
        sizes: the TP sizes to check.
    """
    sizes = tuple(sorted(set(sizes)))
    kv_heads = _kv_heads(config or {})
    blocked: dict[int, str] = {}
    seen: set[tuple[str, bool, tuple[int, ...], WeightSpec]] = set()
    for module, shape, spec in weights:
        # layers repeat: one check per (layer kind, expert or not, shape, spec)
        key = (module.rpartition(".")[2], ".experts." in module, shape, spec)
        if key in seen or len(shape) != 2:
            continue
        seen.add(key)
        for tp in sizes:
            if tp not in blocked:
                why = _problem(module, (shape[0], shape[1]), spec, tp, kv_heads)
                if why:
                    blocked[tp] = why
    return TensorParallelReport(tuple(tp for tp in sizes if tp not in blocked), blocked)
