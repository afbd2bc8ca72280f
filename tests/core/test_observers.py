"""Weight observers against the peer (llm-compressor 0.14.0.1), byte for byte on CPU.

The peer is never imported: ``tests/golden/observers.safetensors`` holds its outputs for
the seeded inputs of ``tests/golden/observer_cases.py`` (regenerate with
``tests/golden/make_observer_golden.py`` in the peer's venv). Each case runs the peer's
own model-free path (``validate_config`` + ``ModelFreePtqConverter.process``), fused
q/k/v included, so these tests also pin how the peer renames observers.

The golden file was made with one torch thread: for float32 weights torch's
vectorised and scalar ``pow`` differ, and which elements take the scalar loop
depends on how a multi-threaded peer splits the tensor (bf16 / f16 are immune:
there the power is rounded to 16 bits identically in both loops).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme
from safetensors import safe_open

from ptq_core import observers
from ptq_core.errors import CalibrationRequiredError, NonFiniteScaleError, SchemeNotSupportedError
from ptq_core.numerics import Scratch, global_scale_from_stats, mse_search, observe_weight, quantize_weight, scales
from ptq_core.schemes import resolve_config, weight_spec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from observer_cases import DTYPES, GOLDEN_FILE, SCHEMES, Case, build_inputs, cases  # noqa: E402

CASES = cases()


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def golden(case: Case) -> dict[str, torch.Tensor]:
    prefix = f"{case.id}|"
    with safe_open(GOLDEN / GOLDEN_FILE, "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def scheme_for(scheme: str, observer: str | None, kwargs=()) -> QuantizationScheme:
    preset, weights = SCHEMES[scheme]
    out = preset_name_to_scheme(preset, ["Linear"]) if preset else QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(**weights)
    )
    out.weights.observer = observer
    out.weights.observer_kwargs = dict(kwargs)
    return out


def spec_of(scheme: QuantizationScheme):
    resolved = resolve_config(scheme)
    (group, resolved_scheme), = resolved.groups
    return weight_spec(resolved_scheme, resolved.formats[group])


def run_case(case: Case, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Ours, as the pipeline runs it: observe each member, one global scale for a fused group."""
    spec = spec_of(scheme_for(case.scheme, case.observer, case.kwargs))
    inputs = {name: w.to(device) for name, w in build_inputs(case).items()}
    stats = {name: observe_weight(w, spec) for name, w in inputs.items()}
    global_scale = global_scale_from_stats(list(stats.values())) if case.fused else None
    out = {}
    for name, w in inputs.items():
        module = name.rpartition(".")[0]
        for local, tensor in quantize_weight(w, spec, stats=stats[name], global_scale=global_scale).items():
            out[f"{module}.{local}"] = tensor.cpu()
    return out


def assert_same(ours: dict, ref: dict, what: str) -> None:
    assert set(ours) == set(ref), f"{what}: {sorted(ours)} != peer {sorted(ref)}"
    for key, r in ref.items():
        o = ours[key]
        assert (o.dtype, tuple(o.shape)) == (r.dtype, tuple(r.shape)), f"{what} {key}"
        assert torch.equal(raw(o), raw(r)), f"{what} {key}: {(raw(o) != raw(r)).sum()} bytes differ from the peer"


def _nan_zero_point_case(case: Case) -> bool:
    return case.scheme == "FP8_CHANNEL_ASYM" and case.kind == "edge"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_observer_matches_peer(case):
    ref = golden(case)
    assert ref, f"no golden tensors for {case.id}: regenerate tests/golden/{GOLDEN_FILE}"
    if _nan_zero_point_case(case):  # all-zero channels: the peer writes NaN zero points and weights
        assert torch.isnan(next(v for k, v in ref.items() if k.endswith("weight_zero_point")).float()).any()
        with pytest.raises(NonFiniteScaleError, match=r"^its all-zero cells get the FP8 zero point"):
            run_case(case)
        return
    assert_same(run_case(case), ref, case.id)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "random" and not c.kwargs][:12], ids=lambda c: c.id)
def test_cuda_gives_the_peers_cpu_bytes(case):
    """Weights on a GPU: the search runs on a CPU copy (its sums must round as the CPU's do) and the
    quantization on the GPU; the bytes are the peer's on CPU."""
    assert_same(run_case(case, "cuda"), golden(case), f"cuda {case.id}")


def test_golden_cases_cover_the_observers_and_their_paths(monkeypatch):
    """Every data-free observer name the peer registers is a golden case or an alias of one, and
    the cases exercise both ends of the search: an early stop, and a full run."""
    names = {c.observer for c in CASES} | {"mse"}
    assert names == set(observers.list_observers())
    stops = []
    real = observers.advance

    def spy(improved_any, stale, patience):
        taken, stale, stopped = real(improved_any, stale, patience)
        stops.append(stopped)
        return taken, stale, stopped

    monkeypatch.setattr(observers, "advance", spy)
    run_case(next(c for c in CASES if c.scheme == "W8A8" and c.observer == "memoryless_mse"))
    assert stops[-1] is True, "W8A8 + memoryless_mse no longer stops early: pick another early-stop case"
    stops.clear()
    run_case(next(c for c in CASES if c.scheme == "NVFP4A16" and c.observer == "nvfp4_expanded_mse"))
    assert not any(stops)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "edge" or c.fused or c.kwargs][:12], ids=lambda c: c.id)
def test_search_blocks_and_chunks_change_no_byte(monkeypatch, case):
    """Tiny row chunks, error blocks and factor blocks: the peer's bytes regardless of how the
    search is cut up (chunk boundaries, one factor per block, patience carried across blocks)."""
    if _nan_zero_point_case(case):
        pytest.skip("refused (NaN zero points)")
    monkeypatch.setattr(scales, "_CHUNK_ELEMS", 16 * 1024)
    monkeypatch.setattr(mse_search, "_SEARCH_ELEMS", 2048)
    monkeypatch.setattr(mse_search, "_SEARCH_CELLS", 64)
    assert_same(run_case(case), golden(case), f"{case.id} in small pieces")


def test_quantize_weight_observes_when_not_given_stats():
    case = next(c for c in CASES if c.scheme == "W4A16" and c.observer == "memoryless_mse")
    spec = spec_of(scheme_for(case.scheme, case.observer))
    (name, w), = build_inputs(case).items()
    module = name.rpartition(".")[0]
    ours = {f"{module}.{k}": v for k, v in quantize_weight(w, spec).items()}
    assert_same(ours, golden(case), "stats computed inside quantize_weight")


# --------------------------------------------------------------------------- names and kwargs


def test_mse_runs_as_memoryless_mse_and_says_so(caplog):
    """The peer's model_free_ptq renames 'mse' to the unregistered 'static_mse' and fails;
    ours runs memoryless_mse (what the peer's oneshot runs for weights) and logs it."""
    with caplog.at_level(logging.INFO, logger="ptq_core.observers"):
        spec = spec_of(scheme_for("W4A16", "mse"))
    assert spec == spec_of(scheme_for("W4A16", "memoryless_mse"))
    assert any("'mse' runs as 'memoryless_mse'" in r.getMessage() and "static_mse" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("alias,canonical", [
    ("fouroversix", "nvfp4_expanded_mse"), ("minmax", None), ("static_minmax", None), ("memoryless_minmax", None),
    ("Memoryless-MSE", "memoryless_mse"), ("NVFP4_EXPANDED_MSE", "nvfp4_expanded_mse"),
])
def test_observer_aliases_give_one_spec(alias, canonical):
    assert spec_of(scheme_for("NVFP4A16", alias)) == spec_of(scheme_for("NVFP4A16", canonical))


def test_spec_carries_complete_hashable_kwargs():
    implicit = spec_of(scheme_for("W4A16", "memoryless_mse"))
    explicit = spec_of(scheme_for("W4A16", "memoryless_mse", {"grid": 100, "norm": 2.4, "triton_error_buffer": 0.5}))
    assert implicit == explicit and hash(implicit) == hash(explicit)
    assert implicit.observer_kwargs == (("expand", 1.0), ("grid", 100.0), ("maxshrink", 0.2), ("norm", 2.4), ("patience", 5))
    expanded = spec_of(scheme_for("NVFP4A16", "nvfp4_expanded_mse", {"grid": 50}))
    assert dict(expanded.observer_kwargs) == {"expand": 1.8, "grid": 50, "maxshrink": 1 - 0.8 / 1.8, "norm": 2.4, "patience": 1000}
    assert spec_of(scheme_for("W4A16", None)).observer_kwargs == ()


@pytest.mark.parametrize("name", ["imatrix_mse", "nvfp4_expanded_imatrix"])
def test_observers_that_need_activations_are_refused(name):
    with pytest.raises(CalibrationRequiredError, match=rf"^config_group_0: The '{name}' observer weights its error by E\[x\^2\].*calibration activations"):
        resolve_config(scheme_for("W4A16", name))


@pytest.mark.parametrize("observer,kwargs,message", [
    ("kmeans", {}, r"Unknown weight observer 'kmeans'; data-free observers: memoryless_minmax"),
    ("memoryless_mse", {"shrink": 0.3}, r"observer_kwargs \['shrink'\] do not apply to the 'memoryless_mse' observer"),
    ("memoryless_minmax", {"grid": 10}, r"observer_kwargs \['grid'\] do not apply .* \(it reads: none\)"),
    ("memoryless_mse", {"expand": 0.9}, r"observer_kwargs\['expand'\] = 0.9 must be at least 1.0"),
    ("memoryless_mse", {"norm": "2"}, r"observer_kwargs\['norm'\] = '2' must be a finite number"),
])
def test_bad_observer_settings_are_refused(observer, kwargs, message):
    with pytest.raises(SchemeNotSupportedError, match=message):
        resolve_config(scheme_for("W4A16", observer, kwargs))


def test_describe_observer_has_a_line_per_observer():
    lines = {observers.describe_observer(n) for n in observers.list_observers()}
    assert len(lines) == 3 and all(line.endswith(".") for line in lines)


def test_expand_overflow_is_refused():
    """1.8 x a max |w| near the bf16 maximum is inf: refused before any search."""
    w = torch.full((4, 32), 3e38, dtype=torch.bfloat16)
    with pytest.raises(NonFiniteScaleError, match=r"^its max \|w\| = 3\.0\d*e\+38 times the observer's expand=1\.8 overflows bfloat16"):
        observe_weight(w, spec_of(scheme_for("NVFP4A16", "nvfp4_expanded_mse")))


def test_non_finite_member_is_refused_before_the_group_scale():
    """A fused group's members are observed first, so a NaN member fails as NonFiniteWeightError
    before its partners are quantized with a global scale it would have poisoned."""
    from ptq_core.errors import NonFiniteWeightError

    spec = spec_of(scheme_for("NVFP4A16", "nvfp4_expanded_mse"))
    w = torch.zeros((4, 32), dtype=torch.bfloat16)
    w[2, 5] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"^the weight holds NaN or Inf values$"):
        observe_weight(w, spec)


# --------------------------------------------------------------------------- the oracle


def reference_case(case: Case) -> dict[str, torch.Tensor]:
    """tests/reference.py's re-statement of the peer (compressed-tensors + the peer's loop)."""
    from reference import reference_quantize_group

    out = {}
    for name, state in reference_quantize_group(build_inputs(case), scheme_for(case.scheme, case.observer, case.kwargs)).items():
        module = name.rpartition(".")[0]
        out.update({f"{module}.{k}": v for k, v in state.items()})
    return out


ORACLE_CASES = [c for c in CASES if c.dtype == "bf16" and c.kind == "random" and not _nan_zero_point_case(c)]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[c.id for c in ORACLE_CASES])
def test_reference_oracle_is_the_peer(case):
    """The oracle that the MXFP6 and shape tests below rely on gives the peer's bytes."""
    assert_same(reference_case(case), golden(case), f"oracle {case.id}")


@pytest.mark.skipif("MXFP6A16" not in __import__("compressed_tensors").quantization.quant_scheme.PRESET_SCHEMES,
                    reason="this compressed-tensors has no MXFP6")
@pytest.mark.parametrize("observer", ["memoryless_mse", "nvfp4_expanded_mse"])
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_mxfp6_observers_match_the_oracle(observer, dtype):
    """The peer (compressed-tensors 0.19) has no MXFP6; its search on 0.20.1's MXFP6 is the oracle."""
    preset_scheme = preset_name_to_scheme("MXFP6A16", ["Linear"])
    preset_scheme.weights.observer = observer
    case = Case("W4A16", observer, (), dtype, "edge")  # inputs only
    (name, w), = build_inputs(case).items()
    from reference import reference_quantize

    ours = quantize_weight(w, spec_of(preset_scheme))
    assert_same(ours, reference_quantize(w, preset_scheme), f"MXFP6A16 {observer} {dtype}")


@pytest.mark.parametrize("scheme,shape", [("W4A16", (96, 384)), ("NVFP4A16", (40, 160)), ("FP8_BLOCK", (200, 136)),
                                          ("W8A8", (33, 300)), ("MXFP4A16", (17, 96))])
def test_odd_shapes_match_the_oracle(scheme, shape):
    """Shapes the golden file does not cover: ragged blocks, odd row counts, several row chunks."""
    from reference import reference_quantize

    gen = torch.Generator().manual_seed(shape[0])
    w = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    w[1, 3] = 0.4
    for observer in ("memoryless_mse", "nvfp4_expanded_mse"):
        s = scheme_for(scheme, observer)
        assert_same(quantize_weight(w, spec_of(s)), reference_quantize(w, s), f"{scheme} {observer} {shape}")


# --------------------------------------------------------------------------- pair tables


def _table_calls(monkeypatch) -> list:
    """Force a pair table wherever the search may take one, and record each use."""
    monkeypatch.setattr(mse_search, "_TABLE_GAIN", 1e-9)
    calls, real = [], mse_search._table_errors
    monkeypatch.setattr(mse_search, "_table_errors", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


PEER_CASES = [c for c in CASES if not _nan_zero_point_case(c)]


@pytest.mark.parametrize("case", PEER_CASES, ids=[c.id for c in PEER_CASES])
def test_pair_tables_give_the_peers_bytes(monkeypatch, case):
    """Every golden case through the table path (bf16 / f16 searches over groups or channels);
    float32 weights and whole-tensor or block cells keep the direct path."""
    calls = _table_calls(monkeypatch)
    assert_same(run_case(case), golden(case), f"{case.id} through pair tables")
    spec = spec_of(scheme_for(case.scheme, case.observer, case.kwargs))
    tabled = case.dtype != "f32" and spec.observer != observers.MINMAX and spec.strategy not in ("tensor", "block")
    assert bool(calls) == tabled


def _hard_weight(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Heavy tails, all-zero and negative-zero cells, tiny values, repeated cells, exact
    rounding ties, and values whose errors overflow the dtype (NaN-free extremes)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    w = 0.02 * t / torch.randn(rows, cols, generator=gen, dtype=torch.float64).abs().clamp(min=0.1)
    w[0] = 0.0
    w[1] = -0.0
    w[2] = 1e-6 * torch.sign(w[2])
    w[3] = w[4]  # a repeated row: cells with the same statistics share one group
    step = 2.0 ** -6
    w[5] = ((torch.arange(cols) % 15) - 7 + 0.5) * step  # ties at the first candidate's grid
    w[5, ::16] = 7.5 * step
    w[6, : cols // 2] = torch.finfo(dtype).max / 4  # |q - w| ** 2.4 overflows to inf
    return w.to(dtype)


@pytest.mark.parametrize("scheme,cols", [("W4A16", 384), ("W4A16_ASYM", 384), ("NVFP4A16", 48),
                                         ("MXFP4A16", 96), ("W8A8", 200), ("FP8_DYNAMIC", 1032)])
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("margin", [None, 0.05])
def test_table_errors_equal_the_direct_errors(monkeypatch, scheme, cols, dtype, margin):
    """The certified table sums equal torch's reduction bit for bit, error by error (odd row and
    group counts); a 5% margin sends most sums to the fallback, which must agree too."""
    if margin is not None:
        monkeypatch.setattr(mse_search, "_sum_margin", lambda width: margin)
    monkeypatch.setattr(mse_search, "_TABLE_GAIN", 1e-9)
    spec = spec_of(scheme_for(scheme, "memoryless_mse"))
    params = observers.mse_params(spec.observer_kwargs)
    w = _hard_weight(37, cols, DTYPES[dtype], cols)
    lo, hi = scales._stats(w, spec, Scratch())
    factors = observers.shrink_tensor(params, w.dtype, w.device)
    direct = mse_search._errors(w, lo, hi, spec, params.norm, factors, Scratch())
    table = mse_search._pair_table(w, lo, hi, spec, Scratch())
    fallbacks, real = [], mse_search._pointwise_errors
    monkeypatch.setattr(mse_search, "_pointwise_errors", lambda *a, **k: fallbacks.append(a[0].shape) or real(*a, **k))
    in_order = mse_search._table_errors(table, spec, params.norm, factors, Scratch())
    tabled = torch.empty_like(in_order).index_copy_(1, table.order, in_order).reshape(direct.shape)
    assert torch.isinf(direct).any() and (direct == 0).any()
    assert torch.equal(raw(tabled), raw(direct)), f"{(raw(tabled) != raw(direct)).sum()} bytes differ"
    recomputed = sum(shape[0] for shape in fallbacks if shape[-1] > 1)  # table calls take [values, 1]
    assert recomputed >= int(torch.isinf(direct).sum()), "the non-finite sums must be recomputed"
    if margin is not None:
        assert recomputed > direct.numel() // 2


def test_table_gain_rule_keeps_small_weights_direct(monkeypatch):
    """Without forcing, a weight with as many distinct values as elements takes the direct path."""
    calls, real = [], mse_search._table_errors
    monkeypatch.setattr(mse_search, "_table_errors", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = spec_of(scheme_for("W4A16", "memoryless_mse"))
    w = (torch.randn(16, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.02).to(torch.bfloat16)
    observe_weight(w, spec)
    assert not calls
    big = (torch.randn(512, 1024, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    observe_weight(big, spec)
    assert calls


def test_table_splits_its_factors_to_bound_memory(monkeypatch):
    """A table over too many (qparams x values) entries evaluates half the factors at a time:
    the same bytes."""
    case = next(c for c in CASES if c.scheme == "NVFP4A16" and c.observer == "nvfp4_expanded_mse" and c.kind == "edge")
    calls = _table_calls(monkeypatch)
    monkeypatch.setattr(mse_search, "_TABLE_ENTRIES", 4096)
    assert_same(run_case(case), golden(case), f"{case.id} with small tables")
    assert len(calls) > 3, "the factor block was not split"


def test_sum_margin_encloses_any_float32_order_in_exact_arithmetic():
    """The certificate's computed ends ``fl(a * fl(1 -+ margin))`` enclose every float32 sum
    of the cell's non-negative numbers, given another float32 sum ``a``: any order lies within
    gamma(w - 1) of the exact sum, so torch's lies in [a (1 - 2 (w - 1) u), a (1 + gamma(2 (w - 1)))],
    and each float32 rounding that applies the margin moves it by at most u. Checked with
    fractions at every width up to the widest table cell (the old (2w + 4) u margin fails at 4096)."""
    from fractions import Fraction

    u = Fraction(1, 2**24)

    def gamma(n: int) -> Fraction:
        return n * u / (1 - n * u)

    for width in (1, 2, 16, 32, 128, 1000, 2048, mse_search._TABLE_MAX_WIDTH):
        m = Fraction(mse_search._sum_margin(width))
        assert (1 - m) * (1 + u) ** 2 <= 1 - 2 * (width - 1) * u, width
        assert (1 + m) * (1 - u) ** 2 >= 1 + gamma(2 * (width - 1)), width
    with pytest.raises(AssertionError, match="wider than the certified"):
        mse_search._sum_margin(mse_search._TABLE_MAX_WIDTH + 1)
