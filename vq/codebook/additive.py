"""Additive VQ, AQLM-style (Babenko & Lempitsky, "Additive quantization", CVPR 2014; Egiazarian
et al., "Extreme compression of LLMs via additive quantization", 2024): ``M`` full-dimensional
codebooks whose chosen codewords are summed::

    x ~ sum_m C_m[codes[m]]

Unlike residual VQ the codebooks are not tied to a stage order, so both steps are global:

* **encode** (beam search): every vector keeps ``beam`` candidate code tuples; a step tries,
  for each candidate, replacing any one codebook's code by any of its k codewords, scores all
  ``beam * M * k`` neighbours by their exact squared error and keeps the ``beam`` best distinct
  tuples. The current tuple is among the neighbours, so a vector's error never increases.
* **codebook update** (least squares): with codes fixed, the reconstruction is ``B C`` for the
  one-hot design matrix ``B`` (n, M k), so all codebooks solve jointly::

      (Bᵀ W B + λ I) C = Bᵀ W X + λ C_old        (float64; W = importance weights)

  The ridge pulls towards the current codebooks (unused codewords stay put), and because
  ``C_old`` is feasible the objective cannot increase.

Fit initialises from :class:`~vq.codebook.ResidualVQ`, then alternates update and encode for
``niter`` rounds, keeping the best state.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vq.codebook.checks import check_vectors, check_weights, require_int, require_k_le_n
from vq.codebook.product import CodebookStack, require_fields
from vq.codebook.protocol import register_codec
from vq.codebook.residual import CHUNK_BYTES, ResidualVQ, residual_beam_search, sum_codewords, weighted_sq

__all__ = ["AdditiveVQ", "AdditiveVQConfig", "additive_beam_search", "least_squares_codebooks", "sum_codewords_beam"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdditiveVQConfig:
    """Constructor arguments of :class:`AdditiveVQ` (validated on creation)."""

    dim: int
    codebooks: int
    k: int
    niter: int = 10
    beam: int = 8
    seed: int = 0
    steps: int = 2
    kmeans_niter: int = 20
    ridge: float = 1e-6
    backend: str = "auto"

    def __post_init__(self) -> None:
        require_fields(self, codebooks=1, beam=1, steps=0, kmeans_niter=0)
        if not isinstance(self.ridge, (int, float)) or not (self.ridge > 0 and math.isfinite(self.ridge)):
            raise ValueError(f"ridge must be a positive finite float, got {self.ridge!r}")
        if self.codebooks * self.k > 8192:
            raise ValueError(
                f"codebooks * k = {self.codebooks * self.k} > 8192: the joint least-squares update "
                "solves an (M k) x (M k) system; use fewer or smaller codebooks"
            )


def _local_search_chunk(
    x: Tensor, books: Tensor, codes: Tensor, beam: int, steps: int, w: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One chunk of :func:`additive_beam_search`. x (c, d), books (M, k, d), codes (c, M)."""
    c, d = x.shape
    M, k, _ = books.shape
    rows = torch.arange(c, device=x.device)
    m_idx = torch.arange(M, device=x.device)
    wb = None if w is None else w[:, None, :]  # (c, 1, d)
    wm = None if w is None else w[:, None, None, :]  # (c, 1, 1, d)
    # ||C_mj||^2, weighted per row when w is per-coordinate
    cn = (books * books).sum(-1) if w is None else torch.einsum("cd,mkd->cmk", w, books * books)[:, None]
    best_codes = codes.clone()
    best_err = weighted_sq(x - sum_codewords(books, codes), w)  # (c,)
    beam_codes = codes[:, None, :]  # (c, b, M)
    for _ in range(steps):
        b = beam_codes.shape[1]
        contrib = books[m_idx, beam_codes]  # (c, b, M, d) codeword of each codebook
        resid = x[:, None, :] - contrib.sum(2)  # (c, b, d)
        rp = resid[:, :, None, :] + contrib  # (c, b, M, d): residual with codebook m removed
        base = weighted_sq(rp, wm)  # (c, b, M)
        cross = torch.einsum("cbmd,mkd->cbmk", rp if w is None else rp * wm, books)
        dist = cross.mul_(-2.0).add_(base[..., None]).add_(cn)  # (c, b, M, k) error after code m := j
        # "keep code m" appears once per codebook; keep only the m = 0 copy
        dist[:, :, 1:].scatter_(-1, beam_codes[:, :, 1:, None], float("inf"))
        # each tuple appears at most once per parent beam, so b * beam survivors hold >= beam distinct ones
        t = min(b * beam, b * M * k)
        _, idx = dist.reshape(c, b * M * k).topk(t, dim=1, largest=False)  # (c, t) best first
        src, m, j = idx // (M * k), (idx // k) % M, idx % k
        cand = beam_codes.gather(1, src[..., None].expand(-1, -1, M)).clone()  # (c, t, M)
        cand.scatter_(2, m[..., None], j[..., None])
        same = (cand[:, :, None, :] == cand[:, None, :, :]).all(-1)  # (c, t, t)
        dup = (same & torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1)).any(-1)  # (c, t)
        order = torch.argsort(dup.to(torch.int8), dim=1, stable=True)[:, : min(beam, t)]  # distinct first
        beam_codes = cand.gather(1, order[..., None].expand(-1, -1, M))  # (c, b', M)
        err = weighted_sq(x[:, None, :] - sum_codewords_beam(books, beam_codes), wb)  # (c, b') exact
        e, arg = err.min(1)
        better = e < best_err
        best_err = torch.where(better, e, best_err)
        best_codes = torch.where(better[:, None], beam_codes[rows, arg], best_codes)
    return best_codes, best_err


def sum_codewords_beam(books: Tensor, codes: Tensor) -> Tensor:
    """books (M, k, d), codes (c, b, M) -> (c, b, d)."""
    c, b, M = codes.shape
    return sum_codewords(books, codes.reshape(c * b, M)).reshape(c, b, -1)  # (c*b, d) -> (c, b, d)


@torch.no_grad()
def additive_beam_search(
    x: Tensor,
    books: Tensor,
    codes: Tensor,
    beam: int = 8,
    steps: int = 2,
    weights: Tensor | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """Improve ``codes`` (n, M) for ``x`` (n, d) under additive codebooks ``books`` (M, k, d).

    ``steps`` rounds of beam search over single-codebook changes (see module docstring).
    ``weights`` (n, d) weights the error per coordinate. Chunked over n so the
    (chunk, beam, M, k) score tensor stays within ``chunk_bytes``. Every vector's error is
    at most its error under the given ``codes``.

    Returns codes (n, M) int64 and (weighted) squared errors (n,) float32.
    """
    n, d = x.shape
    M, k, _ = books.shape
    x, books = x.float(), books.to(device=x.device, dtype=torch.float32)
    w = None if weights is None else weights.float()
    # bytes per vector: (b, M, k) scores and temporaries, (b, M, d) residuals, (t, t, M) duplicate test, t = beam²
    per_row = 4 * (4 * beam * M * k + 4 * beam * M * d + 2 * M * k) + beam**4 * (M + 1)
    chunk = max(1, chunk_bytes // per_row)
    out = torch.empty(n, M, dtype=torch.long, device=x.device)
    err = torch.empty(n, dtype=torch.float32, device=x.device)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        out[sl], err[sl] = _local_search_chunk(x[sl], books, codes[sl], beam, steps, None if w is None else w[sl])
    return out, err


@torch.no_grad()
def least_squares_codebooks(
    x: Tensor, codes: Tensor, k: int, old: Tensor, weights: Tensor | None = None, ridge: float = 1e-6
) -> Tensor:
    """Joint least-squares codebooks for fixed codes (the normal equations in the module docstring).

    x (n, d); codes (n, M) int64; old (M, k, d) current codebooks (ridge target);
    weights None, (n,) per-sample or (n, d) per-coordinate (then one system per coordinate).
    Returns (M, k, d) float32.
    """
    n, d = x.shape
    M = codes.shape[1]
    Mk = M * k
    dev = x.device
    x64, old64 = x.double(), old.double().reshape(Mk, d)  # (M, k, d) -> (M k, d)
    col = codes + torch.arange(M, device=dev) * k  # (n, M) column of B holding each one

    def gram(wi: Tensor | None) -> Tensor:  # Bᵀ diag(wi) B, (Mk, Mk)
        g = torch.zeros(Mk * Mk, dtype=torch.float64, device=dev)
        step = max(1, (1 << 22) // (M * M))  # rows per chunk: 4M code pairs at a time
        for lo in range(0, n, step):
            cl = col[lo : lo + step]
            p = (cl[:, :, None] * Mk + cl[:, None, :]).reshape(-1)  # (rows M M,) flat index into BᵀB
            v = None if wi is None else wi[lo : lo + step, None].expand(-1, M * M).reshape(-1)
            g += torch.bincount(p, weights=v, minlength=Mk * Mk).double()
        return g.reshape(Mk, Mk)

    def rhs(xw: Tensor) -> Tensor:  # Bᵀ (W X), (Mk, d')
        r = torch.zeros(Mk, xw.shape[1], dtype=torch.float64, device=dev)
        for m in range(M):
            r.index_add_(0, col[:, m], xw)
        return r

    def solve(g: Tensor, r: Tensor, target: Tensor) -> Tensor:
        lam = ridge * float(g.diagonal().mean()) + 1e-12
        g = g + lam * torch.eye(Mk, dtype=torch.float64, device=dev)
        return torch.cholesky_solve(r + lam * target, torch.linalg.cholesky(g))

    w = None if weights is None else weights.double()
    if w is None or w.dim() == 1:
        new = solve(gram(w), rhs(x64 if w is None else x64 * w[:, None]), old64)  # (Mk, d)
    else:
        new = torch.empty(Mk, d, dtype=torch.float64, device=dev)
        for j in range(d):  # per-coordinate weights: one (Mk x Mk) system per coordinate
            new[:, j : j + 1] = solve(gram(w[:, j]), rhs(x64[:, j : j + 1] * w[:, j : j + 1]), old64[:, j : j + 1])
    return new.float().reshape(M, k, d)  # (M k, d) -> (M, k, d)


@register_codec
class AdditiveVQ(CodebookStack):
    """Additive quantizer: ``x ~ sum_m C_m[code_m]`` with beam-search encoding and a joint
    least-squares codebook update, alternated (AQLM-style).

    Args:
        dim: vector length d.
        codebooks: number of codebooks M.
        k: codewords per codebook (M * k <= 8192).
        niter: alternating rounds (update + encode) after the residual-VQ initialisation.
        beam: beam width of the encoder.
        seed, kmeans_niter, backend: for the :class:`~vq.codebook.ResidualVQ` initialisation.
        steps: beam-search rounds per encode.
        ridge: relative ridge of the least-squares update.

    After ``fit``: ``codebooks`` (M, k, d) float32, ``history`` (mean weighted squared error per
    vector on the training set after the initialisation and after each round; non-increasing).
    """

    def __init__(
        self,
        dim: int,
        codebooks: int,
        k: int,
        niter: int = 10,
        beam: int = 8,
        seed: int = 0,
        steps: int = 2,
        kmeans_niter: int = 20,
        ridge: float = 1e-6,
        backend: str = "auto",
    ):
        self.cfg = AdditiveVQConfig(dim, codebooks, k, niter, beam, seed, steps, kmeans_niter, ridge, backend)
        self.dim = dim
        self.history: list[float] = []

    @property
    def n_books(self) -> int:
        return self.cfg.codebooks

    def fit(self, x: Tensor, weights: Tensor | None = None) -> "AdditiveVQ":
        """Fit on ``x`` (n, d) float with optional weights (n,) or (n, d) >= 0."""
        cfg = self.cfg
        x = check_vectors(x, self.dim)
        w = check_weights(weights, x)
        require_k_le_n(cfg.k, x.shape[0])
        w_coord = None if w is None or w.dim() == 1 else w  # only (n, d) weights change the argmin
        w_rows = None if w is None or w.dim() == 2 else w.float()
        n = x.shape[0]

        def objective(err: Tensor) -> float:  # mean weighted squared error per vector
            return float((err.double() if w_rows is None else err.double() * w_rows).sum()) / n

        books = ResidualVQ(cfg.dim, cfg.codebooks, cfg.k, cfg.kmeans_niter, 1, cfg.seed, cfg.backend).fit(x, w).codebooks
        codes, err = residual_beam_search(x, books, cfg.beam, w_coord)
        best = objective(err)
        self.history = [best]
        log.info("AdditiveVQ init (residual VQ + beam %d): %.6g", cfg.beam, best)
        for it in tqdm(range(cfg.niter), desc="AdditiveVQ", leave=False, disable=cfg.niter < 2):
            new_books = least_squares_codebooks(x, codes, cfg.k, books, w, cfg.ridge)
            new_err = weighted_sq(x.float() - sum_codewords(new_books, codes), w_coord)
            if objective(new_err) <= best:
                books, best = new_books, objective(new_err)
            codes, err = additive_beam_search(x, books, codes, cfg.beam, cfg.steps, w_coord)
            prev, best = self.history[-1], min(best, objective(err))
            self.history.append(best)
            log.debug("AdditiveVQ round %d/%d: %.6g", it + 1, cfg.niter, best)
            if prev - best <= 1e-7 * prev:
                break
        self.codebooks = books
        return self

    def encode(self, x: Tensor, beam: int | None = None, weights: Tensor | None = None) -> Tensor:
        """``x`` (n, d) -> codes (n, M) int64: residual-order beam search, then ``steps`` rounds
        of additive beam search. ``weights`` (n, d) weights the error per coordinate."""
        x, w = self._encode_inputs(x, weights)
        beam = self.cfg.beam if beam is None else beam
        require_int("beam", beam, 1)
        codes, _ = residual_beam_search(x, self.codebooks, beam, w)
        return additive_beam_search(x, self.codebooks, codes, beam, self.cfg.steps, w)[0]

    def decode(self, codes: Tensor) -> Tensor:
        """codes (n, M) int -> (n, d) float32."""
        codes, books = self._checked_codes(codes)
        return sum_codewords(books, codes)
