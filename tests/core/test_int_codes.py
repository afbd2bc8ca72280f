"""The integer-code shortcuts for 16-bit weights (``numerics.int_codes``), the bit-pattern
min/max (``scales._minmax16``) and the bf16 MX scales from exponent bits
(``scales._mx_scales_bf16``), against the reference's float ops on every 16-bit pattern
they are claimed for. The whole-weight bytes against compressed-tensors are
``test_numerics.py``'s; these pin the claims the shortcuts rest on, value by value."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ptq_core import observers
from ptq_core.numerics import Scratch, int_codes, quantize_weight, scales
from ptq_core.schemes import resolve_config, weight_spec

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def spec_for(name: str, observer: str | None = None, **observer_kwargs):
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(name, ["Linear"])
    scheme.weights.observer = observer or "memoryless_minmax"
    scheme.weights.observer_kwargs = observer_kwargs
    resolved = resolve_config(scheme)
    (group, s), = resolved.groups
    return weight_spec(s, resolved.formats[group])


def every_pattern(dtype: torch.dtype, bound: float) -> torch.Tensor:
    """Every finite value of ``dtype`` with ``|t| <= bound``, padded with zeros to rows of 32."""
    t = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    t = t[torch.isfinite(t) & (t.float().abs() <= bound)]
    return torch.cat([t, torch.zeros((-t.numel()) % 32, dtype=dtype)]).view(-1, 32)


def reference_codes(t: torch.Tensor, q_min: float, q_max: float) -> torch.Tensor:
    return torch.round(torch.clamp(t, q_min, q_max)).to(torch.int8)  # the reference's ops, in t's dtype


@pytest.mark.parametrize("dname", DTYPES)
def test_magic_addend_gives_the_reference_4bit_codes_for_every_pattern(monkeypatch, dname):
    """Every value the 4-bit path may see (|t| < 2**(m-1) - 8, ties and -0.0 included) packs
    to ``pack_to_int32(round(clamp(t)))``'s words (in slices of 100 rows and a ragged one)."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 100 * 32)
    dtype = DTYPES[dname]
    t = every_pattern(dtype, 55.0 if dtype == torch.bfloat16 else 503.0)
    spec = replace(spec_for("W4A16"), group_size=32)
    ours = int_codes.int_codes(t, torch.ones(len(t), 1, 1, dtype=dtype), None, spec, "int32_bits", Scratch())
    ref = scales._pack_int32(reference_codes(t, *spec.q_range), 4)
    assert torch.equal(ours, ref), f"{(ours != ref).sum()} words differ"


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("encoding", ["int32_bits", "plain"])
def test_integer_clamp_gives_the_reference_8bit_codes(monkeypatch, dname, encoding):
    """Symmetric 8-bit values lie in [-128, 128] (min/max scales): round, then the int16 clamp
    of the bit patterns, equal the reference's clamp and round (in slices of 100 rows)."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 100 * 32)
    dtype = DTYPES[dname]
    t = every_pattern(dtype, 128.0)
    t = t[(t.float() >= -128).all(dim=1)]
    spec = replace(spec_for("W8A16"), group_size=32)
    ours = int_codes.int_codes(t, torch.ones(len(t), 1, 1, dtype=dtype), None, spec, encoding, Scratch())
    q = reference_codes(t, *spec.q_range)
    ref = q if encoding == "plain" else scales._pack_int32(q, 8)
    assert torch.equal(ours, ref)


def test_shortcut_applies_only_where_its_bound_is_proven(monkeypatch):
    x = torch.ones(4, 32, dtype=torch.bfloat16)
    scale = torch.full((4, 1), 0.1, dtype=torch.bfloat16)
    assert int_codes.applies(spec_for("W4A16"), "int32_bits", x, scale, None)
    assert int_codes.applies(spec_for("W8A16"), "int32_bits", x, scale, None)
    for observer in (observers.MSE, observers.NVFP4_EXPANDED_MSE):  # shrunk ranges, bounded by the smallest factor
        assert int_codes.applies(spec_for("W4A16", observer), "int32_bits", x, scale, None)
        assert int_codes.applies(spec_for("W8A16", observer), "int32_bits", x, scale, None)
    deep = spec_for("W4A16", "memoryless_mse", maxshrink=0.95)  # factors down to 0.06: |t| may leave the binade
    assert not int_codes.applies(deep, "int32_bits", x, scale, None)
    assert int_codes.applies(replace(deep, num_bits=8), "int32_bits", x, scale, None)  # still inside int16
    gone = spec_for("W8A16", "memoryless_mse", maxshrink=1.01)  # a factor of 0: no bound at all
    assert not int_codes.applies(gone, "int32_bits", x, scale, None)
    assert not int_codes.applies(spec_for("W4A16"), "int32_bits", x, torch.full((4, 1), 1e-39, dtype=torch.bfloat16), None)
    assert not int_codes.applies(spec_for("W4A16"), "int32_bits", x.float(), scale.float(), None)
    assert not int_codes.applies(spec_for("W4A16"), "int32_bits", x[:, :12], scale, None)  # not whole words
    assert not int_codes.applies(spec_for("FP8_DYNAMIC"), "plain", x, scale, None)
    monkeypatch.setattr(int_codes, "_int32_wraps", lambda device_type: False)  # the 4-bit packing needs wrapping int32
    assert not int_codes.applies(spec_for("W4A16"), "int32_bits", x, scale, None)
    assert int_codes.applies(spec_for("W8A16"), "int32_bits", x, scale, None)
    asym8 = spec_for("W8A8")
    assert not int_codes.applies(replace(asym8, symmetric=False), "plain", x, scale, None)


def test_shortcut_refuses_non_finite_scales():
    """Every scale must be normal: an inf or NaN scale (kept out upstream by the finiteness
    checks) is refused here too, as a zero, negative or subnormal one is."""
    x = torch.ones(4, 32, dtype=torch.bfloat16)
    for bad in (math.inf, math.nan, 0.0, -0.1):
        scale = torch.full((4, 1), 0.1, dtype=torch.bfloat16)
        scale[2] = bad
        assert not int_codes.applies(spec_for("W4A16"), "int32_bits", x, scale, None), bad


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("encoding", ["int32_bits", "plain"])
def test_two_sided_integer_clamp_gives_the_reference_8bit_codes_for_every_pattern(monkeypatch, dname, encoding):
    """Where shrunk ranges leave values beyond both ends (MSE observers), round, then the
    int16 clamp, equal the reference's clamp and round for every value inside int16."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 100 * 32)
    dtype = DTYPES[dname]
    t = every_pattern(dtype, 32767.0)
    spec = replace(spec_for("W8A16", "memoryless_mse"), group_size=32)
    ours = int_codes.int_codes(t, torch.ones(len(t), 1, 1, dtype=dtype), None, spec, encoding, Scratch())
    q = reference_codes(t, *spec.q_range)
    ref = q if encoding == "plain" else scales._pack_int32(q, 8)
    assert torch.equal(ours, ref), f"{(ours != ref).sum()} differ"


def _descending_rows(dtype: torch.dtype) -> torch.Tensor:
    """Rows of 32 that make every finite non-zero pattern the largest |w| of a row, of each
    sign: 32 consecutive magnitudes from it downwards, signs alternating (so each cell
    has both signs and its neighbours clip under a shrunk range)."""
    every = torch.arange(1, 0x7C00 if dtype == torch.float16 else 0x7F80, dtype=torch.int32).to(torch.int16).view(dtype)
    idx = torch.arange(len(every)).view(-1, 1) - torch.arange(32)
    rows = every[idx.clamp(min=0)] * torch.tensor([1.0, -1.0] * 16, dtype=dtype)
    return torch.cat([rows, -rows])


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
@pytest.mark.parametrize("observer", [observers.MSE, observers.NVFP4_EXPANDED_MSE])
def test_shortcut_codes_for_mse_ranges_on_every_pattern(dname, name, observer):
    """Every finite pattern as a cell's extreme, with the scales (and zero points) of that
    cell's range expanded and shrunk by the observer's smallest, largest and a middle factor:
    where applies accepts the scales, int_codes equals the reference's divide, zero point,
    clamp, round and pack value by value (the bound the shortcut rests on, exercised)."""
    dtype = DTYPES[dname]
    spec = replace(spec_for(name, observer), strategy="channel", group_size=None)
    params = observers.mse_params(spec.observer_kwargs)
    x = _descending_rows(dtype)
    if spec.symmetric:
        lo, hi = x.abs().amax(1, keepdim=True), None
    else:
        lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    shrink = observers.shrink_tensor(params, dtype, x.device)  # the search's factors, in its dtype
    for step in (len(params.shrink) - 1, len(params.shrink) // 2, 0):
        f = shrink[step : step + 1]
        picked = [observers.candidates(observers.expanded(s, params.expand), f)[0] if s is not None else None for s in (lo, hi)]
        scale, zp = scales._qparams(*picked, spec, None)
        keep = torch.isfinite(scale).view(-1) & (scale.abs() >= torch.finfo(dtype).tiny).view(-1)
        xs, scale, zp = x[keep].contiguous(), scale[keep], zp[keep] if zp is not None else None
        assert len(xs) > 0.7 * len(x) and int_codes.applies(spec, "int32_bits", xs, scale, None)
        ours = int_codes.int_codes(xs, scale, zp, spec, "int32_bits", Scratch())
        t = xs / scale + (zp.to(dtype) if zp is not None else 0)
        ref = scales._pack_int32(reference_codes(t, *spec.q_range), spec.num_bits)
        assert torch.equal(ours, ref), f"factor {float(f)}: {(ours != ref).sum()} words differ"
        if step == len(params.shrink) - 1:  # the smallest factor (0.81 of the range) clips values at both ends
            assert (t < spec.q_range[0] - 0.5).any() and (t > spec.q_range[1] + 0.5).any()


def test_bound_follows_the_observers_smallest_factor():
    """The bound is computed from the observer's parameters, not fixed: it grows as the
    factors shrink (and is infinite once a factor reaches 0), and the defaults fit 4 bits."""
    def bound(observer, bits, **kw):
        return int_codes._bound(observer, observers.resolve_observer(observer, kw)[1], bits)

    assert bound(observers.MSE, 4) == pytest.approx(bound(observers.NVFP4_EXPANDED_MSE, 4))  # both 0.81 at least
    assert bound(observers.MSE, 4) < 2 ** 6 - 8
    assert bound(observers.MSE, 4) > int_codes._bound(observers.MINMAX, (), 4) > 15
    assert bound(observers.MSE, 8, maxshrink=0.5) > 1.3 * bound(observers.MSE, 8)  # factors down to 0.51, not 0.81
    assert bound(observers.NVFP4_EXPANDED_MSE, 4, expand=3.0) < bound(observers.NVFP4_EXPANDED_MSE, 4)
    assert bound(observers.MSE, 8, maxshrink=1.01) == float("inf")


def _clipping_weight(dtype: torch.dtype, bits: int) -> torch.Tensor:
    """Laplace rows (4 bits: the search clips their tails) and rows of cells on the grid of a
    range shrunk by 1%, each with an extreme -8.0 beyond it, which the search clips too
    (values of size 8, so that the per-value errors do not underflow fp16)."""
    g = torch.Generator().manual_seed(7)
    w = torch.distributions.Laplace(0.0, 0.02).sample((48, 256)).double()
    half = (2 ** bits - 1) / 2
    grid = torch.randint(-int(half), int(half), (24, 256), generator=g).double() * (8.0 * 0.99 / half)
    grid[:, ::64] = -8.0
    w[::2] = grid
    return w.to(dtype)


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
@pytest.mark.parametrize("observer", [observers.MSE, observers.NVFP4_EXPANDED_MSE])
@pytest.mark.parametrize("strategy", ["group", "channel"])
def test_mse_weights_through_the_shortcut_equal_the_reference_ops(monkeypatch, dname, name, observer, strategy):
    """quantize_weight with an MSE observer takes the shortcut and gives the bytes of the
    reference's ops (shortcut refused), on weights whose chosen ranges clip values."""
    spec = replace(spec_for(name, observer), strategy=strategy, group_size=64 if strategy == "group" else None)
    w = _clipping_weight(DTYPES[dname], spec.num_bits)
    ref = _same_bytes_in_slices(monkeypatch, w, spec)
    if spec.symmetric:  # values below q_min: the side the one-sided clamp would miss
        scale = ref["weight_scale"].float().repeat_interleave(w.shape[1] // ref["weight_scale"].shape[1], 1)
        assert (w.float() / scale < spec.q_range[0] - 0.5).any()


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
@pytest.mark.parametrize("observer", [observers.MINMAX, observers.MSE, observers.NVFP4_EXPANDED_MSE])
def test_quantize_weight_takes_the_shortcut(monkeypatch, name, observer):
    """The byte tests in test_numerics.py and test_observers.py must exercise the shortcut, not only its fallback."""
    calls, real = [], int_codes.int_codes
    monkeypatch.setattr(int_codes, "int_codes", lambda *a, **k: calls.append(1) or real(*a, **k))
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    quantize_weight(w, spec_for(name, observer))
    assert calls


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
@pytest.mark.parametrize("strategy", ["group", "channel", "tensor"])
def test_shortcut_in_slices_equals_the_reference_ops(monkeypatch, name, strategy):
    """quantize_weight's bytes with the shortcut, in several row slices and a ragged last one,
    equal its bytes with the reference's ops (the shortcut refused), for every cell layout."""
    spec = replace(spec_for(name), strategy=strategy, group_size=128 if strategy == "group" else None)
    w = (torch.randn(37, 256, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.02).to(torch.bfloat16)
    _same_bytes_in_slices(monkeypatch, w, spec)


def _same_bytes_in_slices(monkeypatch, w: torch.Tensor, spec) -> dict[str, torch.Tensor]:
    """quantize_weight in several row slices takes the shortcut and gives the bytes of the
    reference's ops (shortcut refused); returns the reference's outputs."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 5 * 256)
    calls, real = [], int_codes.int_codes
    monkeypatch.setattr(int_codes, "int_codes", lambda *a, **k: calls.append(1) or real(*a, **k))
    ours = quantize_weight(w, spec)
    assert calls
    monkeypatch.setattr(int_codes, "applies", lambda *a: False)
    ref = quantize_weight(w, spec)
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    return ref


def _stat_cells(dtype: torch.dtype) -> torch.Tensor:
    """Cells of 8: mixed signs, all negative, all positive, zeros of both signs, infinities, NaN."""
    inf, nan = float("inf"), float("nan")
    rows = [
        [0.5, -0.25, 3.0, -7.0, 0.0, 1e-3, -1e-3, 2.0],
        [-0.5, -0.25, -3.0, -7.0, -1e-3, -2.0, -1.0, -0.125],
        [0.5, 0.25, 3.0, 7.0, 1e-3, 2.0, 1.0, 0.125],
        [0.0, -0.0, 0.0, -0.0, 0.0, 0.0, -0.0, 0.0],
        [-0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0],
        [-0.0, 1.0, -0.0, 2.0, -0.0, 0.5, -0.0, 3.0],
        [0.0, -1.0, 0.0, -2.0, 0.0, -0.5, 0.0, -3.0],
        [inf, 1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-inf, 1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [nan, 1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, -nan, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    return torch.tensor(rows, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dname", DTYPES)
def test_bit_pattern_min_max_equals_torchs(dname):
    """Min and max from integer reductions equal torch's float amin / amax as values (a zero
    may differ in sign: the qparams clamp it with 0), and a cell with NaN or Inf has a
    non-finite extreme; random cells too, over group and block layouts."""
    dtype = DTYPES[dname]
    cells = _stat_cells(dtype)
    lo, hi = scales._minmax16(cells, (-1,), False, Scratch())
    finite = torch.isfinite(cells).all(-1)
    assert torch.equal(lo[finite].float(), cells[finite].amin(-1).float())
    assert torch.equal(hi[finite].float(), cells[finite].amax(-1).float())
    assert not (torch.isfinite(lo) & torch.isfinite(hi))[~finite].any()
    w = (torch.randn(256, 384, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.02).to(dtype)
    blocks = w.view(2, 128, 3, 128)
    lo, hi = scales._minmax16(blocks, (1, 3), False, Scratch())
    assert torch.equal(lo, blocks.amin(dim=(1, 3))) and torch.equal(hi, blocks.amax(dim=(1, 3)))
    groups = w.view(256, 3, 128)  # every cell of both signs: two reductions, no third
    lo, hi = scales._minmax16(groups, (-1,), False, Scratch())
    assert torch.equal(lo, groups.amin(-1)) and torch.equal(hi, groups.amax(-1))


@pytest.mark.parametrize("dname", DTYPES)
def test_statistics_in_slices_equal_whole_reductions(monkeypatch, dname):
    """Slice by slice (several, a ragged last one), min/max and max |w| equal torch's reductions."""
    monkeypatch.setattr(scales, "_SLICE_ELEMS", 7 * 384)
    dtype = DTYPES[dname]
    w = (torch.randn(100, 384, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.02).to(dtype)
    for cells, dims in ((w.view(100, 3, 128), (-1,)), (w, (1,))):
        lo, hi = scales._minmax16(cells, dims, False, Scratch())
        assert torch.equal(lo, cells.amin(dim=dims)) and torch.equal(hi, cells.amax(dim=dims))
        assert torch.equal(scales._absmax(cells, dims, False, Scratch()), cells.abs().amax(dim=dims))
    assert torch.equal(scales._absmax(w, (0, 1), False, Scratch()), w.abs().amax())


@pytest.mark.parametrize("dname", DTYPES)
def test_finiteness_from_bit_patterns_equals_isfinite_for_every_pattern(dname):
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(DTYPES[dname])
    finite = torch.isfinite(every)
    assert scales._all_finite(every[finite])
    assert not any(scales._all_finite(torch.cat([every[:3], v.view(1)])) for v in every[~finite])


@pytest.mark.parametrize("name", ["MXFP4A16", "MXFP8A16"])
def test_mx_scales_from_exponent_bits_equal_calculate_qparams_for_every_bf16(name):
    """The bf16 MX scales from exponent bits equal compressed-tensors' ``calculate_qparams``
    for every non-negative finite bf16 max |w| (zero, subnormals, and the largest values,
    whose power of two rounds up to inf)."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    absmax = torch.arange(0, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).view(-1, 1)
    args = preset_name_to_scheme(name, ["Linear"]).weights
    ref, _ = calculate_qparams(min_vals=-absmax, max_vals=absmax, quantization_args=args)
    ours, _ = scales._qparams(absmax, None, spec_for(name), None)
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(ours.view(torch.int16), ref.view(torch.int16))
