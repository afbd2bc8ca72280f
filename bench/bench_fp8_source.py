#!/usr/bin/env python3
"""Benchmark an FP8-block source: ptq_core against llm-compressor with FP8BlockDequantizer.

DeepSeek/Kimi/Qwen "-FP8" releases store each projection weight as float8_e4m3fn with a
float32 128x128 ``weight_scale_inv``. Re-quantizing one (to NVFP4A16, W4A16) means
dequantizing every weight first. Ours detects the source and dequantizes each weight in
memory as it loads it; the peer (llm-compressor 0.14.0.1) is given
``converter=FP8BlockDequantizer(targets=[every module with a weight_scale_inv])``, built by
``runner.py`` from the shard headers before its timed call. Both get the same scheme,
ignore list, max_workers and device; every run is a fresh process, runs alternate.

The source is the FP8-block version of the benchmark's synthetic Llama checkpoint
(checkpoint.py: same shape rules, same seeded weights), generated once and cached.

Prints Markdown: seconds, GB/s of source bytes, peak RSS, peer/ours ratios, an I/O floor and
whether the two outputs are byte-identical. It reports; it never asserts a timing.

    .venv/bin/python bench/bench_fp8_source.py                       # ~0.7 GB source, 2 schemes, 3 runs
    .venv/bin/python bench/bench_fp8_source.py --params 100M --repeats 1   # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

import bench_model_free_ptq as bench
from bench_model_free_ptq import GB, PEER_VERSION, SchemeResult, parse_count
from checkpoint import COMPLETE_MARKER, LlamaShape, _write_checkpoint, build_cached, plan_shards, solve_shape
from peer_env import default_torch_mode

DEFAULT_SCHEMES = ("NVFP4A16", "W4A16")
BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn
KEPT_DENSE = ("model.embed_tokens.weight", "lm_head.weight")  # like the real -FP8 releases


# ----------------------------------------------------------------------------- the source


def is_fp8_weight(name: str, shape: tuple[int, ...]) -> bool:
    """Projection weights go FP8; embeddings, lm_head and norms stay bf16 (as DeepSeek-V3-FP8)."""
    return len(shape) == 2 and name not in KEPT_DENSE


def scale_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.ceil(shape[0] / BLOCK), math.ceil(shape[1] / BLOCK)


def stored_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes on disk: 1 per FP8 element plus its float32 scales, else 2 per bf16 element."""
    if is_fp8_weight(name, shape):
        return math.prod(shape) + 4 * math.prod(scale_shape(shape))
    return 2 * math.prod(shape)


def to_fp8_block(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float8_e4m3fn weight, float32 weight_scale_inv)``: one scale per 128x128 block,
    absmax / 448, so ``fp8 * scale_inv`` gives the weight back to FP8 precision."""
    rows, cols = weight.shape
    w = weight.float()
    padded = torch.nn.functional.pad(w, (0, -cols % BLOCK, 0, -rows % BLOCK))
    blocks = padded.view(padded.shape[0] // BLOCK, BLOCK, padded.shape[1] // BLOCK, BLOCK)
    scale = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    expanded = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
    return (w / expanded).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def fp8_config_json(shape: LlamaShape) -> dict:
    config = shape.config_json()
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
    }
    return config


def _stored(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A weight as the FP8 release stores it: FP8 + ``weight_scale_inv``, or bf16 as it is."""
    if not is_fp8_weight(name, tuple(weight.shape)):
        return {name: weight}
    fp8, scale_inv = to_fp8_block(weight)
    return {name: fp8, name.removesuffix(".weight") + ".weight_scale_inv": scale_inv}


def ensure_fp8_checkpoint(
    cache_dir: Path, target_params: int, max_shard_bytes: int, *, hidden_size: int | None = None, seed: int = 0
) -> Path:
    """A cached FP8-block checkpoint folder, generated first if absent.

    Cached like checkpoint.ensure_checkpoint: the name encodes shape, shard count, block and
    seed; it is built in a temporary folder, marked complete last and renamed.
    """
    shape = solve_shape(target_params, hidden_size)
    shards = plan_shards(shape, max_shard_bytes, nbytes=stored_bytes)
    name = (
        f"llama-fp8block{BLOCK}-{shape.num_params() / 1e6:.0f}M-h{shape.hidden_size}-i{shape.intermediate_size}"
        f"-L{shape.num_hidden_layers}-{len(shards)}shard-seed{seed}"
    )
    fp8 = sum(is_fp8_weight(n, s) for n, s in shape.tensor_shapes())
    marker = {"shape": asdict(shape), "num_params": shape.num_params(), "seed": seed, "fp8_weights": fp8,
              "weight_block_size": [BLOCK, BLOCK]}
    return build_cached(cache_dir / "checkpoints" / name,
                        f"{shape.num_params() / 1e6:.1f} M-param FP8-block checkpoint in {len(shards)} shard(s)",
                        lambda tmp: _write_checkpoint(tmp, shape, shards, seed, _stored, fp8_config_json(shape)), marker)


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench.new_parser(__doc__)
    src = p.add_argument_group("input checkpoint")
    src.add_argument("--checkpoint", type=Path, help="use this FP8-block safetensors folder instead of generating one")
    src.add_argument(
        "--params",
        type=parse_count,
        default=parse_count("500M"),
        help="size of the generated model in parameters, e.g. 100M, 1B (stored as ~1 byte each, embeddings 2)",
    )
    src.add_argument("--hidden", type=int, default=None, help="hidden size (default: as checkpoint.py picks it)")
    src.add_argument(
        "--shard-mb", type=float, default=500.0, help="max shard size in MB as stored; shrunk so there are >= 2 shards"
    )
    src.add_argument("--seed", type=int, default=0, help="seed of the random weights (std 0.02, before FP8)")

    run = p.add_argument_group("what to run")
    run.add_argument("--schemes", type=bench.csv, default=list(DEFAULT_SCHEMES), help="comma-separated preset names")
    run.add_argument("--repeats", type=int, default=3, help="runs per tool and scheme (alternating)")
    run.add_argument("--max-workers", type=int, default=2, help="passed to both tools")
    run.add_argument("--device", default="cpu", help="passed to both tools: cpu, cuda, cuda:0, ...")
    run.add_argument(
        "--ignore", type=bench.csv, default=list(bench.DEFAULT_IGNORE), help="comma-separated ignore list for both"
    )
    run.add_argument("--tools", type=bench.csv, default=["ours", "peer"], help="ours, peer or both")

    env = p.add_argument_group("environments and files")
    env.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ptq-hub" / "bench")
    env.add_argument("--peer-venv", type=Path, default=None, help="peer venv folder (default: CACHE_DIR/peer-venv)")
    env.add_argument("--peer-version", default=PEER_VERSION, help="llmcompressor version for the peer")
    env.add_argument("--peer-torch", choices=("install", "share"), default=default_torch_mode())
    env.add_argument("--peer-pip-args", type=shlex.split, default=[], help="extra pip install arguments")
    env.add_argument("--ours-python", default=sys.executable, help="interpreter that can import ptq_core")
    env.add_argument("--keep-outputs", action="store_true", help="keep the last output folder of each tool")
    env.add_argument("--json", type=Path, default=None, help="also write every raw measurement here")
    args = p.parse_args(argv)
    if set(args.tools) - {"ours", "peer"} or not args.tools:
        p.error(f"--tools takes ours and/or peer, got {args.tools}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.peer_venv = args.peer_venv or args.cache_dir / "peer-venv"
    return args


# ----------------------------------------------------------------------------- report


def describe_source(model: Path) -> str:
    """What the input is: parameters, FP8 weights and block (from config.json and the marker)."""
    marker = model / COMPLETE_MARKER
    config = json.loads((model / "config.json").read_text())
    block = (config.get("quantization_config") or {}).get("weight_block_size")
    if marker.is_file():
        data = json.loads(marker.read_text())
        return f"{data['num_params'] / 1e6:.0f} M params, {data['fp8_weights']} FP8 weights with {block} blocks"
    return f"FP8 blocks {block}"


def peer_converter_line(args: argparse.Namespace, results: list[SchemeResult]) -> str:
    """The converter the runner built for the peer, from the last peer run's result file."""
    for res in results:
        path = args.cache_dir / "runs" / res.scheme / "peer.result.json"
        if path.is_file() and (conv := json.loads(path.read_text()).get("converter")):
            return (
                f"- peer converter: `{conv['name']}(targets=[{conv['targets']} module names], "
                f"weight_block_size={tuple(conv['weight_block_size'])}, dtype={conv['dtype']})`, targets read from "
                f"the shard headers by the runner in {conv['build_s'] * 1e3:.0f} ms, before the timed call"
            )
    return "- peer converter: none recorded (peer not run, or the source is not FP8-block)"


def report(ctx: bench.Context, results: list[SchemeResult]) -> str:
    args, files, input_bytes = ctx.args, ctx.files, ctx.input_bytes
    largest = max(f.stat().st_size for f in files) / 1e6
    lines = [
        "## FP8-block source benchmark: ptq_core vs llm-compressor + FP8BlockDequantizer",
        "",
        f"- input: `{ctx.model}` — {describe_source(ctx.model)}; {input_bytes / GB:.3f} GB "
        f"in {len(files)} shard(s) (largest {largest:.0f} MB)",
        f"- device `{args.device}`, max_workers {args.max_workers}, ignore {args.ignore}, "
        f"{args.repeats} alternating run(s) per tool; times are medians, RSS the max over runs; "
        "GB/s = source bytes / call s",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- page cache: warm ({ctx.warm_s:.2f} s to read the source once first); "
        f"load average (1 min) before / after: {ctx.load_before[0]:.2f} / {ctx.load_after[0]:.2f}",
        "- ours: detects the FP8-block source itself (no argument) and dequantizes each weight in memory",
        peer_converter_line(args, results),
    ]
    for tool in ctx.tools:
        lines.append(f"- {tool.name}: " + ", ".join(f"{k} {v}" for k, v in tool.versions.items()))
    lines += ["", *bench.main_table(results, input_bytes), ""]
    lines += ["### Details", "", *bench.detail_table(results, ctx.tools), ""]
    diffs = bench.config_diffs(results)
    if diffs:
        lines += ["### Output comparison", "", *diffs, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    return bench.run(parse_args(argv), resolve_input, report)


def resolve_input(args: argparse.Namespace) -> Path:
    """``--checkpoint``, or the cached FP8-block checkpoint of ``--params``."""
    if args.checkpoint is not None:
        return args.checkpoint.resolve()
    return ensure_fp8_checkpoint(args.cache_dir, args.params, int(args.shard_mb * 1e6), hidden_size=args.hidden,
                                 seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
