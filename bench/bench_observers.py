#!/usr/bin/env python3
"""Weight observers: ptq_core against llm-compressor 0.14.0.1, and what each observer buys.

(llm-compressor 0.15.0 is a GitHub release only; the package index serves 0.14.0.1,
the peer measured here. Its newest nightly there, 0.14.1a20261020, registers no
MXFP4-specific MSE observer.)

Two tables, in Markdown on stdout:

1. **Call time** for one weight of the benchmark checkpoint (seeded N(0, 0.02) bf16,
   ``q_proj``-shaped 2048 x 2048 by default): ours is ``quantize_weight`` (observe +
   quantize); the peer's is its model-free per-tensor path
   (``initialize_quantized_linear``, ``calibrate_weight``, ``compress_module``), run in
   its own venv (``peer_env.py``). Both use ``--threads`` torch threads (default 1: on a
   shared machine, intra-op threads mostly measure the neighbours). Rounds alternate
   ours / peer; each reports the minimum CPU time over ``--repeats`` calls, and the
   outputs are compared byte for byte.
2. **Reconstruction error**: ``||W - dequant(quant(W))||_F / ||W||_F`` per scheme and
   observer, on the same Gaussian weight and on a heavy-tailed one (Student t, 4
   degrees of freedom, same std), dequantized by compressed-tensors' own decompressors.
   Our outputs equal the peer's, so these are the peer's numbers too.

``--all`` times every scheme of the error table with every observer (slow on the
peer's side: use fewer rows).

It reports and never asserts a timing::

    .venv/bin/python bench/bench_observers.py
    .venv/bin/python bench/bench_observers.py --rows 1024 --cols 2048 --repeats 1 --skip-errors
    .venv/bin/python bench/bench_observers.py --all --rows 512 --rounds 1 --repeats 2 --skip-errors
    .venv/bin/python bench/bench_observers.py --all --observer memoryless_minmax --rounds 3 --repeats 7 --skip-errors
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PEER_VERSION = "0.14.0.1"
TIMED = (("W4A16", "memoryless_mse"), ("NVFP4A16", "nvfp4_expanded_mse"), ("W4A16", "memoryless_minmax"))
ERROR_SCHEMES = ("W4A16", "W4A16_ASYM", "W8A16", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16", "MXFP8A16")
OBSERVERS = ("memoryless_minmax", "memoryless_mse", "nvfp4_expanded_mse")
TIMED_ALL = tuple((name, observer) for name in ERROR_SCHEMES for observer in OBSERVERS)


def timed(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    pairs = TIMED_ALL if args.all else TIMED
    return tuple(p for p in pairs if not args.observer or p[1] in args.observer)


def bench_weight(rows: int, cols: int, seed: int, heavy: bool = False) -> torch.Tensor:
    """The benchmark checkpoint's distribution (checkpoint.py: N(0, 0.02) in bf16), or a
    heavy-tailed one of the same std (real checkpoints have outliers; the search buys most there)."""
    gen = torch.Generator().manual_seed(seed)
    if not heavy:
        return torch.empty((rows, cols), dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)
    normal = torch.randn((rows, cols), generator=gen, dtype=torch.float64)
    chi2 = torch.randn((4, rows, cols), generator=gen, dtype=torch.float64).pow(2).sum(0)
    t = normal / torch.sqrt(chi2 / 4)  # Student t, 4 degrees of freedom: variance 2
    return (t * (0.02 / 2**0.5)).to(torch.bfloat16)


def _scheme(name: str, observer: str):
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(name, ["Linear"])
    scheme.weights.observer = observer
    return scheme


def _timed(fn, repeats: int) -> tuple[float, float, dict]:
    """(min CPU seconds, min wall seconds, last result) over ``repeats`` calls."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall), out


# ----------------------------------------------------------------------------- peer side


def peer_main(args: argparse.Namespace) -> None:
    """Runs under the peer's interpreter: time its per-tensor path, save its outputs."""
    from compressed_tensors.compressors import compress_module
    from llmcompressor.entrypoints.model_free.lifecycle import calibrate_weight, initialize_quantized_linear
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    weight = bench_weight(args.rows, args.cols, args.seed)
    results, tensors = [], {}
    for name, observer in timed(args):
        def call(name=name, observer=observer):
            module = initialize_quantized_linear(weight, _scheme(name, observer), "cpu")
            calibrate_weight(module)
            compress_module(module)
            return module.state_dict()

        cpu, wall, state = _timed(call, args.repeats)
        results.append({"scheme": name, "observer": observer, "cpu": cpu, "wall": wall})
        tensors.update({f"{name}|{observer}|{k}": v.contiguous() for k, v in state.items()})
    save_file(tensors, args.peer_out)
    print(json.dumps(results))


def run_peer(args: argparse.Namespace, python: Path, out: Path) -> list[dict]:
    cmd = [str(python), __file__, "--as-peer", "--peer-out", str(out), "--rows", str(args.rows), "--cols",
           str(args.cols), "--seed", str(args.seed), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--all"] if args.all else []
    cmd += [f"--observer={o}" for o in args.observer or ()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours in the peer
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: the peer run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- our side


def ours_times(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from ptq_core.numerics import Scratch, quantize_weight

    weight = bench_weight(args.rows, args.cols, args.seed)
    results, tensors = [], {}
    for name, observer in timed(args):
        spec, scratch = _spec(name, observer), Scratch()
        quantize_weight(weight[:256], spec, scratch=scratch)  # tables and buffers, as in a long run
        cpu, wall, out = _timed(lambda: quantize_weight(weight, spec, scratch=scratch), args.repeats)
        results.append({"scheme": name, "observer": observer, "cpu": cpu, "wall": wall})
        tensors.update({f"{name}|{observer}|{k}": v for k, v in out.items()})
    return results, tensors


def _spec(name: str, observer: str):
    from ptq_core.schemes import resolve_config, weight_spec

    resolved = resolve_config(_scheme(name, observer))
    (group, scheme), = resolved.groups
    return weight_spec(scheme, resolved.formats[group])


def same_bytes(ours: dict, peer: dict, name: str, observer: str) -> bool:
    prefix = f"{name}|{observer}|"
    a = {k: v for k, v in ours.items() if k.startswith(prefix)}
    b = {k: v for k, v in peer.items() if k.startswith(prefix)}
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].contiguous().view(-1).view(torch.uint8), b[k].contiguous().view(-1).view(torch.uint8))
        for k in b
    )


def error_table(args: argparse.Namespace) -> str:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format

    from ptq_core.numerics import quantize_weight

    lines = []
    for heavy in (False, True):
        weight = bench_weight(args.error_rows, args.cols, args.seed + 1, heavy=heavy)
        dense = weight.double()
        title = "Student t (4 dof), same std" if heavy else "N(0, 0.02), as the benchmark checkpoint"
        lines += ["", f"Relative Frobenius reconstruction error, {args.error_rows} x {args.cols} bf16, {title}:", "",
                  "| scheme | " + " | ".join(OBSERVERS) + " | best vs min/max |", "|---|" + "---:|" * (len(OBSERVERS) + 1)]
        for name in ERROR_SCHEMES:
            errors = []
            for observer in OBSERVERS:
                scheme = _scheme(name, observer)
                fmt = infer_module_format(torch.nn.Linear, scheme).value
                state = quantize_weight(weight, _spec(name, observer))
                back = BaseCompressor.get_value_from_registry(fmt).decompress(dict(state), scheme)["weight"]
                errors.append(float((back.double() - dense).norm() / dense.norm()))
            gain = min(errors[1:]) / errors[0]
            lines.append(f"| {name} | " + " | ".join(f"{e:.5f}" for e in errors) + f" | {gain:.3f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--error-rows", type=int, default=512, help="rows of the weights in the error table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="calls per round; each round reports its minimum")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours / peer rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ptq-hub" / "bench")
    parser.add_argument("--skip-errors", action="store_true", help="only the timing table")
    parser.add_argument("--all", action="store_true", help="time every scheme x observer of the error table")
    parser.add_argument("--skip-timing", action="store_true", help="only the error table")
    parser.add_argument("--observer", action="append", choices=OBSERVERS,
                        help="time only this observer's pairs (repeatable): min/max calls are short, so more repeats are cheap")
    parser.add_argument("--as-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_peer:
        peer_main(args)
        return 0

    sys.path.insert(0, str(REPO_ROOT))
    torch.set_num_threads(args.threads)
    if not args.skip_timing:
        from peer_env import default_torch_mode, ensure_peer_env
        from safetensors.torch import load_file

        peer = ensure_peer_env(args.cache_dir / "peer-venv", peer_version=PEER_VERSION,
                               torch_mode=default_torch_mode(), pip_args=[])
        best: dict[tuple[str, str], dict[str, float]] = {}
        identical: dict[tuple[str, str], bool] = {}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            ours, ours_tensors = ours_times(args)
            out = args.cache_dir / "observer-peer-out.safetensors"
            peers = run_peer(args, peer.python, out)
            peer_tensors = load_file(str(out))
            for o, p in zip(ours, peers):
                key = (o["scheme"], o["observer"])
                cur = best.setdefault(key, {"ours": o["cpu"], "peer": p["cpu"], "ours_wall": o["wall"], "peer_wall": p["wall"]})
                cur.update(ours=min(cur["ours"], o["cpu"]), peer=min(cur["peer"], p["cpu"]),
                           ours_wall=min(cur["ours_wall"], o["wall"]), peer_wall=min(cur["peer_wall"], p["wall"]))
                identical[key] = identical.get(key, True) and same_bytes(ours_tensors, peer_tensors, *key)
        print(f"Call time for one {args.rows} x {args.cols} bf16 weight, {args.threads} torch thread(s), "
              f"min over {args.rounds} x {args.repeats} calls (CPU seconds; wall in brackets):\n")
        print("| scheme | observer | ours | peer | peer / ours | byte-identical |\n|---|---|---:|---:|---:|---|")
        for (name, observer), t in best.items():
            print(f"| {name} | {observer} | {t['ours']:.3f} ({t['ours_wall']:.3f}) | {t['peer']:.3f} ({t['peer_wall']:.3f}) "
                  f"| {t['peer'] / t['ours']:.1f}x | {'yes' if identical[(name, observer)] else 'NO'} |")
        print(f"\npeer: llmcompressor {peer.versions.get('llmcompressor')}, compressed-tensors "
              f"{peer.versions.get('compressed-tensors')}, torch {peer.versions.get('torch')}")
    if not args.skip_errors:
        print(error_table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
