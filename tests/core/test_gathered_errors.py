"""The MSE search's gathered errors (ptq_core/numerics/gathered_errors.py) against the direct path and the peer.

Wide 16-bit cells (FP8's 128x128 blocks, whole tensors) take the gathered path when it pays;
here it is forced (``_GAIN``) and its errors compared with the direct path's error by error,
bit for bit, and its choices with the peer's golden bytes and the reference oracle.
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

from core.test_observers import DTYPES, PEER_CASES, _hard_weight, assert_same, golden, raw, run_case, scheme_for, spec_of
from ptq_core import observers
from ptq_core.numerics import Scratch, gathered_errors, mse_search, quantize_weight, scales


def _gathered_calls(monkeypatch) -> list:
    """Force the gathered path wherever the search may take it, and record each use."""
    monkeypatch.setattr(gathered_errors, "_GAIN", 1e-9)
    calls, real = [], mse_search.gathered_errors
    monkeypatch.setattr(mse_search, "gathered_errors", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("case", PEER_CASES, ids=[c.id for c in PEER_CASES])
def test_gathered_errors_give_the_peers_bytes(monkeypatch, case):
    """Every golden case with the gathered path forced: 16-bit block and whole-tensor searches take
    it (symmetric FP8 blocks, asymmetric INT4 tensors with zero points); the rest keep theirs."""
    calls = _gathered_calls(monkeypatch)
    assert_same(run_case(case), golden(case), f"{case.id} through gathered errors")
    spec = spec_of(scheme_for(case.scheme, case.observer, case.kwargs))
    gathered = case.dtype != "f32" and spec.observer != observers.MINMAX and spec.strategy in ("tensor", "block")
    assert bool(calls) == gathered


_WIDE = {
    "FP8_BLOCK": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128], "symmetric": True},
    "FP8_BLOCK_ASYM": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128], "symmetric": False},
    "INT8_BLOCK_ASYM": {"num_bits": 8, "type": "int", "strategy": "block", "block_structure": [128, 128], "symmetric": False},
    "INT4_TENSOR_ASYM": {"num_bits": 4, "type": "int", "strategy": "tensor", "symmetric": False},
    "FP8_TENSOR": {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True},
}


def _wide_spec(scheme: str, observer: str):
    return spec_of(QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**_WIDE[scheme], observer=observer)))


def _both_errors(w: torch.Tensor, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """The direct and the gathered ``[factors, *cells]`` errors over every shrink factor."""
    params = observers.mse_params(spec.observer_kwargs)
    lo, hi = scales._stats(w, spec, Scratch())
    lo, hi = mse_search._expanded(lo, params.expand), (mse_search._expanded(hi, params.expand) if hi is not None else None)
    factors = observers.shrink_tensor(params, w.dtype, w.device)
    g = gathered_errors.gathered_cells(mse_search._search_cells(w, spec, Scratch()), lo, hi, Scratch())
    assert g is not None
    direct = mse_search._errors(w, lo, hi, spec, params.norm, factors, Scratch())
    return direct, mse_search._errors(w, lo, hi, spec, params.norm, factors, Scratch(), g)


@pytest.mark.parametrize("scheme", sorted(_WIDE))
@pytest.mark.parametrize("shape", [(200, 136), (37, 300), (256, 256)])
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("observer", ["memoryless_mse", "nvfp4_expanded_mse"])
def test_gathered_errors_equal_the_direct_errors(monkeypatch, scheme, shape, dtype, observer):
    """Error by error, bit for bit: ragged blocks (zero padding summed too), zero points, ties,
    overflow to inf, all-zero blocks, both observers."""
    monkeypatch.setattr(gathered_errors, "_GAIN", 1e-9)
    w = _hard_weight(*shape, DTYPES[dtype], sum(shape))
    spec = _wide_spec(scheme, observer)
    if spec.strategy == "tensor":  # one cell: without the overflowing row, so that its sums are finite
        w[6] = w[7]
    elif shape == (256, 256):  # an all-zero block (scale 0) and a block of negative zeros and one value
        w[128:, :128] = 0.0
        w[128:, 128:] = -0.0
        w[200, 200] = 1e-3
    direct, gathered = _both_errors(w, spec)
    assert torch.isfinite(direct).any() and (spec.strategy == "tensor" or torch.isinf(direct).any())
    assert torch.equal(raw(gathered), raw(direct)), f"{(raw(gathered) != raw(direct)).sum()} bytes differ"


@pytest.mark.parametrize("scheme", ["FP8_BLOCK", "INT8_BLOCK_ASYM"])
def test_gathered_table_splits_its_factors_to_bound_memory(monkeypatch, scheme):
    """Over ``_TABLE_ELEMS`` (distinct qparams x values), half the factors at a time: the same bytes."""
    monkeypatch.setattr(gathered_errors, "_GAIN", 1e-9)
    monkeypatch.setattr(gathered_errors, "_TABLE_ELEMS", 4096)
    tables, real = [], mse_search._pointwise_errors
    monkeypatch.setattr(mse_search, "_pointwise_errors", lambda *a, **k: tables.append(a[0].shape) or real(*a, **k))
    w = _hard_weight(200, 136, torch.bfloat16, 1)
    direct, gathered = _both_errors(w, _wide_spec(scheme, "nvfp4_expanded_mse"))
    assert torch.equal(raw(gathered), raw(direct)), f"{(raw(gathered) != raw(direct)).sum()} bytes differ"
    assert sum(1 for shape in tables if len(shape) == 2 and shape[0] == 1) > 3  # the gathered path's [1, values] tables


@pytest.mark.parametrize("scheme", ["FP8_BLOCK", "INT4_TENSOR_ASYM"])
def test_gathered_errors_sum_as_torch_does_on_several_threads(scheme):
    """Torch splits a reduction among threads by its layout; the gathered layout is the direct
    one, so several threads give the direct bytes too (a whole-tensor sum is split in the cell)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w = (torch.randn(256, 512, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)
        direct, gathered = _both_errors(w, _wide_spec(scheme, "memoryless_mse"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(raw(gathered), raw(direct))


def test_gathered_gain_rule():
    """A table pays only with few (groups x distinct values) per element, and only 16-bit weights
    have their values counted: float32, or a bf16 weight of all-distinct values, stay direct."""
    spec = _wide_spec("FP8_BLOCK", "memoryless_mse")

    def cells_of(w):
        lo, hi = scales._stats(w, spec, Scratch())
        return gathered_errors.gathered_cells(mse_search._search_cells(w, spec, Scratch()), lo, hi, Scratch())

    typical = (torch.randn(512, 512, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    assert cells_of(typical) is not None
    assert cells_of(typical.float()) is None
    distinct = torch.arange(256 * 256, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).view(256, 256)
    distinct = torch.nan_to_num(distinct, nan=0.0, posinf=1.0, neginf=-1.0)
    assert cells_of(distinct) is None


@pytest.mark.parametrize("scheme", ["FP8_BLOCK", "INT8_BLOCK_ASYM"])
def test_gathered_errors_over_several_row_chunks_match_the_oracle(monkeypatch, scheme):
    """Three row chunks (each its own values and groups), ragged blocks, the gathered path forced:
    the oracle's bytes for both observers."""
    from reference import reference_quantize

    calls = _gathered_calls(monkeypatch)
    monkeypatch.setattr(scales, "_CHUNK_ELEMS", 128 * 520)
    w = (torch.randn(300, 520, generator=torch.Generator().manual_seed(5)) * 0.02).to(torch.bfloat16)
    w[130, 7] = 0.5
    for observer in ("memoryless_mse", "nvfp4_expanded_mse"):
        s = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**_WIDE[scheme], observer=observer))
        assert_same(quantize_weight(w, spec_of(s)), reference_quantize(w, s), f"{scheme} {observer} in row chunks")
    assert len(calls) >= 6, "every chunk of both searches gathers"
