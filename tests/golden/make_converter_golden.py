"""Regenerate ``converters.safetensors`` + ``converters.json``: the peer's outputs for ``converter_cases``.

Run with the peer's interpreter (llm-compressor 0.14.0.1 in its own venv; see
``bench/peer_env.py``), never with the project's::

    ~/.cache/ptq-hub/bench/peer-venv/bin/python tests/golden/make_converter_golden.py

Each case builds its seeded source (the compressed-tensors and ModelOpt ones with the peer's own
``model_free_ptq``), then runs the peer's real
``model_free_ptq(source, out, scheme, ignore=..., device="cpu", converter=<case converter>)``.
``converters.safetensors`` stores every output tensor as ``{case id}|{tensor name}`` and the
peer's versions in its metadata; ``converters.json`` stores, per case, the output's
``quantization_config`` as written, its ``weight_map`` (sharded outputs) and the digest of the
source's tensors (the tests rebuild the source with our venv and check it first).
A rerun writes the same tensors and JSON; only the order of the safetensors metadata keys
may change (safetensors writes them from a hash map).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import tempfile
from pathlib import Path

import torch
from llmcompressor.entrypoints.model_free import model_free_ptq
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from converter_cases import CONFIG_FILE, GOLDEN_FILE, build_converter, build_source, cases, tensors_digest  # noqa: E402
from factory import load_tensors  # noqa: E402  (converter_cases put tests/ on the path)


def main() -> None:
    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    records: dict[str, dict] = {}
    for case in cases():
        with tempfile.TemporaryDirectory() as tmp:
            source = build_source(case, Path(tmp), quantize=model_free_ptq)
            out = Path(tmp) / "out"
            model_free_ptq(str(source), str(out), case.scheme, ignore=list(case.ignore), device="cpu",
                           converter=build_converter(case, source))
            for name, tensor in load_tensors(out).items():
                tensors[f"{case.id}|{name}"] = tensor.contiguous()
            index = out / "model.safetensors.index.json"
            records[case.id] = {
                "source_digest": tensors_digest(source),
                "quantization_config": json.loads((out / "config.json").read_text())["quantization_config"],
                "weight_map": json.loads(index.read_text())["weight_map"] if index.exists() else None,
            }
    versions = {n: md.version(n) for n in ("llmcompressor", "compressed-tensors", "torch", "safetensors")}
    save_file(tensors, str(HERE / GOLDEN_FILE), metadata=versions)
    (HERE / CONFIG_FILE).write_text(json.dumps({"versions": versions, "cases": records}, indent=1, sort_keys=True) + "\n")
    print(f"{len(tensors)} tensors from {len(records)} cases -> {HERE / GOLDEN_FILE}, {HERE / CONFIG_FILE} ({versions})")


if __name__ == "__main__":
    main()
