"""Schemes: resolving what the caller asked for into compressed-tensors objects.

With ``convert.py`` and ``plan.py``, the only module that uses ``compressed_tensors``. It turns
a preset name, a ``QuantizationScheme`` or a ``QuantizationConfig`` into a validated *copy*
(the caller's objects are never mutated), refuses schemes that need calibration data, and
describes the presets for the front ends.

compressed-tensors is imported at first use, not with this module: any of its submodules
runs its package ``__init__``, which loads transformers and ``torch.distributed`` (2-3 s of
CPU), and ``import ptq_core.job`` (every ``ptq`` command, Action step and recipe) must not pay
that before it needs a scheme.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from .errors import CalibrationRequiredError, SchemeNotSupportedError
from .matching import MAX_IGNORE_ENTRIES, validate_ignore
from .numerics import WeightSpec
from .observers import resolve_observer

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

# Which GPUs vLLM 0.33 runs each preset on (each scheme's ``get_min_capability`` in
# vllm/model_executor/layers/quantization/compressed_tensors/schemes/, and the kernel it picks).
_GPUS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8 GEMMs from compute capability 8.9 (Ada, Hopper, Blackwell); weight-only FP8 Marlin from 7.5",
    "FP8_BLOCK": "FP8 block GEMMs from compute capability 8.9 (Ada, Hopper, Blackwell)",
    "NVFP4A16": "Blackwell (10.0) FP4 kernels; weight-only NVFP4 Marlin with 16-bit activations from 7.5 (Turing, Ampere, Hopper)",
    # vLLM reads no input_activations for MXFP4 weights (compressed_tensors.py _get_scheme_from_parts);
    # the kernel picks the activations: tools/vllm_check.py and docs/loaders.md.
    "MXFP4A16": ("not always with 16-bit activations: Marlin with 16-bit activations from 8.0 (Ampere, Ada); "
                 "Humming with dynamic FP8 activations on Hopper (9.0); dynamic MXFP4 activations on Blackwell (10.0)"),
    "MXFP4": "Blackwell (10.0) MXFP4 kernels; weight-only MXFP4 Marlin from 8.0 (Ampere, Hopper)",
    "MXFP8A16": "weight-only MXFP8 from 7.5; Blackwell (10.0) MX kernels",
    "MXFP8": "Blackwell (10.0) MXFP8 kernels; weight-only from 7.5",
    "W4A16": "weight-only INT4 Marlin / Machete from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W4A16_ASYM": "weight-only INT4 Marlin from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W8A16": "weight-only INT8 Marlin from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W8A8": "INT8 GEMMs from 7.5 (Turing, Ampere, Ada, Hopper)",
    "INT8": "INT8 GEMMs from 7.5 (Turing, Ampere, Ada, Hopper)",
    "W4AFP8": ("none: vLLM 0.33 reads W4A8-FP8 only pack-quantized and only on Hopper (9.0), while compressed-tensors "
               "0.20 writes it int-quantized (tools/vllm_check.py)"),
    "MXFP6A16": "no released vLLM loader yet",
    "MXFP6A8": "no released vLLM loader yet",
}


def gpu_support(name: str) -> str | None:
    """Which GPUs vLLM runs a preset on, in one line (None for a custom config)."""
    return _GPUS.get(name)


# One line per preset for the Space's dropdown and the README table.
_DESCRIPTIONS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8 weights, per-channel scales, dynamic per-token FP8 activations. Hopper/Ada+; ~2x smaller, near-lossless.",
    "FP8_BLOCK": "FP8 weights in 128x128 blocks, dynamic FP8 activations (DeepSeek style). Hopper/Blackwell; ~2x smaller.",
    "NVFP4A16": "NVFP4 weights (16-wide groups, FP8 scales + global scale), 16-bit activations. Blackwell native, Hopper via Marlin; ~3.5x smaller.",
    "MXFP4A16": ("MXFP4 weights (32-wide groups, power-of-two scales), 16-bit activations in transformers and on "
                 "Ampere/Ada (Marlin); vLLM 0.33 runs dynamic FP8 activations on Hopper and MXFP4 on Blackwell; ~3.8x smaller."),
    "MXFP4": "MXFP4 weights and dynamic MXFP4 activations. Blackwell; ~3.8x smaller, lowest precision.",
    "MXFP4XFP8": "MXFP4 weights with dynamic FP8 activations. Blackwell; ~3.8x smaller.",
    "MXFP8A16": "MXFP8 weights (32-wide groups, power-of-two scales), 16-bit activations. Blackwell; ~2x smaller.",
    "MXFP8": "MXFP8 weights and dynamic MXFP8 activations. Blackwell; ~2x smaller.",
    "MXFP6A16": "MXFP6 (E2M3) weights (32-wide groups, power-of-two scales), 16-bit activations. No released loader yet; ~2.6x smaller.",
    "MXFP6A8": "MXFP6 (E2M3) weights and dynamic MXFP8 activations. No released loader yet; ~2.6x smaller.",
    "W4A16": "INT4 weights (groups of 128, symmetric), 16-bit activations. Any GPU via Marlin/Machete; ~3.5x smaller.",
    "W4A16_ASYM": "INT4 weights (groups of 128, with zero points), 16-bit activations. Any GPU; ~3.5x smaller, better on outliers.",
    "W8A16": "INT8 weights (groups of 128), 16-bit activations. Any GPU; ~2x smaller, near-lossless.",
    "W8A8": "INT8 per-channel weights, dynamic per-token INT8 activations. Ampere+; ~2x smaller, fast GEMMs.",
    "INT8": "Alias of W8A8.",
    "W4AFP8": "INT4 weights (groups of 128), dynamic FP8 activations. vLLM 0.33 cannot load this format yet; ~3.5x smaller.",
}

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

    Attributes:
        config: the ``QuantizationConfig`` (status ``initialized``), groups in order.
        name: a display / repo-suffix name (the preset name, or ``config_group_0``).
        formats: compressed-tensors format of each config group, by group name.
        model_defaults: the planner adds the model's own loader-safe entries to ``ignore``
            (the front ends' default rule); False once added, and for ``model_free_ptq``.
    """

    config: QuantizationConfig
    name: str
    formats: dict[str, str]
    model_defaults: bool = False

    def with_ignore(self, extra: Iterable[str]) -> "ResolvedConfig":
        """A copy whose ignore list ends with ``extra`` (the model's defaults, once added)."""
        ignore = self.ignore + [e for e in extra if e not in self.ignore]
        return replace(self, config=self.config.model_copy(update={"ignore": ignore}), model_defaults=False)

    @property
    def groups(self) -> list[tuple[str, QuantizationScheme]]:
        return list(self.config.config_groups.items())

    @property
    def ignore(self) -> list[str]:
        return list(self.config.ignore or [])

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


def _preset_is_data_free(name: str) -> bool:
    ct = _ct()
    if "weights" not in ct.PRESET_SCHEMES[name]:
        return False
    try:
        _check_data_free(ct.preset_name_to_scheme(name, ["Linear"]), name)
    except SchemeNotSupportedError:
        return False
    return True


def list_schemes(*, data_free_only: bool = True) -> list[SchemeInfo]:
    """Presets of the installed compressed-tensors, with one line each.

    Args:
        data_free_only: list only presets ptq-hub can produce (the default).
    """
    ct = _ct()
    infos = []
    for name in ct.PRESET_SCHEMES:
        free = _preset_is_data_free(name)
        if data_free_only and not free:
            continue
        scheme = ct.preset_name_to_scheme(name, ["Linear"])
        fmt = ct.infer_module_format(ct.Linear, scheme).value if scheme.weights else "dense"
        description = _DESCRIPTIONS.get(name) or _describe(scheme.weights, scheme.input_activations)
        infos.append(SchemeInfo(name=name, description=description, format=fmt, data_free=free))
    return infos


def _describe(weights: QuantizationArgs | None, inputs: QuantizationArgs | None) -> str:
    if weights is None:
        return "No quantization."
    w = f"{weights.type.upper()}{weights.num_bits} weights ({weights.strategy}"
    w += f", groups of {weights.group_size})" if weights.group_size else ")"
    a = f", dynamic {inputs.type.upper()}{inputs.num_bits} activations" if inputs else ", 16-bit activations"
    return w + a + "."


def canonical_scheme_name(name: str) -> str:
    """The preset's own spelling: ``fp8_block`` / `` FP8_Block `` -> ``FP8_BLOCK``.

    Every front end and every output (config group, plan, card, repo name) uses
    this spelling, so the same request always gives the same bytes and names.

    Raises:
        SchemeNotSupportedError: not a preset of the installed compressed-tensors.
    """
    canonical = name.strip().upper() if isinstance(name, str) else ""
    if canonical not in _ct().PRESET_SCHEMES:
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
    final = ct.QuantizationConfig(
        config_groups=groups, quantization_status=ct.QuantizationStatus.INITIALIZED, ignore=base_ignore + ignore,
    )
    return ResolvedConfig(config=final, name=name, formats=formats, model_defaults=model_defaults)


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


def weight_spec(scheme: QuantizationScheme, fmt: str):
    """The kernel-facing summary (``numerics.WeightSpec``) of a scheme's weight args.

    The observer is resolved to its canonical name with every kwarg filled in, so
    two spellings of the same search give equal (hashable) specs.
    """
    w = scheme.weights
    observer, observer_kwargs = resolve_observer(w.observer, w.observer_kwargs)
    return WeightSpec(
        kind=str(w.type),
        num_bits=w.num_bits,
        strategy=str(w.strategy),
        symmetric=w.symmetric,
        fmt=fmt,
        group_size=w.group_size,
        block=tuple(w.block_structure) if w.block_structure else None,
        scale_dtype=w.scale_dtype,
        observer=observer,
        observer_kwargs=observer_kwargs,
    )
