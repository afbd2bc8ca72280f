"""How long ``ptq plan`` takes on very large headers: the cases the issues name.

0. ``ptq plan`` of a DeepSeek-V3-sized checkpoint folder as a **whole process** (interpreter
   start, imports, header reads, plan, table), timed from outside with ``subprocess``: the
   figure issue 18 asks for (under 2 s on an idle machine). The shards are sparse files (real
   headers, holes for the data), so the folder takes a few MB of disk. ``import torch`` alone is
   timed the same way next to it, as the floor any ``ptq`` command pays.
1. A DeepSeek-V3-sized header set (headers only, no data), planned as ``ptq plan`` plans a
   Hub repo (issue target: under 2 s); then the same model as a compressed-tensors NVFP4
   release, whose converter chain is planned from the headers too.
2. A local shard whose header lists 300k tensors, planned as ``ptq plan FOLDER`` plans it:
   the header is read, validated and planned (issue target: under 3 s and 500 MB RSS).

The DeepSeek header set has DeepSeek-V3's names and shapes: 61 layers (3 dense, 58 MoE with 256
routed experts and one shared expert), MLA attention, and a ``weight_scale_inv``
companion for every 2-D weight as in the FP8 release (kept as bf16 weights here, so the
planner sees ~91k tensors). The plan is built the way ``ptq plan`` builds it, for each
scheme, and the table prints the seconds and peak RSS growth.

    python bench/bench_plan.py            # issue target: under 2 s per plan
    python bench/bench_plan.py --process  # only the whole-process figure (5 runs, min and median)
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptq_core.checkpoint import headers_checkpoint, open_checkpoint  # noqa: E402
from ptq_core.job import make_job  # noqa: E402
from ptq_core.planner import build_plan, source_plan  # noqa: E402

HIDDEN, INTER, MOE_INTER, EXPERTS, LAYERS, DENSE, VOCAB = 7168, 18432, 2048, 256, 61, 3, 129280
Q_LORA, KV_LORA, ROPE, HEADS, NOPE, V = 1536, 512, 64, 128, 128, 128


def deepseek_v3_headers(shard_tensors: int = 1500) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """``{shard: {tensor: (dtype, shape)}}`` with DeepSeek-V3's tensor names and shapes."""
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        attn = {
            "q_a_proj": (Q_LORA, HIDDEN), "q_b_proj": (HEADS * (NOPE + ROPE), Q_LORA),
            "kv_a_proj_with_mqa": (KV_LORA + ROPE, HIDDEN), "kv_b_proj": (HEADS * (NOPE + V), KV_LORA),
            "o_proj": (HIDDEN, HEADS * V),
        }
        tensors += [(f"{p}.self_attn.{n}.weight", s) for n, s in attn.items()]
        tensors += [(f"{p}.self_attn.q_a_layernorm.weight", (Q_LORA,)), (f"{p}.self_attn.kv_a_layernorm.weight", (KV_LORA,))]
        tensors += [(f"{p}.input_layernorm.weight", (HIDDEN,)), (f"{p}.post_attention_layernorm.weight", (HIDDEN,))]
        if layer < DENSE:
            mlps = {f"{p}.mlp": INTER}
        else:
            mlps = {f"{p}.mlp.experts.{e}": MOE_INTER for e in range(EXPERTS)} | {f"{p}.mlp.shared_experts": MOE_INTER}
            tensors += [(f"{p}.mlp.gate.weight", (EXPERTS, HIDDEN)), (f"{p}.mlp.gate.e_score_correction_bias", (EXPERTS,))]
        for prefix, inter in mlps.items():
            tensors += [(f"{prefix}.gate_proj.weight", (inter, HIDDEN)), (f"{prefix}.up_proj.weight", (inter, HIDDEN)),
                        (f"{prefix}.down_proj.weight", (HIDDEN, inter))]
    tensors += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    with_scales: list[tuple[str, str, tuple[int, ...]]] = []
    for name, shape in tensors:
        with_scales.append((name, "BF16", shape))
        if len(shape) == 2 and "embed" not in name and "lm_head" not in name and ".gate." not in name:
            scale = (-(-shape[0] // 128), -(-shape[1] // 128))
            with_scales.append((name.replace(".weight", ".weight_scale_inv"), "F32", scale))
    headers: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    count = -(-len(with_scales) // shard_tensors)
    for i in range(0, len(with_scales), shard_tensors):
        shard = f"model-{i // shard_tensors + 1:05d}-of-{count:05d}.safetensors"
        headers[shard] = {name: (dtype, shape) for name, dtype, shape in with_scales[i : i + shard_tensors]}
    return headers


def compressed_tensors_headers(headers: dict[str, dict[str, tuple[str, tuple[int, ...]]]]) -> dict:
    """The same model as a compressed-tensors NVFP4 release: every projection packed with its scales."""
    out: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for shard, tensors in headers.items():
        out[shard] = {}
        for name, (dtype, shape) in tensors.items():
            if name.endswith("weight_scale_inv"):
                continue
            if name.endswith("_proj.weight"):
                module = name.removesuffix(".weight")
                out[shard] |= {f"{module}.weight_packed": ("U8", (shape[0], shape[1] // 2)),
                               f"{module}.weight_scale": ("F8_E4M3", (shape[0], shape[1] // 16)),
                               f"{module}.weight_global_scale": ("F32", (1,))}
            else:
                out[shard][name] = (dtype, shape)
    return out


CT_CONFIG = {"quantization_config": {
    "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head", r"re:.*\.gate$"],
    "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized", "weights": {
        "num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True,
        "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}}},
}}


def write_wide_shard(folder: Path, tensors: int = 300_000) -> Path:
    """One ``model.safetensors`` with ``tensors`` entries: half 1x128 bf16 weights, half biases."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in range(tensors // 2):
        for name, shape, size in ((f"model.layers.{i}.proj.weight", [1, 128], 256), (f"model.layers.{i}.proj.bias", [1], 2)):
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # zeros: the values do not matter to a plan
    return path


# What the planner reads of DeepSeek-V3's config.json: the model's own default ignore list
# (vocab rows, routers by shape, the MTP layer) and the tensor-parallel report depend on it.
MODEL_CONFIG = {"model_type": "deepseek_v3", "vocab_size": VOCAB, "hidden_size": HIDDEN, "n_routed_experts": EXPERTS,
                "num_hidden_layers": LAYERS, "moe_intermediate_size": MOE_INTER, "num_key_value_heads": 128}


_BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1}


def write_header_folder(folder: Path, headers: dict[str, dict[str, tuple[str, tuple[int, ...]]]]) -> Path:
    """A checkpoint folder with these headers: sparse shards (the data are holes), an index and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for shard, tensors in headers.items():
        header: dict[str, object] = {}
        offset = 0
        for name, (dtype, shape) in tensors.items():
            size = _BYTES[dtype] * math.prod(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = shard
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / shard, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({**MODEL_CONFIG, "architectures": ["DeepseekV3ForCausalLM"]}))
    return folder


def whole_process_seconds(argv: list[str], runs: int) -> list[float]:
    """Wall seconds of ``python argv...`` from start to exit, ``runs`` times (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PTQ_DISABLE_PROGRESS": "1"}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return times


# One ``ptq plan`` in a fresh process, its phases timed from inside: the interpreter is up when
# it starts; torch, then the modules ``ptq plan`` imports beyond it, then the command itself.
_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import ptq_core.cli, ptq_core.job, ptq_core.hubjob
t2 = time.perf_counter()
sys.argv = ["ptq", "plan", *sys.argv[1:]]
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    ptq_core.cli.main()
t3 = time.perf_counter()
loaded = "compressed_tensors" in sys.modules
print(json.dumps({"torch import": t1 - t0, "ptq_core import": t2 - t1, "plan + table": t3 - t2, "ct": loaded}))
"""


def phase_seconds(folder: Path, scheme: str, runs: int) -> tuple[dict[str, float], bool]:
    """Per phase, the least seconds over ``runs`` fresh processes; and whether compressed-tensors was loaded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PTQ_DISABLE_PROGRESS": "1"}
    best: dict[str, float] = {}
    loaded = False
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _PHASES, str(folder), "-s", scheme], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"phases of ptq plan -s {scheme} failed:\n{done.stderr[-2000:]}")
        phases = json.loads(done.stdout.strip().splitlines()[-1])
        loaded |= phases.pop("ct")
        best = {k: min(v, best.get(k, v)) for k, v in phases.items()}
    return best, loaded


def print_whole_process(runs: int = 5) -> None:
    """``ptq plan FOLDER`` of the DeepSeek-V3-sized folder as a whole process, ``import torch`` beside it, and its phases."""
    headers = deepseek_v3_headers()
    with tempfile.TemporaryDirectory(prefix="ptq-bench-plan-") as tmp:
        folder = write_header_folder(Path(tmp) / "DeepSeek-V3", headers)
        print(f"`ptq plan` of a DeepSeek-V3-sized folder ({sum(len(v) for v in headers.values()):,} tensors, "
              f"{len(headers)} sparse shards) as a whole process, {runs} runs (issue target: under 2 s)\n")
        print("| command | min s | median s |\n|---|---:|---:|")
        # ``ptq plan`` ends without the interpreter's teardown (cli.console_main): the floor is shown both ways
        for label, argv in (("python -c 'import torch'", ["-c", "import torch"]),
                            ("python -c 'import torch, os; os._exit(0)'", ["-c", "import torch, os; os._exit(0)"]),
                            ("python -c 'import ptq_core.job'", ["-c", "import ptq_core.job"]),
                            *((f"ptq plan FOLDER -s {s}", ["-m", "ptq_core.cli", "plan", str(folder), "-s", s])
                              for s in ("FP8_BLOCK", "W4A16"))):
            times = whole_process_seconds(argv, runs)
            print(f"| `{label}` | {min(times):.2f} | {statistics.median(times):.2f} |")
        print(f"\nThe same command's phases, timed inside a fresh process (least of {runs} runs each)\n")
        print("| scheme | torch import s | ptq_core import s (beyond torch) | plan + table s | compressed-tensors loaded |")
        print("|---|---:|---:|---:|---|")
        for scheme in ("FP8_BLOCK", "W4A16"):
            best, loaded = phase_seconds(folder, scheme, runs)
            print(f"| {scheme} | {best['torch import']:.2f} | {best['ptq_core import']:.2f} | {best['plan + table']:.2f} "
                  f"| {'yes' if loaded else 'no'} |")
    print()


def main() -> None:
    print_whole_process()
    if "--process" in sys.argv[1:]:
        return
    headers = deepseek_v3_headers()
    total = sum(len(v) for v in headers.values())
    print(f"DeepSeek-V3-shaped header set: {total:,} tensors in {len(headers)} shards\n")
    print("| scheme | plan s | markdown s | quantized | fused groups | peak RSS growth MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for scheme in ("FP8_BLOCK", "NVFP4A16", "W4A16"):
        job = make_job("deepseek-ai/DeepSeek-V3", scheme)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        plan = build_plan(headers_checkpoint(headers), job.resolved, config=MODEL_CONFIG)
        t1 = time.perf_counter()
        plan.to_markdown()
        t2 = time.perf_counter()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"| {scheme} | {t1 - t0:.2f} | {t2 - t1:.2f} | {len(plan.quantized):,} | {len(plan.fused_groups):,} | {grown:.0f} |")

    ct = headers_checkpoint(compressed_tensors_headers(headers))
    print(f"\nThe same model as a compressed-tensors NVFP4 release ({len(ct.tensors):,} tensors), decompressed "
          "in memory by compressed-tensors' dequantizer\n")
    print("| scheme | source plan s (converter chain) | plan s | converted modules | peak RSS growth MB |")
    print("|---|---:|---:|---:|---:|")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    source = source_plan(ct, CT_CONFIG)
    t1 = time.perf_counter()
    plan = build_plan(ct, make_job("org/DeepSeek-V3-NVFP4", "W4A16").resolved, source, config=MODEL_CONFIG)
    t2 = time.perf_counter()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"| W4A16 | {t1 - t0:.2f} | {t2 - t1:.2f} | {len(source.dequantize):,} | {grown:.0f} |")

    with tempfile.TemporaryDirectory(prefix="ptq-bench-plan-") as tmp:
        shard = write_wide_shard(Path(tmp) / "wide")
        print(f"\nOne local shard with a 300,000-tensor header ({shard.stat().st_size / 1e6:.0f} MB file)\n")
        print("| scheme | read + validate s | plan s | total s | peak RSS growth MB |")
        print("|---|---:|---:|---:|---:|")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        checkpoint = open_checkpoint(shard.parent)
        t1 = time.perf_counter()
        plan = build_plan(checkpoint, make_job(str(shard.parent), "W4A16").resolved)
        t2 = time.perf_counter()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"| W4A16 | {t1 - t0:.2f} | {t2 - t1:.2f} | {t2 - t0:.2f} | {grown:.0f} |")
        assert len(plan.quantized) == 150_000


if __name__ == "__main__":
    main()
