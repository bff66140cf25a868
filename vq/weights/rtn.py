"""Round-to-nearest scalar quantization, asymmetric, per group of input columns — the floor
every other solver must beat.

For each row and group of ``group_size`` consecutive input columns (the last group may be
shorter when ``group_size`` does not divide ``in_features``)::

    scale = (max - min) / (2^b - 1),   zero = round(-min / scale),
    q = clamp(round(w / scale) + zero, 0, 2^b - 1),    ŵ = scale · (q - zero)

``scale`` is rounded to fp16 before use, so what the solver computes is what is stored.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from vq.codebook.checks import require_int
from vq.weights.format import QuantizedWeight

__all__ = ["RTNConfig", "uniform_params", "uniform_quantize", "group_grids", "rtn_quantize", "check_group_size",
           "GRID_BITS"]

log = logging.getLogger(__name__)

#: bits stored per (scale, zero) grid: an fp16 scale and a uint8 zero (QuantizedWeight.from_uniform)
GRID_BITS = 16 + 8


def check_group_size(bits: int, group_size: int) -> float:
    """``group_size`` as columns per (scale, zero) grid: an int >= 1 (else ``ValueError``); logs a
    warning when the grids' overhead (``GRID_BITS / group_size`` bits per weight) exceeds the code
    bits, naming the resulting bits/weight (2-bit codes in groups of 7: 5.43; 4-bit ones: 7.43, no
    warning, as the grids cost less than the codes). Returns those bits per weight (codes +
    grids, ignoring a shorter last group)."""
    require_int("group_size", group_size, 1)
    total = bits + GRID_BITS / group_size
    if GRID_BITS / group_size > bits:
        log.warning("group_size %d with %d-bit codes stores %.2f bits/weight (%.2f of them fp16 scales and "
                    "uint8 zeros); groups of >= %d columns keep that overhead at most the code bits",
                    group_size, bits, total, GRID_BITS / group_size, -(-GRID_BITS // bits))
    return total


@dataclass(frozen=True)
class RTNConfig:
    """bits: code width (1..8); group_size: input columns sharing one (scale, zero)."""

    bits: int = 4
    group_size: int = 128

    def __post_init__(self) -> None:
        require_int("bits", self.bits, 1, 8)
        check_group_size(self.bits, self.group_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RTNConfig":
        return cls(**d)


def uniform_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Min-max asymmetric grid for each row of w (..., n): returns (scale fp16-exact float32, zero float)."""
    maxq = (1 << bits) - 1
    lo = w.amin(-1).clamp(max=0.0)
    hi = w.amax(-1).clamp(min=0.0)
    scale = ((hi - lo) / maxq).to(torch.float16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def uniform_quantize(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes and dequantized values of w (..., n) on the grid (scale, zero) of shape (...,) or broadcastable."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)
    return q.long(), scale * (q - zero)


def group_grids(W: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Min-max grids of W (out, in) per group of ``group_size`` columns (the last may be shorter):
    (scale, zero) each (out, ceil(in / group_size))."""
    grids = [uniform_params(W[:, c : c + group_size], bits) for c in range(0, W.shape[1], group_size)]
    return torch.stack([s for s, _ in grids], 1), torch.stack([z for _, z in grids], 1)


def rtn_quantize(W: Tensor, config: RTNConfig) -> QuantizedWeight:
    """W (out, in) float -> QuantizedWeight (kind ``uniform``)."""
    g = config.group_size
    scale, zero = group_grids(W.float(), config.bits, g)  # (out, G)
    col_group = torch.arange(W.shape[1]) // g  # (in,)
    codes, _ = uniform_quantize(W.float(), scale[:, col_group], zero[:, col_group], config.bits)
    return QuantizedWeight.from_uniform(codes, scale, zero, bits=config.bits, group_size=g)
