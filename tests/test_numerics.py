"""Kernel level: ``ptq_core.numerics`` against compressed-tensors' reference path.

Every comparison is byte for byte (``torch.equal`` on ``uint8`` views) with the
dtype, the shape and the set of output names checked on both sides. The oracle is
``tests/reference.py`` (compressed-tensors' own observer / qparams / compressor), never
a hard-coded tensor. Inputs cover every data-free preset, bf16/f16/f32, rows that are
not a multiple of 128, block padding, all-zero groups, negative zeros, tiny values
that round to (signed) zero in FP4, exact rounding ties and outliers.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from reference import (
    data_free_presets,
    group_absmax,
    preset,
    reference_format,
    reference_quantize,
    reference_quantize_group,
)
from reference import global_scale_from_absmax as ref_global_scale_from_absmax

from ptq_core import numerics
from ptq_core.errors import CalibrationRequiredError, SchemeNotSupportedError
from ptq_core.numerics import (
    Scratch,
    global_scale_from_absmax,
    output_layout,
    quantize_weight,
    tensor_absmax,
)
from ptq_core.schemes import list_schemes, resolve_config, weight_spec

PRESETS = [s.name for s in list_schemes()]
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
MAIN = ("FP8_BLOCK", "FP8_DYNAMIC", "NVFP4A16", "MXFP4A16", "W4A16", "W4A16_ASYM")


# --------------------------------------------------------------------------- helpers


def spec_for(name: str):
    resolved = resolve_config(name)
    (group, scheme), = resolved.groups
    return weight_spec(scheme, resolved.formats[group])


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def assert_same_outputs(ours: dict, ref: dict, what: str = "") -> None:
    """Same names; per tensor same dtype, shape and bytes."""
    assert set(ours) == set(ref), f"{what}: names {sorted(ours)} != reference {sorted(ref)}"
    for key in ref:
        a, b = ours[key], ref[key]
        assert a.dtype == b.dtype, f"{what} {key}: dtype {a.dtype} != reference {b.dtype}"
        assert tuple(a.shape) == tuple(b.shape), f"{what} {key}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        if not torch.equal(raw(a), raw(b)):
            diff = (raw(a) != raw(b)).nonzero().flatten()
            raise AssertionError(
                f"{what} {key}: {diff.numel()} of {raw(b).numel()} bytes differ from the reference "
                f"(first byte offsets {diff[:8].tolist()})"
            )


def _randn(shape, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32) * std


_FP4_TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]  # midpoints of the E2M1 grid


def fp4_ties(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every 16-wide group: [6, 0.25, 0.75, ..., 5, -6, -0.25, ...] * 2**-k (k per row).

    With the tensor's absmax 6 * 2**-kmin, NVFP4's fp8 scale / global scale and MX's
    power-of-two scale both come out as exactly 2**-k, so x / scale hits the ties exactly.
    Returns (weight_f32, expected effective scale per row).
    """
    pattern = torch.tensor([6.0, *_FP4_TIES, -6.0, *[-v for v in _FP4_TIES]])
    ks = torch.tensor([4 + (r % 8) for r in range(rows)], dtype=torch.float32)
    row_scale = torch.pow(2.0, -ks)
    w = pattern.repeat(cols // 16)[None, :] * row_scale[:, None]
    # rotate the pattern differently per row so ties sit at every position of a group
    w = torch.stack([torch.roll(w[r].view(-1, 16), shifts=r % 16, dims=1).reshape(-1) for r in range(rows)])
    return w, row_scale


def int_ties(rows: int, cols: int, num_bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (n + 0.5) * 2**-k, built so the INT scale is exactly 2**-k (zero point 0).

    Every 128-wide group starts with the extreme values that fix its scale.
    """
    ks = torch.tensor([5 + (r % 6) for r in range(rows)], dtype=torch.float32)
    s = torch.pow(2.0, -ks)
    top = 2 ** (num_bits - 1)
    if symmetric:  # scale = absmax / ((2**b - 1) / 2)
        half = (2**num_bits - 1) / 2
        extremes = [half, -half]
    else:  # scale = (max - min) / (2**b - 1); zero point = -2**(b-1) - min / scale = 0
        extremes = [float(-top), float(top - 1)]
    base = torch.tensor(extremes + [n + 0.5 for n in range(-top, top - 1)])
    group = base.repeat(math.ceil(128 / len(base)))[:128]
    row = group.repeat(math.ceil(cols / 128))[:cols]
    return row[None, :] * s[:, None], s


def fp8_ties(rows: int, cols: int, top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax ``top`` * 2**-6 in every 32-wide group (so channel, block and MX scales are
    exactly 2**-6) and values halfway between neighbouring E4M3 numbers, normal and subnormal."""
    s = 2.0**-6
    mids = [1.0625, 1.1875, 2.125, 3.75, 13.0, 240.0, 1.5 * 2.0**-9, 3 * 2.0**-10, 0.5 * 2.0**-9]
    pattern = torch.tensor([top, *mids, -top, *[-m for m in mids]])
    pattern = pattern.repeat(math.ceil(32 / len(pattern)))[:32]
    row = pattern.repeat(math.ceil(cols / 32))[:cols]
    w = torch.stack([torch.roll(row.view(-1, 32), shifts=r, dims=1).reshape(-1) for r in range(rows)]) * s
    return w, torch.full((rows,), s)


def ties_weight(name: str, rows: int = 160, cols: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    w = preset(name).weights
    if w.type == "float" and w.num_bits == 4:
        return fp4_ties(rows, cols)
    if w.type == "float":  # MX scales round absmax to a power of two: 256, not 448, is exact
        return fp8_ties(rows, cols, 256.0 if w.scale_dtype == torch.uint8 else 448.0)
    return int_ties(rows, cols, w.num_bits, w.symmetric)


def edge_weight(rows: int = 160, cols: int = 256, seed: int = 11) -> torch.Tensor:
    """Random weight whose first rows hold the awkward cases."""
    w = _randn((rows, cols), seed)
    w[0] = 0.0  # an all-zero row: zero scales -> eps
    w[1] = -0.0  # negative zeros only
    w[2, :128] = 0.0  # all-zero 16/32/128-wide groups next to non-zero ones
    w[3, :] = 1e-6 * torch.tensor([1.0, -1.0]).repeat(cols // 2)  # tiny values of both signs
    w[3, ::16] = 0.05  # ... beside one normal value per 16-group: they round to (signed) zero in FP4
    w[4, :] = -1e-7
    w[4, 5::16] = -0.03  # negative-only groups, tiny negatives -> FP4 negative zero (sign bit)
    w[5, 17] = 3.0  # outliers (150 x std) that dominate their group / block / channel / tensor
    w[6, 200] = -2.5
    w[7, :] = torch.linspace(-0.04, 0.04, cols)
    w[8, :64] = -0.0
    return w


def build(case: str, name: str, dtype: torch.dtype) -> torch.Tensor:
    if case == "random_160x256":
        w = _randn((160, 256), 1)
    elif case == "deepseek_576x256":
        w = _randn((576, 256), 2)
    elif case == "edge_160x256":
        w = edge_weight()
    elif case == "ties_160x256":
        w = ties_weight(name)[0]
    elif case == "small_std_160x256":  # f16: 2688 / absmax overflows to inf -> global scale 1.0
        w = _randn((160, 256), 3, std=1e-3)
    elif case == "large_std_144x256":  # far outside the FP8 / FP4 grids before scaling
        w = _randn((144, 256), 4, std=30.0)
    elif case == "odd_rows_57x256":  # packed zero points / blocks with a ragged last row group
        w = _randn((57, 256), 6)
        w[56] = -0.0
    elif case == "one_row_1x256":
        w = _randn((1, 256), 7)
    elif case == "odd_cols_130x200":
        w = _randn((130, 200), 5)
        w[0] = 0.0
        w[129, 199] = 1.0
    else:
        raise KeyError(case)
    out = w.to(dtype)
    if case == "edge_160x256":
        assert torch.signbit(out[1]).all() and (out[1] == 0).all()  # -0.0 survives the cast
    return out


CASES = ("random_160x256", "deepseek_576x256", "edge_160x256", "ties_160x256", "small_std_160x256",
         "large_std_144x256")


def _cols_free(name: str) -> bool:
    """Schemes with no column grouping (channel / tensor / block): any K works."""
    return preset(name).weights.strategy in ("channel", "tensor", "block")


def _params():
    """Main presets: every case x every dtype. The others (the W2..W7 / MXFP8 / MXFP4 variants,
    which share the kernels of the main ones): the awkward cases x every dtype, plus random
    bf16 / f16 weights (f16 random is what test_small_chunks_match_reference uses)."""
    out = []
    for name in PRESETS:
        for dname in DTYPES:
            if name in MAIN:
                cases = CASES
            else:
                cases = ("edge_160x256", "ties_160x256") + (("random_160x256",) if dname != "f32" else ())
            if _cols_free(name):
                cases += ("odd_cols_130x200",)
            if dname == "bf16":
                cases += ("odd_rows_57x256", "one_row_1x256")
            for case in cases:
                out.append(pytest.param(name, dname, case, id=f"{name}-{dname}-{case}"))
    return out


@functools.cache
def _reference(name: str, dname: str, case: str):
    w = build(case, name, DTYPES[dname])
    return w, reference_quantize(w, preset(name))


# --------------------------------------------------------------------------- presets


def test_presets_are_the_reference_data_free_presets():
    """list_schemes() is the installed compressed-tensors' data-free presets, less MXFP6 (refused)."""
    reference = set(data_free_presets())
    assert set(PRESETS) <= reference
    assert reference - set(PRESETS) == {"MXFP6A16", "MXFP6A8"}
    assert len(PRESETS) == len(set(PRESETS))
    for main in MAIN:
        assert main in PRESETS
    for info in list_schemes():
        assert info.data_free
        assert info.format == reference_format(preset(info.name)).value, info.name


def test_cols_free_cases_are_covered():
    covered = {n for n in PRESETS if _cols_free(n)}
    assert {"FP8_BLOCK", "FP8_DYNAMIC", "W8A8"} <= covered


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("name,dname,case", _params())
def test_quantize_weight_matches_reference(name, dname, case):
    w, ref = _reference(name, dname, case)
    ours = quantize_weight(w, spec_for(name))
    assert_same_outputs(ours, ref, f"{name}/{dname}/{case}")
    assert w.dtype == DTYPES[dname]


@pytest.mark.parametrize("name", PRESETS)
def test_small_chunks_match_reference(monkeypatch, name):
    """Force many row chunks (block schemes: chunk boundaries at 128-row multiples)."""
    monkeypatch.setattr(numerics, "_CHUNK_ELEMS", 4096)
    w, ref = _reference(name, "bf16", "edge_160x256")
    assert_same_outputs(quantize_weight(w, spec_for(name)), ref, f"{name} chunked")
    w, ref = _reference(name, "f16", "random_160x256")
    assert_same_outputs(quantize_weight(w, spec_for(name)), ref, f"{name} chunked f16")


def test_sink_and_shared_scratch_match_reference(monkeypatch):
    """The streaming path the pipeline uses: the main tensor arrives in row chunks through
    ``sink`` (copied, since a chunk is valid only during the call), one ``Scratch`` is reused
    across every preset, dtype and shape in turn (stale or undersized buffers would show)."""
    monkeypatch.setattr(numerics, "_CHUNK_ELEMS", 8192)
    scratch = Scratch()
    for name in PRESETS:
        spec = spec_for(name)
        for dname, case in (("f32", "ties_160x256"), ("bf16", "edge_160x256"), ("f16", "random_160x256")):
            if (name not in MAIN and dname == "f32" and case == "random_160x256"):
                continue
            w, ref = _reference(name, dname, case)
            main = "weight_packed" if "weight_packed" in ref else "weight"
            chunks: list[tuple[str, int, torch.Tensor]] = []

            def sink(local: str, row: int, t: torch.Tensor, chunks=chunks) -> None:
                chunks.append((local, row, t.clone()))

            small = quantize_weight(w, spec, sink=sink, scratch=scratch)
            assert main not in small
            assert len(chunks) > 1, "the sink path was not chunked"
            assert {local for local, _, _ in chunks} == {main}
            rows = [row for _, row, _ in chunks]
            assert rows == sorted(rows) and rows[0] == 0
            assembled = torch.cat([t for _, _, t in chunks])
            assert_same_outputs({main: assembled, **small}, ref, f"{name}/{dname}/{case} via sink")


@pytest.mark.parametrize("name", PRESETS)
def test_ties_construction_hits_exact_ties(name):
    """Self-check of the tie inputs: the reference's effective scale is exactly 2**-k per row,
    so x / scale lands on the rounding midpoints the weight was built from."""
    _, ref = _reference(name, "bf16", "ties_160x256")
    expected = ties_weight(name)[1]
    args = preset(name).weights
    scale = ref["weight_scale"]
    if args.strategy == "tensor_group":
        eff = scale.float() / ref["weight_global_scale"]
    elif scale.dtype == torch.uint8:  # MX: E8M0 exponents
        eff = torch.pow(2.0, scale.float() - 127)
    else:
        eff = scale.float()
    if args.strategy == "block":
        assert torch.equal(eff, torch.full_like(eff, expected[0].item()))
    else:
        assert torch.equal(eff, expected[:, None].expand_as(eff)), name
    if not args.symmetric:  # zero point 0, stored offset to unsigned (0x8 per 4-bit field) and packed
        zp = ref["weight_zero_point"]
        offset = 1 << (args.num_bits - 1)
        assert zp.dtype == torch.int32 and args.num_bits == 4
        assert (zp.view(torch.uint8) == offset * 0x11).all()


@pytest.mark.parametrize("name", [n for n in PRESETS if preset(n).weights.num_bits == 4
                                  and preset(n).weights.type == "float"])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fp4_negative_zero_keeps_sign_bit(name, dname):
    """Negative values that round to zero are stored as -0 (code 0b1000) by the reference;
    the edge weight really contains such values, and our packing agrees."""
    w, ref = _reference(name, dname, "edge_160x256")
    packed = ref["weight_packed"]
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1)
    assert (codes == 0b1000).any(), "the edge case does not exercise FP4 negative zero"
    assert_same_outputs(quantize_weight(w, spec_for(name)), ref, name)


# --------------------------------------------------------------------------- NVFP4 fused


def _fused_members(dtype: torch.dtype, variant: str) -> dict[str, torch.Tensor]:
    q = _randn((256, 256), 21)
    k = _randn((128, 256), 22, std=0.05)
    v = _randn((160, 256), 23)
    if variant == "negative_max":  # the group's absmax is a negative value in v
        v[7, 9] = -0.9
    elif variant == "zero_member":
        k = torch.zeros_like(k)
    elif variant == "small":  # f16: 2688 / absmax overflows -> global scale 1.0
        q, k, v = q * 0.01, k * 0.01, v * 0.01
    return {"q_proj": q.to(dtype), "k_proj": k.to(dtype), "v_proj": v.to(dtype)}


@pytest.mark.parametrize("variant", ["plain", "negative_max", "zero_member", "small"])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_nvfp4_fused_group_global_scale(variant, dname):
    members = _fused_members(DTYPES[dname], variant)
    scheme = preset("NVFP4A16")
    absmax = torch.stack([tensor_absmax(w) for w in members.values()]).amax()
    ref_absmax = group_absmax(list(members.values()), scheme)
    assert absmax.dtype == ref_absmax.dtype and torch.equal(absmax, ref_absmax)
    gs = global_scale_from_absmax(absmax)
    ref_gs = ref_global_scale_from_absmax(ref_absmax)
    assert gs.dtype == ref_gs.dtype == torch.float32 and tuple(gs.shape) == tuple(ref_gs.shape) == (1,)
    assert torch.equal(raw(gs), raw(ref_gs))

    refs = reference_quantize_group(members, scheme)
    spec = spec_for("NVFP4A16")
    for name, w in members.items():
        ours = quantize_weight(w, spec, global_scale=gs)
        assert_same_outputs(ours, refs[name], f"{variant}/{dname}/{name}")
        assert torch.equal(ours["weight_global_scale"], gs)
    # the shared scale is a property of the group: alone, q gets its own
    alone = quantize_weight(members["q_proj"], spec)
    assert_same_outputs(alone, reference_quantize(members["q_proj"], scheme), "q alone")


def test_tensor_absmax_over_chunks(monkeypatch):
    monkeypatch.setattr(numerics, "_CHUNK_ELEMS", 1000)
    w = _randn((300, 64), 31).to(torch.bfloat16)
    w[250, 3] = -0.7  # in a late chunk, negative
    got = tensor_absmax(w)
    assert got.dtype == torch.bfloat16 and got.dim() == 0
    assert torch.equal(got, group_absmax([w], preset("NVFP4A16")))


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("dname", list(DTYPES))
def test_output_layout_matches_reference(name, dname):
    cases = ["random_160x256"] + (["odd_cols_130x200"] if _cols_free(name) else [])
    if name in MAIN:
        cases.append("deepseek_576x256")
    for case in cases:
        w, ref = _reference(name, dname, case)
        layout = output_layout(spec_for(name), tuple(w.shape), w.dtype)
        names = [local for local, _, _ in layout]
        assert len(names) == len(set(names))
        got = {local: (dt, tuple(shape)) for local, dt, shape in layout}
        want = {k: (v.dtype, tuple(v.shape)) for k, v in ref.items()}
        assert got == want, f"{name}/{dname}/{case}"


# --------------------------------------------------------------------------- refused presets


@pytest.mark.parametrize("name", ["MXFP6A16", "MXFP6A8"])
def test_mxfp6_is_refused(name):
    with pytest.raises(SchemeNotSupportedError, match=rf"{name}: 6-bit float weights .*MXFP6.* not supported"):
        resolve_config(name)
    assert name not in PRESETS


@pytest.mark.parametrize("name,alternative", [("FP8", "FP8_DYNAMIC"), ("NVFP4", "NVFP4A16")])
def test_calibration_presets_are_refused(name, alternative):
    with pytest.raises(CalibrationRequiredError, match=rf"{name} needs .*calibration data.*Pick {alternative}"):
        resolve_config(name)
    assert name not in PRESETS


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("name", PRESETS)
def test_cuda_gives_the_reference_bytes(name):
    """The kernels run the CPU reference's ops on the GPU: same bytes as compressed-tensors on CPU."""
    cases = [("bf16", "edge_160x256"), ("f16", "random_160x256"), ("f32", "ties_160x256")]
    if name in MAIN:
        cases.append(("bf16", "deepseek_576x256"))
    for dname, case in cases:
        w, ref = _reference(name, dname, case)
        ours = quantize_weight(w.cuda(), spec_for(name))
        assert all(t.device.type == "cuda" for t in ours.values())
        assert_same_outputs(ours, ref, f"cuda {name}/{dname}/{case}")


@needs_cuda
@pytest.mark.parametrize("dname", list(DTYPES))
def test_cuda_nvfp4_fused_group(dname):
    members = _fused_members(DTYPES[dname], "negative_max")
    refs = reference_quantize_group(members, preset("NVFP4A16"))
    gpu = {k: v.cuda() for k, v in members.items()}
    gs = global_scale_from_absmax(torch.stack([tensor_absmax(w) for w in gpu.values()]).amax())
    for name, w in gpu.items():
        assert_same_outputs(quantize_weight(w, spec_for("NVFP4A16"), global_scale=gs), refs[name], f"cuda {name}")


# --------------------------------------------------------------------------- custom schemes


@pytest.mark.parametrize("num_bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(64, 200), (33, 96), (130, 40)])
def test_channel_int_schemes_match_reference(num_bits, symmetric, shape):
    """Per-channel INT (no preset uses it with packing): columns and rows not multiples of 32
    exercise the int32 packing's padding, of the weights and of the packed zero points."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=num_bits, type="int", strategy="channel", symmetric=symmetric),
    )
    resolved = resolve_config(scheme)
    (group, resolved_scheme), = resolved.groups
    weight = _randn(shape, seed=num_bits * 7 + shape[0], std=0.05).to(torch.bfloat16)
    ours = quantize_weight(weight, weight_spec(resolved_scheme, resolved.formats[group]))
    assert_same_outputs(ours, reference_quantize(weight, scheme), f"W{num_bits} channel sym={symmetric} {shape}")


@pytest.mark.parametrize("name", ["FP8_BLOCK", "FP8_DYNAMIC", "MXFP8A16", "W8A8"])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("magnitude", ["normal", "subnormal"])
def test_fp8_extremes_match_reference(name, dname, magnitude):
    """Cells whose max |w| makes ``amax / 448`` round down as far as the dtype allows (the
    quantized max then lands just above 448), and cells so small that the scale is subnormal:
    the kernels skip the redundant clamp only where it provably changes nothing."""
    dtype = DTYPES[dname]
    gen = torch.Generator().manual_seed(5)
    rows, cols = 256, 256
    weight = torch.rand(rows, cols, generator=gen) * 2 - 1
    exponents = torch.randint(-12, 12, (rows, 1), generator=gen).float()
    if magnitude == "subnormal":
        exponents = exponents - (140 if dtype != torch.float16 else 20)
    mantissas = 1 + torch.rand(rows, 1, generator=gen)
    peak = mantissas * torch.pow(2.0, exponents)
    weight = (weight * peak).to(dtype)
    weight[:, 0] = peak[:, 0].to(dtype)  # every row and block holds its own +max
    weight[:, 1] = -peak[:, 0].to(dtype)
    assert_same_outputs(quantize_weight(weight, spec_for(name)), reference_quantize(weight, preset(name)), name)
