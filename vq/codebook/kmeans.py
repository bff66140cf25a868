"""k-means: the codebook learner under every family, and the standalone nearest-centroid search.

Objective (Lloyd 1982), with optional importance weights ``w``::

    min_C  sum_i sum_j w_ij (x_ij - C[a_i]_j)^2,     a_i = argmin_c sum_j w_ij (x_ij - c_j)^2

``w`` is per-sample ``(n,)`` (every coordinate of row i weighs ``w_i``) or per-coordinate
``(n, d)`` (how Hessian diagonals enter weight compression). With per-coordinate weights the
assignment uses the weighted distance and the update is the per-coordinate weighted mean,
which is the exact minimiser of the objective for fixed assignments.

Backends: ``faiss`` (CPU or GPU build, unweighted or per-sample weights) and ``torch`` (any
device, all weightings). ``auto`` picks faiss when it is installed, the data is on the CPU and
the weights are not per-coordinate; torch otherwise. On the CPU the nearest-centroid search
runs a fused distance+argmin kernel (``vq/codebook/_native.py``) when a C compiler is present;
otherwise (and on GPU) distances are computed in chunks whose ``rows x k`` block stays under
``chunk_bytes``. Either way memory is bounded for any ``n``.

Options of the torch backend for clients that refine a codebook they already hold (the tokenizer
layers' ``refine_codebook``): a warm start (``init`` = the (k, d) starting centroids, or ``None``
to continue from the loaded / fitted ones), a reduction hook (``all_reduce``: data-parallel ranks
sum each iteration's statistics, so every rank computes the same centroids from its own shard),
ELBG-style cell splitting (``split`` / ``split_share``), what happens to empty clusters
(``empty``) and spherical updates (``spherical``). See :class:`KMeans`.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vq.codebook import _native
from vq.codebook.checks import check_codes, check_vectors, check_weights, require_int
from vq.codebook.protocol import Codec, register_codec

__all__ = ["KMeans", "assign", "kmeans_plusplus"]

log = logging.getLogger(__name__)

#: distance block budget of the pure-torch path: rows_per_chunk * k * 4 bytes (about an L3 slice).
#: Not tuned: a one-off sweep of 256 KiB - 32 MiB on the loaded 2-core sandbox was within its noise.
DEFAULT_CHUNK_BYTES = 8 * 2**20
_INITS = ("k-means++", "random")
_BACKENDS = ("auto", "faiss", "torch")
_EMPTY = ("reseed", "keep")


def _faiss():
    try:
        import faiss  # noqa: PLC0415 — optional dependency
    except ImportError:
        return None
    return faiss


def _rows_per_chunk(k: int, width: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (4 * max(k, width)))


def _distance_block(xb: Tensor, wb: Tensor | None, c: Tensor, c_sq: Tensor) -> Tensor:
    """Squared (weighted) distances without the per-row constant: (rows, k).

    Unweighted:        ||c||^2 - 2 x.c                      (add ||x||^2 for the true value)
    Per-coordinate w:  w.(c*c) - 2 (w*x).c                  (add sum w x^2)
    """
    if wb is None:
        return torch.addmm(c_sq, xb, c.T, beta=1.0, alpha=-2.0)
    # one matmul of inner size 2d: [w*x, w] @ [-2c, c^2]^T
    lhs = torch.cat([wb * xb, wb], dim=1)  # (rows, 2d)
    rhs = torch.cat([-2.0 * c, c * c], dim=1)  # (k, 2d)
    return lhs @ rhs.T


def _row_constant(xb: Tensor, wb: Tensor | None) -> Tensor:
    return (xb * xb).sum(1) if wb is None else (wb * xb * xb).sum(1)


@torch.no_grad()
def assign(
    x: Tensor,
    centroids: Tensor,
    weights: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """Nearest centroid of each row of ``x`` by (weighted) squared L2.

    Args:
        x: (n, d) float.
        centroids: (k, d) float, same device.
        weights: None, (n,) per-sample (does not change the argmin; scales ``dist``) or (n, d)
            per-coordinate importance.
        chunk_bytes: budget for the (rows, k) float32 distance block.

    Returns:
        ``(idx, dist)``: (n,) int64 nearest index and (n,) float32 (weighted) squared distance.
    """
    x = check_vectors(x)
    c = check_vectors(centroids, dim=x.shape[1], name="centroids").to(x.device)
    w = check_weights(weights, x) if weights is not None else None
    return _assign(x, c, w, chunk_bytes)


def _assign(x: Tensor, c: Tensor, w: Tensor | None, chunk_bytes: int) -> tuple[Tensor, Tensor]:
    """:func:`assign` on validated inputs (the inner loop of fit calls this every iteration)."""
    x32 = x.float()
    c32 = c.float()
    w_rows = w if (w is not None and w.dim() == 1) else None
    w_coord = w.float() if (w is not None and w.dim() == 2) else None
    fused = _native.nearest(x32, c32, w_coord) if x.device.type == "cpu" else None
    # fused distance+argmin kernel: no (rows, k) block at all
    idx, dist = fused if fused is not None else _chunked_nearest(x32, c32, w_coord, chunk_bytes)
    return idx, (dist * w_rows.float() if w_rows is not None else dist)


def _chunked_nearest(x32: Tensor, c32: Tensor, w_coord: Tensor | None, chunk_bytes: int,
                     exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Nearest of the float32 centroids ``c32`` for each row of ``x32`` in (rows, k) distance
    blocks of at most ``chunk_bytes``; ``exclude`` (n,) leaves one centroid out per row."""
    n, k = x32.shape[0], c32.shape[0]
    c_sq = (c32 * c32).sum(1)
    idx = torch.empty(n, dtype=torch.int64, device=x32.device)
    dist = torch.empty(n, dtype=torch.float32, device=x32.device)
    step = _rows_per_chunk(k, x32.shape[1], chunk_bytes)
    for s in range(0, n, step):
        xb = x32[s : s + step]
        wb = None if w_coord is None else w_coord[s : s + step]
        block = _distance_block(xb, wb, c32, c_sq)  # (rows, k)
        if exclude is not None:
            block.scatter_(1, exclude[s : s + step, None], math.inf)
        best, arg = block.min(dim=1)
        idx[s : s + step] = arg
        dist[s : s + step] = (best + _row_constant(xb, wb)).clamp_min_(0.0)
    return idx, dist


@torch.no_grad()
def assign_excluding(
    x: Tensor,
    centroids: Tensor,
    exclude: Tensor,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """Nearest centroid of each row of ``x`` other than ``exclude[i]`` (e.g. the row's own code:
    what moving that code away would cost, as in ELBG), by squared L2.

    Args:
        x: (n, d) float.
        centroids: (k, d) float, same device, k >= 2.
        exclude: (n,) int64 centroid index to leave out for each row.
        chunk_bytes: budget for the (rows, k) float32 distance block.

    Returns:
        ``(idx, dist)``: (n,) int64 index and (n,) float32 squared distance.
    """
    x = check_vectors(x)
    c = check_vectors(centroids, dim=x.shape[1], name="centroids").to(x.device)
    k = c.shape[0]
    if k < 2:
        raise ValueError(f"assign_excluding needs >= 2 centroids, got {k}")
    if not isinstance(exclude, Tensor) or exclude.shape != (x.shape[0],):
        got = tuple(exclude.shape) if isinstance(exclude, Tensor) else type(exclude).__name__
        raise ValueError(f"exclude must be a tensor of shape ({x.shape[0]},), got {got}")
    exclude = check_codes(exclude[:, None], 1, k, name="exclude")[:, 0].to(x.device)
    return _chunked_nearest(x.float(), c.float(), None, chunk_bytes, exclude)


class _TorchD2:
    """k-means++ seeding in torch (any device; same interface as :class:`vq.codebook._native.NativeD2`).

    The running D^2 distances ``closest`` (m,) of the m candidate rows, lowered by each new centre
    as the direct sum_j w_ij (x_ij - c_j)^2 (no expanded-form cancellation), and a D^2 draw per
    step: one pass of torch ops each, k steps.
    """

    def __init__(self, x: Tensor, w_coord: Tensor | None, w_mass: Tensor | None):
        self.x = x.float()  # (m, d)
        self.w_coord = None if w_coord is None else w_coord.float()  # (m, d)
        self.w_mass = None if w_mass is None else w_mass.float()  # (m,)
        self.closest = torch.full((x.shape[0],), math.inf, device=x.device)
        self.mass = self.closest

    def update(self, c: Tensor) -> float:
        """closest = min(closest, D^2 to c); returns the sampling mass sum(closest * w_mass)."""
        sq = (self.x - c) ** 2  # (m, d)
        torch.minimum(self.closest, (sq if self.w_coord is None else sq * self.w_coord).sum(1), out=self.closest)
        self.mass = self.closest if self.w_mass is None else self.closest * self.w_mass
        return float(self.mass.sum(dtype=torch.float64))

    def sample(self, target: float) -> int:
        """Smallest i whose cumulative mass exceeds ``target``."""
        cdf = self.mass.double().cumsum(0).cpu()
        return min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64), right=True)), len(cdf) - 1)

    def seed(self, first: int, u: Tensor) -> Tensor:
        """k-means++ picks (k,) int64 row indices, starting at ``first``; step j >= 1 draws with
        the uniform ``u[j]`` (``u``: (k,) float64 in [0, 1)). Zero mass: row floor(u[j] * m)."""
        m = self.x.shape[0]
        picked = [first]
        for j in range(1, u.numel()):
            total = self.update(self.x[picked[-1]])
            ok = total > 0.0 and math.isfinite(total)  # else every row sits on a centre
            picked.append(self.sample(float(u[j]) * total) if ok else min(int(float(u[j]) * m), m - 1))
        return torch.tensor(picked, dtype=torch.int64)


#: k-means++ seeds over a uniform sample of max(KPP_ROWS_PER_CENTRE * k, KPP_WORK // (k * d)) of
#: the n candidate rows (all of them when n is smaller): the k sequential D^2 steps then cost
#: O(k * rows * d), not O(k * n * d). Tuned on the image-patch shapes of bench/kmeans.py
#: (20 iterations, MSE relative to faiss's random init, exact k-means++ in brackets):
#: 8 rows per centre gave 0.787 at 2e5 x 8, k = 4096 (0.770; 4 rows: 0.819, 2 rows: 0.897),
#: 0.943 at 1e6 x 4, k = 256 (0.947) and 0.965 at 1e5 x 64, k = 1024 (0.967), seeding in
#: 0.05-0.2 s where exact took 0.25-1.4 s (before the k-d leaf skipping, which makes the
#: sampled seeding 2-5x faster again). KPP_WORK (rows x k x d) keeps small problems exact.
KPP_ROWS_PER_CENTRE = 8
KPP_WORK = 2**27


def _seeding_sample_size(n: int, k: int, d: int) -> int:
    """Rows :func:`kmeans_plusplus` seeds over by default, for n candidate rows of dimension d."""
    return min(n, max(KPP_ROWS_PER_CENTRE * k, KPP_WORK // (k * d)))


@torch.no_grad()
def kmeans_plusplus(
    x: Tensor, k: int, weights: Tensor | None = None, generator: torch.Generator | None = None,
    *, sample_size: int | None = None,
) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on a uniform sample of the rows: D^2
    sampling, weighted by importance.

    x: (n, d) float; weights None / (n,) / (n, d) >= 0. Returns (k, d) float32 rows of x,
    distinct when x has k distinct rows of positive weight.

    Candidates are the rows of positive weight (all rows without weights, or when fewer than k
    rows have positive weight). ``sample_size`` of them, drawn uniformly without replacement,
    are seeded over; ``None`` takes ``min(n, max(8 k, 2**27 // (k d)))`` (see
    ``KPP_ROWS_PER_CENTRE``), which keeps every row while that is cheap, and ``sample_size >= n``
    is exact k-means++ over all candidates. A uniform sample keeps D^2 sampling unbiased: a
    sampled row is picked in proportion to its D^2 mass. Per-coordinate weights weigh the
    distance; per-sample weights weigh the sampling mass; the first centre is drawn in
    proportion to the row weight (its mean over coordinates). Deterministic under
    ``generator``: one permutation (when sampling), then k uniforms. When the k steps cost more
    than ``KPP_WORK`` (m k d) and the native kernel is there, the candidates are put in k-d
    order first (:func:`vq.codebook._native.kd_order`, on any device), the order in which the
    draws invert the D^2 CDF. On the CPU the whole loop is one C call that skips groups of rows
    far from each new centre (:class:`vq.codebook._native.NativeD2`),
    elsewhere torch ops per step (:class:`_TorchD2`).
    """
    x = check_vectors(x)
    n = x.shape[0]
    require_int("k", k, 1, n)
    w = check_weights(weights, x)
    if sample_size is not None:
        require_int("sample_size", sample_size, k)
    row_w = None if w is None else (w if w.dim() == 1 else w.mean(1))  # (n,)
    cand = None  # (c,) candidate row indices, None = all rows
    if row_w is not None and int((row_w > 0).sum()) >= k:
        cand = torch.nonzero(row_w > 0).flatten()
    n_cand = n if cand is None else cand.numel()
    m = min(n_cand, _seeding_sample_size(n_cand, k, x.shape[1]) if sample_size is None else sample_size)
    if m < n_cand:
        pick = torch.randperm(n_cand, generator=generator)[:m].to(x.device)
        cand = pick if cand is None else cand[pick]
    # k-d order (spatially compact runs of rows, which the C seeder skips when far from a new
    # centre) where the k steps are costly; small problems keep the candidates' own order
    order = _native.kd_order(x if cand is None else x[cand]) if m * k * x.shape[1] > KPP_WORK else None
    if order is not None:  # (m,)
        order = order.to(x.device)
        cand = order if cand is None else cand[order]
    xs = x if cand is None else x[cand]  # (m, d)
    ws = None if w is None else (w if cand is None else w[cand])  # (m,) or (m, d)
    u = torch.rand(k, generator=generator, dtype=torch.float64)  # (k,)
    first_w = torch.ones(m, dtype=torch.float64) if ws is None else (ws if ws.dim() == 1 else ws.mean(1)).double().cpu()
    cdf = first_w.cumsum(0)  # (m,)
    first = min(int(torch.searchsorted(cdf, u[:1] * cdf[-1], right=True)), m - 1)
    w_coord = ws if (ws is not None and ws.dim() == 2) else None
    w_mass = ws if (ws is not None and ws.dim() == 1) else None
    d2 = _native.NativeD2.create(xs, w_coord, w_mass) if x.device.type == "cpu" else None
    if d2 is None:
        d2 = _TorchD2(xs, w_coord, w_mass)
    picked = d2.seed(first, u).to(x.device)  # (k,) rows of xs
    return xs[picked].float()


@register_codec
class KMeans(Codec):
    """k-means codebook: ``KMeans(k, niter=20, init="k-means++", backend="auto", seed=0).fit(x)``.

    After ``fit``: ``centroids`` (k, d) float32, ``inertia`` (the weighted objective at the final
    centroids and assignments), ``history`` (objective before each iteration, torch backend),
    ``n_moved`` (ELBG moves made). ``encode`` returns (n, 1) int64 codes, ``decode`` maps them
    back to (n, d).

    Options for refining a codebook one already holds (torch backend; ``auto`` picks it when
    any is set, ``faiss`` refuses them):

    - ``init``: ``"k-means++"`` / ``"random"`` seed from the data; a (k, d) tensor is a warm
      start (the KMeans holds those centroids from construction on, so ``fit`` may see fewer
      than k vectors, e.g. one rank's shard); ``None`` continues from the centroids the KMeans
      holds (``load_state_dict``, an earlier fit), and is what ``config()`` records for a warm
      start. Warm-starting with the centroids after ``a`` iterations and running ``b`` more
      gives the centroids of ``a + b`` iterations.
    - ``all_reduce``: called once per iteration on one packed float64 tensor of this process's
      statistics (per-cluster sums and counts, the objective, the ELBG cell errors); must
      return the elementwise sum over all processes (e.g. ``dist.all_reduce`` on it). Every
      process then computes the same centroids, which are those of one fit on all shards. An
      ELBG iteration makes a second call (the candidates' costs and target cells' moments).
      Needs a warm start identical on every process and ``empty="keep"``. Not part of
      ``config()``: a runtime hook.
    - ``empty``: ``"reseed"`` (default) puts each empty cluster on a distinct point that is
      currently worst represented (this process's points: it would diverge across processes);
      ``"keep"``: an empty cluster keeps its centroid (it can still move by ELBG).
    - ``split`` in [0, 0.5], ``split_share`` >= 0: ELBG-style moves (Patane & Russo 2001) in all
      iterations but the last ``max(1, ceil(niter / 3))``. The ``ceil(split * k)`` clusters with
      the least total error are candidates to move. A candidate's cost is what its vectors
      would add at their second-nearest centroid; a target cell's gain is what cutting it in two
      across its principal axis saves (``count * var * 2 / pi`` for a Gaussian cell). The
      cheapest candidates pair with the cells of largest gain, and a pair moves when cost <
      gain: the candidate and the cell's own centroid go to the means of the two halves
      (``mean +- sqrt(2 var / pi) * axis``). Centroids resting on a few outliers cost almost
      nothing and move first; Lloyd alone never frees them. Those iterations may raise the
      objective; the last ones are plain Lloyd. Only cells holding at least ``split_share`` of
      a uniform share (``n / k`` vectors) are cut. Deterministic (no random numbers).
      Unweighted data only.
    - ``spherical``: l2-normalise the centroids after every update (spherical k-means, for
      unit-norm data such as cosine codes).
    """

    def __init__(
        self,
        k: int,
        niter: int = 20,
        init: str | Tensor | None = "k-means++",
        backend: str = "auto",
        seed: int = 0,
        max_points_per_centroid: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        dim: int | None = None,
        *,
        all_reduce: Callable[[Tensor], Tensor] | None = None,
        empty: str = "reseed",
        split: float = 0.0,
        split_share: float = 0.0,
        spherical: bool = False,
    ):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if not isinstance(niter, int) or niter < 0:
            raise ValueError(f"niter must be a non-negative int, got {niter!r}")
        start = None
        if isinstance(init, Tensor):
            start = check_vectors(init, dim=dim, name="init")
            if start.shape[0] != k:
                raise ValueError(f"init must have shape ({k}, d) (one starting centroid per cluster), "
                                 f"got {tuple(start.shape)}")
            init, dim = None, start.shape[1]
        elif init is not None and init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, a (k, d) tensor or None, got {init!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if backend == "faiss" and _faiss() is None:
            raise ValueError("backend='faiss' requested but faiss is not installed (pip install faiss-cpu)")
        if max_points_per_centroid is not None and max_points_per_centroid < 1:
            raise ValueError(f"max_points_per_centroid must be >= 1 or None, got {max_points_per_centroid}")
        if empty not in _EMPTY:
            raise ValueError(f"empty must be one of {_EMPTY}, got {empty!r}")
        if not (isinstance(split, (int, float)) and math.isfinite(split) and 0.0 <= split <= 0.5):
            raise ValueError(f"split must be a fraction of the clusters in [0, 0.5], got {split!r}")
        if not (isinstance(split_share, (int, float)) and math.isfinite(split_share) and split_share >= 0):
            raise ValueError(f"split_share must be a finite number >= 0, got {split_share!r}")
        if all_reduce is not None and not callable(all_reduce):
            raise ValueError(f"all_reduce must be a callable or None, got {type(all_reduce).__name__}")
        if all_reduce is not None and init is not None:
            raise ValueError("all_reduce needs a warm start (init = the (k, d) centroids, identical on every "
                             f"process): init={init!r} would seed from each process's own data")
        if all_reduce is not None and empty != "keep":
            raise ValueError("all_reduce needs empty='keep': re-seeding empty clusters at this process's "
                             "worst-fit points would make the processes' centroids diverge")
        self.k, self.niter, self.init, self.backend, self.seed = k, niter, init, backend, seed
        self.max_points_per_centroid = max_points_per_centroid
        self.chunk_bytes = chunk_bytes
        self.all_reduce, self.empty, self.spherical = all_reduce, empty, bool(spherical)
        self.split, self.split_share = float(split), float(split_share)
        self.dim = dim  # type: ignore[assignment]
        self.centroids: Tensor | None = None if start is None else start.float().clone()
        self.inertia: float = math.nan
        self.history: list[float] = []
        self.n_moved = 0

    # -- protocol ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "k": self.k, "niter": self.niter, "init": self.init, "backend": self.backend,
            "seed": self.seed, "max_points_per_centroid": self.max_points_per_centroid,
            "chunk_bytes": self.chunk_bytes, "dim": self.dim, "empty": self.empty, "split": self.split,
            "split_share": self.split_share, "spherical": self.spherical,
        }

    def state_dict(self) -> dict[str, Tensor]:
        self._require_fitted()
        return {"centroids": self.centroids}

    def load_state_dict(self, state: dict[str, Tensor]) -> "KMeans":
        if set(state) != {"centroids"}:
            raise ValueError(f"KMeans state must hold exactly 'centroids', got {sorted(state)}")
        c = state["centroids"]
        if c.dim() != 2 or c.shape[0] != self.k or (self.dim is not None and c.shape[1] != self.dim):
            raise ValueError(f"centroids shape {tuple(c.shape)} does not match k={self.k}, dim={self.dim}")
        self.centroids = c.clone()
        self.dim = c.shape[1]
        return self

    @property
    def is_fitted(self) -> bool:
        return self.centroids is not None

    def bits_per_vector(self) -> float:
        return math.log2(self.k)

    def encode(self, x: Tensor) -> Tensor:
        """(n, d) -> (n, 1) int64 nearest-centroid codes."""
        self._require_fitted()
        x = check_vectors(x, dim=self.dim)
        idx, _ = assign(x, self.centroids.to(x.device), chunk_bytes=self.chunk_bytes)
        return idx[:, None]

    def decode(self, codes: Tensor) -> Tensor:
        """(n, 1) int64 -> (n, d) float32."""
        self._require_fitted()
        codes = check_codes(codes, 1, self.k)
        return self.centroids.to(codes.device)[codes[:, 0]]

    # -- fitting -------------------------------------------------------------------------
    def fit(self, x: Tensor, weights: Tensor | None = None) -> "KMeans":
        """Fit on x (n, d) float with optional weights (n,) or (n, d) >= 0. Returns self."""
        x = check_vectors(x, dim=self.dim)
        w = check_weights(weights, x)
        n, d = x.shape
        if self.init is None and self.centroids is None:
            raise ValueError("init=None continues from the centroids this KMeans holds (a warm-start tensor, "
                             "load_state_dict or an earlier fit), but it holds none")
        if self.init is not None and self.k > n:  # a warm start fits any n
            raise ValueError(f"k={self.k} is larger than the number of vectors n={n}")
        if self.split > 0 and w is not None:
            raise ValueError("split (ELBG moves) supports unweighted data only; pass weights=None or split=0")
        self.dim = d
        gen = torch.Generator().manual_seed(self.seed)
        x = x.float()
        w = None if w is None else w.float()
        if self.max_points_per_centroid is not None and n > self.k * self.max_points_per_centroid:
            keep = torch.randperm(n, generator=gen)[: self.k * self.max_points_per_centroid].to(x.device)
            x, w = x[keep], (None if w is None else w[keep])
        backend = self._pick_backend(x, w)
        if backend == "faiss":
            self._fit_faiss(x, w, gen)
        else:
            self._fit_torch(x, w, gen)
        return self

    def _pick_backend(self, x: Tensor, w: Tensor | None) -> str:
        per_coord = w is not None and w.dim() == 2
        refining = (self.init is None or self.all_reduce is not None or self.split > 0 or self.empty != "reseed"
                    or self.spherical)  # fmt: skip
        if self.backend == "faiss":
            if refining:
                raise ValueError("the faiss backend takes none of warm start (init tensor / None), all_reduce, "
                                 "split, empty='keep', spherical; use backend='torch' or 'auto'")
            if per_coord:
                raise ValueError("the faiss backend supports per-sample (n,) weights only; use backend='torch' "
                                 "or 'auto' for per-coordinate (n, d) weights")
            if x.device.type != "cpu":
                raise ValueError("backend='faiss' takes CPU tensors; use backend='torch' on GPU tensors")
            return "faiss"
        if self.backend == "torch" or per_coord or refining or x.device.type != "cpu" or _faiss() is None:
            return "torch"
        return "faiss"

    def _init_centroids(self, x: Tensor, w: Tensor | None, gen: torch.Generator) -> Tensor:
        if self.init == "random":
            return x[torch.randperm(x.shape[0], generator=gen)[: self.k].to(x.device)].clone()
        return kmeans_plusplus(x, self.k, w, gen)

    def _fit_torch(self, x: Tensor, w: Tensor | None, gen: torch.Generator) -> None:
        c = self._init_centroids(x, w, gen) if self.init is not None else self.centroids.to(x.device)
        w_rows = w if (w is not None and w.dim() == 1) else None
        w_coord = w if (w is not None and w.dim() == 2) else None
        # ELBG moves in all but the last ceil(niter / 3) iterations, which are plain Lloyd
        split_iters = self.niter - max(1, -(-self.niter // 3)) if self.split > 0 else 0
        self.history, self.n_moved = [], 0
        for it in range(self.niter):
            idx, dist = _assign(x, c, w, self.chunk_bytes)
            num, den, err, cell_err = self._statistics(x, idx, dist, w_rows, w_coord, cells=it < split_iters)
            self.history.append(err)
            new = self._update(x, num, den, dist, c)
            if it < split_iters:
                self.n_moved += self._elbg_moves(x, idx, dist, c, new, den[:, 0], cell_err)
            c = F.normalize(new, dim=1) if self.spherical else new
        _, dist = _assign(x, c, w, self.chunk_bytes)
        (err,) = self._reduce(dist.sum(dtype=torch.float64).reshape(1))
        self.inertia = float(err)
        self.centroids = c
        log.debug("kmeans(k=%d, n=%d, d=%d) torch: inertia %.6g, %d ELBG moves",
                  self.k, x.shape[0], x.shape[1], self.inertia, self.n_moved)  # fmt: skip

    def _reduce(self, *parts: Tensor | None) -> tuple[Tensor | None, ...]:
        """``parts`` summed over processes by the ``all_reduce`` hook, in one call on one packed
        float64 tensor; unchanged without a hook. ``None`` parts pass through."""
        if self.all_reduce is None:
            return parts
        live = [p for p in parts if p is not None]
        packed = torch.cat([p.reshape(-1).double() for p in live])  # (sum of numels,)
        out = self.all_reduce(packed)
        if not isinstance(out, Tensor) or out.shape != packed.shape:
            raise ValueError(f"all_reduce must return the summed tensor of shape {tuple(packed.shape)}, "
                             f"got {type(out).__name__}")
        pieces = iter(out.split([p.numel() for p in live]))
        return tuple(None if p is None else next(pieces).reshape(p.shape).to(p.dtype) for p in parts)

    def _statistics(
        self, x: Tensor, idx: Tensor, dist: Tensor, w_rows: Tensor | None, w_coord: Tensor | None, cells: bool,
    ) -> tuple[Tensor, Tensor, float, Tensor | None]:
        """Sums of one assignment, all-reduced: ``num`` (k, d) weighted sums of the points, ``den``
        (k, d) per-coordinate or (k, 1) per-cluster weight mass, the objective, and (``cells``,
        for ELBG) each cluster's total error (k,)."""
        k, d = self.k, x.shape[1]
        if w_coord is not None:
            num = torch.zeros(k, d, device=x.device).index_add_(0, idx, w_coord * x)
            den = torch.zeros(k, d, device=x.device).index_add_(0, idx, w_coord)
        else:
            xw = x if w_rows is None else x * w_rows[:, None]  # (n, d)
            num = torch.zeros(k, d, device=x.device).index_add_(0, idx, xw)
            den = torch.bincount(idx, weights=w_rows, minlength=k).to(x.dtype)[:, None]  # (k, 1)
        err = dist.sum(dtype=torch.float64).reshape(1)
        cell_err = torch.zeros(k, device=x.device).index_add_(0, idx, dist) if cells else None
        num, den, err, cell_err = self._reduce(num, den, err, cell_err)
        return num, den, float(err), cell_err

    def _update(self, x: Tensor, num: Tensor, den: Tensor, dist: Tensor, old: Tensor) -> Tensor:
        """Lloyd update: (weighted) mean per cluster; an empty cluster keeps ``old``'s centroid
        (``empty="keep"``) or is re-seeded at a worst-fit point (``"reseed"``)."""
        k, d = old.shape
        den = den.expand(k, d)
        c = torch.where(den > 0, num / den.clamp_min(1e-30), old)
        empty = torch.nonzero((den > 0).sum(1) == 0).flatten() if self.empty == "reseed" else None
        if empty is not None and empty.numel():
            # re-seed each empty centroid on a distinct point that is currently worst represented
            # (a warm start on fewer points than clusters: the rest stay)
            empty = empty[: x.shape[0]]
            order = torch.argsort(dist, descending=True)
            c[empty] = x[order[: empty.numel()]]
            log.debug("kmeans: re-seeded %d empty clusters", empty.numel())
        return c

    def _elbg_moves(self, x: Tensor, idx: Tensor, dist: Tensor, old: Tensor, new: Tensor, counts: Tensor,
                    cell_err: Tensor) -> int:
        """One round of ELBG moves (see the class docstring), in place on ``new`` (k, d), the Lloyd
        update of ``old``; ``idx`` / ``dist`` (n,) this process's assignment to ``old``, ``counts``
        / ``cell_err`` (k,) all-reduced. Returns how many centroids moved."""
        k, d = old.shape
        m = min(math.ceil(self.split * k), k // 2)
        if m == 0:  # k = 1: nothing can move (the same on every process)
            return 0
        order = torch.argsort(cell_err)  # (k,) least total error first
        cand, targets = order[:m], torch.flip(order[m:], (0,))[:m]  # (m,), (m,) disjoint
        is_cand = torch.zeros(k, dtype=torch.bool, device=x.device)
        is_cand[cand] = True
        slot = torch.full((k,), -1, dtype=torch.long, device=x.device)
        slot[targets] = torch.arange(m, device=x.device)
        # cost: the candidates' vectors at their second-nearest centroid (own one excluded)
        rows = torch.nonzero(is_cand[idx])[:, 0]
        cost = torch.zeros(k, device=x.device)
        if rows.numel():  # a process may hold no vector of any candidate
            _, second = _chunked_nearest(x[rows], old, None, self.chunk_bytes, idx[rows])
            cost.index_add_(0, idx[rows], second - dist[rows])
        # gain: second moments of the target cells -> principal axis and variance of each
        moments = torch.zeros(m, d * d, device=x.device)
        rows = torch.nonzero(slot[idx] >= 0)[:, 0]
        for s in range(0, rows.shape[0], 65536):
            r = rows[s : s + 65536]
            moments.index_add_(0, slot[idx[r]], (x[r, :, None] * x[r, None, :]).reshape(-1, d * d))
        cost, moments = self._reduce(cost, moments)
        moments = moments.reshape(m, d, d)
        n_t = counts[targets].clamp_min(1.0)  # (m,)
        mean_t = new[targets]  # (m, d) the cells' means after the Lloyd update
        cov = moments / n_t[:, None, None] - mean_t[:, :, None] * mean_t[:, None, :]
        var, axes = torch.linalg.eigh(cov)  # ascending
        var, axis = var[:, -1].clamp_min(0.0), axes[:, :, -1]  # (m,), (m, d)
        gain = n_t * var * (2.0 / math.pi)  # (m,)
        gain[n_t < self.split_share * counts.sum() / k] = 0.0  # too small to cut: no move pays
        by_gain = torch.argsort(gain, descending=True)
        by_cost = cand[torch.argsort(cost[cand])]
        ok = cost[by_cost] < gain[by_gain]  # (m,) cheapest candidate <-> largest gain, in turn
        moved, t = by_cost[ok], by_gain[ok]
        offset = (var[t] * (2.0 / math.pi)).sqrt()[:, None] * axis[t]  # (moves, d)
        new[moved] = mean_t[t] + offset
        new[targets[t]] = mean_t[t] - offset
        return int(ok.sum())

    def _fit_faiss(self, x: Tensor, w: Tensor | None, gen: torch.Generator) -> None:
        faiss = _faiss()
        n, d = x.shape
        xn = x.contiguous().numpy()
        km = faiss.Kmeans(
            d, self.k, niter=self.niter, seed=self.seed, verbose=False,
            max_points_per_centroid=max(1, -(-n // self.k)), min_points_per_centroid=1,
        )
        init = None
        if self.init == "k-means++":
            init = kmeans_plusplus(x, self.k, w, gen).numpy()
        wn = None if w is None else w.contiguous().numpy()
        try:  # the SWIG layer turns a faiss C++ exception into RuntimeError (values are checked first:
            # faiss aborts the process instead when distances overflow, see checks.MAX_ABS_VALUE)
            km.train(xn, weights=wn, init_centroids=init)
        except RuntimeError as e:
            raise RuntimeError(f"faiss k-means (k={self.k}, n={n}, d={d}) failed: {e}") from e
        c = torch.from_numpy(km.centroids.copy())
        idx, dist = _assign(x, c, w, self.chunk_bytes)
        self.history = [float(v) for v in km.obj] if hasattr(km, "obj") else []
        self.inertia = float(dist.sum(dtype=torch.float64))
        self.centroids = c
