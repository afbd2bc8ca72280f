"""The loader-safe default ignore list, derived from the model instead of Llama's names.

The loaders (vLLM, transformers with compressed-tensors) keep some modules in 16 bits
whatever the checkpoint holds: embeddings and vocab-sized heads, MoE routers, vision and
audio towers with their projectors, and MTP (next-token-prediction) layers that sit
beyond ``num_hidden_layers``. Quantizing them gives a checkpoint the loaders misread
(GPT-NeoX's ``embed_in``, Falcon's ``word_embeddings``, LLaVA's
``language_model.lm_head``, GraniteMoE's ``router.layer``...). So the front ends'
defaults come from ``config.json`` and the tensor shapes:

* vocab rows: every 2-D weight with ``vocab_size`` rows outside the numbered blocks, under
  any name or prefix;
* embeddings by name: any module whose last name part holds ``embed`` (``wte``,
  ``wpe``, ``word_embeddings``, ``position_embedding``...);
* MoE routers: 2-D weights of ``num_experts`` rows and ``hidden_size`` columns;
* towers: with a ``vision_config`` / ``audio_config`` section, every module under a
  vision/audio tower or multi-modal projector root;
* MTP layers: ``layers.N`` with ``N >= num_hidden_layers``, and ``mtp`` modules;
* fused 3-D experts of a family whose split experts no loader reads (GPT-OSS,
  ``experts.ExpertRules``): kept fused in 16 bits, so the rest of the model still quantizes.

Each rule yields ignore entries that match the module however a loader prefixes it
(``re:.*lm_head$`` matches ``lm_head`` and ``model.language_model.lm_head``), checked
against every module of the checkpoint so an entry never matches a module that should
be quantized. :func:`loader_pattern` is the same rule for one module, used in error
messages that suggest an ignore entry.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any, NamedTuple

from .checkpoint import TensorInfo
from .experts import ExpertRules
from .matching import IgnoreMatcher

__all__ = ["DefaultIgnore", "loader_pattern", "model_default_ignore", "text_config"]

# Last name parts of the roots under which VLMs keep their towers and projectors.
_TOWER_ROOTS = {
    "visual": "vision tower (vision_config)",
    "vision_tower": "vision tower (vision_config)",
    "vision_model": "vision tower (vision_config)",
    "vision_encoder": "vision tower (vision_config)",
    "image_encoder": "vision tower (vision_config)",
    "vpm": "vision tower (vision_config)",
    "audio_tower": "audio tower (audio_config)",
    "audio_model": "audio tower (audio_config)",
    "audio_encoder": "audio tower (audio_config)",
    "multi_modal_projector": "multi-modal projector",
    "mm_projector": "multi-modal projector",
    "embed_vision": "multi-modal projector",
    "embed_audio": "multi-modal projector",
}
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MTP_ROOTS = frozenset({"mtp", "mtp_layers"})
# Embeddings and heads live outside the repeated blocks (layers.N, h.N, blocks.N): a projection
# inside one whose width happens to equal the vocabulary is not one.
_IN_BLOCK = re.compile(r"\.\d+\.")


class DefaultIgnore(NamedTuple):
    """One default ignore entry and why the loaders need it."""

    entry: str
    reason: str


def text_config(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The language model's section of ``config.json`` (``text_config`` for VLMs, else the top)."""
    config = config or {}
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def _int(section: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = section.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def loader_pattern(module: str) -> str:
    """An ignore entry for one module that matches it under any loader prefix.

    The checkpoint's name and the loader's may differ in their leading parts
    (``visual.blocks.0.mlp`` is ``model.visual.blocks.0.mlp`` in transformers 5),
    so suggestions are unanchored at the start: ``re:.*visual\\.blocks\\.0\\.mlp$``.
    """
    return "re:.*" + re.escape(module.removeprefix("model.")) + "$"


class _Modules:
    """Every module name of a checkpoint, indexed for "which modules end with this text"."""

    def __init__(self, modules: Iterable[str]) -> None:
        self.names = sorted(set(modules))

    @cached_property
    def _reversed(self) -> list[str]:  # sorted only when an entry is looked for (most models need none)
        return sorted(name[::-1] for name in self.names)

    def ending_with(self, tail: str) -> list[str]:
        key = tail[::-1]
        start = bisect.bisect_left(self._reversed, key)
        end = bisect.bisect_left(self._reversed, key + "\U0010ffff")
        return [r[::-1] for r in self._reversed[start:end]]

    def containing(self, part: str) -> list[str]:
        return [name for name in self.names if part in name]


def _suffix_entries(targets: set[str], allowed: set[str], modules: _Modules) -> list[str]:
    """Fewest ``re:.*tail$`` entries that match every target and nothing outside ``allowed``.

    The shortest dotted tail of each module that matches only allowed modules wins, so
    one entry covers a router in every layer (``re:.*router\\.layer$``).
    """
    entries = []
    left = set(targets)
    for module in sorted(targets):
        if module not in left:
            continue
        parts = module.split(".")
        # Inside a numbered block, a bare leaf (``layer``) says too little: keep its parent too.
        for depth in range(2 if _IN_BLOCK.search(module) else 1, len(parts) + 1):
            tail = ".".join(parts[-depth:])
            hits = modules.ending_with(tail)
            if all(hit in allowed for hit in hits):
                entries.append("re:.*" + re.escape(tail) + "$")
                left.difference_update(hits)
                break
        else:  # every tail also ends another module's name (``output`` vs ``attention.output``)
            entries.append(module)
            left.discard(module)
    return entries


def model_default_ignore(
    config: Mapping[str, Any] | None,
    tensors: Iterable[TensorInfo],
    base: Iterable[str] = (),
) -> tuple[DefaultIgnore, ...]:
    """The default ignore entries this model needs beyond ``base`` (the name rules and the
    caller's own entries), each with its reason, in a stable order.

    Args:
        config: the source's ``config.json`` (``None``: only shape and name rules apply).
        tensors: the checkpoint's tensors (headers).
        base: entries already in the ignore list; modules they match need nothing more.
    """
    config = config or {}
    text = text_config(config)
    tensors = list(tensors)
    names = [t.name.rpartition(".")[0] for t in tensors]  # each tensor's module
    weights = {module: t for module, t in zip(names, tensors) if t.name.endswith(".weight")}
    modules = _Modules(names)
    already = IgnoreMatcher(list(base))
    wanted: dict[str, str] = {}  # module -> reason

    def want(module: str, reason: str) -> None:
        if module not in wanted and already.match(module) is None:
            wanted[module] = reason

    vocab = _int(text, "vocab_size") or _int(config, "vocab_size")
    hidden = _int(text, "hidden_size", "d_model", "n_embd")
    experts = _int(text, *_EXPERT_COUNT_KEYS)
    rules = ExpertRules(config)
    kept_fused = {t.name.rpartition(".")[0] for t in tensors if rules.family is not None and rules.family.refused
                  and rules.is_fused(t.name, t.shape) and already.match(t.name.rpartition(".")[0]) is None}
    for module, info in weights.items():
        leaf = module.rpartition(".")[2]
        if len(info.shape) == 2 and vocab is not None and info.shape[0] == vocab and not _IN_BLOCK.search(module):
            want(module, "embedding or head (vocab_size rows)")
        elif "embed" in leaf or leaf in ("wte", "wpe"):
            want(module, "embedding (name)")
        elif len(info.shape) == 2 and experts is not None and info.shape == (experts, hidden):
            want(module, "MoE router (num_experts rows)")

    entries: list[DefaultIgnore] = []
    by_reason: dict[str, set[str]] = {}
    for module, reason in wanted.items():
        by_reason.setdefault(reason, set()).add(module)
    ignored = set(wanted) | {m for m in modules.names if already.match(m) is not None} if wanted or kept_fused else set()
    for reason, targets in by_reason.items():
        entries += [DefaultIgnore(e, reason) for e in _suffix_entries(targets, ignored, modules)]

    if kept_fused:
        # vLLM asks about an MoE layer by its per-expert names (experts.0.gate_proj...): the entry
        # must match those as well as the fused module transformers and ptq see.
        reason = f"{rules.family.name} MoE experts kept fused (no loader reads them split)"
        for entry in _suffix_entries(kept_fused, ignored | kept_fused, modules):
            entries += [DefaultIgnore(entry, reason), DefaultIgnore(entry.removesuffix("$") + r"\.", reason)]

    entries += _tower_entries(config, modules, already)
    entries += _mtp_entries(text, modules, already)
    return tuple(entries)


def _tower_entries(config: Mapping[str, Any], modules: _Modules, already: IgnoreMatcher) -> list[DefaultIgnore]:
    """``re:.*<root>\\.`` for each tower or projector root of a VLM (only with its config section)."""
    sections = {key for key in ("vision_config", "audio_config") if isinstance(config.get(key), Mapping)}
    if not sections:
        return []
    roots: dict[str, str] = {}
    for name in modules.names:
        for part in name.split("."):
            reason = _TOWER_ROOTS.get(part)
            if reason is not None:
                roots.setdefault(part, reason)
                break
    entries = []
    for root, reason in roots.items():
        if "audio" in reason and "audio_config" not in sections or "vision" in reason and "vision_config" not in sections:
            continue
        covered = [m for m in modules.containing(root + ".") if already.match(m) is None]
        if covered:
            entries.append(DefaultIgnore("re:.*" + re.escape(root + "."), reason))
    return entries


def _mtp_entries(text: Mapping[str, Any], modules: _Modules, already: IgnoreMatcher) -> list[DefaultIgnore]:
    """MTP layers: ``layers.N`` beyond ``num_hidden_layers`` (DeepSeek-V3, GLM-4.5), ``mtp`` modules."""
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    extra: set[int] = set()
    mtp_roots: set[str] = set()
    for name in modules.names:
        parts = name.split(".")
        if not _TOWER_ROOTS.keys().isdisjoint(parts):
            continue  # a tower's own layers are counted by its own config
        found = _LAYER_INDEX.search(name) if layers is not None else None
        if found and int(found.group(1)) >= layers:
            extra.add(int(found.group(1)))
        mtp_roots.update(_MTP_ROOTS.intersection(parts))
    entries = [DefaultIgnore(f"re:.*layers\\.{n}\\.", "MTP layer (beyond num_hidden_layers)") for n in sorted(extra)
               if any(already.match(m) is None for m in modules.containing(f"layers.{n}."))]
    entries += [DefaultIgnore("re:.*" + re.escape(root + "."), "MTP layer (name)") for root in sorted(mtp_roots)]
    return entries
