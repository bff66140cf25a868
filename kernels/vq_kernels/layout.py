"""The VQ linear layer layout (docs/formats.md, "VQ linear layer layout") and its input checks.

One description shared by the reference, the CPU path, the Triton launchers and ``VQLinear``:

======================  ==========================  ==========================================
tensor                  shape                       dtype
======================  ==========================  ==========================================
codes (logical)         (out, n_groups, M)          integer, values in ``[0, K)``
codes (packed)          (out, words_per_row)        int32 (uint32 bit pattern)
codebooks               (R_t, C_t, M, K, d)         float16 / bfloat16 / float32 / float64
scales                  (out,)                      float
======================  ==========================  ==========================================

Row ``r`` and group ``g`` use codebook tile ``codebooks[r // tile_rows, g // tile_groups]``.

The layout is checked once, when it is built; :meth:`VQLayout.pack` / :meth:`VQLayout.unpack`
then convert codes without checking the width again. Tensors are checked where they enter
(``check_*``): the stored form (``vq.weights.format.QuantizedWeight``) and ``VQLinear`` (user
tensors, ``load_state_dict``) hold the same ``VQLayout`` and do not re-check it between them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from vq_kernels.packing import check_bits, index_bits, pack, unpack, words_per_row

__all__ = ["VQLayout", "FLOAT_DTYPES", "check_input"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


@dataclass(frozen=True)
class VQLayout:
    """Static description of one VQ-compressed linear weight ``(out_features, in_features)``."""

    out_features: int
    in_features: int
    d: int
    M: int
    K: int
    bits: int
    tile_rows: int
    tile_groups: int

    def __post_init__(self) -> None:
        for name in ("out_features", "in_features", "d", "M", "K", "bits", "tile_rows", "tile_groups"):
            _pos_int(name, getattr(self, name))
        check_bits(self.bits)
        if self.in_features % self.d:
            raise ValueError(f"in_features={self.in_features} is not a multiple of d={self.d}")
        if self.K > (1 << self.bits):
            raise ValueError(f"K={self.K} codewords do not fit in bits={self.bits} (max {1 << self.bits})")

    # -- derived sizes ---------------------------------------------------------------------
    @cached_property  # read on every call: computed once
    def n_groups(self) -> int:
        return self.in_features // self.d

    @cached_property  # read on every call: computed once
    def row_tiles(self) -> int:  # R_t
        return -(-self.out_features // self.tile_rows)

    @cached_property  # read on every call: computed once
    def group_tiles(self) -> int:  # C_t
        return -(-self.n_groups // self.tile_groups)

    @cached_property  # read on every call: computed once
    def words_per_row(self) -> int:
        return words_per_row(self.n_groups, self.M, self.bits)

    @cached_property  # read on every call: computed once
    def codebook_shape(self) -> tuple[int, int, int, int, int]:
        return (self.row_tiles, self.group_tiles, self.M, self.K, self.d)

    @property
    def code_bits_per_weight(self) -> float:
        """Code bits per weight (codebooks and scales excluded)."""
        return self.M * self.bits / self.d

    @property
    def lut_pays_off(self) -> bool:
        """Whether per-input tables beat decoding the weight: the tables cost ``R_t * in * M * K``
        multiply-adds per batch row against ``out * in`` for a dense product, so they pay off
        while ``R_t * M * K <= 2 * out`` (measured on CPU: a 2x8 global codebook at 576x576 is
        3x faster by table; GPTVQ-style 16x16-group tiles at 4096x4096 are 3x slower)."""
        return self.row_tiles * self.M * self.K <= 2 * self.out_features

    def config(self) -> dict[str, int]:
        return asdict(self)

    # -- codes -----------------------------------------------------------------------------
    def pack(self, codes: Tensor) -> Tensor:
        """Logical codes (out, n_groups, M), already checked, -> packed (out, words_per_row) int32."""
        return pack(codes, self.bits)

    def unpack(self, packed: Tensor) -> Tensor:
        """Packed codes (out, words_per_row) int32 -> logical (out, n_groups, M) int64."""
        return unpack(packed, self.bits, self.n_groups, self.M)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def make(
        cls, out_features: int, in_features: int, *, d: int, K: int, M: int = 1, bits: int | None = None,
        tile_rows: int | None = None, tile_groups: int | None = None,
    ) -> "VQLayout":
        """The layout with the defaults filled in: ``bits = index_bits(K)``, one global codebook."""
        n_groups = max(1, in_features // _pos_int("d", d)) if isinstance(in_features, int) else 1
        return cls(
            out_features, in_features, d, M, K, index_bits(_pos_int("K", K)) if bits is None else bits,
            out_features if tile_rows is None else tile_rows, n_groups if tile_groups is None else tile_groups,
        )

    @classmethod
    def infer(
        cls,
        codes: Tensor,
        codebooks: Tensor,
        *,
        in_features: int | None = None,
        bits: int | None = None,
        tile_rows: int | None = None,
        tile_groups: int | None = None,
    ) -> "VQLayout":
        """Infer the layout from logical codes (out, n_groups, M) or packed codes + ``in_features``.

        ``bits`` defaults to ``index_bits(K)``; tiles default to one global codebook.
        """
        if not isinstance(codebooks, Tensor) or codebooks.dim() != 5:
            shape = tuple(codebooks.shape) if isinstance(codebooks, Tensor) else type(codebooks).__name__
            raise ValueError(f"codebooks must have shape (R_t, C_t, M, K, d), got {shape}")
        r_t, c_t, m, k, d = codebooks.shape
        if not isinstance(codes, Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        out = codes.shape[0]
        if codes.dim() == 3:
            n_groups = codes.shape[1]
        elif in_features is not None:
            n_groups = in_features // d
        else:
            raise ValueError("in_features is required with packed (2-D) codes")
        if tile_rows is None and r_t > 1:
            tile_rows = -(-out // r_t)
        if tile_groups is None and c_t > 1:
            tile_groups = -(-n_groups // c_t)
        return cls.make(out, n_groups * d, d=d, K=k, M=m, bits=bits, tile_rows=tile_rows, tile_groups=tile_groups)

    # -- checks ----------------------------------------------------------------------------
    def check_codebooks(self, codebooks: Tensor, scales: Tensor) -> None:
        if not isinstance(codebooks, Tensor):
            raise TypeError(f"codebooks must be a torch.Tensor, got {type(codebooks).__name__}")
        if codebooks.dtype not in FLOAT_DTYPES:
            raise TypeError(f"codebooks must be float16/bfloat16/float32/float64, got {codebooks.dtype}")
        if tuple(codebooks.shape) != self.codebook_shape:
            raise ValueError(
                f"codebooks must have shape (R_t, C_t, M, K, d) = {self.codebook_shape}, "
                f"got {tuple(codebooks.shape)}"
            )
        if not isinstance(scales, Tensor):
            raise TypeError(f"scales must be a torch.Tensor, got {type(scales).__name__}")
        if scales.dtype not in FLOAT_DTYPES:
            raise TypeError(f"scales must be a float tensor, got {scales.dtype}")
        if tuple(scales.shape) != (self.out_features,):
            raise ValueError(f"scales must have shape ({self.out_features},), got {tuple(scales.shape)}")
        if scales.device != codebooks.device:
            raise ValueError(f"scales on {scales.device} but codebooks on {codebooks.device}")

    def check_finite(self, codebooks: Tensor, scales: Tensor) -> None:
        """No NaN / Inf in codebooks or scales. Kept out of :meth:`check_codebooks`, which runs on
        every kernel call (a full pass, and a device sync on CUDA); called where a layer's tensors
        enter (``VQLinear.from_codes``, ``load_state_dict``, the stored-format loader)."""
        for name, t in (("codebooks", codebooks), ("scales", scales)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contain NaN or Inf")

    def check_logical_codes(self, codes: Tensor) -> None:
        """Shape, dtype and range ``[0, K)`` of logical codes (out, n_groups, M)."""
        if not isinstance(codes, Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        want = (self.out_features, self.n_groups, self.M)
        if tuple(codes.shape) != want:
            raise ValueError(f"codes must have shape (out, n_groups, M) = {want}, got {tuple(codes.shape)}")
        self._check_range(codes)

    def check_packed_codes(self, codes: Tensor, check_range: bool = True) -> None:
        """Shape/dtype of packed codes; range ``[0, K)`` too when ``K < 2**bits`` and asked."""
        if not isinstance(codes, Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype != torch.int32:
            raise TypeError(f"packed codes must be int32, got dtype {codes.dtype}")
        want = (self.out_features, self.words_per_row)
        if tuple(codes.shape) != want:
            raise ValueError(f"packed codes must have shape (out, words_per_row) = {want}, got {tuple(codes.shape)}")
        if check_range and self.K < (1 << self.bits):
            # every bit pattern is a valid code when K == 2**bits, so this only costs when needed
            self._check_range(self.unpack(codes))

    def _check_range(self, codes: Tensor) -> None:
        if codes.numel() == 0:
            return
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.K:
            bad = lo if lo < 0 else hi
            raise ValueError(f"codes out of range: found {bad}, valid range is [0, {self.K})")


def check_input(x: Tensor, layout: VQLayout, device: torch.device | None = None) -> None:
    """Activations ``x`` (..., in_features), float, on ``device`` when given."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a float tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != layout.in_features:
        raise ValueError(f"x must have shape (..., {layout.in_features}), got {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"x on {x.device} but the weights are on {device}")
