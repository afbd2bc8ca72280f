"""The peer's float64 Hadamard products, byte for byte, without its dense dgemm.

llm-compressor's ``SpinQuantConverter`` rotates a 16-bit weight as ``(w.double() @ R).to(dtype)``:
a dense dgemm, ``2n`` flops per element for an ``n``-wide rotation. Every Hadamard matrix
compressed-tensors builds (Sylvester's, or its random one) is ``R = c * diag(Q) * T^T`` with
``c = 1 / fl(sqrt(n))`` the float64 entry size, ``Q`` signs, and ``T = A (x) H_m``: a small +-1
matrix ``A`` (K x K, K <= 256; Sylvester: none) Kronecker Sylvester's ``H_m``, ``m = n / K`` a
power of two. So ``w @ R = c * S`` with the signed sums ``S = T (w * Q)``, and ``T`` is a chain
of small dense +-1 products (``H_2048 = H_32 (x) H_64``: 192 flops per element, not 4096).
:meth:`of` finds ``A`` and ``Q`` in the peer's own matrix and checks ``R == c * diag(Q) * T^T``
entry by entry through the very code that rotates (both memory layouts), so the structure is
proven for each matrix, not assumed.

Why the bytes are the peer's (per vector: its ``n`` entries ``w``, ``A_v = sum |w|``,
``u = 2^-53``, ``gamma_k = k u / (1 - k u)``):

1. **Exact sums.** A 16-bit float with exponent field ``E`` and ``p`` mantissa bits is an
   integer multiple of ``2^(max(E, 1) - bias - p)``; so every entry of the vector is a multiple
   of ``q``, the power of two given by its smallest nonzero entry's ``E``. Every partial sum of
   ``T``'s products is a signed sum of distinct entries: a multiple of ``q`` no larger than
   ``A_v``. If ``A_v <= 2^52 q`` (computed ``A_v``; the slack bit covers its rounding) all of them
   are float64 numbers and ``S`` is exact, in whatever order BLAS adds. Otherwise ``S^``'s error
   is at most ``gamma_L A_v``, ``L`` the sum of the factors' sizes (the depth of its sum tree).
2. **Where the peer's dgemm lands.** Any float64 evaluation of ``sum_k w_k R_kj`` (any order or
   blocking, FMA or not, wider accumulators rounded once at the end) is within
   ``gamma_{n+1} sum_k |w_k R_kj| = gamma_{n+1} c A_v`` of the exact ``V = c S`` (Higham,
   *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1: ``gamma_n`` for a
   length-n dot product; the extra ``u`` covers a final rounding of a wider accumulator).
3. **4^k widths.** ``c`` is a power of two, so with exact sums every product ``w_k c`` and every
   partial sum of the peer's dgemm is exact too: the peer's value is ``c S``, which is ``fl(c S)``
   here, in every order. Nothing to bound; midpoints round as the peer's because they are its value.
4. **Other widths (2^odd, random Hadamard).** ``m^ = fl(c S^)`` is within ``u |m^| + c gamma_L A_v``
   (``gamma_L`` only for inexact sums) of ``V``, so the peer's value is within
   ``c A_v (gamma_{n+1} + gamma_L) + u |m^|`` of ``m^``. :meth:`FastHadamard._interval` widens
   this to ``M = c A_v (3 gamma_{n+1} + 3 gamma_L + 5u)`` (``|m^| <= c A_v (1 + gamma_L)(1 + u)``),
   at least twice the bound plus every rounding of ``M`` and of ``m^ -+ M``: the computed ends
   hold every value the peer's dgemm can produce. Rounding to the output dtype is torch's
   ``.to`` (the peer's own op; float64 -> bf16 rounds through float32, twice), a composition of
   round-to-nearest steps and so monotone: if both ends round to the same nonzero 16-bit value,
   the peer's value rounds to it too.
5. **Zeros and non-finite values.** An exact zero sum is ``+0`` in round-to-nearest unless every
   summand is ``-0``: a vector with a nonzero entry gives ``+0`` (made so here by ``+ 0.0``); an
   all-zero vector gives ``+0`` only without ``-0`` entries and when every column of ``R`` has a
   positive entry (checked in :meth:`of`). A zero candidate of case 4 is never certified (an
   exact zero sum there is the commonest failure: the peer's rounded products leave a tiny value
   of either sign), nor is a vector with ``inf`` / ``nan``.

Elements not certified are left to the caller, who redoes the **whole tensor** with the peer's
dgemm: MKL's bytes for one row of a dgemm change with the number of rows in the call and with
the thread count (measured), so a row redone on its own would not be the peer's. Certified
elements, on the other hand, are the peer's value under *any* BLAS, thread count or summation
order. Float32 weights (24-bit mantissas) would seldom certify: the caller keeps the dgemm for
them (``FAST_DTYPES``). Torch only.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass

import torch

__all__ = ["FAST_DTYPES", "FAST_MIN_WIDTH", "FastHadamard", "FastRotations", "Rotated"]

FAST_DTYPES = {torch.bfloat16: 7, torch.float16: 10}  # dtype -> explicit mantissa bits
FAST_MIN_WIDTH = 512  # below it the dgemm (2n flops per element) is as cheap, and exact zero sums,
# which never certify at 2^odd widths, are common
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
        m = n & -n  # the largest power of two dividing n; smaller ones move work into the dense outer
        while c > 0 and m >= 1 and n // m <= _MAX_OUTER:
            fast = cls._try(rotation, c, m)
            if fast is not None:
                return fast
            m //= 2
        return None

    @classmethod
    def _try(cls, rotation: torch.Tensor, c: float, m: int) -> FastHadamard | None:
        """``R == c diag(Q) (A (x) H_m)^T`` with ``A = sign(R[::m, ::m])^T``, checked for every entry,
        a chunk of rows at a time (no n x n temporary beside the peer's own matrix)."""
        n = rotation.shape[0]
        outer = [torch.sign(rotation[::m, ::m]).T.contiguous()] if m < n else []
        plain = cls(n, c, None, tuple(outer + _sylvester_factors(m)), True)
        signs = torch.empty(n, dtype=torch.float64)
        positive = torch.zeros(n, dtype=torch.bool)
        step = max(1, _CHUNK // n)
        for first in range(0, n, step):  # rows T(e_i) of T^T
            last = min(n, first + step)
            basis = torch.zeros(last - first, n, 1, dtype=torch.float64)
            basis[torch.arange(last - first), torch.arange(first, last), 0] = 1.0
            rows = plain._transform(basis)[:, :, 0]  # the contiguous path (cols) ...
            lanes = plain._transform(basis.expand(-1, -1, 2).contiguous())  # ... and the strided one (rows)
            sign = torch.sign(rotation[first:last, 0]) * rows[:, 0]
            want = sign[:, None] * rows  # +-1: c * want is exact
            if not bool((rotation[first:last] == c * want).all() and (lanes == rows[:, :, None]).all()):
                return None
            signs[first:last] = sign
            positive |= (want > 0).any(0)
        return cls(n, c, None if bool((signs == 1).all()) else signs, plain.factors, bool(positive.all()))

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


class FastRotations:
    """A converter's fast forms (one per rotation matrix, found at first use) and path counts.

    ``stats``: rotated elements per path: ``fast`` (certified), ``fallback`` (redone by the dgemm
    after a failed certificate; ``uncertified`` of them failed it), ``dense`` (no fast form: not
    16-bit, narrower than ``min_width``, or a matrix with none). Thread-safe: workers share it.
    """

    def __init__(self, min_width: int = FAST_MIN_WIDTH):
        self.min_width = min_width
        self.stats: Counter[str] = Counter()
        self._forms: dict[int, tuple[torch.Tensor, FastHadamard | None]] = {}
        self._lock = threading.Lock()

    def rotate(self, tensor: torch.Tensor, rotation: torch.Tensor, *, rows: bool) -> torch.Tensor | None:
        """``_rows`` / ``_cols`` of ``tensor`` by ``rotation`` with the dgemm's bytes; ``None``: run the dgemm."""
        usable = tensor.dtype in FAST_DTYPES and tensor.device.type == "cpu" and rotation.shape[0] >= self.min_width
        fast = self._form(rotation) if usable else None
        if fast is None:
            if tensor.device.type != "meta":  # (planning runs the chain on meta tensors: no arithmetic)
                self._count("dense", tensor.numel(), 0)
            return None
        done = fast.rows(tensor) if rows else fast.cols(tensor)
        self._count("fast" if done.tensor is not None else "fallback", done.elements, done.uncertified)
        return done.tensor

    def _form(self, rotation: torch.Tensor) -> FastHadamard | None:
        known = self._forms.get(id(rotation))
        if known is None:  # the entry holds its matrix, so its id is not reused while stored
            known = (rotation, FastHadamard.of(rotation))
            with self._lock:
                self._forms[id(rotation)] = known
        return known[1]

    def _count(self, path: str, elements: int, uncertified: int) -> None:
        with self._lock:
            self.stats[path] += elements
            self.stats["uncertified"] += uncertified
