"""Converters: compressed-tensors' ``Converter`` chain, applied in memory one module at a time.

llm-compressor's ``model_free_ptq(converter=...)`` runs a converter (an FP8, AWQ or
ModelOpt dequantizer, a format converter...) over every shard before quantizing.
ptq-hub takes the same objects, one or a list, and runs them module by module:

* **Planning** needs every output tensor's name, dtype and shape before a byte is
  read. Each module's tensors (and the dependencies the chain declares through
  ``get_dependencies``, from whichever shard holds them) are put through the chain as
  ``meta`` tensors; a converter that cannot run on ``meta`` (AutoAWQ reads values)
  is run once on zeros of the same shapes, and that answer is reused for every module
  whose inputs look the same (names, dtypes, shapes and dependencies). A module the
  chain hands back untouched (the same tensor objects, never modified in place) is
  copied from the source as bytes, as without a converter.
* **Running** reads a module's inputs, runs the chain's ``process`` on them, and hands
  the outputs to the quantize step; nothing converted is written to disk and memory
  holds one module's tensors at a time.

The chain's ``process`` is compressed-tensors' own code, so the dense weights are the
bytes llm-compressor quantizes, and ours quantizes them byte-identically. Where a chain
is exactly compressed-tensors' ``FP8BlockDequantizer`` (bf16), ptq-hub's own FP8-block
decode, fused into the quantize step, replaces it: the bytes are the same (tested).

Quantized sources met by the front ends (``ptq``, the Action, the Space) get their chain
from :func:`auto_converters`: compressed-tensors' dequantizer for compressed-tensors
checkpoints, and ModelOpt NVFP4 / AutoAWQ converters followed by that dequantizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import torch

from .checkpoint import Checkpoint, TensorInfo, paused_gc
from .errors import CheckpointError, ConverterError
from .sources.detect import detect_source
from .sources.formats import AWQ, COMPRESSED_TENSORS, CONVERTED, FP8_BLOCK, MODELOPT_NVFP4, Dequantization, SourceFormat, SourcePlan

__all__ = [
    "ST_TO_TORCH",
    "TORCH_TO_ST",
    "auto_converters",
    "chain_label",
    "chain_output_config",
    "model_config_update",
    "native_fp8_plan",
    "plan_conversion",
    "run_chain",
]

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}


# A probe answer: (output name relative to the module, safetensors dtype, shape).
_Outputs = list[tuple[str, str, tuple[int, ...]]]


@cache
def _config_dequantizer() -> type:
    """``_ConfigDequantizer``, defined on first use: compressed-tensors (and the transformers
    and ``torch.distributed`` it imports) costs seconds to import, and only a converted source
    needs it, so planning a dense or FP8-block checkpoint never loads it."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
    from compressed_tensors.quantization import KVCacheScaleType, QuantizationConfig, QuantizationMetadata

    kv_scales = tuple(v.value for v in KVCacheScaleType)
    qparams = frozenset(QuantizationMetadata.all_qparam_names())

    class _ConfigDequantizer(CompressedTensorsDequantizer):
        """compressed-tensors' own dequantizer, built from a config instead of a checkpoint folder.

        A Hub job has the source's config.json but no folder, and the ModelOpt / AWQ chains
        dequantize what the converter before them describes (``update_config``).
        Its ``process`` and ``get_dependencies`` are compressed-tensors' own.
        """

        def __init__(
            self,
            config: QuantizationConfig | Mapping[str, Any],
            modules: Iterable[str],
            dtype: torch.dtype = torch.bfloat16,
        ):
            self.dtype = dtype
            self.modules = frozenset(modules)
            if isinstance(config, QuantizationConfig):
                self.quant_config = config.model_copy(deep=True)
            else:
                self.quant_config = QuantizationConfig.model_validate({k: v for k, v in config.items() if k != "version"})
            for scheme in self.quant_config.config_groups.values():  # as CompressedTensorsDequantizer.__init__ does
                scheme.format = CompressionFormat(infer_module_format(torch.nn.Linear, scheme))

        # Scoped to the modules the source holds compressed: compressed-tensors' own matching
        # takes a ``Linear`` target to mean every ``weight``, and would then look for the
        # scales of embeddings, or of a dense float-quantized checkpoint's other weights.
        def get_dependencies(self, weight_name: str) -> set[str]:
            if weight_name.rpartition(".")[0] not in self.modules:
                return set()
            return super().get_dependencies(weight_name)

        def process(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            mine = {k: v for k, v in tensors.items() if k.rpartition(".")[0] in self.modules or k.endswith(kv_scales)}
            rest = {k: v for k, v in tensors.items() if k not in mine}
            # A dense module keeps its weight and bias: activation scales (ModelOpt's input_scale
            # becomes input_global_scale) would be stray tensors; kv-cache scales go, as
            # compressed-tensors drops them.
            dense = {k: v for k, v in super().process(mine).items() if k.rpartition(".")[2] not in qparams}
            return {**rest, **dense}

    return _ConfigDequantizer


def chain_label(converters: Sequence[Any]) -> str:
    """``ModelOptNvfp4Converter -> CompressedTensorsDequantizer``: how plans and errors name a chain
    (a converter's own ``label``, where it has one: ``SpinQuant R1+R2``)."""
    return " -> ".join(getattr(c, "label", None) or type(c).__name__.lstrip("_") for c in converters)


def auto_converters(source: SourcePlan, config: Mapping[str, Any]) -> tuple[Any, ...]:
    """compressed-tensors' converters that dequantize a detected source (not FP8 blocks: native).

    Raises:
        CheckpointError: compressed-tensors cannot read the source's ``quantization_config``.
    """
    from compressed_tensors.entrypoints.convert.converters import AutoAWQConverter, ModelOptNvfp4Converter
    from pydantic import ValidationError

    quant = config.get("quantization_config") or config.get("compression_config") or {}
    name = source.format.name
    modules = sorted({d.module for d in source.dequantize})
    dequantizer = _config_dequantizer()
    try:
        if name == COMPRESSED_TENSORS:
            return (dequantizer(quant, modules),)
        if name == MODELOPT_NVFP4:
            modelopt = ModelOptNvfp4Converter(targets=modules)
            return modelopt, dequantizer(modelopt.update_config(None), modules)
        if name == AWQ:
            awq = AutoAWQConverter.from_autoawq_config(dict(quant))
            return awq, dequantizer(awq.update_config(None), modules)
    except (ValidationError, ValueError) as err:
        raise CheckpointError(f"config.json's quantization_config ({source.format.summary}) cannot be read: {err}") from err
    raise AssertionError(f"no converter chain for source format {name!r}")


def model_config_update(converters: Sequence[Any]) -> Callable[[dict], dict] | None:
    """The chain's ``update_model_config`` hooks (llm-compressor 0.15's) as one edit of config.json, in order.

    A converter that changes the model itself, not only its weights' format (a rotation
    unties a tied head), says so through this hook; ``None`` when no converter has one.
    """
    hooks = [c.update_model_config for c in converters if callable(getattr(c, "update_model_config", None))]
    if not hooks:
        return None

    def update(config: dict) -> dict:
        for hook in hooks:
            config = hook(config)
        return config
    return update


def chain_output_config(config: Mapping[str, Any] | None, converters: Sequence[Any]) -> Any:
    """What a chain leaves of the source's compressed-tensors config: the config read by
    compressed-tensors, then each converter's ``update_config`` in order (a dequantizer returns
    ``None``). ``None``: the output's config describes no stored compression.

    Only a compressed-tensors config seeds the chain: llm-compressor also seeds it with a ModelOpt
    config that happens to parse, and then writes quant_method "modelopt" over CT tensors.

    Raises:
        CheckpointError: compressed-tensors cannot read the source's ``quantization_config``.
    """
    quant = (config or {}).get("quantization_config")
    incoming = None
    if isinstance(quant, Mapping) and str(quant.get("quant_method", "")).lower() == COMPRESSED_TENSORS:
        from compressed_tensors.quantization import QuantizationConfig

        try:
            incoming = QuantizationConfig.model_validate({k: v for k, v in quant.items() if k != "version"})
        except ValueError as err:  # pydantic's ValidationError
            raise CheckpointError(f"config.json's compressed-tensors quantization_config cannot be read: {err}") from err
    for converter in converters:
        incoming = converter.update_config(incoming)
    return incoming


def native_fp8_plan(converters: Sequence[Any], checkpoint: Checkpoint, config: Mapping[str, Any]) -> SourcePlan | None:
    """ptq-hub's fused FP8-block decode in place of a lone ``FP8BlockDequantizer``, where bytes match.

    The same modules are decoded (those the converter targets, by its own
    ``get_dependencies``), into bf16, with the same block size.
    """
    from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer

    if len(converters) != 1 or type(converters[0]) is not FP8BlockDequantizer:
        return None
    converter = converters[0]
    quant = config.get("quantization_config") or {}
    if converter.dtype != torch.bfloat16 or str(quant.get("quant_method", "")).lower() != "fp8":
        return None
    detected = detect_source(config, checkpoint.tensors)
    if detected.format.name != FP8_BLOCK or tuple(converter.weight_block_size) != detected.format.block:
        return None
    steps = []
    for step in detected.dequantize:
        targeted = set(converter.get_dependencies(step.tensor) or ())
        if targeted and set(step.dependencies) <= targeted:
            steps.append(step)
    return SourcePlan(detected.format, tuple(steps))


def _dependencies(name: str, converters: Sequence[Any], found: set[str]) -> set[str]:
    """Every tensor ``name`` needs through the chain, recursively (as compressed-tensors gathers them)."""
    for converter in converters:
        for dep in converter.get_dependencies(name) or ():
            if dep != name and dep not in found:
                found.add(dep)
                _dependencies(dep, converters, found)
    return found


def run_chain(tensors: dict[str, torch.Tensor], converters: Sequence[Any], module: str) -> dict[str, torch.Tensor]:
    """``process`` of each converter in order; a failure names the module and the converter."""
    for converter in converters:
        try:
            tensors = converter.process(tensors)
        except Exception as err:
            raise ConverterError(
                f"{type(converter).__name__} failed on {module or 'the top-level tensors'} "
                f"({', '.join(sorted(tensors))}): {type(err).__name__}: {err}"
            ) from err
    return tensors


def _local(name: str, module: str) -> str:
    return name[len(module) + 1:] if module and name.startswith(module + ".") else "/" + name


def _global(local: str, module: str) -> str:
    if local.startswith("/"):
        return local[1:]
    return f"{module}.{local}" if module else local


def _answer(out: Mapping[str, torch.Tensor], module: str) -> _Outputs:
    answer = []
    for name, tensor in out.items():
        if tensor.dtype not in TORCH_TO_ST:
            raise ConverterError(f"The converter chain makes {name} with dtype {tensor.dtype}, which safetensors cannot hold.")
        answer.append((_local(name, module), TORCH_TO_ST[tensor.dtype], tuple(tensor.shape)))
    return answer


def _probe(module: str, inputs: list[str], declared: bool, tensors: Mapping[str, TensorInfo],
           converters: Sequence[Any], cache: dict[tuple, _Outputs]) -> tuple[_Outputs, bool]:
    """The chain's outputs for one module's inputs, and whether it left them untouched.

    A module the chain declared dependencies for (``declared``) is converted the same way
    as every other module that looks the same (names, dtypes, shapes, dependencies): one
    probe per look, which keeps a DeepSeek-sized plan to seconds. Modules without
    dependencies are probed one by one, since only a probe can tell that they stay
    untouched. The run checks every output against the plan anyway.
    """
    key = tuple((_local(n, module), tensors[n].dtype, tensors[n].shape) for n in inputs)
    if declared and key in cache:
        return cache[key], False
    metas = {n: torch.empty(tensors[n].shape, dtype=ST_TO_TORCH[tensors[n].dtype], device="meta") for n in inputs}
    versions = {n: t._version for n, t in metas.items()}
    try:
        out = run_chain(dict(metas), converters, module)
    except ConverterError:
        out = None
    if out is not None:
        untouched = out.keys() == metas.keys() and all(out[n] is metas[n] and metas[n]._version == versions[n]
                                                       for n in metas)
        placeholder = any(t.numel() == 0 and (n not in metas or metas[n].numel() != 0) for n, t in out.items())
        if untouched or not placeholder:
            if declared and not untouched:
                cache[key] = _answer(out, module)
            return _answer(out, module), untouched
    # A converter that reads values (AutoAWQ): run it on zeros of the same shapes, once per look.
    if key not in cache:
        zeros = {n: torch.zeros(tensors[n].shape, dtype=ST_TO_TORCH[tensors[n].dtype]) for n in inputs}
        cache[key] = _answer(run_chain(zeros, converters, module), module)
    return cache[key], False


@paused_gc()
def plan_conversion(checkpoint: Checkpoint, converters: Sequence[Any], fmt: SourceFormat | None = None) -> SourcePlan:
    """Every output tensor the chain makes, module by module, from headers only.

    Args:
        checkpoint: the source's headers.
        converters: the chain, applied in order.
        fmt: the detected source format; ``None`` names the chain itself.

    Raises:
        CheckpointError: a dependency the chain declares is in no shard, or two modules
            make the same output tensor.
        ConverterError: the chain fails on a module's tensors (even on zeros).
    """
    tensors = checkpoint.tensors
    fmt = fmt or SourceFormat(CONVERTED, f"converted in memory by {chain_label(converters)}")
    needs: dict[str, set[str]] = {}
    for name in tensors:
        deps = _dependencies(name, converters, set())
        if deps:
            missing = sorted(d for d in deps if d not in tensors)  # not `deps - keys()`: that copies every key
            if missing:
                raise CheckpointError(f"{chain_label(converters)} needs {missing[0]} to convert {name}, but no shard holds it.")
            needs[name] = deps
    needed = set().union(*needs.values()) if needs else set()
    modules: dict[str, list[str]] = {}
    for name in tensors:
        if name not in needed:
            modules.setdefault(name.rpartition(".")[0], []).append(name)

    steps: list[Dequantization] = []
    made: dict[str, str] = {}
    cache: dict[tuple, _Outputs] = {}
    for module, primaries in modules.items():
        deps = sorted(set().union(*(needs.get(p, set()) for p in primaries)) - set(primaries))
        inputs = primaries + deps
        outputs, untouched = _probe(module, inputs, bool(deps) or any(p in needs for p in primaries), tensors,
                                    converters, cache)
        if untouched and not deps:
            continue  # copied from the source as bytes
        for local, dtype, shape in outputs:
            name = _global(local, module)
            if name in made:
                raise CheckpointError(f"{chain_label(converters)} makes {name} from both {made[name]} and {module}.")
            made[name] = module
            steps.append(Dequantization(module, inputs[0], tuple(inputs[1:]), name, dtype, shape))
    return SourcePlan(fmt, tuple(steps), converters=tuple(converters))
