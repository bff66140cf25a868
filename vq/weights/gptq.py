"""GPTQ (Frantar et al., 2023): scalar per-group quantization with second-order error feedback.

Columns are quantized one at a time; the error of column ``j`` is spread over the columns not
yet quantized with the inverse Hessian (the OBS update, eq. 3 of the paper, in its Cholesky
form, eq. 5)::

    err_j = (w_j - q(w_j)) / U_jj,      W[:, j+1:] -= err_j · U[j, j+1:]        (H⁻¹ = UᵀU)

with updates applied lazily per block of ``block_size`` columns. ``act_order`` visits columns
by decreasing ``diag(H)``; its group grids are then fixed from the original weights ("static
groups") so the stored layout stays in natural column order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from vq.weights.format import QuantizedWeight
from vq.weights.hessian import damped, inverse_cholesky
from vq.codebook.checks import require_int
from vq.weights.rtn import check_group_size, group_grids, uniform_params, uniform_quantize

__all__ = ["GPTQConfig", "gptq_quantize"]


@dataclass(frozen=True)
class GPTQConfig:
    """bits (1..8), group_size (columns per grid), act_order, damp (relative to mean diag H),
    block_size (lazy-update block)."""

    bits: int = 4
    group_size: int = 128
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        require_int("bits", self.bits, 1, 8)
        check_group_size(self.bits, self.group_size)
        if not 0.0 <= self.damp < 1e3:
            raise ValueError(f"damp must be >= 0, got {self.damp}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTQConfig":
        return cls(**d)


@torch.no_grad()
def gptq_quantize(W: Tensor, H: Tensor, config: GPTQConfig) -> QuantizedWeight:
    """W (out, in) float, H (in, in) Hessian -> QuantizedWeight (kind ``uniform``)."""
    out, inp = W.shape
    g = config.group_size
    bits = config.bits
    H, dead = damped(H, config.damp)
    W = W.clone().float()
    W[:, dead] = 0.0
    G = -(-inp // g)
    scale = torch.zeros(out, G)
    zero = torch.zeros(out, G)
    if config.act_order:  # static groups: grids from the original weights
        scale, zero = group_grids(W, bits, g)  # (out, G)
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(inp)
    W = W[:, perm]
    U = inverse_cholesky(H[perm][:, perm]).float()  # (in, in) upper
    codes = torch.zeros(out, inp, dtype=torch.long)
    B = config.block_size
    for i1 in range(0, inp, B):
        i2 = min(i1 + B, inp)
        W1 = W[:, i1:i2].clone()  # (out, b)
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            gi = col // g
            if not config.act_order and col % g == 0:  # grid of the group from the updated weights
                cols = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]  # (out, g)
                scale[:, gi], zero[:, gi] = uniform_params(cols, bits)
            w = W1[:, i]
            c, q = uniform_quantize(w, scale[:, gi], zero[:, gi], bits)
            codes[:, col] = c
            err = (w - q) / U[i1 + i, i1 + i]
            W1[:, i:] -= err[:, None] * U[i1 + i, i1 + i : i2][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return QuantizedWeight.from_uniform(codes, scale, zero, bits=bits, group_size=g)
