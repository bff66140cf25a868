"""Product (grouped) VQ: split each d-vector into ``groups`` contiguous sub-vectors and
quantize each with its own k-means codebook (Jégou et al., "Product quantization for nearest
neighbor search", 2011).

A vector ``x`` (d,) becomes ``groups`` codes; ``decode`` concatenates the chosen sub-centroids::

    x[g*ds:(g+1)*ds] ~ codebooks[g, codes[g]],   ds = d // groups
"""
from __future__ import annotations

import logging
import math
from abc import abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from vq.codebook.kmeans import KMeans, assign
from vq.codebook.checks import check_codes, check_vectors, check_weights, require_choice, require_int, require_k_le_n
from vq.codebook.protocol import Codec, register_codec

__all__ = ["CodebookStack", "ProductVQ", "ProductVQConfig"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")


def require_fields(cfg: Any, **minimum: int) -> None:
    """Validate a config's ``dim``, ``k``, ``niter``, ``seed``, ``backend`` and the int fields
    named in ``minimum`` (field name -> smallest allowed value)."""
    for name, low in {"dim": 1, "k": 1, "niter": 0, "seed": 0, **minimum}.items():
        require_int(name, getattr(cfg, name), low)
    require_choice("backend", cfg.backend, BACKENDS)


class CodebookStack(Codec):
    """Shared plumbing of the codecs whose whole state is one ``codebooks`` tensor (m, k, width)
    and whose codes are (n, m) with values in [0, k): ProductVQ, ResidualVQ, AdditiveVQ.

    Subclasses set ``cfg`` (a frozen config dataclass with ``dim`` and ``k``) and ``dim`` in
    ``__init__``, and define ``n_books`` (m) and, if not ``dim``, ``book_width``."""

    cfg: Any
    codebooks: Tensor | None = None

    @property
    @abstractmethod
    def n_books(self) -> int: ...

    @property
    def book_width(self) -> int:
        return self.dim

    @property
    def is_fitted(self) -> bool:
        return self.codebooks is not None

    def bits_per_vector(self) -> float:
        return self.n_books * math.log2(self.cfg.k)

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def state_dict(self) -> dict[str, Tensor]:
        self._require_fitted()
        return {"codebooks": self.codebooks}

    def load_state_dict(self, state: dict[str, Tensor]) -> "CodebookStack":
        name, shape = type(self).__name__, (self.n_books, self.cfg.k, self.book_width)
        if set(state) != {"codebooks"}:
            raise ValueError(f"{name} state must hold exactly 'codebooks', got {sorted(state)}")
        books = state["codebooks"]
        if not isinstance(books, Tensor) or not books.dtype.is_floating_point:
            raise TypeError(f"{name} codebooks must be a floating-point tensor")
        if tuple(books.shape) != shape:
            raise ValueError(f"{name} codebooks must have shape {shape}, got {tuple(books.shape)}")
        if not bool(torch.isfinite(books).all()):
            raise ValueError(f"{name} codebooks contain NaN or Inf")
        self.codebooks = books.clone()
        return self

    def _encode_inputs(self, x: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Validate :meth:`encode`'s inputs; return x and the per-coordinate (n, d) weights or
        None ((n,) weights scale a vector's error but do not change its best code)."""
        self._require_fitted()
        x = check_vectors(x, self.dim)
        w = check_weights(weights, x)
        return x, (None if w is None or w.dim() == 1 else w)

    def _checked_codes(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Validate codes (n, m) for :meth:`decode`; return them (int64) and the codebooks on their device."""
        self._require_fitted()
        codes = check_codes(codes, self.n_books, self.cfg.k)
        return codes, self.codebooks.to(codes.device)

@dataclass(frozen=True)
class ProductVQConfig:
    """Constructor arguments of :class:`ProductVQ` (validated on creation)."""

    dim: int
    groups: int
    k: int
    niter: int = 20
    seed: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        require_fields(self, groups=1)
        if self.dim % self.groups:
            raise ValueError(f"dim = {self.dim} is not divisible by groups = {self.groups}")


@register_codec
class ProductVQ(CodebookStack):
    """Product quantizer: ``groups`` independent k-means codebooks over contiguous sub-vectors.

    Args:
        dim: vector length d (divisible by ``groups``).
        groups: number of sub-vectors / codebooks.
        k: codewords per codebook.
        niter, seed, backend: passed to each group's :class:`~vq.codebook.KMeans`
            (group ``g`` uses seed ``seed + g``).

    State: ``codebooks`` (groups, k, d // groups) float32. Codes: (n, groups) int64.
    """

    def __init__(self, dim: int, groups: int, k: int, niter: int = 20, seed: int = 0, backend: str = "auto"):
        self.cfg = ProductVQConfig(dim, groups, k, niter, seed, backend)
        self.dim = dim

    @property
    def n_books(self) -> int:
        return self.cfg.groups

    @property
    def book_width(self) -> int:
        return self.cfg.dim // self.cfg.groups

    def fit(self, x: Tensor, weights: Tensor | None = None) -> "ProductVQ":
        """Fit one k-means per group. ``x`` (n, d) float; ``weights`` None, (n,) or (n, d) >= 0."""
        x = check_vectors(x, self.dim)
        w = check_weights(weights, x)
        require_k_le_n(self.cfg.k, x.shape[0])
        ds, books = self.book_width, []
        for g in range(self.cfg.groups):
            cols = slice(g * ds, (g + 1) * ds)
            wg = None if w is None else (w if w.dim() == 1 else w[:, cols])  # (n,) or (n, ds)
            if wg is not None and not bool((wg > 0).any()):
                wg = None  # a group nobody cares about: any codebook is optimal, fit it unweighted
            km = KMeans(self.cfg.k, niter=self.cfg.niter, backend=self.cfg.backend, seed=self.cfg.seed + g)
            books.append(km.fit(x[:, cols], weights=wg).centroids.float())
            log.debug("ProductVQ group %d/%d fitted, inertia %.4g", g + 1, self.cfg.groups, km.inertia)
        self.codebooks = torch.stack(books)  # (groups, k, ds)
        return self

    def encode(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """Nearest sub-centroid per group. ``x`` (n, d) -> codes (n, groups) int64.

        ``weights`` (n, d) (optional) makes the search per-coordinate weighted."""
        x, w = self._encode_inputs(x, weights)
        ds, books = self.book_width, self.codebooks.to(x.device)
        cols = [slice(g * ds, (g + 1) * ds) for g in range(self.cfg.groups)]
        codes = [assign(x[:, c].float(), books[g], None if w is None else w[:, c].float())[0] for g, c in enumerate(cols)]
        return torch.stack(codes, dim=1)  # (n, groups)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (n, groups) int -> (n, d) float32."""
        codes, books = self._checked_codes(codes)
        g = torch.arange(self.cfg.groups, device=codes.device)
        return books[g, codes].reshape(codes.shape[0], self.dim)  # (n, groups, ds) -> (n, d)
