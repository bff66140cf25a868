"""Triton kernels for the VQ linear layout (docs/formats.md) on packed int32 codes.

Three tiers per op: a private ``@triton.jit`` kernel, a launcher here that validates every input
(dtype, contiguity, shape, device, codes < K) *before* it launches anything, and the
``torch.library`` custom op in :mod:`vq_kernels.ops`.

* ``dequantize``: one program per (row block, column block) decodes the bit-packed codes of its
  tile, sums the M codewords in order m = 0, 1, ... and multiplies by the row scale — the
  reference's order, so the result is bit-identical.
* ``lut_gemv`` (B <= 8): two kernels. ``_table_kernel`` builds, per input group g and codebook
  m, the table ``T[rt, (g, m), k, b] = x[b, g] . codebook[rt, ct(g), m, k]`` (R_t * J * K * BP
  floats, L2-resident for K <= 1024); ``_gather_kernel`` runs on a 2-D grid (row blocks x
  split-K slices of the groups): each program decodes its codes, gathers the table entries and
  sums them over its slice only, writing one partial per slice (no whole row of K is ever held
  in registers). The partials are summed and scaled on the host side (deterministic order).
  Layouts with K > ``LUT_MAX_K`` or many row tiles (``VQLayout.lut_pays_off`` false) use the
  GEMM kernel instead.
* ``lut_gemm``: one program per (batch block, output block); the loop over the input dimension
  decodes a (BLOCK_N, BLOCK_G groups, d) weight tile in registers (each code once, its codeword
  as one short vector load), flattens it and accumulates ``tl.dot(x, W^T)``.
  float32 inputs use ``input_precision="ieee"`` (no TF32), half inputs the tensor cores.

Tests run all kernels on CPU with ``TRITON_INTERPRET=1`` (read by ``triton.jit`` when this
module is imported, so it must be set before the import).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vq_kernels.layout import VQLayout, check_input

__all__ = ["dequantize", "lut_gemv", "lut_gemm", "LUT_MAX_K", "GEMV_MAX_BATCH", "interpreting"]

#: largest codebook for which lut_gemv builds tables (2^10 codewords x 4 B x BP per group)
LUT_MAX_K = 1024
GEMV_MAX_BATCH = 8
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


# -- kernels ------------------------------------------------------------------------------
@triton.jit
def _decode(codes_ptr, rows, j, mask, WPR, BITS: tl.constexpr):
    """Codes number ``j`` (broadcast against ``rows``) of the packed rows: int32 in [0, 2**BITS)."""
    s = j * BITS  # stream bit of the code
    w = s >> 5
    off = (s & 31).to(tl.uint32)
    base = codes_ptr + rows.to(tl.int64) * WPR + w
    lo = tl.load(base, mask=mask, other=0).to(tl.uint32, bitcast=True)
    straddle = off + BITS > 32
    hi = tl.load(base + 1, mask=mask & straddle, other=0).to(tl.uint32, bitcast=True)
    code = ((lo >> off) | (hi << ((32 - off) & 31))) & ((1 << BITS) - 1)
    return code.to(tl.int32)


@triton.jit
def _dequant_tile(codes_ptr, cb_ptr, rows, cols, mask, WPR, C_T, TILE_ROWS, TILE_GROUPS,
                  M: tl.constexpr, K: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, ACC: tl.constexpr):
    """Unscaled decoded weights of a (rows, cols) tile: sum_m codebook[..., code, col % D]."""
    g = cols // D
    e = cols % D
    tile = (rows // TILE_ROWS)[:, None] * C_T + (g // TILE_GROUPS)[None, :]  # (R, C) codebook tile
    acc = tl.zeros(mask.shape, ACC)
    for m in tl.static_range(M):
        code = _decode(codes_ptr, rows[:, None], (g * M + m)[None, :], mask, WPR, BITS)
        off = ((tile.to(tl.int64) * M + m) * K + code) * D + e[None, :]
        cw = tl.load(cb_ptr + off, mask=mask, other=0.0).to(ACC)
        if m == 0:
            acc = cw
        else:
            acc = acc + cw
    return acc


@triton.jit
def _dequant_kernel(codes_ptr, cb_ptr, scales_ptr, w_ptr, OUT, IN, WPR, C_T, TILE_ROWS, TILE_GROUPS,
                    M: tl.constexpr, K: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < OUT
    mask = rmask[:, None] & (cols < IN)[None, :]
    acc = _dequant_tile(codes_ptr, cb_ptr, rows, cols, mask, WPR, C_T, TILE_ROWS, TILE_GROUPS, M, K, D, BITS, ACC)
    s = tl.load(scales_ptr + rows, mask=rmask, other=0.0).to(ACC)
    w = acc * s[:, None]
    tl.store(w_ptr + rows.to(tl.int64)[:, None] * IN + cols[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _table_kernel(x_ptr, cb_ptr, t_ptr, B, IN, J, C_T, TILE_GROUPS,
                  M: tl.constexpr, K: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BP: tl.constexpr,
                  BLOCK: tl.constexpr):
    """T[rt, j, k, b] = x[b, g(j)] . codebook[rt, ct(g), m(j), k] for BLOCK flat (j, k) of one rt."""
    rt = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # flat j * K + k
    imask = i < J * K
    j = i // K
    k = i % K
    g = j // M
    m = j % M
    es = tl.arange(0, DP)
    bs = tl.arange(0, BP)
    emask = es < D
    book = ((rt * C_T + g // TILE_GROUPS) * M + m).to(tl.int64) * K + k  # (BLOCK,) codeword row
    cw = tl.load(cb_ptr + book[:, None] * D + es[None, :], mask=imask[:, None] & emask[None, :], other=0.0)
    xoff = bs[None, :, None] * IN + (g * D)[:, None, None] + es[None, None, :]  # (BLOCK, BP, DP)
    xmask = imask[:, None, None] & (bs < B)[None, :, None] & emask[None, None, :]
    xv = tl.load(x_ptr + xoff, mask=xmask, other=0.0)
    t = tl.sum(cw.to(tl.float32)[:, None, :] * xv.to(tl.float32), axis=2)  # (BLOCK, BP)
    out = (rt.to(tl.int64) * J * K + i) * BP
    tl.store(t_ptr + out[:, None] + bs[None, :], t, mask=imask[:, None])


@triton.jit
def _gather_kernel(codes_ptr, t_ptr, part_ptr, OUT, WPR, J, TILE_ROWS, J_PER_SPLIT,
                   K: tl.constexpr, BITS: tl.constexpr, BP: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_J: tl.constexpr):
    """part[s, r, b] = sum over j in split s of T[rt(r), j, code[r, j], b]."""
    pid_s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < OUT
    rt = (rows // TILE_ROWS).to(tl.int64)
    bs = tl.arange(0, BP)
    acc = tl.zeros((BLOCK_R, BP), tl.float32)
    j_start = pid_s * J_PER_SPLIT
    for jj in range(0, J_PER_SPLIT, BLOCK_J):
        js = j_start + jj + tl.arange(0, BLOCK_J)
        mask = rmask[:, None] & (js < J)[None, :]
        code = _decode(codes_ptr, rows[:, None], js[None, :], mask, WPR, BITS)  # (R, BJ)
        entry = ((rt[:, None] * J + js[None, :]) * K + code) * BP  # (R, BJ)
        vals = tl.load(t_ptr + entry[:, :, None] + bs[None, None, :], mask=mask[:, :, None], other=0.0)
        acc += tl.sum(vals, axis=1)
    out = (pid_s * OUT + rows).to(tl.int64)
    tl.store(part_ptr + out[:, None] * BP + bs[None, :], acc, mask=rmask[:, None])


@triton.jit
def _gemm_kernel(x_ptr, codes_ptr, cb_ptr, scales_ptr, y_ptr, B, OUT, IN, WPR, C_T, TILE_ROWS, TILE_GROUPS,
                 M: tl.constexpr, K: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr,
                 IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """y[b, n] = scales[n] * sum_c x[b, c] * W~[n, c] with W~ decoded tile by tile in registers.

    A tile is (BLOCK_N rows, BLOCK_G groups, DP) with DP = next power of two >= D: each code is
    decoded once and its codeword loaded as one short vector (not once per column); the tile is
    then flattened to (BLOCK_N, BLOCK_G * DP) for ``tl.dot``, and x is loaded in the same padded
    layout (zeros where e >= D), so padding adds nothing to the product.
    """
    bs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    es = tl.arange(0, DP)
    bmask = bs < B
    nmask = ns < OUT
    emask = es < D
    n_groups = IN // D
    rt = (ns // TILE_ROWS).to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        gs = g0 + tl.arange(0, BLOCK_G)
        gmask = gs < n_groups
        mask2 = nmask[:, None] & gmask[None, :]  # (N, G)
        tile = rt[:, None] * C_T + (gs // TILE_GROUPS)[None, :]  # (N, G) codebook tile
        w = tl.zeros((BLOCK_N, BLOCK_G, DP), tl.float32)
        for m in tl.static_range(M):
            code = _decode(codes_ptr, ns[:, None], (gs * M + m)[None, :], mask2, WPR, BITS)  # (N, G)
            row = ((tile * M + m) * K + code) * D  # (N, G) start of the codeword
            cw = tl.load(cb_ptr + row[:, :, None] + es[None, None, :], mask=mask2[:, :, None] & emask[None, None, :],
                         other=0.0)
            w += cw.to(tl.float32)
        xoff = bs.to(tl.int64)[:, None, None] * IN + (gs * D)[None, :, None] + es[None, None, :]
        xmask = bmask[:, None, None] & gmask[None, :, None] & emask[None, None, :]
        xt = tl.load(x_ptr + xoff, mask=xmask, other=0.0)  # (B, G, DP)
        w2 = tl.reshape(w, (BLOCK_N, BLOCK_G * DP))
        x2 = tl.reshape(xt, (BLOCK_B, BLOCK_G * DP))
        if IEEE:
            acc += tl.dot(x2.to(tl.float32), tl.trans(w2), input_precision="ieee")
        else:
            acc += tl.dot(x2, tl.trans(w2.to(x2.dtype)))
    s = tl.load(scales_ptr + ns, mask=nmask, other=0.0).to(tl.float32)
    y = acc * s[None, :]
    tl.store(y_ptr + bs.to(tl.int64)[:, None] * OUT + ns[None, :], y.to(y_ptr.dtype.element_ty),
             mask=bmask[:, None] & nmask[None, :])


# -- launchers ----------------------------------------------------------------------------
def _check_device(*tensors: Tensor) -> None:
    dev = tensors[0].device
    for t in tensors[1:]:
        if t.device != dev:
            raise ValueError(f"all inputs must be on one device, got {dev} and {t.device}")
    if dev.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {dev}")


def _check_weights(codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout, f64_ok: bool = False) -> None:
    lay.check_codebooks(codebooks, scales)
    allowed = _TRITON_DTYPES + ((torch.float64,) if f64_ok else ())
    for name, t in (("codebooks", codebooks), ("scales", scales)):
        if t.dtype not in allowed:
            raise TypeError(f"{name}: the Triton kernels take {allowed}, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if not isinstance(codes, Tensor) or not codes.is_contiguous():
        raise ValueError("packed codes must be a contiguous tensor")
    _check_device(codes, codebooks, scales)
    lay.check_packed_codes(codes)  # shape, int32 and codes < K: before any kernel runs


def _check_x(x: Tensor, lay: VQLayout, codes: Tensor) -> None:
    check_input(x, lay, codes.device)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, {lay.in_features}), got {tuple(x.shape)}")
    if x.dtype not in _TRITON_DTYPES:
        raise TypeError(f"x: the Triton kernels take {_TRITON_DTYPES}, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def dequantize(codes: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> Tensor:
    """Packed codes -> (out, in) weight in the codebooks' dtype, bit-identical to the reference."""
    lay = layout
    _check_weights(codes, codebooks, scales, lay, f64_ok=True)
    # triton's CPU interpreter converts float32 -> bfloat16 by truncation (numpy has no bfloat16),
    # the GPU rounds to nearest even like torch: under the interpreter the cast is done by torch
    host_cast = interpreting() and codebooks.dtype == torch.bfloat16
    out_dtype = torch.float32 if host_cast else codebooks.dtype
    w = torch.empty(lay.out_features, lay.in_features, dtype=out_dtype, device=codebooks.device)
    f64 = torch.float64 in (codebooks.dtype, scales.dtype)
    block_r, block_c = 16, 128 if not interpreting() else 64
    grid = (triton.cdiv(lay.out_features, block_r), triton.cdiv(lay.in_features, block_c))
    _dequant_kernel[grid](
        codes, codebooks, scales, w, lay.out_features, lay.in_features, lay.words_per_row, lay.group_tiles,
        lay.tile_rows, lay.tile_groups, M=lay.M, K=lay.K, D=lay.d, BITS=lay.bits,
        ACC=tl.float64 if f64 else tl.float32, BLOCK_R=block_r, BLOCK_C=block_c,
    )
    return w.to(codebooks.dtype) if host_cast else w


def lut_gemv(
    x: Tensor,
    codes: Tensor,
    codebooks: Tensor,
    scales: Tensor,
    layout: VQLayout,
    split_k: int | None = None,
    force_lut: bool = False,
) -> Tensor:
    """x (B, in), B <= 8 -> (B, out) in x's dtype: per-group tables, then split-K gathered sums.

    ``split_k``: number of slices of the groups (default: enough programs for ~4 waves);
    ``force_lut``: use the tables even where the layout says decoding is cheaper (tests).
    """
    lay = layout
    _check_weights(codes, codebooks, scales, lay)
    _check_x(x, lay, codes)
    b = x.shape[0]
    if not 1 <= b <= GEMV_MAX_BATCH:
        raise ValueError(f"lut_gemv takes 1 <= B <= {GEMV_MAX_BATCH} rows, got {b}")
    if lay.K > LUT_MAX_K or not (lay.lut_pays_off or force_lut):  # tables too large or too many: decode instead
        return lut_gemm(x, codes, codebooks, scales, lay)
    dev = x.device
    j = lay.n_groups * lay.M
    bp = _pow2(b)
    table = torch.empty(lay.row_tiles, j, lay.K, bp, dtype=torch.float32, device=dev)
    dp = _pow2(lay.d)
    block = 4096 if interpreting() else max(32, 4096 // (bp * dp))  # ~4K products per program
    _table_kernel[(lay.row_tiles, triton.cdiv(j * lay.K, block))](
        x, codebooks, table, b, lay.in_features, j, lay.group_tiles, lay.tile_groups,
        M=lay.M, K=lay.K, D=lay.d, DP=dp, BP=bp, BLOCK=block,
    )
    # GPU: about 2K gathered values per program (64 rows x 32/BP groups x BP) to stay in registers
    block_r, block_j = (64, max(4, 32 // bp)) if not interpreting() else (64, 64)
    row_blocks = triton.cdiv(lay.out_features, block_r)
    if split_k is None:  # enough programs to fill the GPU: about 4 waves of 132 SMs
        split_k = max(1, min(triton.cdiv(j, 4 * block_j), triton.cdiv(528, row_blocks)))
    j_per_split = triton.cdiv(triton.cdiv(j, split_k), block_j) * block_j
    split_k = triton.cdiv(j, j_per_split)
    part = torch.empty(split_k, lay.out_features, bp, dtype=torch.float32, device=dev)
    _gather_kernel[(row_blocks, split_k)](
        codes, table, part, lay.out_features, lay.words_per_row, j, lay.tile_rows, j_per_split,
        K=lay.K, BITS=lay.bits, BP=bp, BLOCK_R=block_r, BLOCK_J=block_j,
    )
    y = part.sum(0)[:, :b] * scales.float()[:, None]  # (out, B)
    return y.T.to(x.dtype).contiguous()  # (B, out)


def lut_gemm(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> Tensor:
    """x (B, in) -> (B, out) in x's dtype: weight tiles decoded in registers, then ``tl.dot``."""
    lay = layout
    _check_weights(codes, codebooks, scales, lay)
    _check_x(x, lay, codes)
    b = x.shape[0]
    y = torch.empty(b, lay.out_features, dtype=x.dtype, device=x.device)
    if b == 0:
        return y
    block_b = 16 if b <= 16 else 32 if b <= 32 else 64
    dp = _pow2(lay.d)
    block_n = 64 if not interpreting() else 32
    block_g = max(1, (64 if not interpreting() else 32) // dp)  # 64 (32) columns per step, >= 16 for tl.dot
    block_g = max(block_g, -(-16 // dp))
    grid = (triton.cdiv(b, block_b), triton.cdiv(lay.out_features, block_n))
    _gemm_kernel[grid](
        x, codes, codebooks, scales, y, b, lay.out_features, lay.in_features, lay.words_per_row, lay.group_tiles,
        lay.tile_rows, lay.tile_groups, M=lay.M, K=lay.K, D=lay.d, DP=dp, BITS=lay.bits,
        IEEE=x.dtype == torch.float32, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_G=block_g,
    )
    return y
