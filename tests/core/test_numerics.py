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
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
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
from ptq_core.errors import (
    CalibrationRequiredError,
    NonFiniteScaleError,
    SchemeNotSupportedError,
    TensorShapeError,
)
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
ALL_DTYPES = {**DTYPES, "f64": torch.float64}
MAIN = ("FP8_BLOCK", "FP8_DYNAMIC", "NVFP4A16", "MXFP4A16", "W4A16", "W4A16_ASYM") + (
    ("MXFP6A16",) if "MXFP6A16" in PRESET_SCHEMES else ()
)


# --------------------------------------------------------------------------- helpers


def spec_for(name: str):
    resolved = resolve_config(name)
    (group, scheme), = resolved.groups
    return weight_spec(scheme, resolved.formats[group])


def _kernel_groups() -> dict:
    """Presets by the kernel spec they resolve to; a main preset leads its group."""
    groups: dict = {}
    for name in sorted(PRESETS, key=lambda n: n not in MAIN):
        groups.setdefault(spec_for(name), []).append(name)
    return groups


KERNEL_GROUPS = _kernel_groups()
KERNELS = [names[0] for names in KERNEL_GROUPS.values()]
"""One preset per distinct kernel spec: presets with the same spec give the same bytes
(``test_duplicate_presets_share_one_kernel_spec``), so each spec is tested once."""


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


_FP6_TIES = [(2 * m + 1) / 16 for m in (0, 1, 7, 8, 15)] + [2 + (2 * m + 1) / 8 for m in (0, 7)] + [4 + (2 * m + 1) / 4 for m in (0, 6)]


def fp6_ties(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every 32-wide group: 7.5 * 2**-k (MX rounds it to the scale 2**-k exactly: E2M3's max has an
    all-ones mantissa) and E2M3 midpoints of every step size (1/8, 1/4, 1/2), both signs."""
    pattern = torch.tensor([7.5, *_FP6_TIES, -7.5, *[-v for v in _FP6_TIES]])
    pattern = pattern.repeat(math.ceil(32 / len(pattern)))[:32]
    ks = torch.tensor([4 + (r % 8) for r in range(rows)], dtype=torch.float32)
    row_scale = torch.pow(2.0, -ks)
    w = pattern.repeat(cols // 32)[None, :] * row_scale[:, None]
    w = torch.stack([torch.roll(w[r].view(-1, 32), shifts=r % 32, dims=1).reshape(-1) for r in range(rows)])
    return w, row_scale


def ties_weight(name: str, rows: int = 160, cols: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    w = preset(name).weights
    if w.type == "float" and w.num_bits == 4:
        return fp4_ties(rows, cols)
    if w.type == "float" and w.num_bits == 6:
        return fp6_ties(rows, cols)
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
    """Main kernels: every case x every dtype. The others (the W2..W8 / MXFP8 variants, which share
    the main kernels' code paths): the awkward cases x every dtype, plus random bf16 / f16 weights
    (f16 random is what test_small_chunks_match_reference uses). float64 gets the awkward and
    random cases for every kernel."""
    out = []
    for name in KERNELS:
        for dname in ALL_DTYPES:
            if dname == "f64":
                cases = ("edge_160x256", "ties_160x256", "random_160x256")
            elif name in MAIN:
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
    w = build(case, name, ALL_DTYPES[dname])
    return w, reference_quantize(w, preset(name))


# --------------------------------------------------------------------------- presets


def test_presets_are_the_reference_data_free_presets():
    """list_schemes() is exactly the installed compressed-tensors' data-free presets."""
    reference = set(data_free_presets())
    assert set(PRESETS) == reference
    assert len(PRESETS) == len(set(PRESETS))
    assert set(KERNELS) <= set(PRESETS) and set(MAIN) <= set(KERNELS)
    for main in MAIN:
        assert main in PRESETS
    for info in list_schemes():
        assert info.data_free
        assert info.format == reference_format(preset(info.name)).value, info.name


def test_duplicate_presets_share_one_kernel_spec():
    """The presets tested once through their group's first member: same WeightSpec, same
    compressed-tensors weight args and format (so the reference gives them the same bytes)."""
    duplicates = sorted(sorted(names) for names in KERNEL_GROUPS.values() if len(names) > 1)
    assert duplicates == sorted([
        ["INT8", "W8A8"], ["MXFP4", "MXFP4A16", "MXFP4XFP8"], ["MXFP8", "MXFP8A16"],
        ["W2A4", "W2A8"], ["W3A4", "W3A8"], ["W4A4", "W4A8", "W4AFP8"],
    ] + ([["MXFP6A16", "MXFP6A8"]] if "MXFP6A16" in PRESET_SCHEMES else []))
    for spec, (first, *others) in KERNEL_GROUPS.items():
        for other in others:
            assert spec_for(other) == spec
            assert preset(other).weights == preset(first).weights, (first, other)
            assert reference_format(preset(other)) == reference_format(preset(first)), (first, other)
    assert len(KERNELS) == len(set(KERNEL_GROUPS)) == len(PRESETS) - sum(len(d) - 1 for d in duplicates)


def test_cols_free_cases_are_covered():
    covered = {n for n in PRESETS if _cols_free(n)}
    assert {"FP8_BLOCK", "FP8_DYNAMIC", "W8A8"} <= covered


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("name,dname,case", _params())
def test_quantize_weight_matches_reference(name, dname, case):
    w, ref = _reference(name, dname, case)
    ours = quantize_weight(w, spec_for(name))
    assert_same_outputs(ours, ref, f"{name}/{dname}/{case}")
    assert w.dtype == ALL_DTYPES[dname]


@pytest.mark.parametrize("name", KERNELS)
def test_small_chunks_match_reference(monkeypatch, name):
    """Force many row chunks (block schemes: chunk boundaries at 128-row multiples)."""
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 4096)
    w, ref = _reference(name, "bf16", "edge_160x256")
    assert_same_outputs(quantize_weight(w, spec_for(name)), ref, f"{name} chunked")
    w, ref = _reference(name, "f16", "random_160x256")
    assert_same_outputs(quantize_weight(w, spec_for(name)), ref, f"{name} chunked f16")


def test_sink_and_shared_scratch_match_reference(monkeypatch):
    """The streaming path the pipeline uses: the main tensor arrives in row chunks through
    ``sink`` (copied, since a chunk is valid only during the call), one ``Scratch`` is reused
    across every preset, dtype and shape in turn (stale or undersized buffers would show)."""
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 8192)
    scratch = Scratch()
    for name in KERNELS:
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


@pytest.mark.parametrize("name", KERNELS)
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


@pytest.mark.parametrize("name", [n for n in KERNELS if preset(n).weights.num_bits == 4
                                  and preset(n).weights.type == "float"])
@pytest.mark.parametrize("dname", list(ALL_DTYPES))
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
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 1000)
    w = _randn((300, 64), 31).to(torch.bfloat16)
    w[250, 3] = -0.7  # in a late chunk, negative
    got = tensor_absmax(w)
    assert got.dtype == torch.bfloat16 and got.dim() == 0
    assert torch.equal(got, group_absmax([w], preset("NVFP4A16")))


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dname", list(ALL_DTYPES))
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


@pytest.mark.skipif("MXFP6A16" in PRESET_SCHEMES, reason="this compressed-tensors defines MXFP6")
@pytest.mark.parametrize("name", ["MXFP6A16", "MXFP6A8"])
def test_mxfp6_needs_a_compressed_tensors_that_defines_it(name):
    with pytest.raises(SchemeNotSupportedError, match=r"Unknown scheme"):
        resolve_config(name)


def test_fp6_outside_mx_is_refused():
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=6, type="float", strategy="channel"))
    with pytest.raises(SchemeNotSupportedError, match=r"6-bit float weights exist only as MXFP6|has no MXFP6 format"):
        resolve_config(scheme)


@pytest.mark.skipif("MXFP6A16" not in PRESET_SCHEMES, reason="this compressed-tensors has no MXFP6")
@pytest.mark.parametrize("dname", list(ALL_DTYPES))
def test_fp6_negative_zero_keeps_sign_bit(dname):
    """E2M3 codes are the input's sign bit plus the rounded magnitude's index: negative values
    that round to zero are stored as 0b100000, and our packing agrees (4 codes in 3 bytes)."""
    w, ref = _reference("MXFP6A16", dname, "edge_160x256")
    b = ref["weight_packed"].view(ref["weight_packed"].shape[0], -1, 3).to(torch.int32)
    word = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
    codes = torch.stack([(word >> shift) & 0x3F for shift in (0, 6, 12, 18)], dim=-1)
    assert (codes == 0b100000).any(), "the edge case does not exercise FP6 negative zero"
    assert_same_outputs(quantize_weight(w, spec_for("MXFP6A16")), ref, "MXFP6A16")


@pytest.mark.parametrize("name,alternative", [("FP8", "FP8_DYNAMIC"), ("NVFP4", "NVFP4A16")])
def test_calibration_presets_are_refused(name, alternative):
    with pytest.raises(CalibrationRequiredError, match=rf"{name} needs .*calibration data.*Pick {alternative}"):
        resolve_config(name)
    assert name not in PRESETS


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("name", KERNELS)
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


def _custom(resolve: bool = True, **weights):
    """A weights-only QuantizationScheme, and its kernel spec (through ``resolve_config``)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    resolved = resolve_config(scheme)
    (group, resolved_scheme), = resolved.groups
    return scheme, weight_spec(resolved_scheme, resolved.formats[group])


PER_TENSOR = [("float", 8, True), ("float", 8, False), ("int", 8, True), ("int", 8, False),
              ("int", 4, True), ("int", 4, False)]


@pytest.mark.parametrize("kind,num_bits,symmetric", PER_TENSOR, ids=[f"{k}{b}-{'sym' if s else 'asym'}" for k, b, s in PER_TENSOR])
@pytest.mark.parametrize("dname", list(ALL_DTYPES))
@pytest.mark.parametrize("case", ["random_160x256", "edge_160x256", "large_std_144x256", "odd_cols_130x200"])
def test_per_tensor_strategy_matches_reference(kind, num_bits, symmetric, dname, case):
    """One scale (and zero point) for the whole tensor, computed before any row chunk; no
    preset uses it. FP8 asymmetric stores an FP8 zero point, INT4 a packed-format int8 one."""
    scheme, spec = _custom(num_bits=num_bits, type=kind, strategy="tensor", symmetric=symmetric)
    weight = build(case, "W8A8", ALL_DTYPES[dname])
    if not symmetric:  # off-centre, so the zero point is not 0
        weight = weight + weight.abs().amax() * 0.25
    ref = reference_quantize(weight, scheme)
    assert tuple(ref["weight_scale"].shape) == (1,)
    if not symmetric:
        assert ref["weight_zero_point"].float().abs().sum() > 0
    assert_same_outputs(quantize_weight(weight, spec), ref, f"tensor {kind}{num_bits} sym={symmetric}")


def test_per_tensor_scale_spans_every_chunk(monkeypatch):
    """Many row chunks still share the one scale taken from the whole tensor: the max |w| sits in
    the last chunk, so a per-chunk scale would differ in every earlier one."""
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 2048)
    for kind, num_bits, symmetric in PER_TENSOR:
        scheme, spec = _custom(num_bits=num_bits, type=kind, strategy="tensor", symmetric=symmetric)
        weight = _randn((160, 256), 41).to(torch.bfloat16)
        weight[159, 7] = 0.5
        assert_same_outputs(quantize_weight(weight, spec), reference_quantize(weight, scheme), f"{kind}{num_bits}")


@pytest.mark.parametrize("strategy,extra", [("channel", {}), ("group", {"group_size": 32}), ("block", {"block_structure": [64, 64]})])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fp8_asymmetric_matches_reference(strategy, extra, dname):
    """FP8 with zero points (FP8 zero points, naive-quantized format) for the other strategies."""
    scheme, spec = _custom(num_bits=8, type="float", strategy=strategy, symmetric=False, **extra)
    weight = (_randn((130, 192), 43) + 0.01).to(DTYPES[dname])
    ref = reference_quantize(weight, scheme)
    assert ref["weight_zero_point"].dtype == torch.float8_e4m3fn
    assert_same_outputs(quantize_weight(weight, spec), ref, f"fp8 asym {strategy}")


@pytest.mark.parametrize("num_bits,extra", [(4, {"group_size": 32}), (8, {"group_size": 32, "scale_dtype": torch.uint8})])
def test_asymmetric_fp4_and_mx_are_refused(num_bits, extra):
    """compressed-tensors has no zero points for FP4, and MX exponents cannot carry them."""
    with pytest.raises(SchemeNotSupportedError, match=rf"asymmetric {num_bits}-bit float weights .*set symmetric=True"):
        _custom(num_bits=num_bits, type="float", strategy="group", symmetric=False, **extra)


@pytest.mark.parametrize("name", ["FP8_BLOCK", "FP8_DYNAMIC", "MXFP8A16", "W8A8"])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fp8_extremes_match_reference(name, dname):
    """Cells whose max |w| makes ``amax / 448`` round down as far as the dtype allows (the
    quantized max then lands just above 448): the kernels skip the redundant clamp only where
    it provably changes nothing."""
    dtype = DTYPES[dname]
    gen = torch.Generator().manual_seed(5)
    rows, cols = 256, 256
    weight = torch.rand(rows, cols, generator=gen) * 2 - 1
    exponents = torch.randint(-12, 12, (rows, 1), generator=gen).float()
    mantissas = 1 + torch.rand(rows, 1, generator=gen)
    peak = mantissas * torch.pow(2.0, exponents)
    weight = (weight * peak).to(dtype)
    weight[:, 0] = peak[:, 0].to(dtype)  # every row and block holds its own +max
    weight[:, 1] = -peak[:, 0].to(dtype)
    assert_same_outputs(quantize_weight(weight, spec_for(name)), reference_quantize(weight, preset(name)), name)


def _scale_divisor_log2(name: str) -> float:
    """log2 of max|w| / scale for a symmetric-looking cell (MX: the power-of-two offset)."""
    args = preset(name).weights
    if args.type == "float":
        if args.scale_dtype == torch.uint8:
            return 8.0 if args.num_bits == 8 else 2.0
        return math.log2(448.0 if args.num_bits == 8 else 6.0)
    # symmetric: max|w| / (levels / 2); asymmetric: (max - min) / levels with max = -min: the same
    return math.log2((2**args.num_bits - 1) / 2)


def subnormal_scale_weight(name: str, dtype: torch.dtype, rows: int = 256, cols: int = 256) -> torch.Tensor:
    """Rows 0..127: max |w| such that the scale is 1-4 octaves below the dtype's smallest normal
    (subnormal, non-zero); rows 128..: 4-8 octaves above it (normal). Every 128-row band, so
    FP8_BLOCK's blocks are subnormal in the first band and normal in the second."""
    gen = torch.Generator().manual_seed(17)
    target = math.log2(torch.finfo(dtype).tiny) + _scale_divisor_log2(name)
    offsets = torch.cat([torch.randint(-4, 0, (rows // 2, 1), generator=gen), torch.randint(4, 8, (rows - rows // 2, 1), generator=gen)])
    peak = (1 + torch.rand(rows, 1, generator=gen)) * torch.pow(2.0, target + offsets.float())
    weight = ((torch.rand(rows, cols, generator=gen) * 2 - 1) * peak).to(dtype)
    weight[:, 0] = peak[:, 0].to(dtype)
    weight[:, 1] = -peak[:, 0].to(dtype)
    return weight


def effective_scales(ref: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The scales the weight is divided by, in the weight's dtype (MX: 2**(e - 127))."""
    scale = ref["weight_scale"]
    if scale.dtype == torch.uint8:
        return torch.pow(2.0, scale.to(torch.float64) - 127).to(dtype)
    return scale


@pytest.mark.parametrize("name", ["FP8_BLOCK", "FP8_DYNAMIC", "MXFP8A16", "MXFP4A16", "W8A8", "W4A16", "W4A16_ASYM"])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_subnormal_scales_match_reference(name, dname):
    """Scales that are subnormal numbers of the weight's dtype (not zero, so not replaced by eps):
    the FP8 clamp-skip bound does not hold for them, and MX exponents reach 0 (2**-127)."""
    dtype = DTYPES[dname]
    weight = subnormal_scale_weight(name, dtype)
    ref = reference_quantize(weight, preset(name))
    scales = effective_scales(ref, dtype)
    subnormal = (scales != 0) & (scales.abs() < torch.finfo(dtype).tiny)
    assert subnormal.any(), f"{name}/{dname}: no subnormal scale, the case does not test what it claims"
    assert (~subnormal).any(), f"{name}/{dname}: no normal scale beside the subnormal ones"
    assert_same_outputs(quantize_weight(weight, spec_for(name)), ref, f"{name}/{dname} subnormal")


# --------------------------------------------------------------------------- numeric traps


@pytest.mark.parametrize("dname,peak", [("bf16", 3e38), ("f32", 3e38), ("f16", 40000.0)])
def test_asymmetric_scale_overflow_is_refused(dname, peak):
    """max - min of +-peak overflows the dtype: the reference writes an inf scale (weights that
    decode to NaN); the kernel refuses, in words the pipeline prefixes with the tensor name."""
    weight = torch.full((8, 256), peak)
    weight[:, ::2] = -peak
    weight = weight.to(DTYPES[dname])
    assert torch.isinf(reference_quantize(weight, preset("W4A16_ASYM"))["weight_scale"]).any()
    dtype = str(DTYPES[dname]).removeprefix("torch.")
    with pytest.raises(NonFiniteScaleError, match=rf"^its values span .*max - min overflows {dtype}.*symmetric scheme"):
        quantize_weight(weight, spec_for("W4A16_ASYM"))
    symmetric = quantize_weight(weight, spec_for("W4A16"))  # the fix the message offers works
    assert bool(torch.isfinite(symmetric["weight_scale"]).all())


def test_empty_weight_is_refused():
    with pytest.raises(TensorShapeError, match=r"^its shape \[0, 256\] holds no values"):
        quantize_weight(torch.zeros((0, 256), dtype=torch.bfloat16), spec_for("FP8_DYNAMIC"))


# --------------------------------------------------------------------------- FP8 clamp probe


def _non_saturating_cast(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """An FP8 cast that gives NaN above 448, as a torch build without saturation would."""
    return out.copy_(torch.where(src.abs() > 448, torch.full_like(src, math.nan), src))


@pytest.mark.parametrize("dname", ["bf16", "f16", "f32", "f64"])
def test_fp8_cast_probe_reads_this_torch(monkeypatch, dname):
    """The probe says what the cast does: this torch's real cast (spot-checked at 449 and 463),
    and a NaN-above-448 cast that the probe must reject."""
    dtype = {**DTYPES, "f64": torch.float64}[dname]
    cpu = torch.device("cpu")
    spot = torch.tensor([449.0, 463.0, -449.0], dtype=dtype).to(torch.float8_e4m3fn).float()
    assert numerics._probe_fp8_cast(dtype, cpu) == bool((spot.abs() == 448).all())
    monkeypatch.setattr(numerics, "_cast_to_fp8", _non_saturating_cast)
    assert numerics._probe_fp8_cast(dtype, cpu) is False


def _fp8_extreme_weight(dtype: torch.dtype, seed: int = 5) -> torch.Tensor:
    """256 x 256; every row's (hence every block's) max |w| is a peak for which amax / 448 rounds
    down in ``dtype``, so the cell's max lands above 448 after the division. Scales stay normal
    numbers (f16 included): subnormal ones keep the clamp without asking the probe."""
    gen = torch.Generator().manual_seed(seed)
    candidates = ((1 + torch.rand(8192, generator=gen)) * torch.pow(2.0, torch.randint(-4, 6, (8192,), generator=gen).float())).to(dtype)
    scale = candidates / torch.tensor(448.0, dtype=dtype)
    peaks = candidates[candidates / scale > 448][:256]
    assert peaks.numel() == 256
    weight = (torch.rand(256, 256, generator=gen) * 2 - 1).to(dtype) * peaks[:, None]
    weight[:, 0] = peaks
    weight[:, 1] = -peaks
    return weight


@pytest.mark.parametrize("name", ["FP8_DYNAMIC", "FP8_BLOCK"])
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fp8_clamp_kept_where_the_cast_does_not_saturate(monkeypatch, name, dname):
    """Both branches of the clamp skip. With a NaN-above-448 cast, the probe keeps the clamp and
    the bytes are still the reference's; forcing the skip on with that cast writes NaN (so the
    weight really has values above 448 and this test would catch a skip that ignored the probe)."""
    dtype = DTYPES[dname]
    weight = _fp8_extreme_weight(dtype)
    ref = reference_quantize(weight, preset(name))
    monkeypatch.setattr(numerics, "_cast_to_fp8", _non_saturating_cast)
    monkeypatch.setattr(numerics, "_FP8_CAST_PROBES", {})
    assert_same_outputs(quantize_weight(weight, spec_for(name)), ref, f"{name} clamp kept")
    assert numerics._FP8_CAST_PROBES == {(dtype, "cpu"): False}

    monkeypatch.setattr(numerics, "_FP8_CAST_PROBES", {(dtype, "cpu"): True})
    forced = quantize_weight(weight, spec_for(name))["weight"]
    assert torch.isnan(forced.float()).any(), "no value above 448: the case does not exercise the clamp"


@pytest.mark.parametrize("name", ["FP8_DYNAMIC", "FP8_BLOCK"])
def test_fp8_clamp_skipped_where_the_cast_saturates(monkeypatch, name):
    """On a saturating cast the probe allows the skip, and the bytes are the reference's."""
    weight = _fp8_extreme_weight(torch.bfloat16)
    monkeypatch.setattr(numerics, "_FP8_CAST_PROBES", {(torch.bfloat16, "cpu"): True})
    clamps = []
    real_clamp = torch.Tensor.clamp_
    monkeypatch.setattr(torch.Tensor, "clamp_", lambda self, *a, **k: clamps.append(a) or real_clamp(self, *a, **k))
    assert_same_outputs(quantize_weight(weight, spec_for(name)), reference_quantize(weight, preset(name)), name)
    assert clamps == [], "the clamp ran although the probe proved it redundant"
