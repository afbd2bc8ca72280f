"""The float kernels in row slices (``numerics.float_codes``): the MX exponent add against the
reference's product on every bf16 pattern it is claimed for, and whole weights in several
slices (ragged ones included) against compressed-tensors' bytes."""

from __future__ import annotations

import pytest
import torch
from reference import preset, reference_quantize

from ptq_core.numerics import Scratch, float_codes, quantize_weight, scales
from ptq_core.schemes import resolve_config, weight_spec

_FP8 = torch.float8_e4m3fn


def spec_for(name: str, observer: str = "memoryless_minmax"):
    scheme = preset(name)
    scheme.weights.observer = observer
    resolved = resolve_config(scheme)
    (group, s), = resolved.groups
    return weight_spec(s, resolved.formats[group])


def finite_bf16() -> torch.Tensor:
    t = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return t[torch.isfinite(t)]


def fp8_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(_FP8).view(torch.uint8)


def test_exponent_add_equals_the_product_for_every_bf16_pattern():
    """For every k in [0, 116] and every finite bf16 x: adding k << 7 to the bits gives the bits of
    ``x * 2**k`` where x is normal and the product below 2**9; for zeros and subnormals, the same
    FP8 byte (a signed zero)."""
    x = finite_bf16()
    k = torch.arange(0, float_codes._MAX_STEP + 1)
    product = x * torch.exp2(k.double()).to(torch.bfloat16)[:, None]
    added = (x.view(torch.int16) + (k << 7).to(torch.int16)[:, None]).view(torch.bfloat16)
    normal = (x.abs() >= torch.finfo(torch.bfloat16).tiny).expand_as(product)
    claimed = normal & (product.float().abs() < 512)
    assert torch.equal(added[claimed].view(torch.int16), product[claimed].view(torch.int16))
    small = ~normal
    assert int(small.sum()) == 256 * (float_codes._MAX_STEP + 1)  # both zeros and 254 subnormals, every k
    assert torch.equal(fp8_bytes(added[small]), fp8_bytes(product[small]))


def test_exponent_add_bound_is_tight():
    """One step more (k = 117) and some subnormal x casts to another byte than its product."""
    x = finite_bf16()
    x = x[x.abs() < torch.finfo(torch.bfloat16).tiny]
    k = float_codes._MAX_STEP + 1
    added = (x.view(torch.int16) + (k << 7)).view(torch.bfloat16)
    assert not torch.equal(fp8_bytes(added), fp8_bytes(x * 2.0**k))


def test_exponent_steps_only_for_bf16_powers_of_two_in_range():
    """``k << 7`` for bf16 scales ``2**-k``, 0 <= k <= 116; None for any other scale in the chunk."""
    x = torch.zeros(2, 4, 32, dtype=torch.bfloat16)
    scale = torch.tensor([[1.0, 0.5, 2.0**-116, 0.125], [0.25, 1.0, 1.0, 1.0]], dtype=torch.bfloat16)[..., None]
    assert float_codes.exponent_steps(x, scale).flatten().tolist() == [0, 128, 116 << 7, 3 << 7, 256, 0, 0, 0]
    for bad in (2.0**-117, 2.0, 0.75, -0.5, 2.0**-127, float("inf")):
        other = scale.clone()
        other[1, 3] = bad
        assert float_codes.exponent_steps(x, other) is None, bad
    assert float_codes.exponent_steps(x.half(), scale.half()) is None
    assert float_codes.exponent_steps(x.float(), scale) is None


@pytest.mark.parametrize("k", [0, 5, 60, 116])
def test_mx_slices_equal_the_reference_quotient_for_every_pattern(monkeypatch, k):
    """Every bf16 x with |x * 2**k| <= 448 as 32-element groups of scale 2**-k, through the kernel in
    slices of 100 groups (the exponent add): the bytes of the reference's
    ``(x / scale).to(float8_e4m3fn)``."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 100 * 32)
    x = finite_bf16()
    x = x[x.float().abs() * 2.0**k <= 448]
    x = torch.cat([x, torch.zeros((-x.numel()) % 32, dtype=torch.bfloat16)]).view(-1, 1, 32)
    scale = torch.full((len(x), 1, 1), 2.0**-k, dtype=torch.bfloat16)
    steps = float_codes.exponent_steps(x, scale)
    assert steps is not None
    out = torch.empty(len(x), 32, dtype=_FP8)
    float_codes.slice_codes(x, scale, None, False, spec_for("MXFP8A16"), len(x), 32, Scratch(),
                          lambda v, first, end: out[first:end].copy_(v), steps=steps)
    assert torch.equal(out.view(torch.uint8), fp8_bytes((x / scale).view(-1, 32)))


def _weight(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """N(0, 0.02) with zeros of both signs and subnormals sprinkled in."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.02
    w[::7, ::5] = 0.0
    w[1::7, ::5] = -0.0
    w[2::7, ::5] = 1e-39
    return w.to(dtype)


@pytest.mark.parametrize("name", ["FP8_DYNAMIC", "FP8_BLOCK", "MXFP8A16", "NVFP4A16", "MXFP4A16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(300, 384), (130, 320)])
def test_whole_weights_in_slices_equal_the_reference(monkeypatch, name, dtype, shape):
    """Several slices per chunk and a ragged last one (block rows and columns padded for
    FP8_BLOCK): compressed-tensors' bytes; the exponent add runs for bf16 MX."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 7 * 256)
    steps, real = [], float_codes.exponent_steps
    monkeypatch.setattr(float_codes, "exponent_steps", lambda x, s: steps.append(real(x, s)) or steps[-1])
    weight = _weight(*shape, dtype)
    ours = quantize_weight(weight, spec_for(name))
    ref = reference_quantize(weight, preset(name))
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
        assert torch.equal(*(t[key].contiguous().view(-1).view(torch.uint8) for t in (ours, ref))), key
    assert any(s is not None for s in steps) == (name == "MXFP8A16" and dtype == torch.bfloat16)


@pytest.mark.parametrize("name", ["FP8_DYNAMIC", "FP8_BLOCK", "MXFP8A16"])
def test_fp8_clamp_is_skipped_only_for_min_max_ranges(name):
    """The skip rests on |x / scale| <= 450, which only the cell's own max gives: a range
    an MSE search shrank by f puts values up to 448 / f, beyond what the cast probe checks."""
    from ptq_core.numerics import _clamp_is_identity, _fp8_cast_saturates

    scale = torch.full((4, 1), 0.01, dtype=torch.bfloat16)
    minmax = _clamp_is_identity(spec_for(name), scale, None, None, torch.bfloat16, scale.device)
    assert minmax == _fp8_cast_saturates(torch.bfloat16, scale.device)
    for observer in ("memoryless_mse", "nvfp4_expanded_mse"):
        assert not _clamp_is_identity(spec_for(name, observer), scale, None, None, torch.bfloat16, scale.device)


@pytest.mark.parametrize("observer", ["memoryless_minmax", "memoryless_mse"])
def test_fp8_clamp_skip_with_exponent_steps_is_for_min_max_ranges_only(monkeypatch, observer):
    """The bf16 MX exponent-add route skips the clamp on the cast probe alone; an MSE-shrunk
    range puts |x / scale| beyond the 448..464 values the probe casts, so it keeps the clamp."""
    from ptq_core.numerics import _fp8_cast_saturates

    clamps, real = [], float_codes.slice_codes
    monkeypatch.setattr(float_codes, "slice_codes", lambda *a, **k: clamps.append(a[3]) or real(*a, **k))
    weight = _weight(64, 128, torch.bfloat16)
    spec = spec_for("MXFP8A16", observer)
    quantize_weight(weight, spec)
    assert clamps
    skipped = observer == "memoryless_minmax" and _fp8_cast_saturates(torch.bfloat16, weight.device)
    assert clamps == [not skipped] * len(clamps)
