"""Regenerate ``observers.safetensors``: the peer's outputs for every case of ``observer_cases``.

Run with the peer's interpreter (llm-compressor 0.14.0.1 in its own venv; see
``bench/peer_env.py``), never with the project's::

    ~/.cache/ptq-hub/bench/peer-venv/bin/python tests/golden/make_observer_golden.py

Each case goes through the peer's own model-free path: ``validate_config`` (which
renames observers as the peer does) and ``ModelFreePtqConverter.process`` on a
one-shard dict of the case's tensors (so fused q/k/v share a global scale through
the peer's FusionHandler). The file stores ``{case id}|{tensor name}`` -> tensor,
and the peer's versions in its metadata.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme
from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter
from llmcompressor.entrypoints.model_free.validate import validate_config
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from observer_cases import GOLDEN_FILE, SCHEMES, build_inputs, cases  # noqa: E402


def scheme_for(case) -> QuantizationScheme:
    preset, weights = SCHEMES[case.scheme]
    scheme = preset_name_to_scheme(preset, ["Linear"]) if preset else QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(**weights)
    )
    scheme.weights.observer = case.observer
    scheme.weights.observer_kwargs = dict(case.kwargs)
    return scheme


def main() -> None:
    torch.set_num_threads(1)  # float32 error sums: see tests/core/test_observers.py
    out: dict[str, torch.Tensor] = {}
    for case in cases():
        config = validate_config(None, scheme_for(case), ignore=[])
        tensors = ModelFreePtqConverter(config).process(build_inputs(case))
        for name, tensor in tensors.items():
            out[f"{case.id}|{name}"] = tensor.contiguous()
    versions = {n: md.version(n) for n in ("llmcompressor", "compressed-tensors", "torch")}
    save_file(out, str(HERE / GOLDEN_FILE), metadata=versions)
    print(f"{len(out)} tensors from {len(cases())} cases -> {HERE / GOLDEN_FILE} ({versions})")


if __name__ == "__main__":
    main()
