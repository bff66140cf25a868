"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

Each of the ``d = len(levels)`` coordinates is rounded on its own to one of ``levels[i]``
values; the implicit codebook is the product grid of ``prod(levels)`` points, and a point is
named by one mixed-radix integer.

Input range convention
----------------------
Coordinate ``i`` is quantized on the uniform grid of ``L = levels[i]`` points spanning
``[-1, 1]`` with both ends included::

    value(j) = -1 + 2 j / (L - 1),      j = 0 .. L - 1        (the per-dim "digit" j)

Inputs outside ``[-1, 1]`` are clamped. The paper's bounding function (``tanh``) is left to
the caller (the tokenizer layer applies it before quantizing, so its gradients stay there).
For odd ``L`` the grid contains 0; for even ``L`` it is offset by half a step and has no 0 —
this is the paper's half-step offset for even levels, written on a grid normalised to [-1, 1].

Index layout
------------
Mixed radix with the first coordinate least significant:
``index = sum_i digit_i * prod(levels[:i])``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vq.codebook.checks import check_codes, check_vectors, check_weights, require_int
from vq.codebook.protocol import Codec, register_codec

__all__ = ["FSQ"]

_MAX_CODEBOOK = 2**62  # indices are int64; stay well inside


@register_codec
class FSQ(Codec):
    """Finite scalar quantizer with an implicit product codebook.

    Args:
        levels: number of levels per dimension, each >= 2; ``dim = len(levels)``.

    ``encode(x)``: x (n, d) float -> codes (n, 1) int64 in ``[0, prod(levels))``.
    ``decode(codes)``: (n, 1) -> (n, d) float32 grid values (exact inverse on grid points).
    ``fit`` learns nothing (the codebook is fixed); it only validates its input.
    """

    def __init__(self, levels: list[int]):
        if not isinstance(levels, (list, tuple)):
            raise TypeError(f"levels must be a list of ints, got {type(levels).__name__}")
        if len(levels) == 0:
            raise ValueError("levels must not be empty")
        for i, lv in enumerate(levels):
            require_int(f"levels[{i}]", lv, 2)
        size = math.prod(levels)
        if size >= _MAX_CODEBOOK:
            raise ValueError(f"codebook size prod(levels) = {size} does not fit an int64 index")
        self.levels = [int(lv) for lv in levels]
        self.dim = len(levels)
        self.codebook_size = size
        # radix[i] = prod(levels[:i]); first coordinate least significant
        radix = [1]
        for lv in self.levels[:-1]:
            radix.append(radix[-1] * lv)
        self._radix = torch.tensor(radix, dtype=torch.int64)  # (d,)
        self._levels_t = torch.tensor(self.levels, dtype=torch.int64)  # (d,)

    # -- digits <-> index ------------------------------------------------------------------
    def codes_to_index(self, digits: Tensor) -> Tensor:
        """Per-dimension digits (n, d) int, ``0 <= digits[:, i] < levels[i]`` -> flat index (n,) int64."""
        digits = check_codes(digits, self.dim, self.levels, name="digits")
        return (digits * self._radix.to(digits.device)).sum(dim=1)

    def index_to_codes(self, index: Tensor) -> Tensor:
        """Flat index (n,) int in ``[0, prod(levels))`` -> per-dimension digits (n, d) int64."""
        if isinstance(index, Tensor) and index.dim() == 1:
            index = index[:, None]  # (n, 1)
        index = check_codes(index, 1, self.codebook_size, name="index")
        radix = self._radix.to(index.device)
        levels = self._levels_t.to(index.device)
        return torch.div(index, radix, rounding_mode="floor") % levels  # (n, d)

    # -- values <-> digits -----------------------------------------------------------------
    def quantize_digits(self, x: Tensor) -> Tensor:
        """x (n, d) float -> nearest grid digit per coordinate (n, d) int64 (inputs clamped to [-1, 1])."""
        x = check_vectors(x, self.dim)
        half = (self._levels_t.to(x.device, x.dtype) - 1) / 2  # (d,)
        t = (x.clamp(-1.0, 1.0) + 1.0) * half  # in [0, L-1]
        return torch.round(t).long()

    def digits_to_values(self, digits: Tensor) -> Tensor:
        """Digits (n, d) -> grid values (n, d) float32 in [-1, 1]."""
        digits = check_codes(digits, self.dim, self.levels, name="digits")
        half = (self._levels_t.to(digits.device) - 1).double() / 2  # (d,)
        return (digits.double() / half - 1.0).float()

    # -- codec protocol ---------------------------------------------------------------------
    def fit(self, x: Tensor, weights: Tensor | None = None) -> "FSQ":
        """No-op (fixed codebook); validates ``x`` (n, d) and ``weights``."""
        x = check_vectors(x, self.dim)
        check_weights(weights, x)
        return self

    def encode(self, x: Tensor) -> Tensor:
        """x (n, d) float -> codes (n, 1) int64."""
        return self.codes_to_index(self.quantize_digits(x))[:, None]

    def decode(self, codes: Tensor) -> Tensor:
        """codes (n, 1) int -> (n, d) float32."""
        codes = check_codes(codes, 1, self.codebook_size)
        return self.digits_to_values(self.index_to_codes(codes[:, 0]))

    def codebook(self) -> Tensor:
        """All ``prod(levels)`` points in index order, (prod(levels), d) float32 (small sizes only)."""
        if self.codebook_size > 2**24:
            raise ValueError(f"codebook of {self.codebook_size} points is too large to materialise")
        return self.decode(torch.arange(self.codebook_size)[:, None])

    def bits_per_vector(self) -> float:
        return math.log2(self.codebook_size)

    def overhead_bits(self) -> int:
        return 0

    def config(self) -> dict[str, Any]:
        return {"levels": list(self.levels)}
