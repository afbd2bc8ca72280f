"""compressed-tensors' own reference path, one weight at a time.

This mirrors, step by step, what llm-compressor 0.14's ``model_free_ptq`` does per tensor
(``entrypoints/model_free/{converter,lifecycle}.py``, ``observers/{base,min_max,helpers}.py``,
``modifiers/quantization/calibration.py``), using only compressed-tensors + torch.
llm-compressor itself is never imported (it is not a dependency of this project).

Per tensor the peer does::

    module = torch.nn.Linear(K, N, bias=False, dtype=weight.dtype); module.weight.data.copy_(weight)
    initialize_module_for_quantization(module, scheme, force_zero_point=False)
    initialize_observer(module, "weight")          # memoryless_minmax for weights
    observe(module, "weight")                      # min/max of flatten_for_calibration(weight)
    update_qparams(module, "weight")               # calculate_qparams(...) (+ generate_gparam)
    freeze_module_quantization(module)
    compress_module(module)
    module.state_dict()

For TENSOR_GROUP schemes (NVFP4*) fused partners (q/k/v, gate/up, w1/w3, ...) share one
global scale computed from the absmax over all members: pass it as ``global_absmax``
(see :func:`group_absmax`, :func:`reference_quantize_group`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from compressed_tensors.compressors import BaseCompressor, compress_module
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.config import CompressionFormat
from compressed_tensors.offload import update_offload_parameter
from compressed_tensors.quantization.lifecycle import fake_quantize
from compressed_tensors.quantization import (
    DynamicType,
    QuantizationArgs,
    QuantizationScheme,
    QuantizationStatus,
    QuantizationStrategy,
    initialize_module_for_quantization,
)
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES, preset_name_to_scheme
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    generate_gparam,
    maybe_pad_tensor_for_block_quant,
    strategy_cdiv,
)

__all__ = [
    "preset",
    "is_data_free",
    "data_free_presets",
    "flatten_weight",
    "observe_min_max",
    "grid_search_mse",
    "group_absmax",
    "global_scale_from_absmax",
    "reference_qparams",
    "reference_quantize",
    "reference_quantize_group",
    "reference_format",
    "reference_decompress",
    "split_fused_moe_experts",
    "reference_split_experts",
]

# observers that llm-compressor maps onto MemorylessMinMaxObserver for weights
_MINMAX_OBSERVERS = (None, "memoryless_minmax", "static_minmax", "minmax")


# --------------------------------------------------------------------------- schemes


def preset(name: str, targets: Sequence[str] = ("Linear",)) -> QuantizationScheme:
    """A fresh (deep-copied) preset scheme, e.g. ``preset("NVFP4A16")``."""
    return preset_name_to_scheme(name, list(targets))


def is_data_free(scheme: QuantizationScheme) -> bool:
    """Static weights; activations absent or fully dynamic (``dynamic=True``, not LOCAL).

    Same rule as ``QuantizationConfig.requires_calibration_data()`` plus "has static weights".
    """
    w = scheme.weights
    if w is None or w.dynamic is not False:
        return False
    if w.observer not in _MINMAX_OBSERVERS and w.observer not in _MSE_DEFAULTS:
        return False
    inp, out = scheme.input_activations, scheme.output_activations
    if inp is not None and inp.dynamic in (False, DynamicType.LOCAL):
        return False
    if out is not None and not out.dynamic:
        return False
    return True


def data_free_presets() -> list[str]:
    """Names of every compressed-tensors preset that is data-free (see :func:`is_data_free`)."""
    return [name for name in PRESET_SCHEMES if PRESET_SCHEMES[name] and is_data_free(preset(name))]


# --------------------------------------------------------------------------- observer


def flatten_weight(value: torch.Tensor, args: QuantizationArgs) -> torch.Tensor:
    """llm-compressor ``observers/helpers.py::_flatten_weight``:
    ``(num_observations, *qparam_shape, group_size)``; BLOCK zero-pads to whole blocks."""
    strategy = args.strategy
    if strategy == QuantizationStrategy.TENSOR:
        return value.reshape((1, 1, -1))
    if strategy == QuantizationStrategy.TOKEN:
        raise ValueError("Token quantization cannot be applied to weights")
    if strategy == QuantizationStrategy.CHANNEL:
        return value.unsqueeze(-2).unsqueeze(0)
    if strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        return value.unflatten(-1, (-1, args.group_size)).unsqueeze(0)
    if strategy == QuantizationStrategy.BLOCK:
        block_height, block_width = args.block_structure
        value = maybe_pad_tensor_for_block_quant(value, args.block_structure)
        rows, cols = value.shape
        block_rows = strategy_cdiv(rows, block_height, strategy, strict=True)
        block_cols = strategy_cdiv(cols, block_width, strategy, strict=True)
        return (
            value.reshape(block_rows, block_height, block_cols, block_width)
            .transpose(1, 2)
            .flatten(-2, -1)
            .unsqueeze(0)
        )
    if strategy == QuantizationStrategy.ATTN_HEAD:
        raise ValueError("Attention head quantization cannot be applied to weights")
    raise ValueError(f"Unknown strategy {strategy}")


def observe_min_max(weight: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight observer's statistics (``min_vals``, ``max_vals``), in the weight's dtype.

    ``MemorylessMinMaxObserver``: amin/amax over dims (0, -1) of the flattened weight.
    Shapes: TENSOR (1,), CHANNEL (N, 1), GROUP/TENSOR_GROUP (N, K/g), BLOCK (ceil(N/bh),
    ceil(K/bw)). The MSE observers: :func:`grid_search_mse` with the peer's defaults.
    """
    observed = flatten_weight(weight, args)
    if args.observer in _MINMAX_OBSERVERS:
        return torch.amin(observed, dim=(0, -1)), torch.amax(observed, dim=(0, -1))
    if args.observer not in _MSE_DEFAULTS:
        raise NotImplementedError(f"observer {args.observer!r} is not a data-free weight observer")
    kwargs = {**_MSE_DEFAULTS[args.observer], **(args.observer_kwargs or {})}
    return grid_search_mse(observed, args, **{k: kwargs[k] for k in ("maxshrink", "patience", "grid", "norm", "expand")})


# llm-compressor 0.14.0.1 observers/mse.py: MemorylessMSEObserver and NVFP4ExpandedMSEObserver defaults
# ("mse" and "fouroversix" are the peer's names for the same searches)
_MSE = {"maxshrink": 0.20, "patience": 5, "grid": 100.0, "norm": 2.4, "expand": 1.0}
_NVFP4_MSE = {"maxshrink": 1 - 0.8 / 1.8, "patience": 1000, "grid": 200.0, "norm": 2.4, "expand": 1.8}
_MSE_DEFAULTS = {"memoryless_mse": _MSE, "mse": _MSE, "nvfp4_expanded_mse": _NVFP4_MSE, "fouroversix": _NVFP4_MSE}


@torch.no_grad()
def grid_search_mse(
    observed: torch.Tensor, args: QuantizationArgs, *, maxshrink: float, patience: int, grid: float, norm: float,
    expand: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """llm-compressor 0.14.0.1 ``observers/mse_quant.py::_grid_search_mse`` (the eager path), step by
    step: shrink the expanded min/max by ``1 - i / grid``, fake-quantize with compressed-tensors'
    ``calculate_qparams`` / ``fake_quantize`` (strategy TOKEN), keep the least ``sum |q - w| ** norm``
    per cell, stop after ``patience`` steps that improve no cell."""
    if args.strategy == QuantizationStrategy.TENSOR_GROUP and args.scale_dtype is not None:
        args = args.model_copy(update={"scale_dtype": None})
    token_args = args.model_copy(update={"strategy": QuantizationStrategy.TOKEN})
    min_val = torch.amin(observed, dim=(0, -1)) * expand
    max_val = torch.amax(observed, dim=(0, -1)) * expand
    best_error = torch.full_like(min_val, torch.finfo(min_val.dtype).max)
    best_min, best_max = min_val.clone(), max_val.clone()
    no_improve = 0
    for i in range(int(maxshrink * grid)):
        p = 1 - i / grid
        shrunk_min, shrunk_max = min_val * p, max_val * p
        scales, zero_points = calculate_qparams(min_vals=shrunk_min, max_vals=shrunk_max, quantization_args=args)
        q = fake_quantize(observed, scales.unsqueeze(-1), zero_points.unsqueeze(-1), token_args).to(observed.dtype)
        err = torch.sum((q - observed).abs().pow(norm), dim=(0, -1))
        improved = err < best_error
        if torch.any(improved):
            best_error[improved] = err[improved]
            best_min[improved] = shrunk_min[improved]
            best_max[improved] = shrunk_max[improved]
            no_improve = 0
        else:
            no_improve += 1
            if no_improve >= patience:
                break
    return best_min, best_max


def group_absmax(weights: Sequence[torch.Tensor], scheme: QuantizationScheme | QuantizationArgs) -> torch.Tensor:
    """The fused group's absmax exactly as ``Observer.get_global_scale`` reduces it:
    start from member 0's ``max_vals.max()``, then for every member
    ``max(g, -min_vals.min())`` and ``max(g, max_vals.max())``. 0-dim, weight dtype."""
    args = scheme.weights if isinstance(scheme, QuantizationScheme) else scheme
    stats = [observe_min_max(w, args) for w in weights]
    g = stats[0][1].max()
    for mn, mx in stats:
        g = torch.max(g, -mn.min())
        g = torch.max(g, mx.max())
    return g


def global_scale_from_absmax(global_absmax: torch.Tensor) -> torch.Tensor:
    """``generate_gparam(-a, a)``: 448*6 / a computed in a's dtype (bf16 for a bf16 model),
    NaN/inf -> 1.0, then cast to float32, shape [1]."""
    a = global_absmax.reshape(1)
    return generate_gparam(-a, a)


def reference_qparams(
    weight: torch.Tensor,
    scheme: QuantizationScheme,
    *,
    global_absmax: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """What ``Observer.get_qparams`` returns (before the copy into the module's params):
    ``{"scale", "zero_point", "global_scale"}``."""
    args = scheme.weights
    min_vals, max_vals = observe_min_max(weight, args)
    global_scale = None
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        if global_absmax is None:
            global_absmax = group_absmax([weight], args)
        global_scale = global_scale_from_absmax(global_absmax)
    scale, zero_point = calculate_qparams(
        min_vals=min_vals, max_vals=max_vals, quantization_args=args, global_scale=global_scale
    )
    return {"scale": scale, "zero_point": zero_point, "global_scale": global_scale}


# --------------------------------------------------------------------------- the reference


def _validate(weight: torch.Tensor, scheme: QuantizationScheme, name: str = "weight") -> None:
    # lifecycle.validate_weight_for_quantization (same messages, ValueError)
    if weight.ndim != 2:
        raise ValueError(
            f"Unable to quantize tensor `{name}`: expected 2D linear weight, "
            f"but got shape {tuple(weight.shape)}"
        )
    try:
        flatten_weight(weight, scheme.weights)
    except Exception as exc:
        raise ValueError(f"Unable to quantize tensor `{name}`: {exc}") from exc


@torch.no_grad()
def reference_quantize(
    weight: torch.Tensor,
    scheme: QuantizationScheme,
    *,
    global_absmax: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The compressed per-module state dict (local names: ``weight`` | ``weight_packed``,
    ``weight_scale``, ``weight_zero_point``, ``weight_global_scale``, ``weight_shape``),
    on CPU, exactly as llm-compressor's model-free path produces it.

    ``global_absmax`` (TENSOR_GROUP only): the fused group's absmax from :func:`group_absmax`;
    ``None`` means the tensor is alone (its own absmax).
    """
    scheme = copy.deepcopy(scheme)  # compress_module writes scheme.format
    _validate(weight, scheme)

    # lifecycle.initialize_quantized_linear
    out_features, in_features = weight.shape
    module = torch.nn.Linear(in_features, out_features, bias=False, device=weight.device, dtype=weight.dtype)
    module.weight.data.copy_(weight)
    initialize_module_for_quantization(module, scheme, force_zero_point=False)

    # lifecycle.calibrate_weight: initialize_observer / observe / update_qparams / freeze
    args = scheme.weights
    module.quantization_status = QuantizationStatus.CALIBRATION
    if args is not None and args.dynamic is not True:  # no observer for dynamic weights
        qparams = reference_qparams(module.weight, scheme, global_absmax=global_absmax)
        is_dynamic = args.dynamic in (True, DynamicType.LOCAL)
        for param_name, value in qparams.items():
            if value is None:
                continue
            if is_dynamic and param_name in ("scale", "zero_point"):
                continue
            full = f"weight_{param_name}"
            if hasattr(module, full):
                # param.copy_(value): casts into the param's dtype (e.g. f32 NVFP4 scales -> bf16)
                update_offload_parameter(module, full, value)
    module.quantization_status = QuantizationStatus.FROZEN

    compress_module(module)
    # .contiguous(): for FP8_BLOCK with K % 128 != 0 the compressor returns a column slice of the
    # padded fp8 tensor (a non-contiguous view; the peer's save_file then raises). Values unchanged.
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def reference_quantize_group(
    weights: Mapping[str, torch.Tensor], scheme: QuantizationScheme
) -> dict[str, dict[str, torch.Tensor]]:
    """Quantize the members of one fused group (``{name: weight}``). For TENSOR_GROUP they
    share one global scale (the peer's FusionHandler); otherwise each is independent."""
    ga = None
    if scheme.weights.strategy == QuantizationStrategy.TENSOR_GROUP:
        ga = group_absmax(list(weights.values()), scheme)
    return {n: reference_quantize(w, scheme, global_absmax=ga) for n, w in weights.items()}


def reference_format(scheme: QuantizationScheme) -> CompressionFormat:
    """The compression format compress_module picks for a Linear with this scheme."""
    return CompressionFormat(scheme.format or infer_module_format(torch.nn.Linear, scheme))


def reference_decompress(state: Mapping[str, torch.Tensor], scheme: QuantizationScheme) -> torch.Tensor:
    """Dense weight back from a compressed per-module state dict (the matching compressor's
    ``decompress``)."""
    compressor = BaseCompressor.get_value_from_registry(reference_format(scheme).value)
    return compressor.decompress(dict(state), scheme)["weight"]


# --------------------------------------------------------------------------- MoE split


def split_fused_moe_experts(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llm-compressor ``converter.split_fused_moe_experts``: every 3-D tensor whose name
    contains ``gate_up_proj`` -> per-expert ``N.gate_proj`` / ``N.up_proj`` (first / second
    half of dim 1), ``down_proj`` -> ``N.down_proj``; ``.weight`` appended when missing.
    Everything else passes through. Splits are views of the input (no copy)."""
    params_to_split = {"gate_up_proj": ["gate_proj", "up_proj"], "down_proj": ["down_proj"]}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        keys = [k for k in params_to_split if k in name]
        if len(keys) >= 2:
            raise ValueError(f"Found multiple keys matching {name}: {keys}")
        if len(keys) == 1 and tensor.ndim == 3:
            unsplit = keys[0]
            split_names = params_to_split[unsplit]
            if tensor.shape[1] % len(split_names) != 0:
                raise ValueError(
                    f"{unsplit} expects a second dimension divisible by "
                    f"{len(split_names)} but got shape: {tensor.shape}"
                )
            inter = tensor.shape[1] // len(split_names)
            for e in range(tensor.shape[0]):
                for split_name, layer in zip(split_names, tensor[e].split(inter, dim=0)):
                    key = name.replace(unsplit, f"{e}.{split_name}")
                    if not key.endswith(".weight"):
                        key = f"{key}.weight"
                    out[key] = layer
        else:
            out[name] = tensor
    return out


def reference_split_experts(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`split_fused_moe_experts` for one tensor."""
    return split_fused_moe_experts({name: tensor})
