"""Lattice codebooks: the E8 lattice (nearest point), the finite 65536-point E8P codebook for
8-dim vectors (the QuIP# idea), and pyramid VQ (PVQ).

E8 (a helper, not a codec)
--------------------------
``E8(scale).nearest(x)`` returns the nearest point of ``scale * E8`` to every 8-dim row,
with the exact algorithm of Conway & Sloane ("Fast quantizing and decoding algorithms for
lattice quantizers and codes", 1982): ``E8 = D8 ∪ (D8 + ½)``; the nearest point of ``D8``
(integer vectors with even sum) is the coordinate-wise rounding, with the worst-rounded
coordinate rounded the other way when the sum is odd; the nearest point of the coset is
found the same way on ``x - ½``; the closer of the two wins. E8 is infinite, so it is not a
:class:`Codec`; the finite codec built on it is :class:`E8P`.

E8P (codec, 16 bits per 8 weights)
----------------------------------
Following the idea of QuIP# (Tseng et al. 2024, §4.2): let ``D̂8`` be the half-integer
vectors with even coordinate sum (the ``D8 + ½`` coset of E8). The codebook is::

    { σ ⊙ s + δ/4 · 1 :  s ∈ S, σ ∈ {±1}^8 with σ ⊙ s ∈ D̂8, δ ∈ {+1, -1} }

where ``S`` is a set of 256 "source" vectors of absolute values: the 227 vectors
``s ∈ {½, 3/2, 5/2, ...}^8`` with ``|s|² ≤ 10`` plus 29 of the 56 vectors with five 3/2 and
three ½ (``|s|² = 12``) — our pick: the 29 whose positions of the three ½ come first in
lexicographic order. Every sign flip changes the parity of the sum, so exactly 128 of the
256 sign patterns are allowed: 256 · 128 · 2 = 65536 distinct points (the two shifts give
coordinates in ``Z + ¼`` and ``Z - ¼``, disjoint sets).

Code layout (16 bits): ``code = (source << 8) | (sign_bits << 1) | shift_bit`` where
``sign_bits`` holds the signs of coordinates 0..6 (bit ``i`` set means coordinate ``i`` is
negative), the sign of coordinate 7 is fixed by the parity, and ``shift_bit = 1`` means
``δ = -1``. Decoded vectors are ``scale * point``; ``fit`` learns only the global ``scale``.

Exact encode without scanning 65536 points: for a shift δ and a source ``s`` the best signs
are ``sign(y)`` (``y = x/scale - δ/4``), giving ``|y|² - 2 <|y|, s> + |s|²``; if that sign
pattern has the wrong parity, the cheapest fix flips exactly one coordinate, costing
``4 min_i |y_i| s_i`` (any odd number of flips costs at least that). So the search is 2 · 256
candidates of 8 coordinates each — exact, and 256x less work than brute force.

PVQ (codec)
-----------
Pyramid VQ (Fischer 1986): the shapes are the integer vectors ``y ∈ Z^d`` with
``|y|_1 = pulses``; there are ``N(d, pulses)`` of them, counted by ``N(d, k) = N(d-1, k) +
N(d, k-1) + N(d-1, k-1)``. ``point_to_index`` / ``index_to_point`` are an exact bijection onto
``[0, N(d, pulses))`` (enumeration ordered by the first coordinate: 0, +1, -1, +2, -2, ...).
(The pulse count is called ``K`` in the PVQ literature; here ``K`` always means a codebook's
size, so it is ``pulses``. Saved configs with the old key ``"K"`` still load.)
A vector is coded as ``gain * y / |y|_2`` with codes ``(n, 2) = [shape index, gain index]``:
the shape comes from projecting ``x`` onto the pyramid (:meth:`PVQ.project`: the better of
"round, then fix the L1 norm pulse by pulse" and the CELT/Opus-style greedy pulse search); the
gain is the least-squares gain ``<x, y/|y|_2>`` quantized with ``gain_bits`` bits: index 0
means gain 0, indices ``1 .. 2^gain_bits - 1`` are log-uniform between the gain range learned
by ``fit``.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from vq.codebook.checks import check_codes, check_vectors, check_weights, require_int, require_number
from vq.codebook.protocol import Codec, register_codec

__all__ = [
    "E8",
    "E8P",
    "PVQ",
    "nearest_d8",
    "nearest_e8",
    "e8p_source_points",
    "e8p_codebook",
    "pyramid_count",
]


# ------------------------------------------------------------------------------------------
# E8 nearest point (Conway & Sloane)
# ------------------------------------------------------------------------------------------
def nearest_d8(x: Tensor) -> Tensor:
    """Nearest point of D8 = {z ∈ Z^8 : sum z even} (any dim works) to each row of x (n, d)."""
    f = torch.round(x)
    odd = (f.sum(dim=1) % 2) != 0  # (n,)
    if bool(odd.any()):
        delta = x - f  # (n, d), in [-1/2, 1/2]
        worst = delta.abs().argmax(dim=1, keepdim=True)  # (n, 1)
        dw = delta.gather(1, worst)  # (n, 1)
        step = torch.where(dw >= 0, 1.0, -1.0).to(x.dtype)  # round the other way
        f = f.scatter_add(1, worst, torch.where(odd[:, None], step, torch.zeros_like(step)))
    return f


def nearest_e8(x: Tensor) -> Tensor:
    """Nearest point of the (unscaled) E8 lattice to each row of x (n, 8)."""
    a = nearest_d8(x)  # (n, 8)
    b = nearest_d8(x - 0.5) + 0.5  # (n, 8)
    da = ((x - a) ** 2).sum(dim=1, keepdim=True)
    db = ((x - b) ** 2).sum(dim=1, keepdim=True)
    return torch.where(da <= db, a, b)


class E8:
    """The lattice ``scale * E8``; see the module docstring. Not a codec (it is infinite).

    Args:
        scale: positive float; the lattice is ``scale * E8`` (minimum distance ``scale * sqrt(2)``).
    """

    dim = 8

    def __init__(self, scale: float = 1.0):
        self.scale = require_number("scale", scale, 0.0, low_open=True)

    def nearest(self, x: Tensor) -> Tensor:
        """x (n, 8) float -> nearest points of ``scale * E8``, (n, 8), dtype of x (float64 kept,
        else float32)."""
        x = check_vectors(x, 8)
        return nearest_e8(x / self.scale) * self.scale

    def __repr__(self) -> str:
        return f"E8(scale={self.scale})"


# ------------------------------------------------------------------------------------------
# E8P: 65536-point codebook
# ------------------------------------------------------------------------------------------
_E8P_SIZE = 1 << 16


@lru_cache(maxsize=1)
def _e8p_sources() -> Tensor:
    """(256, 8) float64 absolute-value source vectors, sorted by (norm, lexicographic)."""
    halves = (0.5, 1.5, 2.5)
    small = [v for v in itertools.product(halves, repeat=8) if sum(t * t for t in v) <= 10.0]
    small.sort(key=lambda v: (sum(t * t for t in v), v))
    # norm-12 vectors: five 3/2 and three 1/2; take the 29 whose 1/2-positions come first
    extra = []
    for pos in itertools.combinations(range(8), 3):
        extra.append(tuple(0.5 if i in pos else 1.5 for i in range(8)))
    src = small + extra[:29]
    if len(small) != 227 or len(src) != 256:  # pragma: no cover - structural invariant
        raise AssertionError(f"E8P source construction broke: {len(small)} + 29 != 256")
    return torch.tensor(src, dtype=torch.float64)


def e8p_source_points() -> Tensor:
    """The 256 absolute-value source vectors of E8P, (256, 8) float64 (entries in {½, 3/2, 5/2})."""
    return _e8p_sources().clone()


def _e8p_decode_unit(codes: Tensor) -> Tensor:
    """codes (n,) int64 in [0, 65536) -> unit-scale points (n, 8) float64."""
    src = _e8p_sources().to(codes.device)
    s = src[codes >> 8]  # (n, 8)
    bits = (codes[:, None] >> (torch.arange(7, device=codes.device) + 1)) & 1  # (n, 7)
    neg = torch.zeros_like(s, dtype=torch.bool)
    neg[:, :7] = bits.bool()
    v = torch.where(neg, -s, s)
    # sign of coordinate 7 fixed by parity: the sum must be even
    odd = (v.sum(dim=1) % 2) != 0
    v[:, 7] = torch.where(odd, -v[:, 7], v[:, 7])
    delta = torch.where((codes & 1).bool(), -0.25, 0.25).to(v.dtype)  # (n,)
    return v + delta[:, None]


@lru_cache(maxsize=4)
def _e8p_table(device: torch.device = torch.device("cpu")) -> Tensor:
    """All 65536 unit-scale points in code order, (65536, 8) float64, cached per device."""
    return _e8p_decode_unit(torch.arange(_E8P_SIZE)).to(device)


def e8p_codebook() -> Tensor:
    """All 65536 unit-scale E8P points in code order, (65536, 8) float64."""
    return _e8p_table().clone()


def _e8p_search(y: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """Best point of the unshifted E8P part (σ ⊙ s, s ∈ S, even sum) for each row of y (c, 8)
    float64. Returns (score (c,), code without the shift bit (c,)); distance = |y|^2 - score.

    Parity: ``sum(σ ⊙ s) ≡ sum(s) + #negatives (mod 2)`` because every ``2 s_i`` is odd, so the
    sign pattern ``sign(y)`` is admissible for source ``s`` iff those two parities agree. The
    sources are kept grouped by the parity of ``sum(s)`` (group 0, group 1); for a row with
    ``q = #negatives mod 2`` group ``q`` needs no flip and the other group pays the cheapest
    single flip, ``4 min_i |y_i| s_i``. That penalty is evaluated only for the ``topk`` sources
    of the flip group with the best unpenalised score; rows where a source outside the top-k
    could still win are recomputed with all sources, so the result is exact.
    """
    groups = _e8p_search_tables(y.device)  # per parity group: (src (g, 8), 2 src^T, -|s|^2, ids)
    neg = y < 0  # sign(y), 0 counted as +
    a = y.abs()
    q = (neg.sum(dim=1) % 2).bool()  # (c,) parity of the number of negatives
    best_even, j_even, best_odd, j_odd, worst_kept = [], [], [], [], []
    for src, src2_t, neg_sq, ids in groups:
        sc = torch.addmm(neg_sq, a, src2_t)  # (c, g): 2 <|y|, s> - |s|^2
        b, j = sc.max(dim=1)
        best_even.append(b)
        j_even.append(ids[j])
        t = min(topk, src.shape[0])
        top_s, top_j = sc.topk(t, dim=1)  # (c, t)
        pen = (a[:, None, :] * src[top_j]).amin(dim=2)  # (c, t): cheapest single flip
        ob, oi = (top_s - 4.0 * pen).max(dim=1)
        best_odd.append(ob)
        j_odd.append(ids[top_j.gather(1, oi[:, None])[:, 0]])
        worst_kept.append(top_s[:, -1] if t < src.shape[0] else torch.full_like(ob, -math.inf))
    # group 0 is flip-free for q = 0 rows, group 1 for q = 1 rows
    even_b = torch.where(q, best_even[1], best_even[0])
    even_j = torch.where(q, j_even[1], j_even[0])
    odd_b = torch.where(q, best_odd[0], best_odd[1])
    odd_j = torch.where(q, j_odd[0], j_odd[1])
    bound = torch.where(q, worst_kept[0], worst_kept[1])
    use_odd = odd_b > even_b
    best = torch.maximum(even_b, odd_b)
    j = torch.where(use_odd, odd_j, even_j)
    src_all = _e8p_sources().to(y.device)
    flip_pos = (a * src_all[j]).argmin(dim=1)  # (c,)
    negw = neg.clone()
    rows = torch.arange(y.shape[0], device=y.device)
    negw[rows, flip_pos] ^= use_odd
    code = (j << 8) | (negw[:, :7].long() << torch.arange(1, 8, device=y.device)).sum(dim=1)
    redo = bound > best  # a flip-group source outside the top-k might beat `best`
    if bool(redo.any()):
        best[redo], code[redo] = _e8p_search(y[redo], 256)
    return best, code


@lru_cache(maxsize=4)
def _e8p_search_tables(device: torch.device) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], ...]:
    src = _e8p_sources().to(device)  # (256, 8) float64
    par = (src.sum(dim=1) % 2).long()
    out = []
    for p in (0, 1):
        ids = torch.nonzero(par == p).flatten()  # source indices of this parity group
        g = src[ids]
        out.append((g, (2.0 * g).T.contiguous(), -(g**2).sum(dim=1), ids))
    return tuple(out)


def _e8p_encode_unit(x: Tensor, chunk: int = 4096, topk: int = 8) -> Tensor:
    """Exact nearest E8P point (unit scale) for each row of x (n, 8) -> codes (n,) int64."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for lo in range(0, x.shape[0], chunk):
        xc = x[lo : lo + chunk].double()  # (c, 8)
        c = xc.shape[0]
        y = torch.cat([xc - 0.25, xc + 0.25])  # (2c, 8): shift bit 0 (δ = +1/4), shift bit 1
        score, code = _e8p_search(y, topk)
        dist = (y * y).sum(dim=1) - score  # (2c,) full distances; |y|^2 differs per shift
        out[lo : lo + chunk] = torch.where(dist[c:] < dist[:c], code[c:] | 1, code[:c])
    return out


@register_codec
class E8P(Codec):
    """Finite E8-based codebook for 8-dim vectors: 65536 points, 16-bit code (2 bits/weight).

    ``encode``: x (n, 8) -> codes (n, 1) int64 in ``[0, 65536)``, the exact nearest point of
    ``scale * E8P``; ``decode``: (n, 1) -> (n, 8) float32. ``fit(x, weights)`` learns the global
    ``scale`` (RMS-matched start, then alternating nearest-point / weighted least-squares scale,
    which never increases the weighted error). Unfitted, ``scale = 1``.
    """

    dim = 8

    def __init__(self, niter: int = 10):
        self.niter = require_int("niter", niter, 0)
        self.scale = torch.ones(1, dtype=torch.float32)

    def fit(self, x: Tensor, weights: Tensor | None = None) -> "E8P":
        """Learn the global scale from x (n, 8); weights (n,) or (n, 8), >= 0."""
        x = check_vectors(x, 8).double()
        w = check_weights(weights, x)
        w = torch.ones_like(x) if w is None else (w[:, None].expand_as(x) if w.dim() == 1 else w)
        cb_rms = float(_e8p_table().pow(2).mean().sqrt())
        x_rms = float(((w * x * x).sum() / w.sum()).sqrt())
        scale = x_rms / cb_rms if x_rms > 0 else 1.0
        for _ in range(self.niter):
            p = _e8p_table(x.device)[_e8p_encode_unit(x / scale)]  # (n, 8) unit points
            den = float((w * p * p).sum())
            new = float((w * x * p).sum()) / den if den > 0 else scale
            if not new > 0:
                break
            if abs(new - scale) <= 1e-5 * scale:  # converged
                scale = new
                break
            scale = new
        self.scale = torch.tensor([scale], dtype=torch.float32)
        return self

    def encode(self, x: Tensor) -> Tensor:
        x = check_vectors(x, 8)
        return _e8p_encode_unit(x.double() / self.scale.double().to(x.device))[:, None]

    def decode(self, codes: Tensor) -> Tensor:
        codes = check_codes(codes, 1, _E8P_SIZE)
        pts = _e8p_table(codes.device)[codes[:, 0]]  # (n, 8)
        return (pts * self.scale.double().to(codes.device)).float()

    def codebook(self) -> Tensor:
        """All scaled points in code order, (65536, 8) float32."""
        return (_e8p_table() * self.scale.double()).float()

    def bits_per_vector(self) -> float:
        return 16.0

    def config(self) -> dict[str, Any]:
        return {"niter": self.niter}

    def state_dict(self) -> dict[str, Tensor]:
        return {"scale": self.scale.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> "E8P":
        if set(state) != {"scale"}:
            raise ValueError(f"E8P state must hold exactly 'scale', got {sorted(state)}")
        s = state["scale"]
        if s.shape != (1,) or not bool(torch.isfinite(s).all()) or not float(s) > 0:
            raise ValueError(f"E8P scale must be one finite positive number, got {s}")
        self.scale = s.detach().to(torch.float32).cpu().clone()
        return self


# ------------------------------------------------------------------------------------------
# PVQ: pyramid vector quantization
# ------------------------------------------------------------------------------------------
_INT64_LIMIT = 2**62


def _pyramid_counts(d: int, k: int) -> list[list[int]]:
    """N[l][j] for l <= d, j <= k: N(l, j) = N(l-1, j) + N(l, j-1) + N(l-1, j-1), exact ints."""
    N = [[0] * (k + 1) for _ in range(d + 1)]
    N[0][0] = 1
    for l in range(1, d + 1):
        N[l][0] = 1
        for j in range(1, k + 1):
            N[l][j] = N[l - 1][j] + N[l][j - 1] + N[l - 1][j - 1]
    return N


def _pyramid_count_capped(d: int, k: int, cap: int) -> int:
    """N(d, k) for k >= 1 by the closed form sum_i 2^i C(d, i) C(k-1, i-1) (i nonzero coordinates),
    stopping as soon as the sum reaches ``cap``: at most ~64 big-int steps, no table, whatever
    the size of d and k (so a config claiming huge sizes is refused without allocating)."""
    total, c_d, c_k = 0, 1, 1  # C(d, i - 1), C(k - 1, i - 2) before step i
    for i in range(1, min(d, k) + 1):
        c_d = c_d * (d - i + 1) // i
        c_k = 1 if i == 1 else c_k * (k - i + 1) // (i - 1)
        total += (1 << i) * c_d * c_k
        if total >= cap:
            return total
    return total


# the encode/decode table P (d+1, k+1, k+2) int64 must stay below this (a bound on a config's sizes)
_TABLE_LIMIT_BYTES = 1 << 28


@lru_cache(maxsize=32)
def _pyramid_table(d: int, k: int) -> tuple[list[list[int]], Tensor, Tensor]:
    """N[l][j] = number of integer vectors of dim l with L1 norm j (Python ints), plus
    the int64 tensors N (d+1, k+1) and P (d+1, k+1, k+2): P[l, j, a] = number of vectors of dim l,
    norm j whose first coordinate has |y_0| < a (``a <= j``; larger a padded with int64 max)."""
    N = _pyramid_counts(d, k)
    big = 2**63 - 1
    P = [[[big] * (k + 2) for _ in range(k + 1)] for _ in range(d + 1)]
    for l in range(1, d + 1):
        for j in range(k + 1):
            acc = 0
            P[l][j][0] = 0
            for a in range(1, j + 1):
                acc += N[l - 1][j] if a == 1 else 2 * N[l - 1][j - a + 1]
                P[l][j][a] = acc
    return N, torch.tensor(N, dtype=torch.int64), torch.tensor(P, dtype=torch.int64)


def pyramid_count(dim: int, pulses: int) -> int:
    """Number of integer vectors in Z^dim with L1 norm exactly ``pulses`` (exact Python int)."""
    require_int("dim", dim, 1)
    require_int("pulses", pulses, 0)
    return _pyramid_counts(dim, pulses)[dim][pulses]


@register_codec
class PVQ(Codec):
    """Pyramid VQ with a scalar gain: ``xhat = gain * y / |y|_2`` with ``y ∈ Z^dim, |y|_1 = pulses``.

    Args:
        dim: vector length (>= 1).
        pulses: number of pulses, the pyramid's L1 norm (>= 1); ``N(dim, pulses)`` must fit in
            int64.
        gain_bits: bits of the gain index (1..16); index 0 is gain 0, the rest are log-uniform
            in ``[gain_min, gain_max]`` learned by ``fit``.

    ``encode``: x (n, dim) -> codes (n, 2) int64 ``[shape index, gain index]``;
    ``decode``: (n, 2) -> (n, dim) float32. Code bits: ``ceil(log2 N(dim, pulses)) + gain_bits``
    (fixed-width fields).
    """

    def __init__(self, dim: int, pulses: int, gain_bits: int = 8):
        require_int("dim", dim, 1)
        require_int("pulses", pulses, 1)
        require_int("gain_bits", gain_bits, 1, 16)
        count = _pyramid_count_capped(dim, pulses, _INT64_LIMIT)
        if count >= _INT64_LIMIT:
            raise ValueError(f"N(dim={dim}, pulses={pulses}) >= {count} shapes does not fit an int64 index")
        table = (dim + 1) * (pulses + 1) * (pulses + 2) * 8
        if table > _TABLE_LIMIT_BYTES:
            raise ValueError(f"PVQ(dim={dim}, pulses={pulses}) needs a {table / 2**30:.1f} GiB enumeration "
                             f"table; the limit is {_TABLE_LIMIT_BYTES / 2**30:.2f} GiB (fewer pulses or a smaller dim)")
        self.dim, self.pulses, self.gain_bits = dim, pulses, gain_bits
        self.num_shapes = count
        self.gain_range = torch.zeros(2, dtype=torch.float32)  # [gain_min, gain_max]; unfitted

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PVQ":
        """Also reads configs saved before the pulse count was renamed (key ``"K"``)."""
        if "K" in config and "pulses" not in config:
            config = {("pulses" if key == "K" else key): v for key, v in config.items()}
        return super().from_config(config)

    # -- exact enumeration -------------------------------------------------------------------
    def point_to_index(self, y: Tensor) -> Tensor:
        """Pyramid points y (n, dim) integer-valued with ``|y|_1 = pulses`` -> indices (n,) int64."""
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() != 2 or y.shape[1] != self.dim:
            raise ValueError(f"y must have shape (n, {self.dim}), got {tuple(y.shape)}")
        if y.dtype.is_floating_point:
            if not bool(torch.isfinite(y).all()) or not bool((y == torch.round(y)).all()):
                raise ValueError("y must hold integer values")
        y = y.long()
        if bool((y.abs().sum(dim=1) != self.pulses).any()):
            raise ValueError(f"every row of y must have L1 norm exactly pulses={self.pulses}")
        _, Nt, Pt = _pyramid_table(self.dim, self.pulses)
        Nt, Pt = Nt.to(y.device), Pt.to(y.device)
        n = y.shape[0]
        idx = torch.zeros(n, dtype=torch.int64, device=y.device)
        rem = torch.full((n,), self.pulses, dtype=torch.int64, device=y.device)
        for i in range(self.dim):
            l = self.dim - i
            a = y[:, i].abs()
            idx += Pt[l, rem, a]
            idx += torch.where(y[:, i] < 0, Nt[l - 1, rem - a], torch.zeros_like(a))
            rem = rem - a
        return idx

    def index_to_point(self, index: Tensor) -> Tensor:
        """Indices (n,) int in ``[0, N(dim, pulses))`` -> pyramid points (n, dim) int64."""
        if isinstance(index, Tensor) and index.dim() == 1:
            index = index[:, None]  # (n, 1)
        idx = check_codes(index, 1, self.num_shapes, name="index")[:, 0].clone()
        _, Nt, Pt = _pyramid_table(self.dim, self.pulses)
        Nt, Pt = Nt.to(idx.device), Pt.to(idx.device)
        n = idx.shape[0]
        y = torch.zeros(n, self.dim, dtype=torch.int64, device=idx.device)
        rem = torch.full((n,), self.pulses, dtype=torch.int64, device=idx.device)
        for i in range(self.dim):
            l = self.dim - i
            row = Pt[l, rem, : self.pulses + 1]  # (n, pulses+1); entries with a > rem are int64 max
            a = (row <= idx[:, None]).sum(dim=1) - 1  # largest a with P[a] <= idx
            idx = idx - row.gather(1, a[:, None])[:, 0]
            npos = Nt[l - 1, rem - a]
            neg = (a > 0) & (idx >= npos)
            idx = torch.where(neg, idx - npos, idx)
            y[:, i] = torch.where(neg, -a, a)
            rem = rem - a
        return y

    def project(self, x: Tensor) -> Tensor:
        """Project x (n, dim) onto the pyramid: the shape ``y`` (``|y|_1 = pulses``) whose direction
        should best match x. Two candidates, the better (larger ``<|x|, |y|>^2 / |y|^2``) kept
        per row:

        * rounding: scale |x| to L1 norm ``pulses``, round, then add/remove single pulses where the
          rounding erred most (at most ``dim/2`` fixes, one per coordinate);
        * greedy (as in CELT/Opus PVQ search): floor the scaled |x|, then add the missing pulses
          one at a time where they raise the correlation ``<|x|, y> / |y|_2`` most.

        Signs follow x (0 counts as +). A zero row maps to ``pulses * e_0``; exact pyramid points
        (and their positive multiples) map to themselves. Returns (n, dim) int64.
        """
        x = check_vectors(x, self.dim).double()
        ax = x.abs()
        l1 = ax.sum(dim=1, keepdim=True)  # (n, 1)
        zero = l1[:, 0] == 0
        t = self.pulses * ax / torch.where(zero[:, None], torch.ones_like(l1), l1)  # target |y|
        t[zero, 0] = self.pulses
        ax = torch.where(zero[:, None], t, ax)
        rows = torch.arange(x.shape[0], device=x.device)
        # candidate 1: round, then fix the L1 norm
        a = torch.round(t)
        deficit = (self.pulses - a.sum(dim=1)).long()  # (n,), |deficit| <= dim/2
        r = t - a  # > 0: rounded down; < 0: rounded up
        order_up = torch.argsort(r, dim=1, descending=True)  # (n, dim)
        order_dn = torch.argsort(r, dim=1)
        rank = torch.arange(self.dim, device=x.device)[None, :]  # (1, dim)
        a = a + torch.zeros_like(a).scatter_(1, order_up, (rank < deficit[:, None]).to(a.dtype))
        a = a - torch.zeros_like(a).scatter_(1, order_dn, (rank < (-deficit)[:, None]).to(a.dtype))
        # candidate 2: floor, then greedy pulses maximising (xy + |x_i|)^2 / (yy + 2 y_i + 1)
        b = torch.floor(t)
        missing = (self.pulses - b.sum(dim=1)).long()  # (n,), in [0, dim)
        xy, yy = (ax * b).sum(dim=1), (b * b).sum(dim=1)
        for _ in range(int(missing.max()) if missing.numel() else 0):
            i = ((xy[:, None] + ax) ** 2 / (yy[:, None] + 2 * b + 1)).argmax(dim=1)  # (n,)
            act = (missing > 0).to(b.dtype)
            bi = b[rows, i]
            xy, yy = xy + act * ax[rows, i], yy + act * (2 * bi + 1)
            b[rows, i] = bi + act
            missing -= act.long()

        def score(y: Tensor) -> Tensor:  # cos^2 between |x| and y, up to the factor |x|^2
            return (ax * y).sum(dim=1) ** 2 / (y * y).sum(dim=1)

        best = torch.where((score(b) > score(a))[:, None], b, a)
        return (best * torch.where(x < 0, -1.0, 1.0)).long()

    # -- gain quantizer ------------------------------------------------------------------------
    def _gain_levels(self) -> Tensor:
        lo, hi = (float(v) for v in self.gain_range)
        m = (1 << self.gain_bits) - 1  # non-zero levels
        if m == 1 or hi <= lo:
            lv = torch.full((m,), hi, dtype=torch.float64)
        else:
            lv = torch.exp(torch.linspace(math.log(lo), math.log(hi), m, dtype=torch.float64))
        return torch.cat([torch.zeros(1, dtype=torch.float64), lv])  # (2^bits,)

    @staticmethod
    def _ls_gain(x: Tensor, y: Tensor) -> Tensor:
        u = y.double() / y.double().norm(dim=1, keepdim=True)
        return (x.double() * u).sum(dim=1).clamp_min(0.0)  # (n,)

    @property
    def is_fitted(self) -> bool:
        return float(self.gain_range[1]) > 0

    def fit(self, x: Tensor, weights: Tensor | None = None) -> "PVQ":
        """Learn the gain range from x (n, dim): min and max of the least-squares gains of the
        projected shapes over rows with positive weight (weights (n,) or (n, dim))."""
        x = check_vectors(x, self.dim)
        w = check_weights(weights, x)
        g = self._ls_gain(x, self.project(x))
        keep = g > 0
        if w is not None:
            keep &= (w if w.dim() == 1 else w.sum(dim=1)) > 0
        if not bool(keep.any()):
            raise ValueError("x has no row with a positive gain (all zero?) to fit the gain range")
        g = g[keep]
        self.gain_range = torch.tensor([float(g.min()), float(g.max())], dtype=torch.float32)
        return self

    def encode(self, x: Tensor) -> Tensor:
        self._require_fitted()
        x = check_vectors(x, self.dim)
        y = self.project(x)
        g = self._ls_gain(x, y)  # (n,)
        lv = self._gain_levels().to(x.device)[1:]  # (m,) non-zero levels, increasing
        loglv = torch.log(lv)
        logg = torch.log(g.clamp_min(1e-300))
        # nearest non-zero level in the log domain ...
        hi = torch.searchsorted(loglv, logg).clamp(max=len(lv) - 1)  # first level >= g
        lo = (hi - 1).clamp(min=0)
        j = torch.where((logg - loglv[lo]).abs() <= (loglv[hi] - logg).abs(), lo, hi)
        # ... unless gain 0 (index 0) is closer in the linear domain
        gi = torch.where(g < (g - lv[j]).abs(), torch.zeros_like(j), j + 1)
        return torch.stack([self.point_to_index(y), gi], dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        self._require_fitted()
        codes = check_codes(codes, 2, [self.num_shapes, 1 << self.gain_bits])
        y = self.index_to_point(codes[:, 0]).double()
        g = self._gain_levels().to(codes.device)[codes[:, 1]]
        return (g[:, None] * y / y.norm(dim=1, keepdim=True)).float()

    def bits_per_vector(self) -> float:
        return float(math.ceil(math.log2(self.num_shapes)) + self.gain_bits) if self.num_shapes > 1 else float(self.gain_bits)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "pulses": self.pulses, "gain_bits": self.gain_bits}

    def state_dict(self) -> dict[str, Tensor]:
        return {"gain_range": self.gain_range.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> "PVQ":
        if set(state) != {"gain_range"}:
            raise ValueError(f"PVQ state must hold exactly 'gain_range', got {sorted(state)}")
        g = state["gain_range"]
        if g.shape != (2,) or not bool(torch.isfinite(g).all()) or bool((g < 0).any()) or float(g[0]) > float(g[1]):
            raise ValueError(f"PVQ gain_range must be [min, max] with 0 <= min <= max, got {g}")
        self.gain_range = g.detach().to(torch.float32).cpu().clone()
        return self
