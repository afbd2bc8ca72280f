"""Read our compressed-tensors checkpoints with vLLM's own code, on a machine without a GPU.

Runs INSIDE the side venv that ``scripts/vllm-check.sh`` makes (vLLM pinned in
``tools/vllm-version.txt``); it imports nothing of ``ptq_core``.

For each checkpoint folder and each compute capability (9.0 Hopper, 10.0 Blackwell):

1. **Platform.** vLLM's own CUDA platform class (``NonNvmlCudaPlatform``) with the compute
   capability replaced (``get_device_capability``; ``has_device_capability``,
   ``is_device_capability``, ``_check_scheme_supported`` and the kernel choosers all read it).
   Two other device properties are answered because attention backends read them while a
   model is built, never to pick a scheme or kernel: ``get_device_name`` (messages) and
   ``num_compute_units`` (split sizes). vLLM's extension modules link ``libcuda.so.1``, which
   a machine without the NVIDIA driver lacks: a stub with the same soname, whose functions all
   return CUDA_ERROR_NO_DEVICE, is built with ``cc`` and loaded first; ``torch.cuda`` stays
   unavailable, so any other call that needs the GPU fails and is reported. An attention
   backend that needs the GPU in its ``__init__`` is replaced by the next one that builds
   (noted); ``VLLM_DISABLE_SHARED_EXPERTS_STREAM=1`` (vLLM's switch) keeps MoE shared experts
   from creating a CUDA stream.
2. **Config.** ``ModelConfig`` / ``VllmConfig`` from the folder, as ``vllm serve`` builds them;
   vLLM's ``CompressedTensorsConfig`` comes from its ``quantization_config``.
3. **Schemes, layer by layer.** For each linear-like module of the checkpoint (a 2-D
   ``weight`` or a ``weight_packed``), the vLLM layer it belongs to (q/k/v -> ``qkv_proj``,
   gate/up -> ``gate_up_proj``... from the model class's ``packed_modules_mapping``; MoE
   experts -> their ``experts`` layer) and what ``CompressedTensorsConfig.get_scheme`` returns
   for that layer name (or the error it raises), plus the kernel the scheme picked.
4. **Model.** The vLLM model class built on the meta device with that quant config
   (``initialize_model``, as the default loader does), then its ``load_weights`` over the
   checkpoint's real tensors (vLLM's own ``DefaultModelLoader.get_all_weights`` iterator).
   Every parameter's weight loader is wrapped to record which checkpoint tensor filled it and
   whether it was cast. ``process_weights_after_loading`` is not run: it repacks for GPU
   kernels (Marlin, CUTLASS, FlashInfer) and needs CUDA.

   * A load is attributed to the checkpoint tensor it carries (by identity, or the tensor it
     is a view of), else to the tensor the iterator yielded last: models that buffer some
     tensors and load them after the stream (Llama-4: vision tower, projector, expert scales,
     ``mllama4.py:1153-1240``) are attributed right.
   * A parameter a model fills with ``param.copy_`` instead of its weight loader (GPT-OSS's
     16-bit experts, ``gpt_oss.py:1196-1225``) is recorded the same way (``copy_`` wrapped on
     each parameter, behaviour unchanged).
   * Models vLLM runs through its Transformers modeling backend (GPT-NeoX, OLMo-2 in 0.33's
     registry) allocate the parameters vLLM did not create with an explicit
     ``device=device_config.device`` (``models/transformers/base.py:755``), not under the
     default device: for those models only, ``device_config.device`` is set to ``meta``, the
     device every model is built on here.
   * A checkpoint without ``quantization_config`` (a bf16 source, run as a control) is read
     as vLLM reads it: every layer unquantized.

A folder the tool itself cannot handle is reported (stage ``tool``) and the others still run;
the two capability workers run side by side.

Failures (exit status 1): a layer vLLM refuses at a capability (``get_scheme`` raises, e.g.
"Found different quantization schemes for the shards of ..."); a module stored quantized that
vLLM treats as unquantized, or stored dense that vLLM treats as quantized; a model that does
not build or load; a checkpoint tensor no parameter took; a parameter nothing filled; a
narrowing cast on load. Every error names vLLM's source line. Notes (not failures): vLLM
quirks that no checkpoint of that format could avoid (A16 MoE input scales vLLM registers but
does not read, ``weight_shape`` kept in a bf16 placeholder nothing reads, KV-cache defaults).

Usage (from the repo root): scripts/vllm-check.sh OUT_DIR [OUT_DIR ...] [--json report.json]
(it makes the side venv, ``$PTQ_VLLM_VENV`` or ``~/.cache/ptq-hub/vllm-venv``, and runs this file in it).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import weakref
from pathlib import Path

CAPABILITIES = (90, 100)
STUB_NAME = "libcuda.so.1"
# Tried in order when the automatic attention backend needs a GPU to be constructed.
FALLBACK_ATTENTION_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "FLASH_ATTN_MLA", "CUTLASS_MLA", "FLASHINFER_MLA",
                               "TRITON_MLA", "FLASHMLA")
# Float dtypes by width: a load from a wider into a narrower dtype loses bits.
_FLOAT_BITS = {"float64": 64, "float32": 32, "bfloat16": 16, "float16": 16}


# ---------------------------------------------------------------- the stub driver library

def _stub_path() -> Path:
    return Path(sys.prefix) / "vllm-check" / STUB_NAME


def _driver_symbols(site_packages: Path) -> list[str]:
    """The CUDA driver API symbols (``cuXxx``) that libraries needing libcuda.so.1 import."""
    symbols: set[str] = set()
    for lib in site_packages.rglob("*.so*"):
        if not lib.is_file():
            continue
        dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
        if STUB_NAME not in dynamic:
            continue
        undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)],
                                   capture_output=True, text=True).stdout
        for line in undefined.splitlines():
            name = line.split()[-1].split("@")[0]
            if re.fullmatch(r"cu[A-Z]\w*", name):
                symbols.add(name)
    return sorted(symbols)


def ensure_stub_driver() -> Path | None:
    """Load libcuda.so.1: the real one when present, else a stub built once into the venv.

    Returns the stub's path, or None when a real driver library was found.
    """
    try:
        ctypes.CDLL(STUB_NAME, mode=ctypes.RTLD_GLOBAL)
        return None
    except OSError:
        pass
    stub = _stub_path()
    if not stub.exists():
        import vllm  # only to find site-packages; imports no extension module

        site_packages = Path(vllm.__file__).resolve().parent.parent
        source = "".join(f"int {name}(void) {{ return 100; }}\n"  # 100: CUDA_ERROR_NO_DEVICE
                         for name in _driver_symbols(site_packages))
        stub.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            c_file = Path(tmp) / "stub.c"
            c_file.write_text(source)
            built = Path(tmp) / STUB_NAME
            subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC",
                            f"-Wl,-soname,{STUB_NAME}", "-o", str(built), str(c_file)], check=True)
            shutil.move(str(built), stub)
    # Loaded by soname first, so every later dlopen of an extension module resolves against it.
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    return stub


def install_platform(capability: int):
    """vLLM's CUDA platform, with only the compute capability replaced."""
    import vllm.platforms as platforms
    from vllm.platforms.cuda import NonNvmlCudaPlatform
    from vllm.platforms.interface import DeviceCapability

    major, minor = divmod(capability, 10)

    class CapabilityPlatform(NonNvmlCudaPlatform):
        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return DeviceCapability(major=major, minor=minor)

        # The base asks torch.cuda. vLLM 0.33 reads the name only to word messages on the
        # paths this tool runs (Triton MLA/attention __init__, config/model.py's dtype error),
        # never to pick a scheme or kernel.
        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return f"vllm-check stand-in for compute capability {major}.{minor}"

        # The base asks torch.cuda. Read in model construction only by the Triton MLA and
        # Triton attention __init__ (split sizes); H100 SXM has 132 SMs, B200 148.
        @classmethod
        def num_compute_units(cls, device_id: int = 0) -> int:
            return 148 if capability >= 100 else 132

    platforms.current_platform = CapabilityPlatform()
    return platforms.current_platform


# ---------------------------------------------------------------- errors with vLLM's line

def describe_error(err: BaseException) -> dict:
    """Exception type, message, and the innermost vLLM source line that raised it."""
    frames = traceback.extract_tb(err.__traceback__)
    where = None
    for frame in reversed(frames):
        path = frame.filename.replace(os.sep, "/")
        if "/site-packages/" in path:
            rel = path.split("/site-packages/", 1)[1]
            where = f"{rel}:{frame.lineno} ({frame.name}): {frame.line}"
            if rel.startswith("vllm/"):
                break
    stack = [f"{f.filename.split('/site-packages/', 1)[1]}:{f.lineno} ({f.name})"
             for f in frames if "/site-packages/vllm/" in f.filename.replace(os.sep, "/")]
    return {"type": type(err).__name__, "message": str(err).strip(), "where": where,
            "stack": stack[-8:]}


# ---------------------------------------------------------------- the checkpoint

def read_checkpoint(folder: Path) -> dict[str, tuple[str, list[int]]]:
    """tensor name -> (dtype, shape), from the safetensors headers."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with open(shard, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                tensors[name] = (info["dtype"], info["shape"])
    return tensors


def linear_modules(tensors: dict[str, tuple[str, list[int]]]) -> dict[str, str]:
    """module -> how it is stored: "dense <dtype>", or the quantized layout it carries."""
    modules: dict[str, str] = {}
    for name, (dtype, shape) in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight_packed":
            modules[module] = f"packed {dtype}"
        elif leaf == "weight" and len(shape) == 2:
            if dtype in ("F8_E4M3", "I8"):
                scaled = f"{module}.weight_scale" in tensors
                modules[module] = f"quantized {dtype}" + ("" if scaled else " (no weight_scale)")
            else:
                modules[module] = f"dense {dtype}"
    return modules


def is_stored_quantized(storage: str) -> bool:
    return not storage.startswith("dense")


def vllm_layer_for(module: str, packed: dict[str, list[str]]) -> tuple[str, str]:
    """(vLLM layer name, kind) for a checkpoint module: fused linears and MoE experts as vLLM
    builds them (kind "linear" or "moe")."""
    m = re.fullmatch(r"(.*\.experts)\.\d+\.\w+", module)
    if m:
        return m.group(1), "moe"
    parent, _, leaf = module.rpartition(".")
    for fused, parts in packed.items():
        if leaf in parts:
            return f"{parent}.{fused}" if parent else fused, "linear"
    return module, "linear"


# ---------------------------------------------------------------- one capability, all folders

def _stand_in(class_name: str):
    """What ``find_matched_target`` sees of a layer: its class name ("Linear" targets match
    vLLM's *Linear classes by substring, not ParallelLMHead or VocabParallelEmbedding)."""
    return type(class_name, (), {})()


def _scheme_name(scheme) -> str:
    if scheme is None:
        return "unquantized"
    kernel = getattr(scheme, "kernel", None)
    name = type(scheme).__name__
    if kernel is not None:
        name += f" [{type(kernel).__name__}]"
    return name


def _moe_method_name(method) -> str:
    """The MoE method class, with the backend enum(s) it chose and whether it runs A16."""
    extras = [f"{k}={v.name}" for k, v in vars(method).items()
              if k.endswith("_backend") and hasattr(v, "name")]
    if getattr(method, "use_a16", False):
        extras.append("use_a16")
    return type(method).__name__ + (f" [{', '.join(extras)}]" if extras else "")


def config_level(quant_config, modules: dict[str, str], packed: dict[str, list[str]],
                 classes: dict[str, str]) -> dict:
    """What ``CompressedTensorsConfig.get_scheme`` (linear) / ``get_scheme_dict`` (MoE, every
    expert, as ``CompressedTensorsMoEMethod.get_moe_method`` reads expert 0) say per layer."""
    layers: dict[str, dict] = {}
    for module, storage in sorted(modules.items()):
        layer, kind = vllm_layer_for(module, packed)
        entry = layers.setdefault(layer, {"kind": kind, "modules": {}})
        entry["modules"][module] = storage
    for layer, entry in layers.items():
        if quant_config is None:
            # An unquantized checkpoint (no quantization_config, e.g. the bf16 source of an
            # output, run as a control): vLLM builds every layer unquantized.
            entry["scheme"] = "unquantized" if entry["kind"] == "linear" else "moe:unquantized"
            continue
        try:
            if entry["kind"] == "linear":
                # The built model's class for the layer when there is one, else a Linear.
                scheme = quant_config.get_scheme(layer=_stand_in(classes.get(layer, "Linear")),
                                                 layer_name=layer)
                entry["scheme"] = _scheme_name(scheme)
            else:
                quant_config._add_fused_moe_to_target_scheme_map()
                dicts = {m: quant_config.get_scheme_dict(_stand_in("Linear"), m)
                         for m in entry["modules"]}
                kinds = {m: ("quantized" if d and d.get("weights") is not None else "unquantized")
                         for m, d in dicts.items()}
                if len(set(kinds.values())) > 1:
                    raise ValueError(f"experts of {layer} get different schemes: " + ", ".join(
                        f"{m}={k}" for m, k in sorted(kinds.items()) if k != kinds[min(kinds)]))
                entry["scheme"] = "moe:" + next(iter(kinds.values()))
        except Exception as err:  # noqa: BLE001  (vLLM's refusal is the finding)
            entry["scheme"] = "ERROR"
            entry["error"] = describe_error(err)
    return layers


def _transformers_backend(model_config) -> bool:
    """Whether vLLM runs this model through its Transformers modeling backend."""
    from vllm.model_executor.model_loader.utils import get_model_architecture

    model_class, _ = get_model_architecture(model_config)
    return model_class.__module__.startswith("vllm.model_executor.models.transformers")


def check_folder(folder: Path, capability: int) -> dict:
    import torch
    from vllm.config import AttentionConfig, LoadConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.model_executor.model_loader.utils import (
        configure_quant_config,
        get_model_architecture,
        initialize_model,
    )
    from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader
    from vllm.utils.torch_utils import set_default_torch_dtype

    report: dict = {"folder": str(folder), "capability": capability, "failures": [], "notes": []}
    fail = report["failures"].append
    tensors = read_checkpoint(folder)
    modules = linear_modules(tensors)

    def configs(attention_backend: str | None):
        model_config = ModelConfig(model=str(folder), dtype="auto", enforce_eager=True,
                                   max_model_len=256)
        load_config = LoadConfig(load_format="safetensors")
        extra = {}
        if attention_backend is not None:
            extra["attention_config"] = AttentionConfig(backend=attention_backend)
        vllm_config = VllmConfig(model_config=model_config, load_config=load_config, **extra)
        if _transformers_backend(model_config):
            # vLLM's Transformers modeling backend (GPT-NeoX, OLMo-2... in vLLM 0.33's registry)
            # allocates the parameters it did not create itself with an explicit
            # device=device_config.device (models/transformers/base.py:755, init_parameters),
            # not under the default device this tool builds on: "cuda" needs the driver. The
            # tool builds every model on the meta device; here it says so to that one reader.
            vllm_config.device_config.device = torch.device("meta")
        return model_config, load_config, vllm_config

    try:
        model_config, load_config, vllm_config = configs(None)
        model_class, arch = get_model_architecture(model_config)
    except Exception as err:  # noqa: BLE001
        fail({"stage": "config", **describe_error(err)})
        return report
    report["architecture"] = arch

    # The model first: an instance may extend packed_modules_mapping (DeepSeek's fused q_a/kv_a).
    # Attention is not what this checks, but a backend may touch the GPU in its __init__
    # (FlashInfer's calls get_device_sm_count(torch.device("cuda")) at sm_100): then the model
    # is rebuilt with a backend that does not, and the report says so.
    model = None
    error = None
    for backend in (None, *FALLBACK_ATTENTION_BACKENDS):
        if backend is not None:
            model_config, load_config, vllm_config = configs(backend)
        quant_config = vllm_config.quant_config
        if quant_config is not None:  # None: an unquantized checkpoint
            configure_quant_config(quant_config, model_class)
        with set_current_vllm_config(vllm_config):
            try:
                with set_default_torch_dtype(model_config.dtype), torch.device("meta"):
                    model = initialize_model(vllm_config=vllm_config)
            except Exception as err:  # noqa: BLE001
                error = describe_error(err)
                if any(f.startswith("vllm/v1/attention/") or "(get_attn_backend_cls)" in f
                       for f in error["stack"]):
                    report["notes"].append(f"attention backend {backend or 'auto'} not built "
                                           f"({error['message'][:120]} at {error['where']}); "
                                           "tried the next one")
                    continue
            break
    if model is None and error is not None:
        fail({"stage": "build", **error})
    elif backend is not None:
        report["attention_backend"] = backend
    with set_current_vllm_config(vllm_config):
        packed = dict(getattr(quant_config, "packed_modules_mapping", None)
                      or getattr(model, "packed_modules_mapping", None) or {})
        report["packed_modules_mapping"] = packed
        classes = {name: type(module).__name__ for name, module in model.named_modules()
                   } if model is not None else {}
        layers = config_level(quant_config, modules, packed, classes)
    report["layers"] = layers

    for layer, entry in layers.items():
        if entry["scheme"] == "ERROR":
            fail({"stage": "scheme", "layer": layer, **entry["error"]})
            continue
        quantized = entry["scheme"] not in ("unquantized", "moe:unquantized")
        for module, storage in entry["modules"].items():
            if is_stored_quantized(storage) != quantized:
                fail({"stage": "scheme", "layer": layer, "type": "StorageMismatch",
                      "message": f"{module} is stored {storage} but vLLM picks {entry['scheme']}",
                      "where": None})
    if model is None:
        return report

    # What the built model actually holds, per vLLM layer.
    built: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            built[name] = _scheme_name(getattr(module, "scheme", None))
        elif isinstance(getattr(module, "quant_method", None), FusedMoEMethodBase):
            built[name] = _moe_method_name(module.quant_method)
        elif getattr(module, "quant_method", None) is not None and hasattr(module, "weight"):
            # embeddings and LM heads: vLLM's get_quant_method chose this for the module
            method = type(module.quant_method).__name__
            built[name] = "unquantized" if method.startswith("Unquantized") else method
    report["built"] = built
    # Only the W4A4 scheme asks for dynamic MXFP4 activations (W4A8Mxfp4 asks for FP8).
    if "CompressedTensorsW4A4Mxfp4 [HummingMxFp4LinearKernel]" in built.values():
        report["mxfp4_activations"] = humming_mxfp4_activations(capability)
        report["notes"].append("CompressedTensorsW4A4Mxfp4 [Humming] layers run activations as "
                               f"{report['mxfp4_activations']} (humming's fallback, evaluated "
                               "for this capability; decided after loading on a GPU)")
    if "CompressedTensorsW4A4Mxfp4 [FlashInferMxFp4LinearKernel]" in built.values():
        # kernels/linear/mxfp4/flashinfer.py: can_implement accepts only kMxfp4Dynamic
        report["mxfp4_activations"] = "float4e2m1 (dynamic, MXFP4 groups of 32)"
        report["notes"].append("CompressedTensorsW4A4Mxfp4 [FlashInfer] layers quantize "
                               "activations to MXFP4 (W4A4), whatever input_activations say")
    for layer, entry in layers.items():
        # vLLM's experts layer may hold its weights in a child (mlp.experts.routed_experts).
        match = [n for n in built if n == layer or n.startswith(layer + ".")]
        if match:
            entry["built"] = built[min(match, key=len)]

    # load_weights over the real tensors, every parameter's loader wrapped.
    params = dict(model.named_parameters())
    ids = {id(p): n for n, p in params.items()}
    fills: dict[str, list[str]] = {n: [] for n in params}
    taken: dict[str, list[str]] = {}
    casts: list[dict] = []
    current = {"name": None}

    # Which checkpoint tensor a loader call carries: the tensor itself (or the tensor it is a
    # view of) when the model passes it on unchanged, else the one the iterator yielded last.
    # Identity matters for models that buffer some tensors and load them after the stream
    # (Llama-4 loads its vision tower, projector and expert scales last, mllama4.py:1153-1240).
    yielded: dict[int, tuple[weakref.ref, str]] = {}

    def source_of(tensor) -> str | None:
        while tensor is not None:
            entry = yielded.get(id(tensor))
            if entry is not None and entry[0]() is tensor:
                return entry[1]
            tensor = getattr(tensor, "_base", None)
        return current["name"]

    def record(param, loaded_weight) -> None:
        pname = ids.get(id(param), "?")
        tensor = source_of(loaded_weight)
        fills.setdefault(pname, []).append(tensor)
        taken.setdefault(tensor, []).append(pname)
        src, dst = str(loaded_weight.dtype).removeprefix("torch."), str(param.dtype).removeprefix("torch.")
        if src != dst:
            narrowing = not (src in _FLOAT_BITS and dst in _FLOAT_BITS
                             and _FLOAT_BITS[dst] >= _FLOAT_BITS[src])
            casts.append({"tensor": tensor, "param": pname, "from": src, "to": dst,
                          "narrowing": narrowing})

    def wrap(loader):
        def recording_loader(param, loaded_weight, *args, **kwargs):
            result = loader(param, loaded_weight, *args, **kwargs)
            if result is False:  # FusedMoE's return_success: this expert mapping did not apply
                return result
            record(param, loaded_weight)
            return result
        return recording_loader

    def wrap_copy(param):
        # Some models fill a parameter with param.copy_(...) instead of its weight_loader
        # (GPT-OSS's unquantized experts, gpt_oss.py:1196-1225): recorded the same way.
        original = param.copy_

        def recording_copy(src, *args, **kwargs):
            result = original(src, *args, **kwargs)
            if isinstance(src, torch.Tensor):
                record(param, src)
            return result
        return recording_copy

    for pname, param in params.items():
        loader = getattr(param, "weight_loader", None) or default_weight_loader
        param.weight_loader = wrap(loader)
        param.copy_ = wrap_copy(param)

    loader = DefaultModelLoader(load_config)

    def tracked():
        for name, tensor in loader.get_all_weights(model_config, model):
            current["name"] = name
            taken.setdefault(name, [])
            yielded[id(tensor)] = (weakref.ref(tensor), name)
            yield name, tensor

    loaded = None
    with set_current_vllm_config(vllm_config):
        try:
            loaded = model.load_weights(tracked())
        except Exception as err:  # noqa: BLE001
            fail({"stage": "load", "tensor": current["name"], **describe_error(err)})
            return report

    # KV-cache scales fall back to defaults when a checkpoint has none (vLLM's
    # track_weights_loading exempts them too); we write no kv_cache_scheme.
    kv_defaults = {f"{name}.{p}" for name, module in model.named_modules()
                   if isinstance(getattr(module, "quant_method", None), BaseKVCacheMethod)
                   for p, _ in module.named_parameters(recurse=False)}
    # Parameters vLLM creates for W4A4 that an A16 checkpoint cannot carry: the NVFP4 MoE
    # method registers w13/w2_input_global_scale (torch.empty) whatever the checkpoint, and
    # with use_a16=True its kernel setup does not use them.
    a16_unused = {f"{name}.{p}" for name, module in model.named_modules()
                  if getattr(getattr(module, "quant_method", None), "use_a16", False)
                  for p, _ in module.named_parameters(recurse=False) if "input" in p}
    dropped = sorted(n for n, p in taken.items() if not p)
    unfilled = sorted(n for n, f in fills.items() if not f and n not in kv_defaults | a16_unused)
    for name in sorted(n for n, f in fills.items() if not f and n in a16_unused):
        report["notes"].append(f"{name} is filled by nothing; vLLM creates it for W4A4 and its "
                               "method runs use_a16=True, which does not read it")
    report["load"] = {"tensors": len(taken), "params": len(params), "dropped": dropped,
                      "unfilled": unfilled, "kv_cache_defaults": sorted(kv_defaults), "casts": casts,
                      "filled_by": {n: f for n, f in fills.items() if f}}
    for name in dropped:
        fail({"stage": "load", "type": "Dropped", "tensor": name, "where": None,
              "message": f"checkpoint tensor {name} was read by load_weights but filled no parameter"})
    for name in unfilled:
        fail({"stage": "load", "type": "Unfilled", "param": name, "where": None,
              "message": f"vLLM parameter {name} was filled by no checkpoint tensor"})
    for cast in casts:
        # compressed-tensors writes weight_shape as int64; vLLM's MoE WNA16 method keeps it in a
        # params_dtype placeholder (w13/w2_weight_shape) that nothing reads after loading.
        if cast["narrowing"] and cast["param"].endswith("_weight_shape"):
            cast["narrowing"] = False
            cast["unused_param"] = True
        if cast["narrowing"]:
            fail({"stage": "load", "type": "NarrowingCast", "where": None,
                  "message": f"{cast['tensor']} ({cast['from']}) loaded into {cast['param']} ({cast['to']})"})
    # vLLM's own strict check. Serving runs it only for unquantized models unless the load
    # config asks (enable_weights_track), so what it says is a note; anything it names that is
    # not exempted above is already a failure.
    if loaded is not None:
        try:
            DefaultModelLoader(load_config).track_weights_loading(model, set(loaded), quantized=True)
        except Exception as err:  # noqa: BLE001
            info = describe_error(err)
            report["notes"].append(f"vLLM's track_weights_loading (off by default for quantized "
                                   f"models) would raise: {info['message']} at {info['where']}")
    return report


@functools.cache
def humming_mxfp4_activations(capability: int) -> str:
    """The activations vLLM's ``HummingMxFp4LinearKernel`` runs an MXFP4 checkpoint with.

    The kernel decides after loading (``process_weights_after_loading`` ->
    ``check_and_fallback_input_schema``, quantization/utils/humming/schema.py), asking the
    device through the ``humming`` package (``cuInit``). Here humming's device answers only
    the compute capability; the weight schema is the one the kernel declares (FP4 E2M1 in
    groups of 32 with E8M0 scales) and the requested activations are its key, dynamic MXFP4,
    which vLLM picks for every MXFP4 checkpoint without FP8 input_activations.
    """
    import types

    import humming.schema.humming as humming_schema
    import torch
    from vllm.model_executor.layers.quantization.utils.humming.schema import (
        check_and_fallback_input_schema,
        quant_key_to_input_schema,
    )
    from vllm.model_executor.layers.quantization.utils.quant_utils import kMxfp4Dynamic
    from vllm.utils.humming import BaseWeightSchema

    saved = humming_schema.current_device
    major, minor = divmod(capability, 10)
    humming_schema.current_device = types.SimpleNamespace(
        sm_version=capability, sm_major=major, sm_minor=minor)
    try:
        weight = BaseWeightSchema.from_config({
            "quant_method": "humming", "dtype": "float4e2m1", "scale_dtype": "float8e8m0",
            "group_size": 32, "weight_scale_type": "group"})
        chosen = check_and_fallback_input_schema(
            weight_schema=weight, input_schema=quant_key_to_input_schema(kMxfp4Dynamic),
            param_dtype=torch.bfloat16, allow_fallback=True)
        mode = getattr(chosen.input_quant_mode, "value", chosen.input_quant_mode)
        return f"{chosen.a_dtype or '16-bit'} ({mode})"
    except Exception as err:  # noqa: BLE001
        return f"undetermined ({describe_error(err)['message'][:160]})"
    finally:
        humming_schema.current_device = saved


def run_worker(capability: int, folders: list[str], out: Path) -> None:
    """One process per capability: vLLM caches kernel choices, so a capability is never
    changed inside a process."""
    import logging

    ensure_stub_driver()
    platform = install_platform(capability)
    import socket

    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    logging.getLogger("vllm").setLevel(logging.ERROR)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        initialize_model_parallel(1, 1)
    import torch

    reports = []
    for folder in folders:
        try:
            reports.append(check_folder(Path(folder), capability))
        except Exception as err:  # noqa: BLE001  (one folder the tool cannot handle stops no other)
            reports.append({"folder": folder, "capability": capability, "notes": [],
                            "failures": [{"stage": "tool", **describe_error(err)}]})
    out.write_text(json.dumps({"capability": capability,
                               "device_capability": str(platform.get_device_capability()),
                               "cuda_available": torch.cuda.is_available(),
                               "reports": reports}, indent=1))


# ---------------------------------------------------------------- the driver

def _version() -> str:
    from importlib.metadata import version

    return version("vllm")


def pinned_version() -> str:
    """The version in tools/vllm-version.txt, the one place that pins it."""
    lines = Path(__file__).with_name("vllm-version.txt").read_text().splitlines()
    spec = next(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    return spec.split("==", 1)[1]


def print_table(folder: str, per_cap: dict[int, dict]) -> None:
    caps = sorted(per_cap)
    rows: dict[str, dict[int, str]] = {}
    storage: dict[str, str] = {}
    for cap in caps:
        for layer, entry in per_cap[cap].get("layers", {}).items():
            shown = entry.get("built") or entry["scheme"]
            if entry["scheme"] == "ERROR":
                shown = f"ERROR {entry['error']['type']}"
            rows.setdefault(layer, {})[cap] = shown
            storage[layer] = ", ".join(sorted(set(entry["modules"].values())))
    arch = next((r.get("architecture") for r in per_cap.values() if r.get("architecture")), "?")
    print(f"\n== {folder} ({arch})")
    # Layers differing only by their layer index share one row.
    grouped: dict[tuple, list[str]] = {}
    for layer in sorted(rows):
        pattern = re.sub(r"\.\d+\.", ".N.", layer)
        key = (pattern, storage[layer], tuple(rows[layer].get(c, "-") for c in caps))
        grouped.setdefault(key, []).append(layer)
    header = ["layer", "stored"] + [f"sm_{c}" for c in caps]
    table = [header] + [[p + (f"  (x{len(ls)})" if len(ls) > 1 else ""), s, *v]
                        for (p, s, v), ls in grouped.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for cap in caps:
        rep = per_cap[cap]
        load = rep.get("load")
        if load:
            print(f"  sm_{cap}: load_weights took {load['tensors']} tensors into {load['params']} "
                  f"params; dropped {len(load['dropped'])}, unfilled {len(load['unfilled'])}, "
                  f"casts {len(load['casts'])} ({sum(c['narrowing'] for c in load['casts'])} narrowing)")
            kinds = sorted({f"{c['from']}->{c['to']}" for c in load["casts"]})
            if kinds:
                print(f"  sm_{cap}: casts on load: {', '.join(kinds)}")
        notes: dict[str, int] = {}
        for note in rep.get("notes", []):
            short = re.sub(r"\.\d+\.", ".N.", note)
            notes[short] = notes.get(short, 0) + 1
        for note, n in notes.items():
            print(f"  note sm_{cap}: {note}" + (f"  (x{n})" if n > 1 else ""))
        counts: dict[tuple, int] = {}
        for f in rep["failures"]:
            key = (f["stage"], f.get("type"), re.sub(r"\.\d+\.", ".N.", f.get("message") or ""),
                   f.get("where"))
            counts[key] = counts.get(key, 0) + 1
        for (stage, kind, message, where), n in counts.items():
            print(f"  FAIL sm_{cap} [{stage}] {kind}: {message}" + (f"  (x{n})" if n > 1 else ""))
            if where:
                print(f"       at {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="compressed-tensors checkpoint folders")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--capability", type=int, action="append",
                        help="compute capability as an int (90, 100); repeatable; default both")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker, args.folders, Path(args.worker_out))
        return 0

    for folder in args.folders:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"{folder}: no config.json; pass a checkpoint folder")
    if _version() != pinned_version():
        print(f"warning: vLLM {_version()} is installed, tools/vllm-version.txt pins "
              f"{pinned_version()}; rerun scripts/vllm-check.sh", file=sys.stderr)
    caps = tuple(args.capability or CAPABILITIES)
    results: dict[int, dict] = {}
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
           # vLLM's own switch: no CUDA stream for MoE shared experts (the runner
           # creates one in __init__ otherwise, shared_experts.py, which needs a GPU).
           "VLLM_DISABLE_SHARED_EXPERTS_STREAM": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        # The capability workers are independent processes: run side by side.
        workers = {}
        for cap in caps:
            out = Path(tmp) / f"sm_{cap}.json"
            log = open(Path(tmp) / f"sm_{cap}.log", "w+")
            proc = subprocess.Popen([sys.executable, __file__, *args.folders, "--worker", str(cap),
                                     "--worker-out", str(out)], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
            workers[cap] = (proc, out, log)
        failed_worker = None
        for cap, (proc, out, log) in workers.items():
            returncode = proc.wait()
            log.seek(0)
            text = log.read()
            log.close()
            if (returncode != 0 or not out.exists()) and failed_worker is None:
                sys.stderr.write(text[-12000:])
                print(f"error: the sm_{cap} worker failed (exit {returncode})", file=sys.stderr)
                failed_worker = cap
            elif failed_worker is None:
                results[cap] = json.loads(out.read_text())
        if failed_worker is not None:
            return 2
    failed = 0
    report = {"vllm": _version(), "capabilities": list(caps), "checkpoints": []}
    for i, folder in enumerate(args.folders):
        per_cap = {cap: results[cap]["reports"][i] for cap in caps}
        print_table(folder, per_cap)
        failed += sum(bool(r["failures"]) for r in per_cap.values())
        report["checkpoints"].append({"folder": folder, "by_capability": {str(c): r for c, r in per_cap.items()}})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nvLLM {report['vllm']}: {len(args.folders)} checkpoint(s) x {len(caps)} capabilities, "
          f"{failed} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
