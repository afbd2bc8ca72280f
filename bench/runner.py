"""One benchmark run in a fresh process: import the library, call model_free_ptq once.

Why a separate process per run: import cost and peak RSS must belong to one
call of one tool, not accumulate across runs; and the peer lives in its own
virtual environment, so this file must work under either interpreter. It
therefore imports only the standard library before the tool's own import.

Writes one JSON object to ``--result``; the parent adds wall time and rusage.

An FP8-block source (config.json ``quantization_config.quant_method == "fp8"`` with a
``weight_block_size``) needs no argument for ours, which detects it. The peer must be
handed ``converter=FP8BlockDequantizer(targets=[...])`` naming every module that has a
``weight_scale_inv`` (compressed-tensors 0.19.0 has no ``from_pretrained``): the runner
builds it from the shard headers, as a user of the peer would, before the timed call.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import struct
import sys
import time
import traceback
from pathlib import Path

# tool name -> (module to import, function to call)
TOOLS = {
    "ours": ("ptq_core", "model_free_ptq"),
    "peer": ("llmcompressor", "model_free_ptq"),
}
# distributions whose versions are worth recording next to each tool
VERSION_OF = {
    "ours": ("ptq-hub", "compressed-tensors", "torch", "safetensors"),
    "peer": ("llmcompressor", "compressed-tensors", "torch", "safetensors", "transformers"),
}


def read_rss() -> dict[str, int]:
    """Resident set now (total / anonymous / file-backed) and its peak so far, in bytes.

    The peak comes from VmHWM, not getrusage: ``ru_maxrss`` survives fork+exec,
    so a child of a big parent reports the parent's peak (this benchmark's
    parent holds tensors while generating and comparing checkpoints). VmHWM
    belongs to the process's own address space, created at exec.
    """
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "hwm"}
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                out[fields[key]] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: peak RSS from getrusage still works
        pass
    return out


def versions(tool: str) -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in VERSION_OF[tool]:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if tool == "ours" and "ptq-hub" not in found:
        found["ptq-hub"] = getattr(sys.modules.get("ptq_core"), "__version__", "?") + " (source tree)"
    return found


def fp8_block_source(model: str) -> dict | None:
    """``{"weight_block_size": [bh, bw], "dtype": "bfloat16", "targets": [module, ...]}`` for
    a local FP8-block checkpoint (targets from every shard's header), else None."""
    folder = Path(model)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "fp8" or not quant.get("weight_block_size"):
        return None
    targets: list[str] = []
    for shard in sorted(folder.glob("*.safetensors")):
        with shard.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        targets += [k.removesuffix(".weight_scale_inv") for k in header if k.endswith(".weight_scale_inv")]
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return {"weight_block_size": list(quant["weight_block_size"]), "dtype": dtype, "targets": sorted(targets)}


def peer_converter(model: str, result: dict) -> object | None:
    """The peer's ``FP8BlockDequantizer`` for an FP8-block source (None otherwise); what it
    was built with, and how long that took, go into ``result["converter"]``."""
    t0 = time.perf_counter()
    source = fp8_block_source(model)
    if source is None:
        return None
    import torch
    from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer

    converter = FP8BlockDequantizer(
        targets=source["targets"],
        weight_block_size=tuple(source["weight_block_size"]),
        dtype=getattr(torch, source["dtype"]),
    )
    result["converter"] = {
        "name": "FP8BlockDequantizer",
        "targets": len(source["targets"]),
        "weight_block_size": source["weight_block_size"],
        "dtype": source["dtype"],
        "build_s": time.perf_counter() - t0,
    }
    return converter


def cuda_peak_bytes(device: str) -> int | None:
    """Peak GPU memory of the call; synchronizes first so the call's time is complete."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tool", choices=sorted(TOOLS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scheme", required=True)
    p.add_argument("--ignore-json", default="[]", help="JSON list of ignore patterns")
    p.add_argument("--max-workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--result", required=True, help="where to write the JSON result")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    result: dict = {"tool": args.tool, "scheme": args.scheme, "ok": False}
    module_name, func_name = TOOLS[args.tool]
    try:
        t0 = time.perf_counter()
        func = getattr(importlib.import_module(module_name), func_name)
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.init()  # CUDA context creation counts as startup, not as the call
        result["import_s"] = time.perf_counter() - t0
        result["versions"] = versions(args.tool)
        # ours detects an FP8-block source itself; the peer is told (outside the timed call)
        extra = {}
        if args.tool == "peer" and (converter := peer_converter(args.model, result)) is not None:
            extra["converter"] = converter
        result["baseline"] = read_rss()
        t1 = time.perf_counter()
        func(
            args.model,
            args.out,
            scheme=args.scheme,
            ignore=json.loads(args.ignore_json),
            max_workers=args.max_workers,
            device=args.device,
            **extra,
        )
        result["gpu_peak_bytes"] = cuda_peak_bytes(args.device)
        result["call_s"] = time.perf_counter() - t1
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure becomes data; the parent decides
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    result["end"] = read_rss()
    # fallback where /proc is missing; may include the parent's peak (see read_rss)
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
