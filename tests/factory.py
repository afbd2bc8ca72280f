"""Small, seeded, real-looking Hugging Face checkpoints for tests.

``make_checkpoint(path, arch, ...)`` writes a folder that looks like a Hub model repo:
safetensors shard(s) with the real tensor names of the architecture, an exact
``model.safetensors.index.json`` when sharded, a ``config.json`` that
``transformers.AutoConfig`` / ``AutoModelForCausalLM.from_pretrained`` accept on CPU,
tokenizer-ish files, a chat template, a LICENSE and a README with model-card front matter.

Tensor names and shapes were checked against transformers 5.24
(``AutoModelForCausalLM.from_config(cfg).state_dict()`` and ``save_pretrained`` with
``save_original_format=True/False``):

* ``llama``       - LlamaForCausalLM.
* ``qwen3_moe``   - Qwen3MoeForCausalLM. ``fused_experts=False`` (default) is what
  ``save_pretrained()`` writes by default: ``mlp.experts.N.{gate,up,down}_proj.weight``.
  ``fused_experts=True`` is ``save_pretrained(save_original_format=False)``:
  ``mlp.experts.gate_up_proj`` ``[E, 2*I, H]`` (gate rows first, then up) and
  ``mlp.experts.down_proj`` ``[E, H, I]``, no ``.weight`` suffix.
* ``deepseek_v3`` - DeepseekV3ForCausalLM (MLA). Layer 0 dense MLP (``first_k_dense_replace=1``),
  later layers MoE with routed experts (per expert by default, fused with
  ``fused_experts=True``), ``mlp.shared_experts.*`` and a router ``mlp.gate.weight`` +
  ``mlp.gate.e_score_correction_bias`` (float32, as in the real checkpoint).
  ``kv_a_proj_with_mqa`` has ``kv_lora_rank + qk_rope_head_dim`` = 160 rows (not a multiple
  of 128, like DeepSeek-V3's 576) and K = hidden_size.
* ``mixtral``     - MixtralForCausalLM. Its *native* 5.24 state dict is fused
  (``mlp.experts.gate_up_proj``/``mlp.experts.down_proj``, router ``mlp.gate.weight``);
  ``save_pretrained()`` (and every Hub checkpoint) uses the legacy
  ``block_sparse_moe.experts.N.w{1,2,3}.weight`` + ``block_sparse_moe.gate.weight``.
  ``fused_experts=False`` (default) writes the legacy naming, ``True`` the native one.

For every MoE architecture the fused and per-expert variants made with the same seed hold
the *same* numbers (``gate_up_proj[e] == cat(gate_e, up_e)``, ``down_proj[e] == down_e``), and
every tensor's values depend only on ``(seed, canonical tensor name)``, not on sharding.

Only torch + safetensors + stdlib are imported (transformers is not needed to write).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = [
    "ARCHS",
    "TINY_LLAMA_DIMS",
    "DEFAULT_DIMS",
    "make_checkpoint",
    "make_fp8_block_checkpoint",
    "make_config",
    "make_state_dict",
    "shard_files",
    "read_index",
    "load_tensors",
    "expected_fused_pairs",
    "corrupt_truncate_shard",
    "corrupt_header_json",
    "corrupt_header_length",
    "corrupt_index_missing_shard",
    "corrupt_index_missing_tensor",
    "corrupt_inject_nan",
]

ARCHS = ("llama", "qwen3_moe", "deepseek_v3", "mixtral")

# HF config keys. K (in_features) of every Linear is a multiple of 128 with these defaults,
# so every preset (incl. group 128 / block 128) applies; out_features are multiples of 128
# except deepseek_v3's kv_a_proj_with_mqa (160 rows).
DEFAULT_DIMS: dict[str, dict] = {
    "llama": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, vocab_size=512,
    ),
    "qwen3_moe": dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=4,
        num_experts_per_tok=2, vocab_size=512,
    ),
    "deepseek_v3": dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128, kv_lora_rank=128,
        qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64, n_routed_experts=4,
        n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, n_group=1,
        topk_group=1, vocab_size=512,
    ),
    "mixtral": dict(
        hidden_size=256, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, num_local_experts=4, num_experts_per_tok=2,
        vocab_size=512,
    ),
}

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
}

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

STD = 0.02


# --------------------------------------------------------------------------- config


TINY_LLAMA_DIMS = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64, vocab_size=256, num_hidden_layers=1)
"""The smallest Llama the validation and writer tests need: fast to write, still a real layout."""


def make_config(arch: str, *, dtype: torch.dtype = torch.bfloat16, tie: bool = False, **dims) -> dict:
    """A Hub-style config.json dict (``torch_dtype`` key, as most Hub repos still have)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    d = {**DEFAULT_DIMS[arch], **dims}
    common = dict(
        architectures=[_ARCHITECTURES[arch]],
        model_type=arch,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        initializer_range=STD,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        torch_dtype=_DTYPE_NAMES[dtype],
        transformers_version="4.57.1",
        use_cache=True,
    )
    if arch == "llama":
        extra = dict(attention_bias=False, attention_dropout=0.0, mlp_bias=False,
                     pretraining_tp=1, rope_scaling=None)
    elif arch == "qwen3_moe":
        extra = dict(attention_bias=False, attention_dropout=0.0, decoder_sparse_step=1,
                     mlp_only_layers=[], norm_topk_prob=True, output_router_logits=False,
                     router_aux_loss_coef=0.001, sliding_window=None, use_sliding_window=False,
                     rope_scaling=None)
    elif arch == "deepseek_v3":
        extra = dict(attention_bias=False, attention_dropout=0.0, aux_loss_alpha=0.001,
                     ep_size=1, moe_layer_freq=1, norm_topk_prob=True,
                     num_nextn_predict_layers=0, pretraining_tp=1, routed_scaling_factor=2.5,
                     scoring_func="sigmoid", topk_method="noaux_tc", rope_scaling=None,
                     seq_aux=True)
    else:  # mixtral
        extra = dict(attention_dropout=0.0, output_router_logits=False,
                     router_aux_loss_coef=0.001, router_jitter_noise=0.0, sliding_window=None,
                     rope_theta=1000000.0)
    cfg = {**common, **extra, **d}
    return dict(sorted(cfg.items()))


# --------------------------------------------------------------------------- tensors


def _seed_for(seed: int, name: str) -> int:
    return (zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


def _rand(seed: int, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    return (torch.randn(shape, generator=g, dtype=torch.float32) * STD).to(dtype)


def _norm(seed: int, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    # around 1.0, slightly perturbed so norms are not all-ones
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    return (1.0 + 0.05 * torch.randn((n,), generator=g)).to(dtype)


def _canonical_specs(arch: str, d: dict, tie: bool) -> list[tuple[str, tuple[int, ...], str]]:
    """(canonical name, shape, kind) in model order; kind in {"w", "norm", "bias_f32"}.

    MoE experts are always listed per expert here; fusing happens afterwards.
    """
    H, V, L = d["hidden_size"], d["vocab_size"], d["num_hidden_layers"]
    specs: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (V, H), "w")]

    def gqa_attn(p: str, qk_norm: bool = False) -> None:
        nh, nkv = d["num_attention_heads"], d["num_key_value_heads"]
        hd = d.get("head_dim") or H // nh
        specs.extend([
            (f"{p}.self_attn.q_proj.weight", (nh * hd, H), "w"),
            (f"{p}.self_attn.k_proj.weight", (nkv * hd, H), "w"),
            (f"{p}.self_attn.v_proj.weight", (nkv * hd, H), "w"),
            (f"{p}.self_attn.o_proj.weight", (H, nh * hd), "w"),
        ])
        if qk_norm:
            specs.extend([(f"{p}.self_attn.q_norm.weight", (hd,), "norm"),
                          (f"{p}.self_attn.k_norm.weight", (hd,), "norm")])

    def mlp(p: str, inter: int) -> None:
        specs.extend([
            (f"{p}.gate_proj.weight", (inter, H), "w"),
            (f"{p}.up_proj.weight", (inter, H), "w"),
            (f"{p}.down_proj.weight", (H, inter), "w"),
        ])

    def layer_norms(p: str) -> None:
        specs.extend([(f"{p}.input_layernorm.weight", (H,), "norm"),
                      (f"{p}.post_attention_layernorm.weight", (H,), "norm")])

    for i in range(L):
        p = f"model.layers.{i}"
        if arch == "llama":
            gqa_attn(p)
            mlp(f"{p}.mlp", d["intermediate_size"])
        elif arch == "qwen3_moe":
            gqa_attn(p, qk_norm=True)
            sparse = (i not in d.get("mlp_only_layers", [])) and (i + 1) % d.get("decoder_sparse_step", 1) == 0
            if sparse:
                for e in range(d["num_experts"]):
                    mlp(f"{p}.mlp.experts.{e}", d["moe_intermediate_size"])
                specs.append((f"{p}.mlp.gate.weight", (d["num_experts"], H), "w"))
            else:
                mlp(f"{p}.mlp", d["intermediate_size"])
        elif arch == "deepseek_v3":
            nh = d["num_attention_heads"]
            qk_head = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
            a = f"{p}.self_attn"
            if d.get("q_lora_rank") is None:
                specs.append((f"{a}.q_proj.weight", (nh * qk_head, H), "w"))
            else:
                specs.extend([
                    (f"{a}.q_a_proj.weight", (d["q_lora_rank"], H), "w"),
                    (f"{a}.q_a_layernorm.weight", (d["q_lora_rank"],), "norm"),
                    (f"{a}.q_b_proj.weight", (nh * qk_head, d["q_lora_rank"]), "w"),
                ])
            specs.extend([
                (f"{a}.kv_a_proj_with_mqa.weight", (d["kv_lora_rank"] + d["qk_rope_head_dim"], H), "w"),
                (f"{a}.kv_a_layernorm.weight", (d["kv_lora_rank"],), "norm"),
                (f"{a}.kv_b_proj.weight",
                 (nh * (d["qk_nope_head_dim"] + d["v_head_dim"]), d["kv_lora_rank"]), "w"),
                (f"{a}.o_proj.weight", (H, nh * d["v_head_dim"]), "w"),
            ])
            if i < d["first_k_dense_replace"]:
                mlp(f"{p}.mlp", d["intermediate_size"])
            else:
                for e in range(d["n_routed_experts"]):
                    mlp(f"{p}.mlp.experts.{e}", d["moe_intermediate_size"])
                specs.append((f"{p}.mlp.gate.weight", (d["n_routed_experts"], H), "w"))
                specs.append((f"{p}.mlp.gate.e_score_correction_bias", (d["n_routed_experts"],), "bias_f32"))
                mlp(f"{p}.mlp.shared_experts", d["moe_intermediate_size"] * d["n_shared_experts"])
        elif arch == "mixtral":
            gqa_attn(p)
            m = f"{p}.block_sparse_moe"
            specs.append((f"{m}.gate.weight", (d["num_local_experts"], H), "w"))
            I = d["intermediate_size"]
            for e in range(d["num_local_experts"]):
                specs.extend([
                    (f"{m}.experts.{e}.w1.weight", (I, H), "w"),
                    (f"{m}.experts.{e}.w2.weight", (H, I), "w"),
                    (f"{m}.experts.{e}.w3.weight", (I, H), "w"),
                ])
        layer_norms(p)
    specs.append(("model.norm.weight", (H,), "norm"))
    if not tie:
        specs.append(("lm_head.weight", (V, H), "w"))
    return specs


_PER_EXPERT = re.compile(r"^(?P<pre>.+\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
_GATE_NAMES = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def _fuse_experts(tensors: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Per-expert -> transformers-5 native fused layout, keeping model order."""
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    placed: set[str] = set()
    for name, t in tensors.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            if arch == "mixtral":
                name = name.replace(".block_sparse_moe.", ".mlp.")
            out[name] = t
            continue
        pre = m["pre"].replace(".block_sparse_moe.", ".mlp.")
        groups.setdefault(pre, {}).setdefault(_GATE_NAMES[m["proj"]], {})[int(m["e"])] = t
        if pre not in placed:  # reserve the position of the first expert tensor
            placed.add(pre)
            out[pre + ".gate_up_proj"] = None  # type: ignore[assignment]
            out[pre + ".down_proj"] = None  # type: ignore[assignment]
    for pre, parts in groups.items():
        n = len(parts["gate"])
        out[pre + ".gate_up_proj"] = torch.stack(
            [torch.cat([parts["gate"][e], parts["up"][e]], dim=0) for e in range(n)]).contiguous()
        out[pre + ".down_proj"] = torch.stack([parts["down"][e] for e in range(n)]).contiguous()
    return out


def make_state_dict(arch: str, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0, tie: bool = False,
                    fused_experts: bool = False, **dims) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, in model order (what ``make_checkpoint`` writes)."""
    d = {**DEFAULT_DIMS[arch], **dims}
    sd: dict[str, torch.Tensor] = {}
    for name, shape, kind in _canonical_specs(arch, d, tie):
        if kind == "w":
            sd[name] = _rand(seed, name, shape, dtype)
        elif kind == "norm":
            sd[name] = _norm(seed, name, shape[0], dtype)
        else:  # router correction bias: float32 in the real DeepSeek-V3 checkpoint
            sd[name] = torch.zeros(shape, dtype=torch.float32)
    if fused_experts:
        if arch == "llama":
            raise ValueError("fused_experts applies to MoE architectures only")
        sd = _fuse_experts(sd, arch)
    return sd


# --------------------------------------------------------------------------- sharding


def _partner_rules() -> list[tuple[re.Pattern, int]]:
    # (pattern, shard offset relative to the layer's base shard) used by split_fused=True
    return [
        (re.compile(r"\.(k_proj|v_proj)\.weight$"), 1),
        (re.compile(r"\.kv_a_proj_with_mqa\.weight$"), 1),
        (re.compile(r"\.up_proj\.weight$"), 1),
        (re.compile(r"\.w3\.weight$"), 1),
        (re.compile(r"\.experts\.down_proj$"), 1),
    ]


def _assign_shards(names: list[str], shards: int, split_fused: bool) -> dict[str, int]:
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if split_fused and shards < 2:
        raise ValueError("split_fused=True needs shards >= 2")
    n = len(names)
    # contiguous chunks in model order, like save_pretrained's max_shard_size
    base = {name: min(i * shards // n, shards - 1) for i, name in enumerate(names)}
    if not split_fused:
        return base
    rules = _partner_rules()
    out = {}
    for name in names:
        s = base[name]
        for pat, off in rules:
            if pat.search(name):
                primary = _primary_of(name)
                s = (base.get(primary, s) + off) % shards
                break
        out[name] = s
    # primaries stay in their own base shard; make sure partners really are elsewhere
    for name in names:
        primary = _primary_of(name)
        if primary != name and primary in out:
            assert out[name] != out[primary], (name, primary)
    return out


def _primary_of(name: str) -> str:
    for a, b in ((".k_proj.", ".q_proj."), (".v_proj.", ".q_proj."),
                 (".kv_a_proj_with_mqa.", ".q_a_proj."), (".up_proj.", ".gate_proj."),
                 (".w3.", ".w1."), (".experts.down_proj", ".experts.gate_up_proj")):
        if a in name:
            return name.replace(a, b)
    return name


def _shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


# --------------------------------------------------------------------------- side files

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_LICENSE = """                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   (test fixture: abbreviated Apache-2.0 license text)
"""


def _tokenizer_json(vocab_size: int) -> dict:
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    words = specials + [f"w{i}" for i in range(vocab_size - len(specials))]
    vocab = {w: i for i, w in enumerate(words)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, w in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _write_side_files(root: Path, arch: str, cfg: dict, *, tokenizer_json: bool, readme: bool,
                      bin_stub: bool) -> None:
    _write_json(root / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
        "transformers_version": cfg["transformers_version"],
    })
    tok_cfg = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"], "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(root / "tokenizer_config.json", tok_cfg)
    _write_json(root / "special_tokens_map.json",
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    (root / "chat_template.jinja").write_text(_CHAT_TEMPLATE)
    if tokenizer_json:
        _write_json(root / "tokenizer.json", _tokenizer_json(cfg["vocab_size"]))
    (root / "LICENSE").write_text(_LICENSE)
    if readme:
        (root / "README.md").write_text(
            "---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\n"
            f"pipeline_tag: text-generation\ntags:\n- {arch}\n- test-fixture\n---\n\n"
            f"# tiny-{arch}\n\nA seeded random {cfg['architectures'][0]} for tests.\n"
        )
    if bin_stub:
        # a *.bin duplicate that the quantizer must not copy silently
        torch.save({"stub": torch.zeros(1)}, root / "pytorch_model.bin")


# --------------------------------------------------------------------------- public


def make_checkpoint(
    path: str | os.PathLike,
    arch: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    shards: int = 1,
    split_fused: bool = False,
    seed: int = 0,
    tie: bool = False,
    fused_experts: bool = False,
    bin_stub: bool = False,
    tokenizer_json: bool = True,
    readme: bool = True,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    **dims,
) -> Path:
    """Write a tiny checkpoint folder and return its path.

    :param arch: one of ``ARCHS``
    :param dtype: dtype of the weights (norms too; DeepSeek's e_score_correction_bias stays f32)
    :param shards: >1 writes ``model-0000i-of-0000N.safetensors`` + index (exact weight_map,
        ``metadata.total_size`` = sum of tensor bytes, ``metadata.total_parameters``)
    :param split_fused: put fused partners in different shards: q_proj vs k/v_proj,
        gate_proj vs up_proj (dense and per-expert), w1 vs w3, q_a_proj vs kv_a_proj_with_mqa
        (needs shards >= 2)
    :param tie: tie_word_embeddings=True and no ``lm_head.weight``
    :param fused_experts: MoE archs: transformers-5 native fused 3-D experts (see module doc)
    :param bin_stub: also write a ``pytorch_model.bin`` stub
    :param extra_tensors: additional tensors appended (model order: last)
    :param dims: HF config key overrides (hidden_size=..., num_hidden_layers=..., ...)
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cfg = make_config(arch, dtype=dtype, tie=tie, **dims)
    sd = make_state_dict(arch, dtype=dtype, seed=seed, tie=tie, fused_experts=fused_experts, **dims)
    if extra_tensors:
        sd.update(extra_tensors)
    _write_json(root / "config.json", cfg)
    _write_side_files(root, arch, cfg, tokenizer_json=tokenizer_json, readme=readme, bin_stub=bin_stub)

    meta = {"format": "pt"}
    if shards == 1 and not split_fused:
        save_file(sd, str(root / "model.safetensors"), metadata=meta)
        return root

    names = list(sd)
    assignment = _assign_shards(names, shards, split_fused)
    for i in range(shards):
        part = {n: sd[n].contiguous() for n in names if assignment[n] == i}
        save_file(part, str(root / _shard_name(i, shards)), metadata=meta)
    index = {
        "metadata": {
            "total_parameters": sum(t.numel() for t in sd.values()),
            "total_size": sum(t.numel() * t.element_size() for t in sd.values()),
        },
        "weight_map": {n: _shard_name(assignment[n], shards) for n in sorted(names)},
    }
    _write_json(root / "model.safetensors.index.json", index)
    return root


def shard_files(path: str | os.PathLike) -> list[Path]:
    root = Path(path)
    single = root / "model.safetensors"
    if single.exists():
        return [single]
    return sorted(root.glob("model-*-of-*.safetensors"))


def read_index(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "model.safetensors.index.json").read_text())


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (all shards), by name."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in shard_files(path):
        out.update(load_file(str(f)))
    return out


def expected_fused_pairs(names: Iterable[str]) -> list[tuple[str, ...]]:
    """Fused groups (NVFP4 shared global scale) as DESIGN.md lists them, present in ``names``:
    q/k/v, gate/up (dense, shared and per-expert), q_a/kv_a (MLA), w1/w3 (Mixtral experts)."""
    names = set(names)
    groups = []
    for n in sorted(names):
        if n.endswith(".q_proj.weight"):
            g = (n, n.replace(".q_proj.", ".k_proj."), n.replace(".q_proj.", ".v_proj."))
        elif n.endswith(".gate_proj.weight"):
            g = (n, n.replace(".gate_proj.", ".up_proj."))
        elif n.endswith(".q_a_proj.weight"):
            g = (n, n.replace(".q_a_proj.", ".kv_a_proj_with_mqa."))
        elif n.endswith(".w1.weight"):
            g = (n, n.replace(".w1.", ".w3."))
        else:
            continue
        if all(m in names for m in g):
            groups.append(g)
    return groups


# --------------------------------------------------------------------------- corruption


def _header(file: Path) -> tuple[int, dict]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def _pick_shard(path: str | os.PathLike, shard: int | str | None) -> Path:
    files = shard_files(path)
    if shard is None:
        return files[0]
    if isinstance(shard, int):
        return files[shard]
    return Path(path) / shard


def corrupt_truncate_shard(path, shard: int | str | None = None, *, keep_bytes: int | None = None) -> Path:
    """Cut a shard's data short (header intact, tensor bytes missing). Default keeps half
    of the data section. Returns the shard path."""
    f = _pick_shard(path, shard)
    n, _ = _header(f)
    size = f.stat().st_size
    keep = keep_bytes if keep_bytes is not None else 8 + n + (size - 8 - n) // 2
    with open(f, "r+b") as fh:
        fh.truncate(keep)
    return f


def corrupt_header_json(path, shard: int | str | None = None) -> Path:
    """Overwrite the JSON header with bytes that are not JSON (same length)."""
    f = _pick_shard(path, shard)
    n, _ = _header(f)
    with open(f, "r+b") as fh:
        fh.seek(8)
        fh.write((b"{not json!" + b" " * n)[:n])
    return f


def corrupt_header_length(path, shard: int | str | None = None, *, extra: int = 1 << 20) -> Path:
    """Make the 8-byte header length larger than the file."""
    f = _pick_shard(path, shard)
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.write(struct.pack("<Q", size + extra))
    return f


def corrupt_index_missing_shard(path, *, tensor: str | None = None,
                                missing: str = "model-00099-of-00099.safetensors") -> str:
    """Point one weight_map entry (default: the first) at a shard file that does not exist.
    Returns the tensor name that now points nowhere."""
    root = Path(path)
    idx = read_index(root)
    tensor = tensor or next(iter(idx["weight_map"]))
    idx["weight_map"][tensor] = missing
    _write_json(root / "model.safetensors.index.json", idx)
    return tensor


def corrupt_index_missing_tensor(path, *, name: str = "model.layers.0.mlp.phantom_proj.weight",
                                 shard: str | None = None) -> str:
    """Add a weight_map entry for a tensor that is in no shard (mapped to an existing shard).
    Returns the phantom name."""
    root = Path(path)
    idx = read_index(root)
    shard = shard or sorted(set(idx["weight_map"].values()))[0]
    idx["weight_map"][name] = shard
    idx["weight_map"] = dict(sorted(idx["weight_map"].items()))
    _write_json(root / "model.safetensors.index.json", idx)
    return name


_NAN_BYTES = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": b"\x00\x00\xc0\x7f"}
_INF_BYTES = {"BF16": b"\x80\x7f", "F16": b"\x00\x7c", "F32": b"\x00\x00\x80\x7f"}


def corrupt_inject_nan(path, tensor: str, *, index: int = 0, inf: bool = False) -> Path:
    """Patch element ``index`` (flat) of ``tensor`` to NaN (or +inf) in place. Returns the shard."""
    for f in shard_files(path):
        n, header = _header(f)
        if tensor not in header:
            continue
        info = header[tensor]
        table = _INF_BYTES if inf else _NAN_BYTES
        if info["dtype"] not in table:
            raise ValueError(f"cannot inject NaN into dtype {info['dtype']}")
        width = len(table[info["dtype"]])
        start = 8 + n + info["data_offsets"][0] + index * width
        if start + width > 8 + n + info["data_offsets"][1]:
            raise IndexError(index)
        with open(f, "r+b") as fh:
            fh.seek(start)
            fh.write(table[info["dtype"]])
        return f
    raise KeyError(tensor)


# --------------------------------------------------------------------------- FP8-block sources
_FP8_KEEP_DENSE = re.compile(r"(embed_tokens|lm_head|norm|mlp\.gate|router)\.weight$")


def make_fp8_block_checkpoint(path: str | os.PathLike, arch: str, *, block: int = 128, **kwargs) -> Path:
    """A DeepSeek/Kimi/Qwen ``-FP8`` style release of ``make_checkpoint(arch, **kwargs)``.

    Every 2-D projection weight becomes ``float8_e4m3fn`` with a float32 ``weight_scale_inv``
    of ``[ceil(N/block), ceil(K/block)]`` beside it (same shard); embeddings, norms, routers and
    lm_head stay bf16; ``config.json`` gets ``quant_method: fp8`` with ``weight_block_size``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    dense = make_checkpoint(path.with_name(path.name + "-dense"), arch, **kwargs)
    path.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for shard in shard_files(dense):
        out: dict[str, torch.Tensor] = {}
        for name, tensor in load_file(str(shard)).items():
            if tensor.dim() == 2 and name.endswith(".weight") and not _FP8_KEEP_DENSE.search(name):
                rows, cols = tensor.shape
                padded = torch.nn.functional.pad(tensor.float(), (0, -cols % block, 0, -rows % block))
                cells = padded.view(padded.shape[0] // block, block, padded.shape[1] // block, block)
                scale = (cells.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12)
                expanded = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
                out[name] = (tensor.float() / expanded).clamp(-448, 448).to(torch.float8_e4m3fn)
                out[name.removesuffix(".weight") + ".weight_scale_inv"] = scale
            else:
                out[name] = tensor
        save_file(out, str(path / shard.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, shard.name))
    for side in dense.iterdir():
        if side.is_file() and not side.name.endswith(".safetensors") and side.name != "model.safetensors.index.json":
            (path / side.name).write_bytes(side.read_bytes())
    if len(shard_files(dense)) > 1:
        total = sum(os.path.getsize(path / s) for s in set(weight_map.values()))
        _write_json(path / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    _write_json(path / "config.json", config)
    return path


# --------------------------------------------------------------------------- AWQ, ModelOpt and compressed-tensors sources
# Each is made from the dense ``make_checkpoint`` written beside it (``<path>-dense``, kept: the
# original the quantized source approximates). ``split_scales=True`` moves every scale / zero-point
# tensor to the shard after the one holding its weight, so a converter's dependencies must be read
# from another shard (needs ``shards >= 2``).

_AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ GEMM: nibble j of an int32 holds column _AWQ_PACK_ORDER[j]
_AWQ_DEPENDENCIES = (".qzeros", ".scales")
_MODELOPT_DEPENDENCIES = (".weight_scale", ".weight_scale_2", ".input_scale")
_CT_DEPENDENCIES = (".weight_scale", ".weight_global_scale", ".weight_zero_point", ".weight_shape")


_KEEP_DENSE = re.compile(r"(embed_tokens|lm_head|norm|\.gate|router)\.weight$")  # Mixtral's router too


def _is_projection(name: str, tensor: torch.Tensor) -> bool:
    """A 2-D Linear weight a quantizer would touch (not embeddings, norms, routers or lm_head)."""
    return tensor.dim() == 2 and name.endswith(".weight") and not _KEEP_DENSE.search(name)


def _copy_side_files(src: Path, dst: Path) -> None:
    for side in src.iterdir():
        if side.is_file() and not side.name.endswith(".safetensors") and side.name != "model.safetensors.index.json":
            (dst / side.name).write_bytes(side.read_bytes())


def _rewrite_shards(src: Path, dst: Path, convert, *, split_scales: bool = False,
                    dependencies: tuple[str, ...] = (), layout: Path | None = None) -> None:
    """Write every shard of ``src`` into ``dst`` (same file names) through ``convert(name, tensor)``
    -> ``{name: tensor}``. ``layout``: a checkpoint with the same shard files whose placement of
    each module's ``weight`` is restored for all of that module's tensors (a quantizer writes fused
    partners beside their primary; this splits them again). ``split_scales``: names ending in
    ``dependencies`` then go to the next shard. Writes an exact index when there is more than one
    shard; side files are copied."""
    from safetensors.torch import load_file

    dst.mkdir(parents=True, exist_ok=True)
    files = shard_files(src)
    if split_scales and len(files) < 2:
        raise ValueError("split_scales=True needs shards >= 2")
    home: dict[str, int] = {}
    if layout is not None:
        by_name = {f.name: i for i, f in enumerate(files)}
        weight_map = read_index(layout)["weight_map"]
        home = {n.removesuffix(".weight"): by_name[f] for n, f in weight_map.items() if n.endswith(".weight")}
    parts: list[dict[str, torch.Tensor]] = [{} for _ in files]
    for i, shard in enumerate(files):
        for name, tensor in load_file(str(shard)).items():
            for out_name, out in convert(name, tensor).items():
                at = home.get(out_name.rpartition(".")[0], i)
                if split_scales and out_name.endswith(dependencies):
                    at = (at + 1) % len(files)
                parts[at][out_name] = out.contiguous()
    for shard, part in zip(files, parts):
        save_file(part, str(dst / shard.name), metadata={"format": "pt"})
    _copy_side_files(src, dst)
    if len(files) > 1:
        everything = [t for part in parts for t in part.values()]
        _write_json(dst / "model.safetensors.index.json", {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in everything)},
            "weight_map": {n: files[i].name for i, part in enumerate(parts) for n in sorted(part)},
        })


def _set_quantization_config(root: Path, quant: dict) -> None:
    config = json.loads((root / "config.json").read_text())
    config["quantization_config"] = quant
    _write_json(root / "config.json", config)


def _awq_pack(values: torch.Tensor) -> torch.Tensor:
    """``[rows, cols]`` integers in 0..15 -> int32 ``[rows, cols // 8]`` in AutoAWQ's GEMM order."""
    rows, cols = values.shape
    cells = values.to(torch.int64).view(rows, cols // 8, 8)[:, :, list(_AWQ_PACK_ORDER)]
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for nibble in range(8):
        packed |= cells[:, :, nibble] << (4 * nibble)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _awq_quantize(weight: torch.Tensor, group_size: int, zero_point: bool):
    """AutoAWQ's own rounding: per (output row, input group) ``scale`` and integer zero.

    Asymmetric: ``scale = (max - min) / 15``, ``zero = -round(min / scale)`` in 0..15,
    ``q = clamp(round(w / scale) + zero, 0, 15)``. Symmetric: ``scale = amax / 7``,
    ``q = clamp(round(w / scale), -8, 7) + 8`` (stored unsigned; no qzeros).
    Returns ``qweight`` int32 ``[in, out/8]``, ``qzeros`` int32 ``[in/g, out/8]`` or None,
    ``scales`` fp16 ``[in/g, out]``.
    """
    out_features, in_features = weight.shape
    if in_features % group_size or out_features % 8:
        raise ValueError(f"AWQ needs in_features % group_size == 0 and out_features % 8 == 0, got {tuple(weight.shape)}")
    cells = weight.float().view(out_features, in_features // group_size, group_size)
    if zero_point:
        low, high = cells.amin(dim=2), cells.amax(dim=2)
        scales = ((high - low).clamp(min=1e-5) / 15).to(torch.float16)
        zeros = (-torch.round(low / scales.float())).clamp(0, 15)
        q = (torch.round(cells / scales.float()[..., None]) + zeros[..., None]).clamp(0, 15)
    else:
        scales = (cells.abs().amax(dim=2).clamp(min=1e-5) / 7).to(torch.float16)
        zeros = None
        q = torch.round(cells / scales.float()[..., None]).clamp(-8, 7) + 8
    qweight = _awq_pack(q.reshape(out_features, in_features).t().contiguous())
    qzeros = None if zeros is None else _awq_pack(zeros.t().contiguous())
    return qweight, qzeros, scales.t().contiguous()


def make_awq_checkpoint(
    path: str | os.PathLike,
    arch: str = "llama",
    *,
    group_size: int = 128,
    zero_point: bool = True,
    shards: int = 1,
    split_scales: bool = False,
    modules_to_not_convert: list[str] | None = None,
    **kwargs,
) -> Path:
    """An AutoAWQ GEMM 4-bit release of ``make_checkpoint(arch, dtype=float16, shards=shards, **kwargs)``.

    Every projection (2-D Linear weight except embeddings, norms, routers, lm_head and modules
    whose name contains an entry of ``modules_to_not_convert``, AutoAWQ's substring rule) becomes
    ``qweight`` int32 ``[in, out/8]``, ``qzeros`` int32 ``[in/group, out/8]`` (only with
    ``zero_point``) and ``scales`` fp16 ``[in/group, out]``, quantized from the seeded dense
    weight with AutoAWQ's rounding (see ``_awq_quantize``); everything else stays fp16.
    ``config.json`` gets AutoAWQ's ``quantization_config``.
    """
    path = Path(path)
    kwargs.setdefault("dtype", torch.float16)
    dense = make_checkpoint(path.with_name(path.name + "-dense"), arch, shards=shards, **kwargs)
    skipped = list(modules_to_not_convert or [])

    def convert(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        module = name.removesuffix(".weight")
        if not _is_projection(name, tensor) or any(m in module for m in skipped):
            return {name: tensor}
        qweight, qzeros, scales = _awq_quantize(tensor, group_size, zero_point)
        out = {f"{module}.qweight": qweight, f"{module}.scales": scales}
        if qzeros is not None:
            out[f"{module}.qzeros"] = qzeros
        return out

    _rewrite_shards(dense, path, convert, split_scales=split_scales, dependencies=_AWQ_DEPENDENCIES)
    _set_quantization_config(path, {
        "quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": zero_point,
        "version": "gemm", "modules_to_not_convert": modules_to_not_convert,
    })
    return path


def _model_free_ptq():
    # imported here: the rest of this module must stay importable without ptq_core (the peer's venv)
    from ptq_core import model_free_ptq

    return model_free_ptq


_CT_SOURCE_IGNORE = ("lm_head", "re:.*embed_tokens$", r"re:.*\.gate$")


def make_compressed_tensors_checkpoint(
    path: str | os.PathLike,
    arch: str,
    scheme: str,
    *,
    ignore: Iterable[str] = _CT_SOURCE_IGNORE,
    split_scales: bool = False,
    quantize=None,
    **kwargs,
) -> Path:
    """A compressed-tensors release: ``make_checkpoint(arch, **kwargs)`` quantized to ``scheme``.

    :param ignore: kept dense (default: lm_head, embeddings, MoE routers)
    :param shards, split_fused: as ``make_checkpoint``; the quantizer writes fused partners beside
        their primary, so the dense checkpoint's placement is restored afterwards (with
        ``split_fused`` q/k/v and gate/up really sit in different shards)
    :param split_scales: move each module's qparams (``weight_scale``, ``weight_global_scale``,
        ``weight_zero_point``, ``weight_shape``) to the shard after its weight's
    :param quantize: ``model_free_ptq``-compatible callable (default: ours, byte-identical to
        llm-compressor's); the peer's golden script passes llm-compressor's own
    Re-sharded outputs are quantized into ``<path>-unsplit`` first.
    """
    path = Path(path)
    quantize = quantize or _model_free_ptq()
    dense = make_checkpoint(path.with_name(path.name + "-dense"), arch, **kwargs)
    if len(shard_files(dense)) == 1 and not split_scales:
        quantize(str(dense), str(path), scheme, ignore=list(ignore), device="cpu")
        return path
    staged = path.with_name(path.name + "-unsplit")
    quantize(str(dense), str(staged), scheme, ignore=list(ignore), device="cpu")
    _rewrite_shards(staged, path, lambda n, t: {n: t}, split_scales=split_scales, dependencies=_CT_DEPENDENCIES,
                    layout=dense)
    return path


def _modelopt_input_scale(seed: int, module: str) -> torch.Tensor:
    """A calibrated-looking NVFP4 ``input_scale`` (activation amax / (6 * 448)), one per input:
    q/k/v (and gate/up) read the same activations, so they share it, as in ModelOpt exports."""
    g = torch.Generator().manual_seed(_seed_for(seed, _primary_of(module + ".weight")))
    amax = 1.0 + 7.0 * torch.rand((), generator=g)
    return (amax / (6.0 * 448.0)).to(torch.float32)


def make_modelopt_nvfp4_checkpoint(
    path: str | os.PathLike,
    arch: str = "llama",
    *,
    seed: int = 0,
    split_scales: bool = False,
    exclude_modules: Iterable[str] = ("lm_head",),
    quantize=None,
    **kwargs,
) -> Path:
    """A ModelOpt NVFP4 export (``export_hf_checkpoint``) of ``make_checkpoint(arch, **kwargs)``.

    Made honestly from an NVFP4A16 compressed-tensors checkpoint of the same weights (see
    ``make_compressed_tensors_checkpoint``), renamed to ModelOpt's convention, i.e.
    ``ModelOptNvfp4Converter`` run backwards: ``weight_packed`` -> ``weight`` (uint8
    ``[out, in/2]``), ``weight_scale`` (fp8 ``[out, in/16]``) unchanged, ``weight_global_scale``
    -> ``weight_scale_2 = 1 / x`` (float32 scalar), plus a float32 scalar ``input_scale``
    (ModelOpt NVFP4 quantizes activations too; see ``_modelopt_input_scale``). Embeddings, norms,
    routers and ``exclude_modules`` (ModelOpt's own list, written to the config) stay dense.
    ``config.json`` gets the ``quantization_config`` ModelOpt >= 0.29 writes
    (``convert_hf_quant_config_format``: ``config_groups``/``ignore``/``quant_algo``/``producer``/
    ``quant_method: modelopt``) and ``hf_quant_config.json`` sits beside it.
    """
    path = Path(path)
    exclude = list(exclude_modules)
    staged = make_compressed_tensors_checkpoint(path.with_name(path.name + "-ct"), arch, "NVFP4A16",
                                                ignore=[*_CT_SOURCE_IGNORE, *exclude], quantize=quantize,
                                                seed=seed, **kwargs)

    def convert(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        module, _, local = name.rpartition(".")
        if local == "weight_packed":
            return {f"{module}.weight": tensor, f"{module}.input_scale": _modelopt_input_scale(seed, module)}
        if local == "weight_global_scale":
            return {f"{module}.weight_scale_2": (1.0 / tensor.float()).reshape(())}
        return {name: tensor}

    _rewrite_shards(staged, path, convert, split_scales=split_scales, dependencies=_MODELOPT_DEPENDENCIES)
    producer = {"name": "modelopt", "version": "0.29.0"}
    nvfp4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
    _set_quantization_config(path, {
        "config_groups": {"group_0": {"input_activations": dict(nvfp4), "weights": dict(nvfp4), "targets": ["Linear"]}},
        "ignore": exclude,
        "quant_algo": "NVFP4",
        "producer": producer,
        "quant_method": "modelopt",
    })
    _write_json(path / "hf_quant_config.json", {
        "producer": producer,
        "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                         "exclude_modules": exclude},
    })
    return path


__all__ += ["make_awq_checkpoint", "make_compressed_tensors_checkpoint", "make_modelopt_nvfp4_checkpoint"]
