"""Pure-torch oracles for every decode op (obviously correct, not fast).

All functions take *logical* codes ``(out, n_groups, M)`` (use
:func:`vq_kernels.packing.unpack_codes` for packed ones) and follow docs/formats.md::

    W[r, g*d:(g+1)*d] = scales[r] * sum_m codebooks[r // tile_rows, g // tile_groups, m, codes[r, g, m], :]

Arithmetic: float16/bfloat16 inputs are upcast to float32, float64 stays float64. The sum over
``m`` runs in order ``m = 0, 1, ...`` and is then multiplied by the scale — the Triton decode
kernel uses the same order, so decode results match bit for bit. ``dequantize`` rounds the
result to the codebooks' dtype; ``vq_linear`` multiplies with the unrounded float32/float64
weight (what the fused kernels compute).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vq_kernels.layout import VQLayout, check_input

__all__ = ["dequantize", "lut_gemv", "lut_gemm", "vq_linear", "accum_dtype"]


def accum_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def dequantize(
    codes: Tensor,
    codebooks: Tensor,
    scales: Tensor,
    tile_rows: int | None = None,
    tile_groups: int | None = None,
) -> Tensor:
    """Decode logical codes into the dense weight.

    Args:
        codes: (out, n_groups, M) integer codes in ``[0, K)``.
        codebooks: (R_t, C_t, M, K, d) float.
        scales: (out,) float.
        tile_rows, tile_groups: codebook tile sizes (default: one global codebook).
    Returns:
        (out, n_groups * d) weight in ``codebooks.dtype``.
    """
    return _decode(codes, codebooks, scales, tile_rows, tile_groups).to(codebooks.dtype)


def _decode(codes: Tensor, codebooks: Tensor, scales: Tensor, tile_rows: int | None, tile_groups: int | None, acc: torch.dtype | None = None) -> Tensor:
    """(out, in) weight in the accumulation dtype (float32, or float64 when any input is)."""
    layout = VQLayout.infer(codes, codebooks, tile_rows=tile_rows, tile_groups=tile_groups, bits=16)
    layout.check_logical_codes(codes)
    layout.check_codebooks(codebooks, scales)
    out, n_groups, m_books = codes.shape
    acc = acc or accum_dtype(codebooks.dtype, scales.dtype)
    cb = codebooks.to(acc)
    codes = codes.long().to(cb.device)
    rt = (torch.arange(out, device=cb.device) // layout.tile_rows)[:, None]  # (out, 1)
    ct = (torch.arange(n_groups, device=cb.device) // layout.tile_groups)[None, :]  # (1, n_groups)
    w = cb[rt, ct, 0, codes[:, :, 0]]  # (out, n_groups, d)
    for m in range(1, m_books):
        w = w + cb[rt, ct, m, codes[:, :, m]]
    w = w * scales.to(acc)[:, None, None]
    return w.reshape(out, n_groups * layout.d)  # (out, in_features)


def vq_linear(
    x: Tensor,
    codes: Tensor,
    codebooks: Tensor,
    scales: Tensor,
    tile_rows: int | None = None,
    tile_groups: int | None = None,
) -> Tensor:
    """``x @ dequantize(...).T`` for x (..., in_features) -> (..., out) in ``x.dtype``.

    The product runs in float64 when x or the codebooks are float64, else float32.
    """
    layout = VQLayout.infer(codes, codebooks, tile_rows=tile_rows, tile_groups=tile_groups, bits=16)
    check_input(x, layout)
    acc = accum_dtype(x.dtype, codebooks.dtype, scales.dtype)
    w = _decode(codes, codebooks, scales, tile_rows, tile_groups, acc)  # (out, in), not rounded
    y = x.to(acc) @ w.T  # (..., out)
    return y.to(x.dtype)


# the GEMV (batch 1-8) and GEMM (larger batch) kernels compute the same function
lut_gemv = vq_linear
lut_gemm = vq_linear
