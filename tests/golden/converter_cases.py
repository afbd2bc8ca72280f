"""The converter golden cases: quantized sources, the converter each goes through, the new scheme.

Imported both by ``make_converter_golden.py`` (run in the peer's venv: llm-compressor 0.14.0.1,
compressed-tensors 0.19.0) and by ``tests/test_converter_sources.py`` (ours: compressed-tensors
0.20.1), so each source is rebuilt on both sides from the same seeded factory; only the peer's
outputs and a digest of each source's tensors are stored. Imports: torch, safetensors,
compressed-tensors and ``tests/factory.py`` (itself torch + safetensors only).

Two sources are made by quantizing a dense checkpoint (compressed-tensors NVFP4A16, and
ModelOpt NVFP4 renamed from it): there the caller passes its ``model_free_ptq`` (the peer
its own, the tests ours), and the stored digest proves both built the same tensors.

Regenerate with ``~/.cache/ptq-hub/bench/peer-venv/bin/python tests/golden/make_converter_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from compressed_tensors.entrypoints.convert.converters import (
    AutoAWQConverter,
    CompressedTensorsDequantizer,
    FP8BlockDequantizer,
    ModelOptNvfp4Converter,
)

# the factory sits one folder up; the peer's script runs this file outside pytest's path setup
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from factory import (  # noqa: E402
    TINY_LLAMA_DIMS,
    load_tensors,
    make_awq_checkpoint,
    make_compressed_tensors_checkpoint,
    make_fp8_block_checkpoint,
    make_modelopt_nvfp4_checkpoint,
)

GOLDEN_FILE = "converters.safetensors"
CONFIG_FILE = "converters.json"

# the tiny Llama with a 64-token vocabulary: every case's output stays under ~250 kB
DIMS = {**TINY_LLAMA_DIMS, "vocab_size": 64}
NO_EMBEDDINGS = ("re:.*embed_tokens$",)

FP8_BLOCK, AWQ, MODELOPT, COMPRESSED_TENSORS = "fp8-block", "awq", "modelopt-nvfp4", "compressed-tensors"


@dataclass(frozen=True)
class Case:
    """One peer run: ``model_free_ptq(source, out, scheme, ignore=ignore, device="cpu", converter=...)``.

    ``source_kwargs`` go to the source's factory function (shards, split_fused, split_scales...).
    """

    source: str
    scheme: str
    ignore: tuple[str, ...]
    source_kwargs: tuple[tuple[str, Any], ...] = field(default=())
    tag: str = ""

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.source + (f"-{self.tag}" if self.tag else ""), self.scheme) if p)


def cases() -> list[Case]:
    two_shards = (("shards", 2), ("split_fused", True))
    scales_apart = (*two_shards, ("split_scales", True))
    return [
        # FP8 blocks (DeepSeek-style) dequantized, fused q/k/v and gate/up split over two shards
        Case(FP8_BLOCK, "NVFP4A16", ("lm_head", *NO_EMBEDDINGS), two_shards),
        Case(FP8_BLOCK, "W4A16", ("lm_head", *NO_EMBEDDINGS), two_shards),
        # AWQ modules become pack-quantized W4A16 as they are; down_proj (modules_to_not_convert)
        # and lm_head are dense and get the new FP8_DYNAMIC group appended; scales in the other shard
        Case(AWQ, "FP8_DYNAMIC", NO_EMBEDDINGS,
             (*scales_apart, ("group_size", 64), ("modules_to_not_convert", ["down_proj"]))),
        Case(AWQ, "W4A16", ("lm_head", *NO_EMBEDDINGS),
             (("group_size", 32), ("zero_point", False), ("modules_to_not_convert", ["o_proj"])), tag="symmetric"),
        # ModelOpt NVFP4 renamed to compressed-tensors' NVFP4; only lm_head is dense and gets FP8_DYNAMIC
        Case(MODELOPT, "FP8_DYNAMIC", NO_EMBEDDINGS, scales_apart),
        # a compressed-tensors NVFP4A16 release dequantized and requantized to W4A16
        Case(COMPRESSED_TENSORS, "W4A16", ("lm_head", *NO_EMBEDDINGS), scales_apart),
    ]


def build_source(case: Case, root: Path, *, quantize: Callable | None = None) -> Path:
    """Write the case's source under ``root`` (a fresh folder) and return its path.

    ``quantize`` (a ``model_free_ptq``) makes the compressed-tensors and ModelOpt sources.
    """
    kwargs = {**DIMS, **dict(case.source_kwargs)}
    path = Path(root) / "source"
    if case.source == FP8_BLOCK:
        return make_fp8_block_checkpoint(path, "llama", **kwargs)
    if case.source == AWQ:
        return make_awq_checkpoint(path, "llama", **kwargs)
    if case.source == MODELOPT:
        return make_modelopt_nvfp4_checkpoint(path, "llama", quantize=quantize, **kwargs)
    if case.source == COMPRESSED_TENSORS:
        return make_compressed_tensors_checkpoint(path, "llama", "NVFP4A16", quantize=quantize, **kwargs)
    raise ValueError(f"unknown source {case.source!r}")


def _modules_with(names, suffix: str) -> list[str]:
    return sorted(n.removesuffix(suffix) for n in names if n.endswith(suffix))


def build_converter(case: Case, source: Path):
    """The compressed-tensors converter for the case, built the same way in both venvs.

    FP8 blocks and ModelOpt get explicit module targets: 0.19's ``FP8BlockDequantizer`` has no
    ``from_pretrained``, and 0.19's ``ModelOptNvfp4Converter`` would rename any targeted
    ``weight`` (lm_head and embeddings included) without the uint8 check 0.20 added.
    """
    names = load_tensors(source).keys()
    if case.source == FP8_BLOCK:
        return FP8BlockDequantizer(targets=_modules_with(names, ".weight_scale_inv"))
    if case.source == AWQ:
        quant = json.loads((source / "config.json").read_text())["quantization_config"]
        return AutoAWQConverter.from_autoawq_config(quant)
    if case.source == MODELOPT:
        return ModelOptNvfp4Converter(targets=_modules_with(names, ".weight_scale_2"))
    if case.source == COMPRESSED_TENSORS:
        return CompressedTensorsDequantizer(str(source))
    raise ValueError(f"unknown source {case.source!r}")


def tensors_digest(path: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (file layout and metadata aside)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_tensors(path).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
