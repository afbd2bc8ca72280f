"""The output's ``quantization_config``: the request's own, or merged into the source's and checked.

A compressed-tensors source whose compressed modules are kept (``append``), or a
converter chain that leaves modules compressed, gives an output that holds modules
compressed before this run beside the ones quantized now. Its config is the source's,
through each converter's ``update_config``, with the request's groups merged in
(compressed-tensors' ``merge``, then repaired to load: :func:`merge_configs`), and
:func:`check_merged_config` proves, module by module, that a loader resolves each one
to the scheme it is stored with. compressed-tensors is imported only where a config is
merged: planning and a dense job never load it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .convert import chain_output_config
from .errors import AppendError
from .matching import IgnoreMatcher, match_name
from .plan import Plan
from .schemes import ResolvedConfig, config_block
from .sources.formats import SourcePlan
from .sources.safetensors_header import FLOAT_WEIGHT_DTYPES

if TYPE_CHECKING:
    from compressed_tensors.quantization import QuantizationConfig

__all__ = ["MergedConfig", "check_merged_config", "merge_configs", "output_quantization_config"]

_LAYER_INDEX = re.compile(r"\.\d+\.")


class MergedConfig(NamedTuple):
    """The output's ``quantization_config`` block and how many of its groups came before ours."""

    block: dict[str, Any] | None
    earlier_groups: int = 0  # > 0: merged (append, or a converter that leaves modules compressed)


def output_quantization_config(
    source_config: Mapping[str, Any] | None,
    source: SourcePlan,
    resolved: ResolvedConfig,
    quantized: Mapping[str, str],
    modules: Collection[str],
) -> MergedConfig:
    """The output's ``quantization_config``, built as llm-compressor builds it, but loadable.

    Without converters and without ``append`` it is the request's own config (``None``
    when nothing was quantized). Otherwise a compressed-tensors source's config goes
    through each converter's ``update_config`` (a dequantizer returns ``None``) and, where
    something is left, the request's groups are merged into it (:func:`merge_configs`).

    Args:
        source_config: the source's config.json.
        source: the source plan (its converters, ``append``).
        resolved: the request.
        quantized: module -> config group, for every module quantized now.
        modules: every module of the output with a weight (for the merge's targets).
    """
    if not source.converters and not source.append:
        return MergedConfig(resolved.quantization_config_dict() if quantized else None)
    incoming = chain_output_config(source_config, source.converters)
    if incoming is None:
        return MergedConfig(resolved.quantization_config_dict() if quantized else None)
    earlier = len(incoming.config_groups)
    if quantized:
        incoming = merge_configs(incoming, resolved, quantized, modules)
    return MergedConfig(config_block(incoming), earlier)


def merge_configs(
    earlier: QuantizationConfig, resolved: ResolvedConfig, quantized: Mapping[str, str], modules: Collection[str]
) -> QuantizationConfig:
    """compressed-tensors' ``merge`` of the request into ``earlier``, then made loadable.

    ``QuantizationConfig.merge`` keeps only the earlier ignore list and every target as
    given, so its result often loads wrongly (llm-compressor writes it as is): a module
    quantized now is still ignored, or matched by two groups that both target ``Linear``.
    Three repairs, each only as wide as the modules quantized now:

    * the new groups target exactly the modules they quantized (one ``re:`` per layer
      kind where every module of that kind is theirs, else the names), so a loader's
      name match (which wins over the class ``Linear``) picks them;
    * ignore entries that match only modules quantized now are dropped;
    * the request's own ignore entries are kept where they name no module quantized before.

    :func:`check_merged_config` then proves every module resolves to the group it is
    stored in, or refuses.
    """
    new = resolved.final_config()
    by_group: dict[str, list[str]] = {}
    for module, group in quantized.items():
        by_group.setdefault(group, []).append(module)
    for group, scheme in new.config_groups.items():
        scheme.targets = _exact_targets(by_group.get(group, []), modules)
    with warnings.catch_warnings():  # merge() always warns that merging is hard: the check proves it
        warnings.simplefilter("ignore")
        earlier.merge(new)
    others = [m for m in modules if m not in quantized]
    kept = []
    for entry in earlier.ignore:
        hits_now = any(match_name(m, entry) for m in quantized)
        if hits_now and not any(match_name(m, entry) for m in others):
            continue
        kept.append(entry)
    for entry in new.ignore or []:
        if entry not in kept and not any(match_name(m, entry) for m in quantized):
            kept.append(entry)
    earlier.ignore = kept
    return earlier


def _exact_targets(mine: Sequence[str], modules: Collection[str]) -> list[str]:
    """Targets naming exactly ``mine``: ``re:`` per layer kind (``model.layers.N.mlp.down_proj``)
    where every module of that kind is in ``mine``, the exact names elsewhere."""
    kinds: dict[str, list[str]] = {}
    for module in modules:
        kinds.setdefault(_LAYER_INDEX.sub(".#.", module), []).append(module)
    chosen = set(mine)
    targets: list[str] = []
    for kind, members in kinds.items():
        if not any(m in chosen for m in members):
            continue
        if len(members) > 1 and all(m in chosen for m in members):
            targets.append("re:^" + r"\.\d+\.".join(re.escape(part) for part in kind.split(".#.")) + "$")
        else:
            targets += [m for m in members if m in chosen]
    return sorted(targets)


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
