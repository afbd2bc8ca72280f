"""The observer golden cases: seeded inputs and the schemes/observers they go through.

Imported both by ``make_observer_golden.py`` (run in the peer's venv, with
llm-compressor 0.14.0.1) and by ``tests/core/test_observers.py`` (ours), so the inputs
are regenerated bit for bit on both sides and only the peer's outputs are stored.
Pure torch: no compressed-tensors, no llm-compressor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

GOLDEN_FILE = "observers.safetensors"
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}

# the peer's registered weight observers that read nothing but the weight
MSE_OBSERVERS = ("memoryless_mse", "nvfp4_expanded_mse")
# non-default observer_kwargs, each differing from both observers' defaults
CUSTOM_KWARGS = {"maxshrink": 0.5, "grid": 40, "patience": 3, "norm": 2.0, "expand": 1.25}

# presets, plus two weights-only schemes no preset covers (per-tensor INT4 asymmetric, FP8 asymmetric)
SCHEMES = {
    "W4A16": ("W4A16", {}),
    "W4A16_ASYM": ("W4A16_ASYM", {}),
    "W8A8": ("W8A8", {}),
    "FP8_DYNAMIC": ("FP8_DYNAMIC", {}),
    "FP8_BLOCK": ("FP8_BLOCK", {}),
    "NVFP4A16": ("NVFP4A16", {}),
    "MXFP4A16": ("MXFP4A16", {}),
    "MXFP8A16": ("MXFP8A16", {}),
    "INT4_TENSOR_ASYM": (None, {"num_bits": 4, "type": "int", "strategy": "tensor", "symmetric": False}),
    "FP8_CHANNEL_ASYM": (None, {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": False}),
}


@dataclass(frozen=True)
class Case:
    scheme: str  # key of SCHEMES
    observer: str
    kwargs: tuple[tuple[str, float], ...] = ()
    dtype: str = "bf16"
    kind: str = "random"  # random | edge
    fused: bool = False  # q/k/v sharing one NVFP4 global scale
    names: tuple[str, ...] = field(default=("model.layers.0.mlp.down_proj.weight",))

    @property
    def id(self) -> str:
        kw = "-".join(f"{k}={v}" for k, v in self.kwargs)
        return "/".join(p for p in (self.scheme, self.observer, kw, self.dtype, self.kind, "fused" if self.fused else "") if p)


_QKV = tuple(f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv")


def cases() -> list[Case]:
    out = []
    for scheme in SCHEMES:
        for observer in MSE_OBSERVERS:
            for dtype, kind in (("bf16", "random"), ("bf16", "edge"), ("f16", "random"), ("f32", "random")):
                out.append(Case(scheme, observer, (), dtype, kind))
        out.append(Case(scheme, "memoryless_mse", tuple(sorted(CUSTOM_KWARGS.items())), "bf16", "random"))
    # aliases, through the peer's own name handling
    out += [Case("W4A16", "fouroversix"), Case("W4A16", "minmax"), Case("W4A16", "static_minmax"), Case("W4A16", "memoryless_minmax")]
    # fused q/k/v: the global scale comes from every member's searched statistics
    for observer in MSE_OBSERVERS:
        out.append(Case("NVFP4A16", observer, fused=True, names=_QKV))
    return out


def build_inputs(case: Case) -> dict[str, torch.Tensor]:
    """Seeded weights (one per name) in the case's dtype."""
    seed = sum(map(ord, case.id))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(case.names):
        rows = (32, 16, 24)[i] if case.fused else 32
        w = torch.randn(rows, 256, generator=gen) * 0.02
        w[3, 17] = 0.3  # outliers: what a range search trades off
        w[5, 200] = -0.25
        if case.kind == "edge":
            w[0] = 0.0  # all-zero cells: error 0 at every step (ties, early stop)
            w[1, :128] = -0.0
            w[2] = 1e-6 * torch.sign(torch.randn(256, generator=gen))
            w[4, ::2] = w[4, ::2].abs() + 0.01  # one-signed half rows
            w[6] = -w[6].abs()
        out[name] = w.to(DTYPES[case.dtype])
    return out
