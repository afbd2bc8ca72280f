"""The peer's float64 Hadamard products, byte for byte, at a fast Walsh-Hadamard transform's cost.

llm-compressor's ``SpinQuantConverter`` rotates a 16-bit weight as ``(w.double() @ R).to(dtype)``:
a dense dgemm, ``2n`` flops per element for an ``n``-wide rotation. Every Hadamard matrix
compressed-tensors builds (Sylvester's, or its random one) is ``R = c * diag(Q) * T^T`` with
``c = 1 / fl(sqrt(n))`` the float64 entry size, ``Q`` signs, and ``T = A (x) H_m``: a small
+-1 matrix ``A`` (K x K; Sylvester: K = 1) Kronecker Sylvester's ``H_m``, ``m = n / K`` a power
of two. So ``w @ R = c * S`` with the integer-signed sums ``S = T (w * Q)``, which butterflies
give in ``log2 m`` vectorised add/sub passes (plus one small K x K product). :meth:`of` finds
``A`` and ``Q`` from the peer's own matrix and checks ``R == c * diag(Q) * T^T`` entry by entry,
so the structure is proven for each matrix, not assumed.

Why the bytes are the peer's (per output element, ``b`` the vector's entries, ``A_v = sum |w|``):

1. **Exact sums.** A 16-bit float with ``p`` mantissa bits is an integer multiple of
   ``q = 2^(e - 1 - p)`` where ``2^(e - 1) <= min |w| (nonzero)``; every partial sum of the
   transform is a signed sum of distinct entries, so an integer multiple of ``q`` bounded by
   ``A_v``. If ``A_v <= 2^52 q`` all of them are float64 numbers: ``S`` is exact (whatever the
   order). Otherwise the transform's error is at most ``gamma_L * A_v`` with ``L`` the depth of
   its sum tree (``b_inner + K + log2 n``, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53``).
2. **Where the peer's dgemm lands.** Any float64 evaluation of ``sum_k w_k * R_kj`` (any order,
   blocking, FMA or not, even wider accumulators rounded once at the end) lies within
   ``gamma_{n+1} * sum_k |w_k R_kj| = gamma_{n+1} * c * A_v`` of the exact ``V = c * S``
   (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1: the
   ``gamma_n`` dot-product bound, plus one rounding ``u |V| <= u c A_v``).
3. **4^k widths.** ``c`` is a power of two, so every product ``w_k * c`` and, with exact sums,
   every partial sum of the peer's dgemm is exact: the peer computes ``c * S`` exactly, which is
   ``fl(c * S)`` here. Nothing to certify.
4. **Other widths (2^odd, random Hadamard).** ``m^ = fl(c * S^)`` is within
   ``u |m^| + c * gamma_L * A_v`` (0 when exact) of ``V``, so the peer's value lies in
   ``[m^ - M, m^ + M]`` with ``M = c A_v (gamma_{n+1} + gamma_L) + u |m^|``. Here ``M`` is
   computed with a factor 2 (it covers ``A_v``'s own float64 rounding and the few roundings of
   ``M``) and both ends are stepped one float64 outward (``nextafter``), so the interval holds
   the peer's value rigorously. Rounding to the output dtype (torch's ``.to``, the peer's own op)
   is monotone: if both ends round to the same nonzero 16-bit value, so does the peer's.
5. **Zeros and non-finite values.** An exact zero sum is ``+0`` in round-to-nearest unless every
   summand is ``-0``: a vector with a nonzero entry gives ``+0`` (made so here by ``+ 0.0``); an
   all-zero vector gives ``+0`` only without ``-0`` entries and when every column of ``R`` has a
   positive entry (checked in :meth:`of`). A zero candidate of case 4 is never certified, nor is
   a vector with ``inf`` / ``nan``.

Elements not certified are left to the caller, who recomputes the **whole tensor** with the
peer's dgemm: MKL's bytes for a row of a dgemm change with the number of rows in the call and
with the thread count (measured), so a row recomputed on its own would not be the peer's.
Certified elements, on the other hand, are the peer's value under *any* BLAS, thread count or
summation order. Float32 weights (24-bit mantissas) would rarely certify: the caller keeps the
dgemm for them. Torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["FAST_DTYPES", "FastHadamard", "Rotated"]

FAST_DTYPES = {torch.bfloat16: 7, torch.float16: 10}  # dtype -> explicit mantissa bits
_U = 2.0 ** -53
_CHUNK = 1 << 17  # float64 elements per working chunk: the transform's passes stay in cache
_FACTOR_BITS = 6  # Sylvester factors of at most 2^6: H_2048 = H_32 (x) H_64, two small products
_MAX_OUTER = 256  # compressed-tensors' largest known Hadamard order; a larger dense outer saves nothing


def _gamma(k: int) -> float:
    return k * _U / (1 - k * _U)


def _sylvester(size: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def _sylvester_factors(m: int) -> list[torch.Tensor]:
    """``H_m`` as Sylvester factors of at most ``2^_FACTOR_BITS`` (``H_2048 = H_32 (x) H_64``): a few
    small dense +-1 products, which beat ``log2 m`` butterfly passes over memory."""
    bits = m.bit_length() - 1
    parts = -(-bits // _FACTOR_BITS)
    return [_sylvester(1 << (bits * (i + 1) // parts - bits * i // parts)) for i in range(parts)]


@dataclass
class Rotated:
    """A fast rotation's result: ``tensor``, or ``None`` when a chunk had ``uncertified`` > 0 elements
    not certified (then the dgemm redoes the tensor; the chunks after it were not looked at)."""

    tensor: torch.Tensor | None
    elements: int
    uncertified: int


@dataclass(frozen=True)
class FastHadamard:
    """``x @ R`` for one Hadamard ``R = c * diag(signs) * (outer (x) H_m)^T``, certified as the peer's.

    Build it with :meth:`of` from the peer's float64 matrix. ``cols`` / ``rows`` rotate a
    16-bit tensor as ``rotation.py``'s ``_cols`` / ``_rows`` do (block-diagonal when the
    dimension holds several blocks), rounded back to its dtype.
    """

    n: int
    c: float
    signs: torch.Tensor | None
    factors: tuple[torch.Tensor, ...]  # T = factors[0] (x) factors[1] (x) ..., the highest index first
    columns_positive: bool

    @property
    def exact_scale(self) -> bool:
        """``c`` is a power of two (n = 4^k): exact sums are the peer's values exactly."""
        return self.c == 2.0 ** round(math.log2(self.c))

    @classmethod
    def of(cls, rotation: torch.Tensor) -> FastHadamard | None:
        """The fast form of a float64 Hadamard matrix, or ``None`` when it has none (then: the dgemm)."""
        n = rotation.shape[0]
        if rotation.dtype != torch.float64 or rotation.ndim != 2 or rotation.shape[1] != n or n < 2:
            return None
        c = abs(rotation[0, 0].item())
        if c == 0 or not bool((rotation.abs() == c).all()):
            return None
        pm = torch.sign(rotation)  # the +-1 pattern: R == c * pm exactly
        columns_positive = bool((pm > 0).any(0).all())
        m = n & -n  # the largest power of two dividing n; smaller ones move work into the dense outer
        while m >= 1 and n // m <= _MAX_OUTER:
            fast = cls._try(pm, c, m, columns_positive)
            if fast is not None:
                return fast
            m //= 2
        return None

    @classmethod
    def _try(cls, pm: torch.Tensor, c: float, m: int, columns_positive: bool) -> FastHadamard | None:
        """``pm == diag(Q) (A (x) H_m)^T`` with ``A = pm[::m, ::m]^T``, checked for every entry."""
        n = pm.shape[0]
        outer = [pm[::m, ::m].T.contiguous()] if m < n else []
        plain = cls(n, c, None, tuple(outer + _sylvester_factors(m)), columns_positive)
        signs = torch.empty(n, dtype=torch.float64)
        step = max(1, _CHUNK // n)
        for first in range(0, n, step):  # rows T(e_i) of T^T, a chunk at a time (n x n at most once)
            last = min(n, first + step)
            basis = torch.zeros(last - first, n, 1, dtype=torch.float64)
            basis[torch.arange(last - first), torch.arange(first, last), 0] = 1.0
            rows = plain._transform(basis)[:, :, 0]  # the contiguous path (cols) ...
            lanes = plain._transform(basis.expand(-1, -1, 2).contiguous())  # ... and the strided one (rows)
            sign = pm[first:last, 0] * rows[:, 0]
            want = sign[:, None] * rows
            if not bool((pm[first:last] == want).all() and (lanes == rows[:, :, None]).all()):
                return None
            signs[first:last] = sign
        return cls(n, c, None if bool((signs == 1).all()) else signs, plain.factors, columns_positive)

    # ------------------------------------------------------------------ the transform
    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """``S = T (x * signs)`` along dimension 1 of a float64 ``(B, n, J)`` tensor."""
        batch, n, lanes = x.shape
        if self.signs is not None:
            x = x * self.signs.view(1, n, 1)
        before, after = batch, n * lanes
        for factor in self.factors:
            size = factor.shape[0]
            after //= size
            if after == 1:  # the contiguous last factor: one right product (Sylvester factors are symmetric)
                x = x.reshape(-1, size) @ factor.T
            else:
                x = factor @ x.reshape(before, size, after)
            before *= size
        return x.reshape(batch, n, lanes)

    def _depth(self) -> int:
        """The transform's sum-tree depth (``L`` in the module's bound): the factors' sizes."""
        return sum(factor.shape[0] for factor in self.factors)

    # ------------------------------------------------------------------ certified rotation
    def cols(self, tensor: torch.Tensor) -> Rotated:
        """``_cols``: the last dimension in blocks of ``n``."""
        return self._rotate(tensor.reshape(-1, self.n, 1), tensor.shape)

    def rows(self, tensor: torch.Tensor) -> Rotated:
        """``_rows``: the second-to-last dimension in blocks of ``n``."""
        return self._rotate(tensor.reshape(-1, self.n, tensor.shape[-1]), tensor.shape)

    def _rotate(self, vectors: torch.Tensor, shape: torch.Size) -> Rotated:
        """Chunk by chunk; the first chunk with an element not certified ends it (the caller's dgemm redoes all)."""
        out = torch.empty(vectors.shape, dtype=vectors.dtype)
        batch, _, lanes = vectors.shape
        width = min(lanes, max(1, _CHUNK // self.n))
        rows = max(1, _CHUNK // (self.n * width))
        for j in range(0, lanes, width):
            for b in range(0, batch, rows):
                rounded, ok = self._certified(vectors[b:b + rows, :, j:j + width])
                if ok is not None:
                    return Rotated(None, out.numel(), int(ok.numel() - ok.sum()))
                out[b:b + rows, :, j:j + width] = rounded
        return Rotated(out.view(shape), out.numel(), 0)

    def _certified(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk rotated and rounded to its dtype, and which elements are certified (``None``: all)."""
        dtype = chunk.dtype
        x = chunk.to(torch.float64)
        total = x.abs().sum(1, keepdim=True)  # A_v
        exact = total <= self._quantum(chunk) * 2.0 ** 52
        value = self._transform(x).mul_(self.c).add_(0.0)  # + 0.0: an exact zero sum is +0, as the peer's
        rounded = value.to(dtype)
        zero = total == 0
        if self.exact_scale and bool(exact.all()) and not bool(zero.any()):
            return rounded, None  # 4^k, every sum exact (finite: inf/nan fail ``exact``)
        ok = exact.expand_as(value) if self.exact_scale else self._interval(value, total, exact, dtype)
        if self.exact_scale and not bool(exact.all()):
            ok = ok | self._interval(value, total, exact, dtype)
        ok = ok & torch.isfinite(total)
        if bool(zero.any()):  # all-zero vectors: +0 unless a -0 entry could make every summand -0
            negative_zero = ((x == 0) & torch.signbit(x)).any(1, keepdim=True)
            ok = torch.where(zero, ~negative_zero & self.columns_positive, ok)
        return rounded, None if bool(ok.all()) else ok

    @staticmethod
    def _quantum(chunk: torch.Tensor) -> torch.Tensor:
        """Per vector, a power of two ``q`` that every entry is an integer multiple of (from the bits).

        A 16-bit float with biased exponent field ``E`` (``p`` mantissa bits, bias ``b``) is a
        multiple of ``2^(max(E, 1) - b - p)``; the smallest ``E`` over the nonzero entries gives
        the vector's ``q`` (an all-zero vector gets the largest, harmlessly: its sums are 0).
        """
        bits = FAST_DTYPES[chunk.dtype]
        shift, bias = bits, (127 if chunk.dtype == torch.bfloat16 else 15)
        raw = chunk.view(torch.int16)
        field = (raw & 0x7FFF) >> shift
        smallest = torch.where(raw & 0x7FFF != 0, field, 0x7FFF >> shift).amin(1, keepdim=True).clamp_(min=1)
        return ((smallest.to(torch.int64) - bias - bits + 1023) << 52).view(torch.float64)  # 2^(E - b - p), exactly

    def _interval(self, value: torch.Tensor, total: torch.Tensor, exact: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
        """Elements whose whole interval of possible peer values rounds to one nonzero value.

        Per vector ``M = c A_v (3 gamma_{n+1} + 3 gamma_L + 5u)`` (``gamma_L`` only for inexact
        sums): since ``|m^| <= c A_v (1 + gamma_L)(1 + u)``, it is at least twice the true bound
        ``c A_v (gamma_{n+1} + gamma_L) + u |m^|`` plus the rounding of ``m^ -+ M`` and of ``M``
        itself, so the computed ends hold every value the peer's dgemm can produce.
        """
        peer = 3 * _gamma(self.n + 1) + 5 * _U
        coefficient = torch.where(exact, peer, peer + 3 * _gamma(self._depth()))
        margin = (total * self.c) * coefficient
        low, high = (value - margin).to(dtype), (value + margin).to(dtype)
        return (low.view(torch.int16) == high.view(torch.int16)) & (low != 0)
