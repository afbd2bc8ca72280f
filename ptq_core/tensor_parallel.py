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
_STORED_QKV = frozenset({"qkv_proj", "query_key_value", "W_pack", "c_attn", "Wqkv"})


class TensorParallelReport(NamedTuple):
    """``loads``: TP sizes vLLM can shard the output at; ``blocked``: tp -> the first reason it cannot."""

    loads: tuple[int, ...]
    blocked: Mapping[int, str]

    def summary(self) -> str:
        """One line: "loads at TP 1, 2, 4; TP 8: <why>"."""
        text = "loads at TP " + ", ".join(map(str, self.loads)) if self.loads else "loads at no TP size"
        return text + "".join(f"; TP {tp}: {why}" for tp, why in sorted(self.blocked.items()))


class _Heads(NamedTuple):
    heads: int | None
    kv_heads: int | None


def _heads(config: Mapping[str, Any]) -> _Heads:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config

    def count(*keys: str) -> int | None:
        value = next((text[k] for k in keys if isinstance(text.get(k), int) and text[k] > 0), None)
        return value

    heads = count("num_attention_heads", "n_head")
    return _Heads(heads, count("num_key_value_heads", "num_kv_heads") or heads)


def _kv_split(tp: int, kv_heads: int | None) -> int:
    """How many ways k/v rows split: fewer k/v heads than GPUs are replicated, one head each."""
    return kv_heads if kv_heads and kv_heads < tp and tp % kv_heads == 0 else tp


def _column_parts(leaf: str, rows: int, tp: int, heads: _Heads) -> tuple[list[int], list[int]] | str:
    """The output rows per GPU of each part vLLM gives a column-parallel layer, and those of them
    that must fill whole FP8 blocks even at TP 1 (every part of a merged GEMM but its last);
    or why the rows do not split."""
    if leaf in _STORED_QKV and heads.heads and heads.kv_heads:
        head_dim, rest = divmod(rows, heads.heads + 2 * heads.kv_heads)
        if rest == 0:  # [q, k, v] stored as one tensor (Phi-3 qkv_proj, Falcon query_key_value)
            sizes = [(heads.heads * head_dim, tp), *[(heads.kv_heads * head_dim, _kv_split(tp, heads.kv_heads))] * 2]
            bad = next(((n, k) for n, k in sizes if n % k), None)
            if bad:
                return f"{bad[0]} output rows, not divisible by {bad[1]}"
            parts = [n // k for n, k in sizes]
            return parts, parts[:-1]
    if leaf == "gate_up_proj":  # [gate, up] stored as one tensor (Phi-3)
        sizes = [(rows // 2, tp)] * 2
    else:
        sizes = [(rows, _kv_split(tp, heads.kv_heads) if leaf in _KV else tp)]
    bad = next(((n, k) for n, k in sizes if n % k), None)
    if bad:
        return f"{bad[0]} output rows, not divisible by {bad[1]}"
    parts = [n // k for n, k in sizes]
    if len(parts) > 1:  # stored [gate, up]
        return parts, parts[:-1]
    return parts, parts if leaf in _MERGED and leaf not in _LAST_OF_MERGED else []


def _problem(module: str, shape: tuple[int, int], spec: WeightSpec, tp: int, heads: _Heads) -> str | None:
    """Why vLLM cannot shard this quantized weight at ``tp`` (None: it can)."""
    leaf = module.rpartition(".")[2]
    rows, cols = shape
    expert = _EXPERT.search(module) is not None
    if leaf in _REPLICATED and not expert:
        return None
    block = spec.block if spec.strategy == "block" and spec.block else None
    if leaf in _ROW_PARALLEL:
        if cols % tp:
            return f"{module} has {cols} input columns, not divisible by {tp}"
        part = cols // tp
        if block and tp > 1 and part % block[1]:
            kind = " (MoE experts)" if expert else ""
            return f"{module}: {part} input columns per GPU are not a multiple of the {block[1]}-column FP8 block{kind}"
        if spec.strategy in ("group", "tensor_group") and spec.group_size and part % spec.group_size:
            return f"{module}: {part} input columns per GPU are not whole groups of {spec.group_size}"
        return None
    found = _column_parts(leaf, rows, tp, heads)
    if isinstance(found, str):
        return f"{module} has {found}"
    parts, at_tp1 = found
    if block:
        # experts: every gate/up part at any TP; else every part when split, the merged ones at TP 1
        checked = parts if expert or tp > 1 else at_tp1
        bad = next((n for n in checked if n % block[0]), None)
        if bad is not None:
            kind = " (MoE experts)" if expert else ""
            return f"{module}: {bad} output rows per GPU are not a multiple of the {block[0]}-row FP8 block{kind}"
    return None


def tensor_parallel_report(
    weights: Iterable[tuple[str, tuple[int, ...], WeightSpec]],
    config: Mapping[str, Any] | None,
    sizes: Iterable[int] = TP_SIZES,
) -> TensorParallelReport:
    """The TP sizes (of ``sizes``) at which vLLM can load these quantized weights.

    Args:
        weights: ``(module, shape, spec)`` of every quantized 2-D weight.
        config: the source's ``config.json`` (head counts: how k/v replicate, how a stored
            q/k/v tensor splits into vLLM's q, k and v parts).
        sizes: the TP sizes to check.
    """
    sizes = tuple(sorted(set(sizes)))
    heads = _heads(config or {})
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
                why = _problem(module, (shape[0], shape[1]), spec, tp, heads)
                if why:
                    blocked[tp] = why
    return TensorParallelReport(tuple(tp for tp in sizes if tp not in blocked), blocked)
