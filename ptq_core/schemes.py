"""Schemes: resolving what the caller asked for into compressed-tensors objects.

With ``convert.py`` and ``plan.py``, the only module that uses ``compressed_tensors``. It turns
a preset name, a ``QuantizationScheme`` or a ``QuantizationConfig`` into a validated *copy*
(the caller's objects are never mutated), refuses schemes that need calibration data, and
describes the presets for the front ends.

compressed-tensors is imported at first use, not with this module: any of its submodules
runs its package ``__init__``, which loads transformers and ``torch.distributed`` (2-3 s of
CPU), and ``import ptq_core.job`` (every ``ptq`` command, Action step and recipe) must not pay
that before it needs a scheme. A preset named by the request is not even resolved with it:
``presets.py`` holds what planning reads of each preset (generated from the installed
compressed-tensors, checked against it by tests/core/test_presets.py), and the
``QuantizationConfig`` objects are built only when a run or a merge asks for them
(``ResolvedConfig.config``), so ``ptq plan`` of a 16-bit checkpoint never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache, cached_property
from importlib import metadata
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

import torch

from .errors import CalibrationRequiredError, SchemeNotSupportedError
from .matching import MAX_IGNORE_ENTRIES, validate_ignore
from .numerics import WeightSpec
from .observers import resolve_observer
from .preset_notes import DESCRIPTIONS, describe, gpu_support
from .presets import COMPRESSED_TENSORS_VERSION, PRESETS

if TYPE_CHECKING:  # pragma: no cover
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

__all__ = [
    "DEFAULT_IGNORE",
    "DEFAULT_IGNORE_REASONS",
    "ResolvedConfig",
    "SchemeInfo",
    "canonical_scheme_name",
    "config_block",
    "gpu_support",
    "list_schemes",
    "resolve_config",
    "scheme_repo_suffix",
    "weight_args",
    "weight_spec",
]


def _ct() -> SimpleNamespace:
    """The compressed-tensors names this module uses, imported once, at first use (see the module doc)."""
    global _CT
    if _CT is None:
        import torch
        from compressed_tensors import __version__
        from compressed_tensors.compressors.format import infer_module_format
        from compressed_tensors.config import CompressionFormat
        from compressed_tensors.quantization import (
            DynamicType,
            QuantizationConfig,
            QuantizationScheme,
            QuantizationStatus,
            QuantizationStrategy,
            QuantizationType,
            preset_name_to_scheme,
        )
        from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
        from compressed_tensors.quantization.utils import should_generate_mx_scales

        _CT = SimpleNamespace(
            version=__version__, infer_module_format=infer_module_format, CompressionFormat=CompressionFormat,
            DynamicType=DynamicType, QuantizationConfig=QuantizationConfig, QuantizationScheme=QuantizationScheme,
            QuantizationStatus=QuantizationStatus, QuantizationStrategy=QuantizationStrategy,
            QuantizationType=QuantizationType, preset_name_to_scheme=preset_name_to_scheme,
            PRESET_SCHEMES=PRESET_SCHEMES, should_generate_mx_scales=should_generate_mx_scales,
            Linear=torch.nn.Linear,  # formats are inferred for Linear modules
        )
    return _CT


_CT: SimpleNamespace | None = None

DEFAULT_IGNORE_REASONS: dict[str, str] = {
    "lm_head": "head (name)",
    r"re:.*embed_tokens$": "embedding (name)",
    # MoE routers: vLLM loads them unquantized (Mixtral, Qwen-MoE, DeepSeek `mlp.gate`)
    r"re:.*\.gate$": "MoE router (name)",
    r"re:.*\.router$": "MoE router (name)",
    r"re:.*shared_expert_gate$": "MoE router (name)",
}
DEFAULT_IGNORE: tuple[str, ...] = tuple(DEFAULT_IGNORE_REASONS)
"""The name rules of the loader-safe ignore list used by the CLI, the Action and the Space.

The planner adds what the model itself needs (``default_ignore.model_default_ignore``:
vocab-sized weights under any name, routers by shape, vision/audio towers, MTP layers).
The Python ``model_free_ptq`` keeps llm-compressor's semantics and ignores only what the
caller passes (plus modules ending in ``norm``).
"""

# What to offer instead of a scheme that needs calibration data.
_DATA_FREE_ALTERNATIVE: dict[str, str] = {
    "FP8": "FP8_DYNAMIC",
    "NVFP4": "NVFP4A16",
}


@dataclass(frozen=True)
class SchemeInfo:
    """One preset as the front ends show it."""

    name: str
    description: str
    format: str
    data_free: bool


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated, private copy of the caller's quantization request.

    Planning reads plain values only (``weights``, ``targets``, ``formats``, ``ignore``);
    the compressed-tensors objects (``config``, ``groups``) are built at first use, so a
    preset can be planned without importing compressed-tensors.

    Attributes:
        name: a display / repo-suffix name (the preset name, or ``config_group_0``).
        formats: compressed-tensors format of each config group, by group name.
        weights: each group's weight args as plain values (:func:`weight_args`), groups in order.
        targets: each group's targets (``("Linear",)`` when the request gave none).
        ignore_entries: the ignore list (``ignore`` is a list copy of it).
        model_defaults: the planner adds the model's own loader-safe entries to ``ignore``
            (the front ends' default rule); False once added, and for ``model_free_ptq``.
        observer: the request's observer (a preset's objects are built with it).
        objects: a scheme or config object request, resolved at once (status ``initialized``);
            ``None`` for a preset name, whose objects ``config`` builds from the name.
    """

    name: str
    formats: dict[str, str]
    weights: dict[str, dict[str, Any]]
    targets: dict[str, tuple[str, ...]]
    ignore_entries: tuple[str, ...] = ()
    model_defaults: bool = False
    observer: str | None = None
    objects: QuantizationConfig | None = None

    def with_ignore(self, extra: Iterable[str]) -> "ResolvedConfig":
        """A copy whose ignore list ends with ``extra`` (the model's defaults, once added)."""
        ignore = self.ignore_entries + tuple(e for e in extra if e not in self.ignore_entries)
        return replace(self, ignore_entries=ignore, model_defaults=False)

    @cached_property
    def config(self) -> QuantizationConfig:
        """The ``QuantizationConfig`` (status ``initialized``), groups in order, with this ignore list."""
        objects = self.objects
        if objects is None:  # planned from presets.py: the objects must say what the kernels were told
            objects, _, formats = _resolve_objects(self.name, None, self.observer)
            if (formats, {g: weight_args(s.weights) for g, s in objects.config_groups.items()}) != (self.formats,
                                                                                                    self.weights):
                raise SchemeNotSupportedError(f"ptq_core/presets.py disagrees with the installed compressed-tensors "
                                              f"about {self.name}: regenerate it (python scripts/gen_presets.py).")
        return objects.model_copy(update={"ignore": list(self.ignore_entries)})

    @property
    def groups(self) -> list[tuple[str, QuantizationScheme]]:
        return list(self.config.config_groups.items())

    @property
    def ignore(self) -> list[str]:
        return list(self.ignore_entries)

    def quantization_config_dict(self) -> dict[str, Any]:
        """The ``quantization_config`` block of config.json, as the peer writes it."""
        return config_block(self.final_config())

    def final_config(self) -> QuantizationConfig:
        """The request as the ``QuantizationConfig`` an output carries (status compressed)."""
        formats = set(self.formats.values())
        fmt = formats.pop() if len(formats) == 1 else ("mixed-precision" if formats else "dense")
        ct = _ct()
        return ct.QuantizationConfig(
            config_groups=self.config.config_groups,
            kv_cache_scheme=self.config.kv_cache_scheme,
            ignore=list(self.config.ignore or []),
            quantization_status=ct.QuantizationStatus.COMPRESSED,
            format=fmt,
        )


def config_block(config: QuantizationConfig) -> dict[str, Any]:
    """A ``QuantizationConfig`` as config.json's ``quantization_config`` block, as the peer writes it."""
    block = {"version": _ct().version, "transform_config": {}, **config.model_dump()}
    block["quant_method"] = "compressed-tensors"  # even where a merged config was read from another format
    return block


def preset_table() -> dict[str, dict[str, Any]]:
    """What planning reads of each preset, as plain values, from the installed compressed-tensors.

    ``{name: {"data_free", "format", "weights": weight_args or None, "inputs": {"type", "num_bits"} or None}}``
    in compressed-tensors' order: the content of ``presets.py`` (``scripts/gen_presets.py``).
    """
    ct = _ct()
    table = {}
    for name in ct.PRESET_SCHEMES:
        scheme = ct.preset_name_to_scheme(name, ["Linear"])
        free = scheme.weights is not None
        try:
            if free:
                _check_data_free(scheme, name)
        except SchemeNotSupportedError:  # CalibrationRequiredError included
            free = False
        inputs = scheme.input_activations
        table[name] = {
            "data_free": free,
            "format": ct.infer_module_format(ct.Linear, scheme).value if scheme.weights else "dense",
            "weights": weight_args(scheme.weights) if scheme.weights else None,
            "inputs": {"type": str(inputs.type), "num_bits": inputs.num_bits} if inputs else None,
        }
    return table


def _presets() -> dict[str, dict[str, Any]]:
    """``presets.PRESETS`` when it was generated from the installed compressed-tensors, else computed from it."""
    return _presets_for(_installed_version())


@cache
def _presets_for(version: str) -> dict[str, dict[str, Any]]:
    """The table for one installed version: computing it imports compressed-tensors, so once per process."""
    return PRESETS if version == COMPRESSED_TENSORS_VERSION else preset_table()


def _installed_version() -> str:
    """compressed-tensors' installed version (a dependency), from its metadata: importing it would cost seconds."""
    return metadata.version("compressed-tensors")


def list_schemes(*, data_free_only: bool = True) -> list[SchemeInfo]:
    """Presets of the installed compressed-tensors, with one line each.

    Args:
        data_free_only: list only presets ptq-hub can produce (the default).
    """
    return [
        SchemeInfo(name=name, description=DESCRIPTIONS.get(name) or describe(p["weights"], p["inputs"]),
                   format=p["format"], data_free=p["data_free"])
        for name, p in _presets().items()
        if p["data_free"] or not data_free_only
    ]


def canonical_scheme_name(name: str) -> str:
    """The preset's own spelling: ``fp8_block`` / `` FP8_Block `` -> ``FP8_BLOCK``.

    Every front end and every output (config group, plan, card, repo name) uses
    this spelling, so the same request always gives the same bytes and names.

    Raises:
        SchemeNotSupportedError: not a preset of the installed compressed-tensors.
    """
    canonical = name.strip().upper() if isinstance(name, str) else ""
    if canonical not in _presets():
        known = ", ".join(s.name for s in list_schemes())
        raise SchemeNotSupportedError(f"Unknown scheme {name!r}. Data-free presets: {known}.")
    return canonical


def scheme_repo_suffix(scheme: str) -> str:
    """Repo-name style of a scheme name: ``FP8_BLOCK`` -> ``FP8-BLOCK``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", scheme.upper()).strip("-")


def resolve_config(
    scheme: str | QuantizationScheme | None = None,
    config: QuantizationConfig | None = None,
    ignore: Iterable[str] = (),
    observer: str | None = None,
    *,
    model_defaults: bool = False,
) -> ResolvedConfig:
    """Validate the request and return a private copy ready for planning.

    Mirrors llm-compressor's ``validate_config``: exactly one of ``scheme`` and
    ``config``; a preset name or a ``QuantizationScheme``; ``ignore`` is appended
    to the config's own ignore list; empty targets mean ``["Linear"]``. ``observer``
    (a front end's ``--observer``) replaces every group's weight observer, by its
    canonical name, so the config.json and the card record what ran. ``model_defaults``:
    the planner adds the model's loader-safe entries (the front ends' default rule).

    Raises:
        SchemeNotSupportedError: unknown preset, both or neither of scheme/config,
            no weight quantization, or weights this tool cannot produce.
        CalibrationRequiredError: static activations or an observer that needs data.
        InvalidIgnoreError: an ignore regex that does not compile.
    """
    # make_job bounds the caller's entries (MAX_IGNORE_ENTRIES), then adds DEFAULT_IGNORE in front
    ignore = validate_ignore(ignore, max_entries=MAX_IGNORE_ENTRIES + len(DEFAULT_IGNORE))
    if config is not None and scheme is not None:
        raise SchemeNotSupportedError("Give either `scheme` or `config`, not both.")
    if config is None and scheme is None:
        raise SchemeNotSupportedError(
            "No scheme given; pass a preset such as scheme='FP8_BLOCK' (see `ptq schemes`)."
        )
    preset = _presets().get(scheme.strip().upper()) if isinstance(scheme, str) else None
    if preset is not None and preset["data_free"]:  # planned from the table; objects built at first use
        name = scheme.strip().upper()
        weights = dict(preset["weights"])
        if observer is not None:
            weights.update(observer=resolve_observer(observer, None)[0], observer_kwargs={})
        return ResolvedConfig(name=name, formats={name: preset["format"]}, weights={name: weights},
                              targets={name: ("Linear",)}, ignore_entries=tuple(ignore),
                              model_defaults=model_defaults, observer=observer)
    objects, name, formats = _resolve_objects(scheme, config, observer)
    objects = objects.model_copy(update={"ignore": list(objects.ignore or []) + ignore})
    groups = objects.config_groups
    return ResolvedConfig(
        name=name, formats=formats, weights={g: weight_args(s.weights) for g, s in groups.items()},
        targets={g: tuple(s.targets) for g, s in groups.items()}, ignore_entries=tuple(objects.ignore),
        model_defaults=model_defaults, observer=observer, objects=objects,
    )


def _resolve_objects(
    scheme: object, config: object, observer: str | None
) -> tuple[QuantizationConfig, str, dict[str, str]]:
    """(the request's ``QuantizationConfig`` with the config's own ignore list, its name, formats by group).

    Raises what ``resolve_config`` raises about the scheme or config.
    """
    if scheme is not None:
        name, groups = _groups_of_scheme(scheme)
        base_ignore: list[str] = []
    else:
        name, groups, base_ignore = _groups_of_config(config)
    if observer is not None:
        canonical, _ = resolve_observer(observer, None)
        for group in groups.values():
            if group.weights is not None:
                group.weights = group.weights.model_copy(update={"observer": canonical, "observer_kwargs": {}})
    ct = _ct()
    formats = {}
    for group_name, group in groups.items():
        _check_data_free(group, group_name)
        if not group.targets:
            group.targets.append("Linear")
        # compress_module records the format on the scheme; the peer's config.json carries it
        group.format = group.format or ct.infer_module_format(ct.Linear, group)
        formats[group_name] = getattr(group.format, "value", group.format)
    objects = ct.QuantizationConfig(
        config_groups=groups, quantization_status=ct.QuantizationStatus.INITIALIZED, ignore=base_ignore,
    )
    return objects, name, formats


def _groups_of_scheme(scheme: object) -> tuple[str, dict[str, QuantizationScheme]]:
    """(name, {name: a private copy}) of a preset name or a ``QuantizationScheme``."""
    ct = _ct()
    if isinstance(scheme, str):
        name = canonical_scheme_name(scheme)
        return name, {name: ct.preset_name_to_scheme(name, [])}
    if isinstance(scheme, ct.QuantizationScheme):
        return "config_group_0", {"config_group_0": scheme.model_copy(deep=True)}
    raise SchemeNotSupportedError(
        f"scheme must be a preset name or a QuantizationScheme, not {type(scheme).__name__}."
    )


def _groups_of_config(config: object) -> tuple[str, dict[str, QuantizationScheme], list[str]]:
    """(name, groups, the config's own ignore list) of a private copy of a ``QuantizationConfig``."""
    ct = _ct()
    if not isinstance(config, ct.QuantizationConfig):
        raise SchemeNotSupportedError(f"config must be a QuantizationConfig, not {type(config).__name__}.")
    copy = config.model_copy(deep=True)
    groups = {}
    for group_name, group in copy.config_groups.items():
        if not isinstance(group, ct.QuantizationScheme):  # a bare list of targets means the default scheme
            raise SchemeNotSupportedError(
                f"config group {group_name!r} is a bare target list; give a full QuantizationScheme."
            )
        groups[group_name] = group
    if copy.kv_cache_scheme is not None:
        raise CalibrationRequiredError(
            "The config quantizes the KV cache, which needs calibration data; drop kv_cache_scheme "
            "for a data-free run."
        )
    name = next(iter(groups)) if len(groups) == 1 else "mixed"
    return name, groups, list(copy.ignore or [])


def _check_data_free(scheme: QuantizationScheme, name: str) -> None:
    """Refuse what cannot be computed from the weights alone, saying what to pick instead."""
    ct = _ct()
    upper = name.upper()
    alternative = _DATA_FREE_ALTERNATIVE.get(upper)
    hint = f" Pick {alternative} for a data-free run." if alternative else ""
    weights = scheme.weights
    if weights is None:
        raise SchemeNotSupportedError(f"{name} quantizes no weights; model_free_ptq only quantizes weights.{hint}")
    for role, act in (("input", scheme.input_activations), ("output", scheme.output_activations)):
        if act is None or act.dynamic is True:
            continue
        why = (
            "a calibrated input global scale"
            if act.dynamic == ct.DynamicType.LOCAL
            else f"static {role} activation scales"
        )
        raise CalibrationRequiredError(f"{name} needs {why}, which needs calibration data.{hint or ' Use llm-compressor oneshot.'}")
    if weights.dynamic not in (False, None):
        raise SchemeNotSupportedError(f"{name} has dynamic weights; weights must be statically quantized.")
    try:
        resolve_observer(weights.observer, weights.observer_kwargs)
    except SchemeNotSupportedError as err:  # CalibrationRequiredError included
        raise type(err)(f"{name}: {err}") from None
    if weights.actorder not in (None, False):
        raise CalibrationRequiredError(f"{name} sets actorder, which is a GPTQ (calibration) option.")
    float_type, int_type, strategy = ct.QuantizationType.FLOAT, ct.QuantizationType.INT, ct.QuantizationStrategy
    if weights.type == float_type and weights.num_bits not in (4, 6, 8):
        raise SchemeNotSupportedError(
            f"{name}: {weights.num_bits}-bit float weights are not defined by compressed-tensors (4, 6 or 8 bits)."
        )
    if weights.type == float_type and weights.num_bits == 6:
        if not hasattr(ct.CompressionFormat, "mxfp6_pack_quantized"):
            raise SchemeNotSupportedError(
                f"{name}: compressed-tensors {ct.version} has no MXFP6 format; "
                "upgrade it to 0.20.1 or later, or pick MXFP4A16 or MXFP8A16."
            )
        if not ct.should_generate_mx_scales(weights):
            raise SchemeNotSupportedError(
                f"{name}: 6-bit float weights exist only as MXFP6 (groups of 32, uint8 power-of-two scales); "
                "use the MXFP6A16 preset's weights."
            )
    if weights.type == float_type and not weights.symmetric and (
        weights.num_bits != 8 or weights.scale_dtype is not None
    ):
        raise SchemeNotSupportedError(
            f"{name}: asymmetric {weights.num_bits}-bit float weights with scale_dtype {weights.scale_dtype} are not "
            "supported by compressed-tensors (only FP8 with float scales has zero points); set symmetric=True."
        )
    if not weights.symmetric and weights.zp_dtype not in (None, weights.pytorch_dtype()):
        raise SchemeNotSupportedError(
            f"{name}: zero points in {weights.zp_dtype} are not supported; drop zp_dtype "
            f"(the default is {weights.pytorch_dtype()})."
        )
    if weights.type == int_type and not 2 <= weights.num_bits <= 8:
        raise SchemeNotSupportedError(f"{name}: {weights.num_bits}-bit integer weights are not supported (2-8).")
    if weights.strategy not in (
        strategy.TENSOR,
        strategy.CHANNEL,
        strategy.GROUP,
        strategy.TENSOR_GROUP,
        strategy.BLOCK,
    ):
        raise SchemeNotSupportedError(f"{name}: weight strategy {weights.strategy!r} does not apply to weights.")
    if weights.strategy == strategy.TENSOR_GROUP and not (
        weights.type == float_type and weights.num_bits == 4
    ):
        raise SchemeNotSupportedError(f"{name}: the tensor_group strategy is only defined for FP4 (NVFP4).")


def weight_args(weights: QuantizationArgs) -> dict[str, Any]:
    """The weight args a plan and its kernels read, as plain values (``presets.py`` holds each preset's)."""
    return {
        "type": str(weights.type), "num_bits": weights.num_bits, "strategy": str(weights.strategy),
        "symmetric": weights.symmetric, "group_size": weights.group_size,
        "block_structure": list(weights.block_structure) if weights.block_structure else None,
        "scale_dtype": str(weights.scale_dtype) if weights.scale_dtype is not None else None,
        "observer": weights.observer, "observer_kwargs": weights.observer_kwargs,
    }


def weight_spec(weights: Mapping[str, Any] | QuantizationScheme, fmt: str) -> WeightSpec:
    """The kernel-facing summary (``numerics.WeightSpec``) of a group's weight args.

    ``weights``: :func:`weight_args`' values (``ResolvedConfig.weights[group]``), or a
    ``QuantizationScheme``. The observer is resolved to its canonical name with every kwarg
    filled in, so two spellings of the same search give equal (hashable) specs.
    """
    w = weights if isinstance(weights, Mapping) else weight_args(weights.weights)
    observer, observer_kwargs = resolve_observer(w["observer"], w["observer_kwargs"])
    scale_dtype = w["scale_dtype"]
    return WeightSpec(
        kind=w["type"],
        num_bits=w["num_bits"],
        strategy=w["strategy"],
        symmetric=w["symmetric"],
        fmt=fmt,
        group_size=w["group_size"],
        block=tuple(w["block_structure"]) if w["block_structure"] else None,
        scale_dtype=getattr(torch, scale_dtype.removeprefix("torch.")) if scale_dtype else None,
        observer=observer,
        observer_kwargs=observer_kwargs,
    )
