"""The layer-wise proxy loss every Hessian-guided solver minimises (GPTQ, Frantar et al. 2023):

    L(Ŵ) = tr((W - Ŵ) H (W - Ŵ)ᵀ),    H = 2 XᵀX   (X: the layer's calibration inputs, (n, in))

:class:`Hessian` accumulates ``H`` in float64 over batches (``add_batch``), then :func:`damped`
returns ``H + λ·mean(diag H)·I`` with dead inputs (``diag H == 0``) fixed, and
:func:`inverse_cholesky` the upper Cholesky factor ``U`` of ``H⁻¹ = UᵀU`` that drives the
sequential error feedback.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Hessian", "damped", "inverse_cholesky", "proxy_loss"]


class Hessian:
    """Running ``H = 2 XᵀX / n`` of one Linear's inputs (float64, on ``device``).

    The 1/n normalisation changes no argmin and keeps magnitudes comparable across layers.
    """

    def __init__(self, in_features: int, name: str = "layer", device: torch.device | str = "cpu"):
        self.name = name
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.n = 0

    @torch.no_grad()
    def add_batch(self, x: Tensor) -> None:
        """x: (..., in_features) activations feeding the layer."""
        x = x.reshape(-1, x.shape[-1])  # (tokens, in)
        if x.shape[-1] != self.H.shape[0]:
            raise ValueError(f"{self.name}: activations have {x.shape[-1]} features, expected {self.H.shape[0]}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"activations feeding {self.name} contain NaN or Inf")
        m = x.shape[0]
        # one batch's XᵀX in float32 (a sum of a few thousand terms), accumulated in float64:
        # (float64 GEMMs are several times slower on CPU, and this runs for every block)
        x = x.to(self.H.device, torch.float32)
        xtx = (x.T @ x).double()  # (in, in)
        # running mean of 2 x xᵀ over n samples
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        self.H.add_(xtx, alpha=2.0 / self.n)


def damped(H: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """``(H + damp·mean(diag H)·I, dead)`` (float64 copy) with dead inputs' diagonal set to 1.

    ``dead`` (in,) bool marks inputs that were always zero: their weights cannot matter and
    solvers zero them (as GPTQ does).
    """
    if not 0.0 <= damp < 1e3:
        raise ValueError(f"damp must be a non-negative relative damping, got {damp}")
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square (in, in), got {tuple(H.shape)}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("H contains NaN or Inf")
    H = H.to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * float(torch.diag(H).mean()))
    return H, dead


def inverse_cholesky(H: Tensor) -> Tensor:
    """Upper-triangular ``U`` with ``H⁻¹ = UᵀU`` (float64). Raises if ``H`` is not positive definite."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError("Hessian is not positive definite; increase the damping")
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        raise ValueError("inverse Hessian is not positive definite; increase the damping")
    return U


def proxy_loss(W: Tensor, What: Tensor, H: Tensor) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ) in float64."""
    E = (W.double() - What.double())
    return float(torch.einsum("oi,ij,oj->", E, H.double(), E))
