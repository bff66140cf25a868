"""CPU fast path: LUT-GEMV for small batches, tiled dequantize-then-matmul otherwise.

LUT-GEMV (batch ``B <= GEMV_MAX_BATCH`` and :attr:`VQLayout.lut_pays_off`)::

    T[rt, (g, m), k, b] = x[b, g*d:(g+1)*d] . codebooks[rt, g // tile_groups, m, k]
    y[b, r]             = scales[r] * sum_{g, m} T[r // tile_rows, (g, m), codes[r, g, m], b]

The tables cost ``R_t * in_features * M * K`` multiply-adds per batch row (``R_t*M*K/out`` of a
dense GEMV) and the gather-sum reads one byte (K <= 256) or two (K <= 65536) per code instead
of four bytes per weight. Both run in a small C++ library (``csrc/lut_cpu.cpp``: per work item
a table chunk that stays in L2, then the gathers) compiled with ``g++ -O3 -march=native
-fopenmp`` on first use and loaded with :mod:`ctypes` (no torch headers: a few seconds to
build; cached under ``$VQ_CACHE_DIR`` or ``~/.cache/vq``, see :mod:`vq_kernels.native`). If no compiler is
available the same algorithm runs in vectorised torch (batched matmul, ``index_select`` +
sum), correct but about 30x slower (docs/results.md, ``bench/lut_cpu.py --torch-fallback``).

Other cases dequantize ``ROW_CHUNK`` rows at a time into one reused buffer that stays in cache
and multiply it with ``x`` (MKL sgemm), so the dense weight is never materialised in full.

Codebooks of at most 16 entries (``K <= 16``, d in {1, 2, 4, 8}, row tiles of whole 16-row
blocks; e.g. the 2-bit layout d=2, K=16) take a third kernel (:func:`index_format` ``"u4"``,
AVX-512): the index keeps 4 bits per code, 16 output rows side by side, and a 16-entry fp32 table
or codebook coordinate is one register, so ``vpermps`` with the 16 rows' codes as indices does 16
lookups at once. With few batch rows the tables ``x . codeword`` are shared by the row blocks of a
codebook tile (one vpermps + add per code slot and 16 rows); otherwise the codebook registers give
the 16 rows' weights directly and FMAs with the broadcast input accumulate them. Up to
``LUT16_MAX_BATCH`` rows (batch tiles of 8 over the same codes in L1); beyond, the codes decode
bit-exactly into ``W^T`` blocks for sgemm. :class:`Plan` holds what does not depend on ``x``.

Memory trade (``K > 16``): the kernels read the codes unpacked, one index per (row, group, codebook):
:func:`prepare` builds that uint8 / int16 tensor once (chunk-major, see there) and
``VQLinear`` caches it (``out * in * M / d`` bytes for K <= 256: 1 byte per code instead of
``bits/8``; for a 2x8 layer that is 4x the packed codes and 1/16 of the fp32 weight).
"""
from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from vq_kernels.layout import VQLayout, check_input
from vq_kernels.native import load_library

__all__ = [
    "GEMV_MAX_BATCH",
    "LUT16_MAX_BATCH",
    "index_format",
    "ROW_CHUNK",
    "prepare",
    "native_available",
    "dequantize",
    "lut_gemv",
    "lut_gemm",
    "linear",
    "Plan",
]

log = logging.getLogger(__name__)

#: largest batch served by the LUT path; the gather reads B contiguous floats per code
GEMV_MAX_BATCH = 8
#: largest batch served by the 4-bit in-register kernel; above it the codes decode to W^T blocks
#: for sgemm. One thread, d=2, K=16, kernel / decode+sgemm as a fraction of dense fp32 speed at
#: 576x576, 1536x576, 4096x4096: B=64 0.74/0.72, 0.84/0.82, 0.94/0.89; B=128 0.74/0.82,
#: 0.78/0.96, 0.80/0.93 (2026-11-27, one-off sweep; bench/lut_cpu.py --layouts 1x4d2 --batches 64,128)
LUT16_MAX_BATCH = 64
#: bytes of B = 1 lookup table per work item of the C++ kernel (B > 1: times the vector width).
#: Sweep at 4096x4096 2x8 (row-major index, warm caches), one thread, CPU time, dense fp32
#: 5.76 / 18.70 ms at B = 1 / 8 — B=1: 32K 6.66, 128K 3.24, 256K 2.83, 512K 2.93, 1M 3.46 ms;
#: B=8 (x8 bytes): 32K 13.61, 128K 9.57, 256K 6.94, 512K 5.91, 1M 5.50 ms.
TABLE_BYTES = (128 << 10,)
#: below this many codes a call runs on one thread: waking a second OpenMP thread cost up to
#: 10 ms on this shared 2-core machine (1536x576, B=8), far more than the work
PARALLEL_MIN_CODES = 1 << 18
#: rows dequantized per step of the GEMM path (128 x 4096 fp32 = 2 MiB, about one L2)
ROW_CHUNK = 128
_SRC = Path(__file__).with_name("csrc") / "lut_cpu.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]


# -- native library -----------------------------------------------------------------------
@lru_cache(maxsize=1)
def _native() -> ctypes.CDLL | None:
    """Build (once per source/flags/CPU) and load the C++ kernels; None if that fails."""
    dll = load_library(_SRC, _FLAGS, os.environ.get("CXX", "g++"))
    return None if dll is None else _bind(dll)


def _bind(dll: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures of the library's entry points."""
    i64, p = ctypes.c_int64, ctypes.c_void_p
    for name in ("vq_lut_linear_u8", "vq_lut_linear_u16"):
        getattr(dll, name).argtypes = [p, p, p, p, *[i64] * 13, ctypes.c_int]
        getattr(dll, name).restype = None
    for name in ("vq_dequantize_u8", "vq_dequantize_u16"):
        getattr(dll, name).argtypes = [p, p, p, p, *[i64] * 11, ctypes.c_int]
        getattr(dll, name).restype = None
    dll.vq_dequantize_u4.argtypes = [p, p, p, p, *[i64] * 9, ctypes.c_int]
    dll.vq_dequantize_u4.restype = None
    dll.vq_lut16_linear.argtypes = [p, p, p, p, p, i64, p, ctypes.c_int]
    dll.vq_lut16_linear.restype = None
    dll.vq_lut16_vectorised.restype = ctypes.c_int
    dll.vq_dequantize_u4t.argtypes = [p, p, p, p, *[i64] * 11, ctypes.c_int]
    dll.vq_dequantize_u4t.restype = ctypes.c_int
    return dll


def native_available() -> bool:
    """True when the compiled C++ kernels load on this machine."""
    return _native() is not None


def _threads(codes: int) -> int:
    return torch.get_num_threads() if codes >= PARALLEL_MIN_CODES else 1


def index_format(layout: VQLayout) -> str:
    """How :func:`prepare` stores the codes of ``layout``: ``"u4"`` (4-bit codes, 16 rows side by
    side) when ``K <= 16``, ``d`` is 1, 2, 4 or 8, every codebook row tile holds whole 16-row
    blocks and the native kernels load; else ``"u8"`` (K <= 256) or ``"u16"``."""
    lay = layout
    if lay.K <= 16 and lay.d in (1, 2, 4, 8) and (lay.row_tiles == 1 or lay.tile_rows % 16 == 0) and native_available():
        return "u4"
    return "u8" if lay.K <= 256 else "u16"


# -- preparation --------------------------------------------------------------------------
def index_chunk(layout: VQLayout) -> int:
    """Codes per row chunk of the CPU index: the B = 1 table of one chunk fills ``TABLE_BYTES[0]``
    (at most 128 codes: 128 KiB at K = 256 for B = 1, 1 MiB for B = 8)."""
    return max(1, min(128, TABLE_BYTES[0] // (4 * layout.K)))


def prepare(codes: Tensor, layout: VQLayout) -> Tensor:
    """Unpack and validate codes once for the CPU kernels.

    The index is stored chunk-major, ``(n_chunks, out, jc)`` with ``jc = index_chunk(layout)``:
    one work item of the kernels (a chunk of groups for a block of rows) then reads one
    contiguous stretch of memory. Row-major ``(out, J)`` made every row a separate 128-byte
    strided access; with cold caches that cost 5.3 vs 2.8 ms at 4096x4096, B = 1.

    Args:
        codes: packed (out, words_per_row) int32 or logical (out, n_groups, M) integer codes.
    Returns:
        (n_chunks, out, jc) contiguous uint8 (K <= 256) or int16 (bit pattern of uint16); the
        codes past ``J = n_groups * M`` in the last chunk are 0.
    """
    if codes.dim() == 2:
        layout.check_packed_codes(codes, check_range=False)
        codes = layout.unpack(codes)  # (out, n_groups, M)
    layout.check_logical_codes(codes)  # range [0, K) checked here, before any gather
    if index_format(layout) == "u4":
        return _prepare_u4(codes, layout)
    out, j = layout.out_features, layout.n_groups * layout.M
    jc = index_chunk(layout)
    n_chunks = -(-j // jc)
    flat = codes.reshape(out, j).cpu()  # (out, J)
    flat = torch.cat([flat, flat.new_zeros(out, n_chunks * jc - j)], dim=1)  # (out, n_chunks*jc)
    blocked = flat.reshape(out, n_chunks, jc).transpose(0, 1)  # (n_chunks, out, jc)
    if layout.K <= 256:
        return blocked.to(torch.uint8).contiguous()
    return torch.where(blocked >= 1 << 15, blocked - (1 << 16), blocked).to(torch.int16).contiguous()


def _prepare_u4(codes: Tensor, layout: VQLayout) -> Tensor:
    """(out, n_groups, M) codes in [0, 16) -> (RB, P, 16) uint8, RB = ceil(out / 16), P = ceil(J / 2):
    byte ``lane`` of pair ``p`` of row block ``rb`` = code(rb*16 + lane, 2p) | code(.., 2p+1) << 4."""
    out, j = layout.out_features, layout.n_groups * layout.M
    rb, p = -(-out // 16), -(-j // 2)
    flat = torch.zeros(rb * 16, 2 * p, dtype=torch.uint8)  # (RB*16, 2P): padding rows/codes are 0
    flat[:out, :j] = codes.reshape(out, j).cpu().to(torch.uint8)
    pairs = flat[:, 0::2] | (flat[:, 1::2] << 4)  # (RB*16, P)
    return pairs.reshape(rb, 16, p).transpose(1, 2).contiguous()  # (RB, P, 16)


def _index_shape(layout: VQLayout) -> tuple[int, int, int]:
    if index_format(layout) == "u4":
        return (-(-layout.out_features // 16), -(-layout.n_groups * layout.M // 2), 16)
    jc = index_chunk(layout)
    return (-(-layout.n_groups * layout.M // jc), layout.out_features, jc)


def _check_index(idx: Tensor, layout: VQLayout) -> None:
    want = _index_shape(layout)
    dtype = torch.uint8 if layout.K <= 256 else torch.int16
    if not isinstance(idx, Tensor) or idx.dtype != dtype or tuple(idx.shape) != want or not idx.is_contiguous():
        got = (idx.dtype, tuple(idx.shape)) if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"index must be a contiguous {dtype} tensor of shape {want} from prepare(), got {got}")
    if idx.device.type != "cpu":
        raise ValueError(f"index must be on the CPU, got {idx.device}")


def _check_call(x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> None:
    """Every input of a product, before any kernel runs: x (B, in) float on the CPU, the prepared
    index of this layout, codebooks and scales."""
    check_input(x, layout, torch.device("cpu"))
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, {layout.in_features}), got {tuple(x.shape)}")
    _check_index(index, layout)
    layout.check_codebooks(codebooks, scales)


def _index_long(idx: Tensor, layout: VQLayout) -> Tensor:
    """The prepared index back as (out, J) int64 codes."""
    j = layout.n_groups * layout.M
    if index_format(layout) == "u4":
        pairs = idx.transpose(1, 2).reshape(-1, idx.shape[1]).long()  # (RB*16, P)
        return torch.stack([pairs & 15, pairs >> 4], dim=-1).reshape(pairs.shape[0], -1)[: layout.out_features, :j]
    flat = idx.transpose(0, 1).reshape(layout.out_features, -1)[:, :j]  # (out, J)
    return flat.long() & 0xFFFF  # int16 holds uint16 bit patterns


def _f32_codebooks(codebooks: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    return codebooks.float().contiguous(), scales.float().contiguous()


# -- ops ----------------------------------------------------------------------------------
def _tables(x: Tensor, codebooks: Tensor, layout: VQLayout) -> Tensor:
    """T (R_t, J, K, B) float32, contiguous: x . codeword for every group, codebook, codeword."""
    lay = layout
    b = x.shape[0]
    pad = lay.group_tiles * lay.tile_groups - lay.n_groups
    xg = x.float().reshape(b, lay.n_groups, lay.d)  # (B, G, d)
    if pad:
        xg = torch.cat([xg, xg.new_zeros(b, pad, lay.d)], dim=1)  # (B, C_t*tg, d)
    xg = xg.reshape(b, lay.group_tiles, lay.tile_groups, lay.d).transpose(0, 1)  # (C_t, B, tg, d)
    xg = xg.reshape(1, lay.group_tiles, b * lay.tile_groups, lay.d)  # (1, C_t, B*tg, d)
    cb = codebooks.reshape(lay.row_tiles, lay.group_tiles, lay.M * lay.K, lay.d)  # (R_t, C_t, M*K, d)
    t = torch.matmul(xg, cb.transpose(-1, -2))  # (R_t, C_t, B*tg, M*K)
    t = t.reshape(lay.row_tiles, lay.group_tiles, b, lay.tile_groups, lay.M, lay.K)
    if b > 1:
        t = t.permute(0, 1, 3, 4, 5, 2)  # (R_t, C_t, tg, M, K, B)
    t = t.reshape(lay.row_tiles, lay.group_tiles * lay.tile_groups * lay.M, lay.K, b)
    return t[:, : lay.n_groups * lay.M].contiguous()  # (R_t, J, K, B)


def lut_gemv(x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> Tensor:
    """x (B, in) with 1 <= B <= 8 -> (B, out) in x's dtype, by table lookup."""
    lay = layout
    _check_call(x, index, codebooks, scales, lay)
    if not 1 <= x.shape[0] <= GEMV_MAX_BATCH:
        raise ValueError(f"lut_gemv takes x of shape (B, {lay.in_features}) with 1 <= B <= {GEMV_MAX_BATCH}")
    if index_format(lay) == "u4":
        return Plan(index, codebooks, scales, lay)(x)
    b = x.shape[0]
    cb, sc = _f32_codebooks(codebooks, scales)
    xf = x.float().contiguous()
    j = lay.n_groups * lay.M
    dll = _native()
    if dll is not None and lay.d <= 64:
        y = torch.empty(lay.out_features, b)  # (out, B)
        if b == 1:  # the B == 1 table is built from codewords stored (d, K): vectorised over k
            cb = cb.transpose(-1, -2).contiguous()  # (R_t, C_t, M, d, K)
        bs = 1 if b == 1 else 2 if b == 2 else 4 if b <= 4 else 8  # table entry = one SIMD vector
        jc = index_chunk(lay)  # j per work item = the index chunk
        threads = _threads(lay.out_features * j)
        items = lay.row_tiles * -(-j // jc)
        row_blocks = max(1, -(-2 * threads // items))  # split rows too when there are few items
        getattr(dll, f"vq_lut_linear_{index_format(lay)}")(
            xf.data_ptr(), index.data_ptr(), cb.data_ptr(), y.data_ptr(), b, lay.out_features, lay.in_features,
            lay.n_groups, lay.M, lay.K, lay.d, lay.tile_rows, lay.tile_groups, lay.row_tiles, lay.group_tiles,
            jc, row_blocks, threads,
        )
    else:
        table = _tables(xf, cb, lay)  # (R_t, J, K, B)
        rows = torch.arange(lay.out_features) // lay.tile_rows  # (out,)
        flat = (rows[:, None] * j + torch.arange(j)[None, :]) * lay.K + _index_long(index, lay)  # (out, J)
        y = table.reshape(-1, b).index_select(0, flat.reshape(-1)).reshape(lay.out_features, j, b).sum(1)
    return (y * sc[:, None]).T.to(x.dtype).contiguous()  # (B, out)


def dequantize(
    index: Tensor,
    codebooks: Tensor,
    scales: Tensor,
    layout: VQLayout,
    rows: slice | None = None,
    out: Tensor | None = None,
    round_to_codebook_dtype: bool = True,
) -> Tensor:
    """Dense weight rows ``rows`` (default all): (n_rows, in) in the codebooks' dtype (or, with
    ``round_to_codebook_dtype=False``, in float32 / float64 as computed).

    Bit-identical to :func:`vq_kernels.reference.dequantize` (same summation order). ``out``: an
    optional float32 buffer with at least ``n_rows * in`` elements to decode into (reusing one
    buffer avoids page faults on fresh memory: a full 4096x4096 decode into a fresh tensor took
    51 ms, mostly page faults).
    """
    lay = layout
    _check_index(index, lay)
    lay.check_codebooks(codebooks, scales)
    r0, r1, _ = (rows or slice(0, lay.out_features)).indices(lay.out_features)
    cb, sc = _f32_codebooks(codebooks, scales)
    if codebooks.dtype == torch.float64 or scales.dtype == torch.float64:
        cb, sc = codebooks.double().contiguous(), scales.double().contiguous()
    dll, fmt = _native(), index_format(lay)
    if dll is not None and cb.dtype == torch.float32 and lay.d <= 64:
        n = (r1 - r0) * lay.in_features
        if out is not None and out.dtype == torch.float32 and out.is_contiguous() and out.numel() >= n:
            w = out.view(-1)[:n].view(r1 - r0, lay.in_features)
        else:
            w = torch.empty(r1 - r0, lay.in_features)
        threads = _threads((r1 - r0) * lay.n_groups * lay.M)
        common = (index.data_ptr(), cb.data_ptr(), sc.data_ptr(), w.data_ptr(), r0, r1,
                  lay.n_groups, lay.M, lay.K, lay.d, lay.tile_rows, lay.tile_groups, lay.group_tiles)
        if fmt == "u4" and _vectorised_u4():  # (in, cols) blocks of whole row blocks, then transposed
            rb0, rb1 = r0 // 16, -(-r1 // 16)
            wt = torch.empty(lay.in_features, (rb1 - rb0) * 16)  # (in, cols)
            _dequantize_u4t(index, cb, sc, wt, rb0, rb1, lay, threads)
            w.copy_(wt[:, r0 - rb0 * 16 : r1 - rb0 * 16].T)
        elif fmt == "u4":
            dll.vq_dequantize_u4(*common, threads)
        else:
            getattr(dll, f"vq_dequantize_{fmt}")(*common, index_chunk(lay), lay.out_features, threads)
    else:
        codes = _index_long(index, lay)[r0:r1].reshape(r1 - r0, lay.n_groups, lay.M)  # (n, G, M)
        rt = (torch.arange(r0, r1) // lay.tile_rows)[:, None]  # (n, 1)
        ct = (torch.arange(lay.n_groups) // lay.tile_groups)[None, :]  # (1, G)
        w = cb[rt, ct, 0, codes[:, :, 0]]  # (n, G, d)
        for m in range(1, lay.M):
            w = w + cb[rt, ct, m, codes[:, :, m]]
        w = (w * sc[r0:r1, None, None]).reshape(r1 - r0, lay.in_features)
    return w.to(codebooks.dtype) if round_to_codebook_dtype else w


@lru_cache(maxsize=1)
def _vectorised_u4() -> bool:
    """True when the 4-bit kernels were built with AVX-512 (else they run portable scalar loops)."""
    dll = _native()
    return dll is not None and bool(dll.vq_lut16_vectorised())


def _dequantize_u4t(index: Tensor, cb: Tensor, sc: Tensor, wt: Tensor, rb0: int, rb1: int, lay: VQLayout,
                    threads: int) -> None:
    """wt[:, :(rb1 - rb0) * 16] (in, cols) = the float32 weight of row blocks [rb0, rb1), transposed."""
    _native().vq_dequantize_u4t(
        index.data_ptr(), cb.data_ptr(), sc.data_ptr(), wt.data_ptr(), rb0, rb1, wt.shape[1], lay.out_features,
        lay.n_groups, lay.M, lay.K, lay.d, lay.tile_rows, lay.tile_groups, lay.group_tiles, threads,
    )


def lut_gemm(x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> Tensor:
    """x (B, in) -> (B, out): dequantize ``ROW_CHUNK`` rows at a time and multiply (sgemm)."""
    lay = layout
    _check_call(x, index, codebooks, scales, lay)
    acc = torch.float64 if torch.float64 in (x.dtype, codebooks.dtype, scales.dtype) else torch.float32
    xa = x.to(acc)
    if index_format(lay) == "u4" and acc == torch.float32 and _vectorised_u4():
        # x @ W^T block by block: (B, in) @ (in, cols) ran at 0.98x one dense sgemm at 4096x4096,
        # B = 512 (the (cols, in) @ (in, B) order at 0.81x)
        cb, sc = _f32_codebooks(codebooks, scales)
        y = torch.empty(x.shape[0], lay.out_features)  # (B, out)
        wt = torch.empty(lay.in_features, ROW_CHUNK)  # (in, cols), reused: no page faults
        part = torch.empty(x.shape[0], ROW_CHUNK)  # (B, cols)
        threads = _threads(ROW_CHUNK * lay.n_groups * lay.M)
        for rb0 in range(0, -(-lay.out_features // 16), ROW_CHUNK // 16):
            r0, r1 = rb0 * 16, min(rb0 * 16 + ROW_CHUNK, lay.out_features)
            _dequantize_u4t(index, cb, sc, wt, rb0, -(-r1 // 16), lay, threads)
            torch.mm(xa, wt, out=part)
            y[:, r0:r1] = part[:, : r1 - r0]
        return y.to(x.dtype)
    y = torch.empty(lay.out_features, x.shape[0], dtype=acc)  # (out, B): row chunks are contiguous
    buf = torch.empty(min(ROW_CHUNK, lay.out_features) * lay.in_features)  # reused: no page faults
    for r0 in range(0, lay.out_features, ROW_CHUNK):
        r1 = min(r0 + ROW_CHUNK, lay.out_features)
        w = dequantize(index, codebooks, scales, lay, slice(r0, r1), buf, round_to_codebook_dtype=False).to(acc)
        torch.matmul(w, xa.T, out=y[r0:r1])  # (n, B)
    y = y.T  # (B, out)
    return y.to(x.dtype).contiguous()


class Plan:
    """One layer's CPU product ``x @ W^T``, with everything that does not depend on ``x`` checked
    and converted once: the prepared index, float32 codebooks and scales, the kernel's sizes.

    Calling it checks ``x`` (and, cheaply, that the codebooks and scales it was built from were
    not replaced or changed in place; if they were, it converts them again). ``VQLinear`` keeps
    one per layer: per call this saves ~15 us of Python over :func:`linear`, which builds one
    each time (a 576x576 product takes ~15-25 us).
    """

    __slots__ = ("layout", "index", "fmt", "_src", "_versions", "_cb", "_sc", "_dims", "_codes", "_codes_version")

    def __init__(
        self, index: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout, codes: Tensor | None = None
    ) -> None:
        """``codes``: the codes ``index`` was prepared from, if the caller wants
        :meth:`codes_changed` to watch them."""
        _check_index(index, layout)
        layout.check_codebooks(codebooks, scales)
        self.layout, self.index, self.fmt = layout, index, index_format(layout)
        self._src = (codebooks, scales)
        self._codes, self._codes_version = codes, (None if codes is None else codes._version)
        self._dims = (ctypes.c_int64 * 9)(layout.out_features, layout.in_features, layout.n_groups, layout.M,
                                          layout.K, layout.d, layout.tile_rows, layout.tile_groups,
                                          layout.group_tiles)
        self._convert()

    def codes_changed(self) -> bool:
        """Whether the watched codes were edited in place since (the index is then stale)."""
        return self._codes is not None and self._codes._version != self._codes_version

    def _convert(self) -> None:
        codebooks, scales = self._src
        self._versions = (codebooks._version, scales._version)
        self._cb, self._sc = _f32_codebooks(codebooks, scales)

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, in) float on the CPU -> (B, out) in x's dtype."""
        lay = self.layout
        if not (isinstance(x, Tensor) and x.dim() == 2 and x.shape[1] == lay.in_features and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float16, torch.bfloat16)):
            _check_call(x, self.index, *self._src, lay)  # the precise error, or a valid float64 x
        b = x.shape[0]
        if 1 <= b <= LUT16_MAX_BATCH and self.fmt == "u4" and x.dtype != torch.float64:
            cb, sc = self._src
            if (cb._version, sc._version) != self._versions:
                self._convert()
            xf = x.float().contiguous()
            y = torch.empty(b, lay.out_features)  # (B, out) float32
            _native().vq_lut16_linear(
                xf.data_ptr(), self.index.data_ptr(), self._cb.data_ptr(), self._sc.data_ptr(), y.data_ptr(), b,
                self._dims, _threads(b * lay.out_features * lay.n_groups * lay.M),
            )
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        if 1 <= b <= GEMV_MAX_BATCH and x.dtype != torch.float64 and lay.lut_pays_off:
            return lut_gemv(x, self.index, *self._src, lay)
        return lut_gemm(x, self.index, *self._src, lay)


def linear(x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout) -> Tensor:
    """x (B, in) -> (B, out). ``"u4"`` index: the in-register table kernel up to
    ``LUT16_MAX_BATCH`` rows. Otherwise LUT-GEMV up to ``GEMV_MAX_BATCH`` rows when tables pay
    off for this layout (:attr:`VQLayout.lut_pays_off`). Else tiled dequantize + GEMM."""
    return Plan(index, codebooks, scales, layout)(x)
