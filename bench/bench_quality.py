"""What the SpinQuant rotation buys at 4 bits, and what it costs per GB.

A benchmark, not a test: it prints Markdown tables and asserts nothing.

**Quality.** Random Llama weights have no outliers, and outliers are what rotations fix. So a tiny
seeded Llama (transformers' own class and initialisation) gets what trained LLMs show: a few
residual channels of large magnitude (embedding columns and the RMSNorm scales that read them,
"massive activations"), and heavy-tailed weights (a few large entries per matrix). For W4A16,
NVFP4A16 and MXFP4A16, with and without ``rotate``, the model is quantized by ``ptq_core``, loaded
back by transformers (compressed-tensors decompresses it on CPU), and compared with the bf16
model on a fixed token batch:

* weight error: mean over the quantized linears of ||W_q - W|| / ||W||, where W is the dense weight
  the quantizer was given (the rotated one for a rotated run);
* logits cosine (per token, averaged) and top-1 agreement against the bf16 model's logits.

**Cost.** The plain W4A16 job, the rotated one with the peer's dgemm only, and the rotated one as
shipped (``ptq_core/rotation_fast.py`` where its certificate holds) on the benchmark checkpoint of
``bench_model_free_ptq.py`` (``bench/checkpoint.py``; ``--cost-hidden`` picks its width), in the
same process, one after the other: seconds, seconds per GB of input, the rotation's share, and
how many rotated elements took each path.

    .venv/bin/python bench/bench_quality.py                      # quality + cost on a 1 GB checkpoint
    .venv/bin/python bench/bench_quality.py --cost-params 200M   # a faster cost run
    .venv/bin/python bench/bench_quality.py --no-quality --cost-params 400M --cost-hidden 4096
    .venv/bin/python bench/bench_quality.py --no-cost            # quality only (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from checkpoint import ensure_checkpoint  # noqa: E402  (bench/checkpoint.py)

from ptq_core.checkpoint import open_checkpoint, read_config  # noqa: E402
from ptq_core.job import make_job  # noqa: E402
from ptq_core.pipeline import quantize_job  # noqa: E402
from ptq_core.rotation import build_spinquant  # noqa: E402

SCHEMES = ("W4A16", "NVFP4A16", "MXFP4A16")
SEED = 0
DIMS = dict(vocab_size=2048, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, head_dim=64, max_position_embeddings=512, tie_word_embeddings=False)
OUTLIER_CHANNELS = 4      # residual channels with massive activations
OUTLIER_EMBED = 20.0      # their embedding columns, times this
OUTLIER_NORM = 30.0       # the RMSNorm scales that read them, times this
HEAVY_TAIL_SHARE = 1e-3   # share of each linear's entries made large
HEAVY_TAIL_SCALE = 12.0
BATCH = (4, 64)


def outlier_model(folder: Path) -> Path:
    """The seeded tiny Llama with realistic outliers, saved with ``save_pretrained`` (bf16)."""
    import transformers

    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**DIMS)).to(torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(SEED)
    channels = torch.randperm(DIMS["hidden_size"], generator=gen)[:OUTLIER_CHANNELS]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, channels] *= OUTLIER_EMBED
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param[channels] *= OUTLIER_NORM
            elif name.endswith("proj.weight"):
                picked = torch.rand(param.shape, generator=gen) < HEAVY_TAIL_SHARE
                param[picked] *= HEAVY_TAIL_SCALE
    model.save_pretrained(folder)
    return folder


def dense_weights(folder: Path, rotate: bool) -> dict[str, torch.Tensor]:
    """The dense tensors the quantizer is given: the source's, or the rotated ones."""
    from safetensors import safe_open

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update({n: f.get_tensor(n) for n in f.keys()})
    if not rotate:
        return tensors
    checkpoint = open_checkpoint(folder)
    rotation = build_spinquant(read_config(folder), checkpoint.tensors, lambda names: {n: tensors[n] for n in names})
    return rotation.process(tensors)


def model_outputs(folder: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(float32 logits on ``tokens``, the loaded model's state dict): transformers decompresses."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(tokens).logits.float()
    return logits, {k: v.detach() for k, v in model.state_dict().items()}


def weight_error(loaded: dict[str, torch.Tensor], dense: dict[str, torch.Tensor], quantized: list[str]) -> float:
    errors = []
    for name in quantized:
        w = dense[name].float()
        errors.append(((loaded[name].float() - w).norm() / w.norm()).item())
    return sum(errors) / len(errors)


def compare_logits(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean per-token cosine, top-1 agreement) of ``logits`` against ``reference``."""
    cos = torch.nn.functional.cosine_similarity(logits, reference, dim=-1).mean().item()
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return cos, top1


def quality_rows(schemes: list[str], work: Path) -> list[dict]:
    source = outlier_model(work / "source")
    tokens = torch.randint(0, DIMS["vocab_size"], BATCH, generator=torch.Generator().manual_seed(SEED + 1))
    reference, _ = model_outputs(source, tokens)
    rows = []
    for scheme in schemes:
        for rotate in (False, True):
            out = work / f"{scheme}-{'rot' if rotate else 'plain'}"
            result = quantize_job(make_job(str(source), scheme, rotate=rotate, workers=os.cpu_count() or 1), out)
            logits, loaded = model_outputs(out, tokens)
            quantized = [i.name for i in result.plan.quantized]
            cos, top1 = compare_logits(logits, reference)
            rows.append({"scheme": scheme, "rotate": rotate, "weight_error": weight_error(
                loaded, dense_weights(source, rotate), quantized), "cosine": cos, "top1": top1})
            print(f"  {scheme} rotate={rotate}: cos {cos:.4f} top-1 {top1:.3f}", file=sys.stderr, flush=True)
    # the rotated bf16 model itself: what the rotation alone costs (bf16 rounding of the fused weights)
    quantize_job(make_job(str(source), "W4A16", rotate=True, ignore=["re:.*"]), work / "bf16-rot")  # nothing quantized
    cos, top1 = compare_logits(model_outputs(work / "bf16-rot", tokens)[0], reference)
    rows.append({"scheme": "bf16 (no quantization)", "rotate": True, "weight_error": 0.0, "cosine": cos, "top1": top1})
    return rows


def cost_rows(params: int, workers: int, cache: Path, work: Path, hidden: int | None = None) -> list[dict]:
    """The plain job, the rotated job with the peer's dgemm only, and the rotated job as shipped
    (``rotation_fast`` where certified), in this order and process, on one checkpoint."""
    import ptq_core.rotation as rotation_module

    source = ensure_checkpoint(cache, params, 512 << 20, hidden_size=hidden)
    size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    made: list = []
    build = rotation_module.build_spinquant
    rows = []
    for mode in ("plain", "dgemm", "fast"):
        def capture(*args, **kwargs):  # keep the job's SpinQuant: its path counts (and dgemm only)
            made.append(build(*args, **kwargs))
            if mode == "dgemm":
                made[-1].fast.min_width = sys.maxsize
            return made[-1]

        made.clear()
        rotation_module.build_spinquant = capture
        try:
            start = time.perf_counter()
            quantize_job(make_job(str(source), "W4A16", rotate=mode != "plain", workers=workers), work / f"cost-{mode}")
            seconds = time.perf_counter() - start
        finally:
            rotation_module.build_spinquant = build
        stats = dict(made[0].fast.stats) if made else {}
        rows.append({"mode": mode, "seconds": seconds, "gb": size / 1e9, "s_per_gb": seconds / (size / 1e9),
                     "hidden": json.loads((source / "config.json").read_text())["hidden_size"], "paths": stats})
        print(f"  cost {mode}: {seconds:.1f} s {stats}", file=sys.stderr, flush=True)
    return rows


def rotation_rows(params: int, cache: Path, hidden: int | None = None) -> list[dict]:
    """The rotation alone, tensor by tensor on one thread: the peer's dgemm and the shipped path
    alternate on each tensor (same load for both), and their outputs are compared byte for byte."""
    from safetensors import safe_open

    from ptq_core.rotation import SpinQuant

    source = ensure_checkpoint(cache, params, 512 << 20, hidden_size=hidden)
    fast, dgemm = SpinQuant.from_pretrained(source), SpinQuant.from_pretrained(source)
    dgemm.fast.min_width = sys.maxsize  # the peer's dgemm only
    seconds = {"dgemm": 0.0, "fast": 0.0}
    size = differ = 0
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shard in sorted(source.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    size += tensor.numel() * tensor.element_size()
                    out = {}
                    for mode, rotation in (("dgemm", dgemm), ("fast", fast)):
                        start = time.perf_counter()
                        out[mode] = rotation.process({name: tensor})[name]
                        seconds[mode] += time.perf_counter() - start
                    differ += not torch.equal(out["dgemm"].view(torch.uint8), out["fast"].view(torch.uint8))
    finally:
        torch.set_num_threads(before)
    hidden_size = json.loads((source / "config.json").read_text())["hidden_size"]
    return [{"mode": mode, "seconds": seconds[mode], "gb": size / 1e9, "s_per_gb": seconds[mode] / (size / 1e9),
             "hidden": hidden_size, "paths": dict(fast.fast.stats) if mode == "fast" else {},
             "tensors_differing": differ}
            for mode in ("dgemm", "fast")]


def markdown(quality: list[dict], cost: list[dict], alone: list[dict] = ()) -> str:
    lines = ["| scheme | rotate | weight error | logits cosine | top-1 agreement |", "|---|---|---:|---:|---:|"]
    lines = lines if quality else []
    for r in quality:
        lines.append(f"| {r['scheme']} | {'R1+R2' if r['rotate'] else 'no'} | {r['weight_error']:.4f} | "
                     f"{r['cosine']:.4f} | {100 * r['top1']:.1f}% |")
    if cost:
        lines += ["", f"hidden {cost[0]['hidden']}:", "",
                  "| W4A16 job | seconds | input GB | s / GB | rotated elements: certified / "
                  "dgemm after a failed certificate / dgemm only |",
                  "|---|---:|---:|---:|---|"]
        for r in cost:
            paths = r["paths"]
            total = sum(paths.get(k, 0) for k in ("fast", "fallback", "dense")) or 1
            share = " / ".join(f"{100 * paths.get(k, 0) / total:.2f}%" for k in ("fast", "fallback", "dense"))
            lines.append(f"| {r['mode']} | {r['seconds']:.1f} | {r['gb']:.2f} | {r['s_per_gb']:.1f} | "
                         f"{share if paths else ''} |")
        plain = cost[0]
        for r in cost[1:]:
            lines.append(f"\n{r['mode']} rotation: {r['s_per_gb'] - plain['s_per_gb']:+.1f} s/GB "
                         f"({r['seconds'] / plain['seconds']:.2f}x the plain job)")
    if alone:
        dgemm, fast = alone
        paths = fast["paths"]
        total = sum(paths.get(k, 0) for k in ("fast", "fallback", "dense")) or 1
        lines += ["", f"rotation alone, one thread, hidden {dgemm['hidden']} ({dgemm['gb']:.2f} GB): dgemm "
                  f"{dgemm['s_per_gb']:.1f} s/GB, shipped {fast['s_per_gb']:.1f} s/GB "
                  f"({dgemm['seconds'] / fast['seconds']:.1f}x faster); elements certified "
                  f"{100 * paths.get('fast', 0) / total:.2f}%, redone by the dgemm "
                  f"{100 * paths.get('fallback', 0) / total:.2f}% ({paths.get('uncertified', 0)} not certified); "
                  f"tensors differing from the dgemm: {fast['tensors_differing']}"]
    return "\n".join(lines)


def _params(text: str) -> int:
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--no-cost", action="store_true", help="skip the timing of the rotation")
    parser.add_argument("--rotation-only", action="store_true",
                        help="cost: time the rotation alone (dgemm and shipped, alternating per tensor), no jobs")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality table (cost only)")
    parser.add_argument("--cost-params", type=_params, default=_params("1B"), help="benchmark checkpoint size")
    parser.add_argument("--cost-hidden", type=int, help="the cost checkpoint's hidden size (default: its own, "
                        "2048 from 400M parameters): 4096 = 4^6 rotates exactly, 2048 and 8192 through the certificate")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/ptq-hub/bench")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory(prefix="ptq-bench-quality-") as tmp:
        quality = [] if args.no_quality else quality_rows(args.schemes, Path(tmp))
        run_jobs = not (args.no_cost or args.rotation_only)
        cost = cost_rows(args.cost_params, args.workers, args.cache, Path(tmp), args.cost_hidden) if run_jobs else []
        alone = rotation_rows(args.cost_params, args.cache, args.cost_hidden) if args.rotation_only else []
    print(markdown(quality, cost, alone))
    if args.json:
        args.json.write_text(json.dumps({"quality": quality, "cost": cost, "rotation_alone": alone}, indent=1))


if __name__ == "__main__":
    main()
