"""SimVQ codebook reparameterization (Zhu et al. 2024, "Addressing Representation Collapse in
Vector Quantized Models with One Linear Layer").

The codebook is ``C = B @ W``: ``B`` (k, r) is a frozen random basis (seeded), ``W`` (r, d) is
the learned linear map. Updating ``W`` moves every codeword at once, so no code is left behind
(the cure for codebook collapse the paper proposes).

As a codec, ``fit(x, weights)`` learns ``W`` offline: k-means init ``C0``, ``W0 = argmin
||B W - C0||``, then alternating (a) nearest-codeword assignment and (b) the weighted
least-squares solve for ``W`` given the assignment (eq. below), each step of which never
increases the weighted squared error::

    W = argmin_W  sum_i sum_t w_it (x_it - (B[c_i] W)_t)^2
      -> for each column t:  (B^T diag(m_t) B) W[:, t] = B^T s_t,
         m_jt = sum_{i: c_i = j} w_it,   s_jt = sum_{i: c_i = j} w_it x_it

The math is in small pure functions (:func:`simvq_basis`, :func:`simvq_codebook`,
:func:`simvq_solve_w`) that a tokenizer layer can call on its own ``nn.Parameter`` copies.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from vq.codebook.kmeans import KMeans, assign
from vq.codebook.checks import check_codes, check_vectors, check_weights, require_int
from vq.codebook.protocol import Codec, register_codec

__all__ = ["SimVQCodebook", "simvq_basis", "simvq_codebook", "simvq_solve_w"]

logger = logging.getLogger(__name__)


def simvq_basis(k: int, rank: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The frozen basis ``B`` (k, rank): i.i.d. N(0, 1/rank) entries drawn in float32 from a CPU
    generator seeded with ``seed`` (so the same seed gives the same basis everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(k, rank, generator=gen) * rank**-0.5).to(dtype)


def simvq_codebook(basis: Tensor, W: Tensor) -> Tensor:
    """Codebook ``basis @ W``: (k, r) @ (r, d) -> (k, d). Differentiable in both."""
    return basis @ W


def simvq_solve_w(
    basis: Tensor, x: Tensor, codes: Tensor, weights: Tensor | None = None, ridge: float = 1e-6
) -> Tensor:
    """Weighted least-squares ``W`` (r, d) for fixed assignments (see the module docstring).

    Args:
        basis: (k, r) float.
        x: (n, d) float.
        codes: (n,) int64 in ``[0, k)``.
        weights: None, (n,) or (n, d) non-negative importance.
        ridge: Tikhonov term, relative to the mean diagonal of the normal matrix (keeps the
            solve defined when fewer than r codes are used).
    Returns:
        (r, d) float64.
    """
    k, r = basis.shape
    n, d = x.shape
    B = basis.double().to(x.device)
    xd = x.double()
    if weights is None or weights.dim() == 1:
        w = torch.ones(n, dtype=torch.float64, device=x.device) if weights is None else weights.double()
        m = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, codes, w)  # (k,)
        s = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(0, codes, w[:, None] * xd)
        A = B.T @ (m[:, None] * B)  # (r, r)
        A = A + ridge * (A.diagonal().mean().clamp_min(1e-30)) * torch.eye(r, dtype=A.dtype, device=A.device)
        return torch.linalg.solve(A, B.T @ s)  # (r, d)
    w = weights.double()
    m = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(0, codes, w)  # (k, d)
    s = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(0, codes, w * xd)
    A = torch.einsum("kr,kt,ks->trs", B, m, B)  # (d, r, r): one normal matrix per column
    diag = A.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)  # (d,)
    A = A + ridge * diag[:, None, None] * torch.eye(r, dtype=A.dtype, device=A.device)
    rhs = (B.T @ s).T  # (d, r)
    return torch.linalg.solve(A, rhs[:, :, None])[:, :, 0].T  # (r, d)


@register_codec
class SimVQCodebook(Codec):
    """SimVQ codebook ``C = B @ W`` as a codec.

    Args:
        dim: vector length d.
        k: number of codewords.
        rank: inner dimension r of the reparameterization (default ``dim``).
        seed: seeds the frozen basis and the k-means init.
        niter: alternating assignment / least-squares iterations in ``fit``.
        init_niter: k-means iterations for the initial codebook.

    After ``fit``: ``W`` (r, d) float32, ``history`` (weighted MSE per coordinate after each
    assignment; ``history[0]`` is the initial codebook's). ``encode``: x (n, d) -> (n, 1) int64;
    ``decode``: (n, 1) -> (n, d) float32.
    """

    def __init__(self, dim: int, k: int, rank: int | None = None, seed: int = 0, niter: int = 20, init_niter: int = 10):
        require_int("dim", dim, 1)
        require_int("k", k, 1)
        require_int("seed", seed, 0)
        require_int("niter", niter, 0)
        require_int("init_niter", init_niter, 0)
        if rank is not None:
            require_int("rank", rank, 1)
        self.dim, self.k, self.seed, self.niter, self.init_niter = dim, k, seed, niter, init_niter
        self.rank = dim if rank is None else rank
        self.basis = simvq_basis(k, self.rank, seed)  # (k, r), frozen
        self.W: Tensor | None = None
        self.history: list[float] = []
        self._codebook: Tensor | None = None

    @property
    def is_fitted(self) -> bool:
        return self.W is not None

    def codebook(self) -> Tensor:
        """The (k, d) float32 codebook ``B @ W``."""
        self._require_fitted()
        if self._codebook is None:
            self._codebook = simvq_codebook(self.basis.double(), self.W.double()).float()
        return self._codebook

    def _set_w(self, W: Tensor) -> None:
        self.W = W.float().cpu()
        self._codebook = None

    def fit(self, x: Tensor, weights: Tensor | None = None) -> "SimVQCodebook":
        """Learn ``W`` from x (n, d) with optional importance weights (n,) or (n, d)."""
        x = check_vectors(x, self.dim)
        w = check_weights(weights, x)
        n = x.shape[0]
        if self.k > n:
            raise ValueError(f"k={self.k} is larger than the number of vectors n={n}")
        c0 = KMeans(self.k, niter=self.init_niter, seed=self.seed, backend="torch").fit(x, w).centroids
        B = self.basis.double().to(x.device)
        self._set_w(torch.linalg.lstsq(B, c0.double().to(x.device)).solution)  # (r, d)
        self.history = []
        prev = None
        for it in range(self.niter + 1):
            codes, dist = assign(x, self.codebook().to(x.device), w)
            self.history.append(float(dist.double().sum()) / x.numel())
            if it == self.niter or (prev is not None and torch.equal(codes, prev)):
                break
            prev = codes
            self._set_w(simvq_solve_w(B, x, codes, w))
        logger.debug("SimVQ fit: mse %.6g -> %.6g in %d steps", self.history[0], self.history[-1], len(self.history))
        return self

    def encode(self, x: Tensor) -> Tensor:
        self._require_fitted()
        x = check_vectors(x, self.dim)
        return assign(x, self.codebook().to(x.device))[0][:, None]

    def decode(self, codes: Tensor) -> Tensor:
        self._require_fitted()
        codes = check_codes(codes, 1, self.k)
        return self.codebook().to(codes.device)[codes[:, 0]]

    def bits_per_vector(self) -> float:
        return math.log2(self.k)

    def overhead_bits(self) -> int:
        """The materialised (k, d) codebook at ``codebook_bits`` per scalar (what decode needs)."""
        return self.k * self.dim * self.codebook_bits

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "k": self.k, "rank": self.rank, "seed": self.seed, "niter": self.niter, "init_niter": self.init_niter}

    @classmethod
    def check_stored_shapes(cls, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
        """The constructor draws the (k, rank) basis: refuse a config whose k / rank / dim are not
        the stored tensors' shapes before it does."""
        dim, k = config.get("dim"), config.get("k")
        rank = config.get("rank") or dim
        for name, want in (("basis", (k, rank)), ("W", (rank, dim))):
            if shapes.get(name) != want:
                raise ValueError(f"the SimVQCodebook config (dim={dim}, k={k}, rank={rank}) declares {name} "
                                 f"{want}, the file stores {shapes.get(name)}")

    def state_dict(self) -> dict[str, Tensor]:
        self._require_fitted()
        return {"basis": self.basis.clone(), "W": self.W.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> "SimVQCodebook":
        if set(state) != {"basis", "W"}:
            raise ValueError(f"SimVQCodebook state must hold exactly 'basis' and 'W', got {sorted(state)}")
        B, W = state["basis"], state["W"]
        if tuple(B.shape) != (self.k, self.rank) or tuple(W.shape) != (self.rank, self.dim):
            raise ValueError(
                f"state shapes basis {tuple(B.shape)}, W {tuple(W.shape)} do not match "
                f"(k, rank) = ({self.k}, {self.rank}), (rank, dim) = ({self.rank}, {self.dim})"
            )
        self.basis = B.detach().float().cpu().clone()
        self._set_w(W.detach())
        return self
