"""``ptq_core.rotation_fast``: the fast Hadamard rotation gives the peer's dgemm bytes or declines.

Every test compares with the peer's arithmetic itself (``rotation._cols`` / ``_rows``: the dense
float64 matmul, rounded back) on inputs built to break a wrong certificate: sums that land on
bf16 rounding midpoints, exponent spans that make the transform inexact, zero vectors, and
float32 weights. Where a test's inputs could be passed by luck, it also breaks the certificate
on purpose and checks that the comparison then fails (the test has teeth).
"""

from __future__ import annotations

import pytest
import torch

import ptq_core.rotation_fast as rf
from ptq_core.rotation import SpinQuant, _cols, _rows, hadamard
from ptq_core.rotation_fast import FastHadamard


def _dense(tensor: torch.Tensor, rotation: torch.Tensor, *, rows: bool = False) -> torch.Tensor:
    step = _rows if rows else _cols
    return step(tensor.to(torch.float64), rotation).to(tensor.dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def _fast(tensor: torch.Tensor, rotation: torch.Tensor, *, rows: bool = False) -> rf.Rotated:
    fast = FastHadamard.of(rotation)
    assert fast is not None
    return fast.rows(tensor) if rows else fast.cols(tensor)


@pytest.mark.parametrize("n", [64, 128, 256, 512])  # 4^k (exact) and 2^odd (interval)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [False, True])
def test_weights_rotate_to_the_dgemm_bytes(n, dtype, rows):
    torch.manual_seed(n)
    rotation = hadamard(n)
    shape = (2 * n, 96) if rows else (96, 2 * n)  # two blocks: the block-diagonal rotation of a wider dimension
    weight = (torch.randn(shape) * torch.logspace(-3, 0, shape[1])).to(dtype)
    dense = _dense(weight, rotation, rows=rows)
    fast = FastHadamard.of(rotation)
    vectors = weight.reshape(-1, n, shape[1]) if rows else weight.reshape(-1, n, 1)
    rounded, ok = fast._certified(vectors)
    rounded = rounded.reshape(shape)
    ok = torch.ones_like(rounded, dtype=torch.bool) if ok is None else ok.reshape(shape)
    assert torch.equal(rounded[ok].view(torch.int16), dense[ok].view(torch.int16))  # every certified one
    assert ok.float().mean() > 0.999  # (exact zero sums of 2^odd widths are not: the peer's sign is its BLAS's)
    got = fast.rows(weight) if rows else fast.cols(weight)
    assert got.tensor is None or _same(got.tensor, dense)


def test_the_random_hadamard_has_a_fast_form():
    """compressed-tensors' random Hadamard of 3584 = 224 x 16: a known 224-order matrix (x) H_16, random signs."""
    rotation = hadamard(3584, generator=torch.Generator().manual_seed(0))
    fast = FastHadamard.of(rotation)
    assert [f.shape[0] for f in fast.factors] == [224, 16] and fast.signs is not None
    weight = (torch.randn(64, 3584) * 0.02).to(torch.bfloat16)
    got = fast.cols(weight)
    assert got.tensor is not None and _same(got.tensor, _dense(weight, rotation))


def test_a_matrix_that_is_not_such_a_hadamard_has_none():
    rotation = hadamard(64)
    assert FastHadamard.of(rotation.float()) is None
    assert FastHadamard.of(rotation * torch.linspace(1, 2, 64, dtype=torch.float64)) is None
    swapped = rotation[:, torch.tensor([1, 0, *range(2, 64)])]  # still +-c: the dense outer form finds it
    weight = (torch.randn(8, 64) * 0.02).to(torch.bfloat16)
    got = _fast(weight, swapped)
    assert got.tensor is not None and _same(got.tensor, _dense(weight, swapped))


def test_exact_midpoints_round_as_the_peer():
    """n = 4^k: sums that are exactly bf16 midpoints (and float32 ones, rounded twice by torch's .to)."""
    n = 256
    rotation = hadamard(n)
    small = torch.tensor([2.0 ** -8, 3 * 2.0 ** -8, 2.0 ** -8 + 2.0 ** -30, -(2.0 ** -8)])
    weight = torch.zeros(64, n)
    weight[:, 0] = torch.linspace(1, 2, 64)  # bf16 values with at most 7 mantissa bits beyond
    weight[:, 0] = weight[:, 0].to(torch.bfloat16).float()
    weight[:, 1] = small.repeat(16) * weight[:, 0]
    weight[:, 2] = torch.where(torch.arange(64) % 3 == 0, 2.0 ** -30, 0.0)
    weight = weight.to(torch.bfloat16)
    got = _fast(weight, rotation)
    assert got.tensor is not None  # exact sums at a power-of-two scale: all certified
    assert _same(got.tensor, _dense(weight, rotation))


def _spread(rows: int, n: int, dtype=torch.bfloat16) -> torch.Tensor:
    """Two huge entries that cancel in half the outputs, plus tiny odd ones: 60 bits of exponent span."""
    weight = torch.randn(rows, n) * 2.0 ** -30
    weight[:, 0], weight[:, n // 16] = 2.0 ** 30, 2.0 ** 30
    return weight.to(dtype)


@pytest.mark.parametrize("n", [256, 512])
def test_a_huge_exponent_span_is_not_trusted(n, monkeypatch):
    rotation = hadamard(n)
    weight = _spread(64, n)
    got = _fast(weight, rotation)
    dense = _dense(weight, rotation)
    assert got.tensor is None or _same(got.tensor, dense)
    # teeth: claim every sum exact (a wrong quantum) and the transform's exact answer is not the peer's
    monkeypatch.setattr(FastHadamard, "_quantum", staticmethod(lambda chunk: torch.full(
        (chunk.shape[0], 1, chunk.shape[2]), 2.0 ** 200, dtype=torch.float64)))
    monkeypatch.setattr(FastHadamard, "_interval", lambda self, value, *a: torch.ones_like(value, dtype=torch.bool))
    broken = _fast(weight, rotation)
    assert broken.tensor is not None and not _same(broken.tensor, dense)


def _near_midpoints(count: int, n: int) -> torch.Tensor:
    """Vectors whose output 0 (the all-ones column) lands within ~2^-50 of a point where torch's
    float64 -> bf16 rounding (through float32: twice) changes value: a float32 midpoint next to a
    bf16 midpoint (``mu +- 2^-24`` for ``mu`` in [1, 2); one of the two is such a point)."""
    c = hadamard(n)[0, 0].item()
    generator = torch.Generator().manual_seed(7)
    weight = torch.zeros(count, n, dtype=torch.float64)
    for i in range(count):
        midpoint = (1 + (2 * torch.randint(0, 128, (), generator=generator).item() + 1) * 2.0 ** -8)
        residual = (midpoint + (-1) ** i * 2.0 ** -24) / c  # S wanted, as a sum of bf16 entries with falling exponents
        for k in range(7):
            part = torch.tensor(residual, dtype=torch.float64).to(torch.bfloat16).double().item()
            weight[i, 1 + k] = part
            residual -= part
    return weight.to(torch.bfloat16)


@pytest.mark.parametrize("n", [128, 512])  # 2^odd: c = 1 / fl(sqrt n) is no power of two
def test_sums_at_midpoints_are_left_to_the_dgemm(n, monkeypatch):
    rotation = hadamard(n)
    weight = _near_midpoints(256, n)
    dense = _dense(weight, rotation)
    fast = FastHadamard.of(rotation)
    rounded, ok = fast._certified(weight.view(-1, n, 1))
    assert ok is not None and not bool(ok.all())  # the interval is wide enough to see the midpoints
    ok = ok.view(weight.shape)
    assert torch.equal(rounded.view(weight.shape)[ok].view(torch.int16), dense[ok].view(torch.int16))
    got = fast.cols(weight)
    assert got.tensor is None
    # teeth: without the peer's error bound, the candidates are wrong for some of these elements
    monkeypatch.setattr(rf, "_gamma", lambda k: 0.0)
    monkeypatch.setattr(rf, "_U", 0.0)
    broken = FastHadamard.of(rotation).cols(weight)
    assert broken.tensor is not None and not _same(broken.tensor, dense)


def test_zero_vectors():
    rotation = hadamard(128)
    weight = (torch.randn(4, 256) * 0.02).to(torch.bfloat16)
    weight[1] = 0.0  # +0: every output is +0, as any dgemm gives it
    got = _fast(weight, rotation)
    assert got.tensor is not None and _same(got.tensor, _dense(weight, rotation))
    weight[2, :128] = -0.0  # every summand of output 0 may be -0: the sign is the BLAS's choice
    assert _fast(weight, rotation).tensor is None
    weight[2, 5] = 1.0  # a nonzero entry: exact zero sums are +0 whatever the order
    got = _fast(weight, rotation)
    assert got.tensor is not None and _same(got.tensor, _dense(weight, rotation))


def test_non_finite_weights_are_left_to_the_dgemm():
    rotation = hadamard(64)
    for bad in (float("inf"), float("nan")):
        weight = (torch.randn(4, 64) * 0.02).to(torch.bfloat16)
        weight[3, 7] = bad
        assert _fast(weight, rotation).tensor is None


@pytest.mark.parametrize("options", [{}, {"transform_type": "random-hadamard", "transform_block_size": 64, "seed": 3}])
def test_spinquant_takes_the_fast_path_for_16_bit_weights_only(options):
    """R1 (whole, or block-diagonal random blocks of 64) on v_proj's columns, R2 on its rows."""
    torch.manual_seed(0)
    norms = {"model.layers.0.input_layernorm": torch.rand(256) + 0.5}
    rotation = SpinQuant(256, 64, norms, **options)
    rotation.fast.min_width = 0  # (256 is below the default: there the dgemm is as cheap)
    name = "model.layers.0.self_attn.v_proj.weight"
    weight = (torch.randn(256, 256) * 0.02).to(torch.bfloat16)
    fast = rotation.process({name: weight})[name]
    assert rotation.fast.stats["fast"] == 2 * weight.numel() and rotation.fast.stats["dense"] == 0
    dense = SpinQuant(256, 64, norms, **options)  # the default minimum width: the peer's dgemm only
    assert _same(fast, dense.process({name: weight})[name]) and dense.fast.stats["fast"] == 0
    rotation.process({name: weight.float()})
    assert rotation.fast.stats["dense"] == 2 * weight.numel()  # float32: the dgemm


def test_exact_sums_at_a_2_odd_width_still_need_the_interval(monkeypatch):
    """n = 128: c = 1 / fl(sqrt 128) is no power of two, so even exact sums are not the peer's value:
    its rounded products move it across a rounding point. Vectors with exact sums (51 bits of span)
    that land within ~2^-52 of such a point must not be certified, and treating c as a power of two
    (the 4^k shortcut) certifies wrong bytes."""
    n = 128
    rotation = hadamard(n)
    c = rotation[0, 0].item()
    generator = torch.Generator().manual_seed(11)
    weight = torch.zeros(512, n, dtype=torch.float64)
    for i in range(512):
        midpoint = 1 + (2 * torch.randint(0, 128, (), generator=generator).item() + 1) * 2.0 ** -8
        target = residual = (midpoint + (-1) ** i * 2.0 ** -24) / c
        for k in range(7):
            part = torch.tensor(residual, dtype=torch.float64).to(torch.bfloat16).double().item()
            if abs(part) < abs(target) * 2.0 ** -44:
                break
            weight[i, 1 + k], residual = part, residual - part
    weight = weight.to(torch.bfloat16)
    dense = _dense(weight, rotation)
    fast = FastHadamard.of(rotation)
    vectors = weight.view(-1, n, 1)
    assert bool((vectors.double().abs().sum(1, keepdim=True) <= fast._quantum(vectors) * 2.0 ** 52).all())  # exact
    rounded, ok = fast._certified(vectors)
    assert ok is not None
    ok = ok.view(weight.shape)
    assert torch.equal(rounded.view(weight.shape)[ok].view(torch.int16), dense[ok].view(torch.int16))
    monkeypatch.setattr(FastHadamard, "exact_scale", property(lambda self: True))
    broken = fast.cols(weight)
    assert broken.tensor is not None and not _same(broken.tensor, dense)
