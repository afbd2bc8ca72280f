"""Fused groups: sibling weights that inference engines load as one layer (q/k/v, gate/up).

vLLM builds one layer of q/k/v (or gate/up, MLA's q_a/kv_a) and refuses shards of it
with different schemes, and NVFP4 needs one global scale over the whole layer. This
module finds such sets by name and checks them: members quantized with different
config groups are refused, a member ignored takes its siblings along, and an NVFP4 set
with a member missing is refused as llm-compressor refuses it. Names only, no tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import FusedGroupError
from .numerics import WeightSpec

__all__ = ["FusedGroup", "find_fused_groups", "find_fused_sets", "fused_siblings_to_ignore"]

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


@dataclass(frozen=True)
class FusedGroup:
    """Weights quantized with one NVFP4 global scale: ``kind`` (``q/k/v``...), its members in
    canonical order, and the input shard of each."""

    kind: str
    members: tuple[str, ...]
    source_shards: tuple[str, ...]

    @property
    def split(self) -> bool:
        """True when the members sit in different input shards."""
        return len(set(self.source_shards)) > 1


class _PlannedUnit(Protocol):
    """What the checks read of a planned unit (``planner``'s units)."""

    @property
    def name(self) -> str: ...
    @property
    def shard(self) -> str: ...
    @property
    def group(self) -> str | None: ...


def fused_siblings_to_ignore(units: Sequence[_PlannedUnit], skipped: Mapping[str, str]) -> dict[str, str]:
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


def find_fused_groups(units: Sequence[_PlannedUnit], specs: Mapping[str, WeightSpec]) -> tuple[list[FusedGroup], dict[str, int]]:
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
