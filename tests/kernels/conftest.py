"""Shared fixtures for the kernel tests: random layouts covering every supported case.

Without a GPU the Triton kernels run in triton's CPU interpreter. ``triton.jit`` reads
``TRITON_INTERPRET`` when a kernel module is imported (``triton.knobs.runtime.interpret``), so it
is set here, before any test module imports ``vq_kernels.triton_lut``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vq_kernels.layout import VQLayout  # noqa: E402
from vq_kernels.packing import index_bits  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One layout to test: shape, code width, codebook tiling."""

    out: int
    inp: int
    d: int
    M: int
    K: int
    tile_rows: int | None = None
    tile_groups: int | None = None

    def __str__(self) -> str:
        return f"{self.out}x{self.inp}-d{self.d}-M{self.M}-K{self.K}-t{self.tile_rows}x{self.tile_groups}"

    def make(self, seed: int, dtype: torch.dtype = torch.float32):
        """Fresh random (codes int64 (out,G,M), codebooks, scales, layout)."""
        g = torch.Generator().manual_seed(seed)
        n_groups = self.inp // self.d
        tr = self.tile_rows or self.out
        tg = self.tile_groups or n_groups
        lay = VQLayout(self.out, self.inp, self.d, self.M, self.K, index_bits(self.K), tr, tg)
        codes = torch.randint(0, self.K, (self.out, n_groups, self.M), generator=g)
        codebooks = torch.randn(lay.codebook_shape, generator=g).to(dtype)
        scales = (torch.rand(self.out, generator=g) + 0.5).to(dtype)
        return codes, codebooks, scales, lay


# Every layout of the issue: one codebook d in {2,4,8} up to 2^16 entries, M=2 additive K=256 d=8,
# tiles (rows, groups, both, ragged last tile), odd sizes (6x42, 123x431-ish, out % block != 0).
CASES = [
    Case(6, 42, 2, 1, 16),
    Case(123, 431, 1, 1, 16),  # scalar codebook: any in_features
    Case(6, 42, 2, 1, 5),  # K not a power of two
    Case(123, 432, 4, 1, 256),
    Case(37, 96, 8, 1, 65536),
    Case(19, 40, 8, 2, 256),
    Case(70, 64, 8, 2, 256, tile_rows=32, tile_groups=3),  # ragged tiles
    Case(33, 48, 4, 3, 8, tile_rows=16),
    Case(9, 36, 4, 1, 300, tile_groups=4),  # K > 256 (int16 index), column tiles
    # K <= 16 (4-bit CPU index): ragged row/column tiles, odd slots per tile, M = 2
    Case(50, 46, 2, 1, 16, tile_rows=16, tile_groups=7),
    Case(70, 40, 4, 2, 16, tile_rows=32, tile_groups=3),
    Case(40, 16, 2, 1, 16, tile_rows=20),  # row tiles not of whole 16-row blocks: byte index
]


@pytest.fixture(params=CASES, ids=str)
def case(request) -> Case:
    return request.param


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| in float64."""
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


@pytest.fixture
def rel_err():
    return _rel_err
