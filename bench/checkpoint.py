"""Synthetic bf16 Llama-shaped checkpoints for the benchmark.

Why synthetic: the benchmark must run offline and be reproducible, so it cannot
download a real model. What matters to a data-free quantizer is the tensor
names, shapes, dtypes and shard layout, not what the weights mean; seeded
N(0, 0.02) weights (Llama's ``initializer_range``) give realistic value ranges
for scale computation.

Checkpoints are built once into a cache folder (write to a temporary folder,
then rename) so reruns reuse them instead of spending minutes of CPU again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB_SIZE = 32000
HEAD_DIM = 64
WEIGHT_STD = 0.02
# Shapes are rounded to this so every quantizable dimension divides the block /
# group sizes of all benchmarked schemes (FP8_BLOCK 128, W4A16 128, NVFP4 16, MXFP4 32).
ROUND_TO = 256
COMPLETE_MARKER = ".ptq-bench-complete.json"


@dataclass(frozen=True)
class LlamaShape:
    """The few numbers that determine every tensor of a Llama checkpoint."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = VOCAB_SIZE

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * HEAD_DIM

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Tensors in the order ``save_pretrained`` writes them (state-dict order)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab_size, h))]
        for layer in range(self.num_hidden_layers):
            p = f"model.layers.{layer}"
            shapes += [
                (f"{p}.self_attn.q_proj.weight", (h, h)),
                (f"{p}.self_attn.k_proj.weight", (kv, h)),
                (f"{p}.self_attn.v_proj.weight", (kv, h)),
                (f"{p}.self_attn.o_proj.weight", (h, h)),
                (f"{p}.mlp.gate_proj.weight", (i, h)),
                (f"{p}.mlp.up_proj.weight", (i, h)),
                (f"{p}.mlp.down_proj.weight", (h, i)),
                (f"{p}.input_layernorm.weight", (h,)),
                (f"{p}.post_attention_layernorm.weight", (h,)),
            ]
        shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab_size, h))]
        return shapes

    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensor_shapes())

    def config_json(self) -> dict:
        """A real ``LlamaForCausalLM`` config.json, so tools that read it see a normal model."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": WEIGHT_STD,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": 4096,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.57.0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }


def _round(x: float, to: int = ROUND_TO) -> int:
    return max(to, round(x / to) * to)


def default_hidden_size(target_params: int) -> int:
    """2048 like the reference measurement; narrower for small smoke-test sizes so
    that the (unquantized) embeddings don't make up the whole checkpoint."""
    if target_params >= 400_000_000:
        return 2048
    if target_params >= 150_000_000:
        return 1024
    return 512


def solve_shape(target_params: int, hidden_size: int | None = None) -> LlamaShape:
    """Pick layers and intermediate size so the parameter count lands near the target.

    Heads are 64 wide with 4:1 grouped-query attention (as in Llama 3); the
    layer count comes from the usual 2.75x MLP width, then the MLP width is
    re-fitted (in multiples of 256) to get close to ``target_params``.
    """
    h = hidden_size or default_hidden_size(target_params)
    heads = max(1, h // HEAD_DIM)
    kv_heads = max(1, heads // 4)
    fixed = 2 * VOCAB_SIZE * h + h  # embeddings, lm_head, final norm
    attn = 2 * h * h + 2 * h * kv_heads * HEAD_DIM + 2 * h  # q, o, k, v, two norms
    inter0 = _round(2.75 * h)
    layers = max(1, round((target_params - fixed) / (attn + 3 * h * inter0)))
    inter = _round((target_params - fixed - layers * attn) / (3 * h * layers))
    return LlamaShape(h, inter, layers, heads, kv_heads)


def plan_shards(
    shape: LlamaShape, max_shard_bytes: int | None, nbytes: Callable[[str, tuple[int, ...]], int] | None = None
) -> list[list[str]]:
    """Split tensors greedily in order, like ``save_pretrained(max_shard_size=...)``.

    ``None`` means one file. A size that would give a single shard is shrunk to a
    third of the checkpoint so the multi-shard path (index.json, cross-shard
    fused q/k/v and gate/up groups) is always exercised. ``nbytes(name, shape)``: a
    tensor's bytes as stored (default bf16; the FP8-block benchmark passes its own).
    """
    size_of = nbytes or (lambda _name, s: math.prod(s) * 2)
    tensors = [(name, size_of(name, s)) for name, s in shape.tensor_shapes()]
    if max_shard_bytes is None:
        return [[name for name, _ in tensors]]
    total = sum(size for _, size in tensors)
    if total <= max_shard_bytes:
        max_shard_bytes = math.ceil(total / 3)
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in tensors:
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _random_tensor(shape: tuple[int, ...], name: str, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)  # RMSNorm weights start at 1
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, WEIGHT_STD, generator=gen)


def _write_checkpoint(
    folder: Path,
    shape: LlamaShape,
    shards: list[list[str]],
    seed: int,
    stored: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    config: dict | None = None,
) -> None:
    """Write shards one at a time so peak memory is one shard, not the model.

    The weights are drawn in state-dict order from one generator; ``stored(name, weight)``
    gives the tensors a weight is stored as (default: itself, bf16), ``config`` the
    config.json (default: the dense Llama's).
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(shape.tensor_shapes())
    names = shard_file_names(len(shards))
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, tensor_names in zip(names, shards):
        tensors: dict[str, torch.Tensor] = {}
        for name in tensor_names:
            weight = _random_tensor(shapes[name], name, gen)
            tensors.update(stored(name, weight) if stored else {name: weight})
        total += sum(t.nbytes for t in tensors.values())
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
        del tensors
        print(f"  wrote {file_name}", file=sys.stderr, flush=True)
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = config or shape.config_json()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.57.0"}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def checkpoint_name(shape: LlamaShape, shards: list[list[str]], seed: int) -> str:
    return (
        f"llama-{shape.num_params() / 1e6:.0f}M-h{shape.hidden_size}-i{shape.intermediate_size}"
        f"-L{shape.num_hidden_layers}-{len(shards)}shard-seed{seed}"
    )


def ensure_checkpoint(
    cache_dir: Path,
    target_params: int,
    max_shard_bytes: int | None,
    *,
    hidden_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Return a cached checkpoint folder, generating it first if absent.

    The folder name encodes everything that determines its bytes, and a marker
    file is written last, so an interrupted build is never mistaken for a cached one.
    """
    shape = solve_shape(target_params, hidden_size)
    shards = plan_shards(shape, max_shard_bytes)
    folder = cache_dir / "checkpoints" / checkpoint_name(shape, shards, seed)
    marker = {"shape": asdict(shape), "num_params": shape.num_params(), "seed": seed, "std": WEIGHT_STD}
    return build_cached(folder, f"{shape.num_params() / 1e6:.1f} M-param bf16 checkpoint in {len(shards)} shard(s)",
                        lambda tmp: _write_checkpoint(tmp, shape, shards, seed), marker)


def build_cached(folder: Path, what: str, write: Callable[[Path], None], marker: dict) -> Path:
    """``folder`` if a complete build is there, else ``write`` it into a temporary sibling,
    mark it complete last and rename it into place (an interrupted build never counts)."""
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    print(f"generating {what} -> {folder}", file=sys.stderr, flush=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of a checkpoint folder (the benchmark's 'input bytes')."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"error: no *.safetensors files in {folder}")
    return files
