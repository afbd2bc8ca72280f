"""What the front ends say about each preset: one line each, and the GPUs vLLM runs it on.

Hand-written notes (the Space's dropdown, the README table, ``ptq schemes``, the card);
the presets themselves are compressed-tensors' (``presets.py``). Plain values, no import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DESCRIPTIONS", "GPUS", "describe", "gpu_support"]

# Which GPUs vLLM 0.33 runs each preset on (each scheme's ``get_min_capability`` in
# vllm/model_executor/layers/quantization/compressed_tensors/schemes/, and the kernel it picks).
GPUS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8 GEMMs from compute capability 8.9 (Ada, Hopper, Blackwell); weight-only FP8 Marlin from 7.5",
    "FP8_BLOCK": "FP8 block GEMMs from compute capability 8.9 (Ada, Hopper, Blackwell)",
    "NVFP4A16": "Blackwell (10.0) FP4 kernels; weight-only NVFP4 Marlin with 16-bit activations from 7.5 (Turing, Ampere, Hopper)",
    # vLLM reads no input_activations for MXFP4 weights (compressed_tensors.py _get_scheme_from_parts);
    # the kernel picks the activations: tools/vllm_check.py and docs/loaders.md.
    "MXFP4A16": ("not always with 16-bit activations: Marlin with 16-bit activations from 8.0 (Ampere, Ada); "
                 "Humming with dynamic FP8 activations on Hopper (9.0); dynamic MXFP4 activations on Blackwell (10.0)"),
    "MXFP4": "Blackwell (10.0) MXFP4 kernels; weight-only MXFP4 Marlin from 8.0 (Ampere, Hopper)",
    "MXFP8A16": "weight-only MXFP8 from 7.5; Blackwell (10.0) MX kernels",
    "MXFP8": "Blackwell (10.0) MXFP8 kernels; weight-only from 7.5",
    "W4A16": "weight-only INT4 Marlin / Machete from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W4A16_ASYM": "weight-only INT4 Marlin from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W8A16": "weight-only INT8 Marlin from 7.5 (Turing, Ampere, Ada, Hopper, Blackwell)",
    "W8A8": "INT8 GEMMs from 7.5 (Turing, Ampere, Ada, Hopper)",
    "INT8": "INT8 GEMMs from 7.5 (Turing, Ampere, Ada, Hopper)",
    "W4AFP8": ("none: vLLM 0.33 reads W4A8-FP8 only pack-quantized and only on Hopper (9.0), while compressed-tensors "
               "0.20 writes it int-quantized (tools/vllm_check.py)"),
    "MXFP6A16": "no released vLLM loader yet",
    "MXFP6A8": "no released vLLM loader yet",
}


def gpu_support(name: str) -> str | None:
    """Which GPUs vLLM runs a preset on, in one line (None for a custom config)."""
    return GPUS.get(name)


# One line per preset for the Space's dropdown and the README table.
DESCRIPTIONS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8 weights, per-channel scales, dynamic per-token FP8 activations. Hopper/Ada+; ~2x smaller, near-lossless.",
    "FP8_BLOCK": "FP8 weights in 128x128 blocks, dynamic FP8 activations (DeepSeek style). Hopper/Blackwell; ~2x smaller.",
    "NVFP4A16": "NVFP4 weights (16-wide groups, FP8 scales + global scale), 16-bit activations. Blackwell native, Hopper via Marlin; ~3.5x smaller.",
    "MXFP4A16": ("MXFP4 weights (32-wide groups, power-of-two scales), 16-bit activations in transformers and on "
                 "Ampere/Ada (Marlin); vLLM 0.33 runs dynamic FP8 activations on Hopper and MXFP4 on Blackwell; ~3.8x smaller."),
    "MXFP4": "MXFP4 weights and dynamic MXFP4 activations. Blackwell; ~3.8x smaller, lowest precision.",
    "MXFP4XFP8": "MXFP4 weights with dynamic FP8 activations. Blackwell; ~3.8x smaller.",
    "MXFP8A16": "MXFP8 weights (32-wide groups, power-of-two scales), 16-bit activations. Blackwell; ~2x smaller.",
    "MXFP8": "MXFP8 weights and dynamic MXFP8 activations. Blackwell; ~2x smaller.",
    "MXFP6A16": "MXFP6 (E2M3) weights (32-wide groups, power-of-two scales), 16-bit activations. No released loader yet; ~2.6x smaller.",
    "MXFP6A8": "MXFP6 (E2M3) weights and dynamic MXFP8 activations. No released loader yet; ~2.6x smaller.",
    "W4A16": "INT4 weights (groups of 128, symmetric), 16-bit activations. Any GPU via Marlin/Machete; ~3.5x smaller.",
    "W4A16_ASYM": "INT4 weights (groups of 128, with zero points), 16-bit activations. Any GPU; ~3.5x smaller, better on outliers.",
    "W8A16": "INT8 weights (groups of 128), 16-bit activations. Any GPU; ~2x smaller, near-lossless.",
    "W8A8": "INT8 per-channel weights, dynamic per-token INT8 activations. Ampere+; ~2x smaller, fast GEMMs.",
    "INT8": "Alias of W8A8.",
    "W4AFP8": "INT4 weights (groups of 128), dynamic FP8 activations. vLLM 0.33 cannot load this format yet; ~3.5x smaller.",
}


def describe(weights: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None) -> str:
    """A preset with no line of its own in ``DESCRIPTIONS``, described from its args (``presets.py``)."""
    if weights is None:
        return "No quantization."
    w = f"{weights['type'].upper()}{weights['num_bits']} weights ({weights['strategy']}"
    w += f", groups of {weights['group_size']})" if weights["group_size"] else ")"
    a = f", dynamic {inputs['type'].upper()}{inputs['num_bits']} activations" if inputs else ", 16-bit activations"
    return w + a + "."
