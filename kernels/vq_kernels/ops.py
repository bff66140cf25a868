"""Public decode ops as ``torch.library`` custom ops (opaque to ``torch.compile``, with fake
implementations for tracing), dispatched by device through a registry:

* ``cuda`` -> Triton kernels (:mod:`vq_kernels.triton_lut`),
* ``cpu``  -> :mod:`vq_kernels.cpu` (C++ LUT kernels, torch fallback),
* anything else -> :mod:`vq_kernels.reference`.

Packed-code ops (``codes`` is ``(out, words_per_row)`` int32, docs/formats.md)::

    torch.ops.vq.dequantize(codes, codebooks, scales, in_features, bits, tile_rows, tile_groups) -> (out, in)
    torch.ops.vq.lut_gemv(x, codes, codebooks, scales, in_features, bits, tile_rows, tile_groups) -> (B, out)
    torch.ops.vq.lut_gemm(x, codes, codebooks, scales, in_features, bits, tile_rows, tile_groups) -> (B, out)

plus ``torch.ops.vq.cpu_linear(x, index, ...)`` taking the unpacked index from
:func:`vq_kernels.cpu.prepare` (what ``VQLinear`` caches on CPU). Every backend validates its
inputs (dtype, shape, contiguity, codes < K) before it launches anything.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vq_kernels import cpu, reference
from vq_kernels.layout import VQLayout, check_input

__all__ = ["dequantize", "lut_gemv", "lut_gemm", "cpu_linear", "vq_linear", "BACKENDS", "GEMV_MAX_BATCH"]

#: batch sizes up to this use the LUT-GEMV kernels; larger ones the GEMM kernels
GEMV_MAX_BATCH = 8


def _layout(out: int, codebooks: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int) -> VQLayout:
    if codebooks.dim() != 5:
        raise ValueError(f"codebooks must have shape (R_t, C_t, M, K, d), got {tuple(codebooks.shape)}")
    _, _, m, k, d = codebooks.shape
    return VQLayout(out, in_features, d, m, k, bits, tile_rows, tile_groups)


# -- backends -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """The three packed-code ops of one device type (all take a validated-on-entry layout)."""

    dequantize: Callable[[Tensor, Tensor, Tensor, VQLayout], Tensor]
    gemv: Callable[[Tensor, Tensor, Tensor, Tensor, VQLayout], Tensor]
    gemm: Callable[[Tensor, Tensor, Tensor, Tensor, VQLayout], Tensor]


def _ref_dequantize(codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
    lay.check_packed_codes(codes)
    return reference.dequantize(lay.unpack(codes), codebooks, scales, lay.tile_rows, lay.tile_groups)


def _ref_linear(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
    lay.check_packed_codes(codes)
    logical = lay.unpack(codes)  # (out, n_groups, M); shape and range checked above
    return reference.vq_linear(x, logical, codebooks, scales, lay.tile_rows, lay.tile_groups)


def _cpu_dequantize(codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
    return cpu.dequantize(cpu.prepare(codes, lay), codebooks, scales, lay)


def _cpu_gemv(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
    return cpu.lut_gemv(x, cpu.prepare(codes, lay), codebooks, scales, lay)


def _cpu_gemm(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
    return cpu.lut_gemm(x, cpu.prepare(codes, lay), codebooks, scales, lay)


def _triton_backend() -> Backend:
    from vq_kernels import triton_lut

    def unless_f64(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
        # the Triton matmul kernels take float16/bfloat16/float32; float64 goes to the reference
        def run(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, lay: VQLayout) -> Tensor:
            if torch.float64 in (x.dtype, codebooks.dtype, scales.dtype):
                return _ref_linear(x, codes, codebooks, scales, lay)
            return kernel(x, codes, codebooks, scales, lay)

        return run

    return Backend(triton_lut.dequantize, unless_f64(triton_lut.lut_gemv), unless_f64(triton_lut.lut_gemm))


REFERENCE = Backend(_ref_dequantize, _ref_linear, _ref_linear)
#: device type -> backend factory (lazy so that importing vq_kernels never imports triton)
BACKENDS: dict[str, Callable[[], Backend]] = {
    "cuda": _triton_backend,
    "cpu": lambda: Backend(_cpu_dequantize, _cpu_gemv, _cpu_gemm),
}


def _backend(device: torch.device) -> Backend:
    factory = BACKENDS.get(device.type)
    return REFERENCE if factory is None else factory()


# -- custom ops ---------------------------------------------------------------------------
@torch.library.custom_op("vq::dequantize", mutates_args=())
def _dequantize_op(
    codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int
) -> Tensor:
    lay = _layout(codes.shape[0], codebooks, in_features, bits, tile_rows, tile_groups)
    return _backend(codebooks.device).dequantize(codes, codebooks, scales, lay)


@_dequantize_op.register_fake
def _(codes, codebooks, scales, in_features, bits, tile_rows, tile_groups):
    return codebooks.new_empty(codes.shape[0], in_features)


def _linear_fake(x, codes, codebooks, scales, in_features, bits, tile_rows, tile_groups):
    return x.new_empty(x.shape[0], codes.shape[0])


@torch.library.custom_op("vq::lut_gemv", mutates_args=())
def _lut_gemv_op(
    x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int
) -> Tensor:
    lay = _layout(codes.shape[0], codebooks, in_features, bits, tile_rows, tile_groups)
    return _backend(x.device).gemv(x, codes, codebooks, scales, lay)


@torch.library.custom_op("vq::lut_gemm", mutates_args=())
def _lut_gemm_op(
    x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int
) -> Tensor:
    lay = _layout(codes.shape[0], codebooks, in_features, bits, tile_rows, tile_groups)
    return _backend(x.device).gemm(x, codes, codebooks, scales, lay)


@torch.library.custom_op("vq::cpu_linear", mutates_args=())
def _cpu_linear_op(
    x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int
) -> Tensor:
    lay = _layout(index.shape[1], codebooks, in_features, bits, tile_rows, tile_groups)  # (n_chunks, out, jc)
    return cpu.linear(x, index, codebooks, scales, lay)


for _op in (_lut_gemv_op, _lut_gemm_op):
    _op.register_fake(_linear_fake)


@_cpu_linear_op.register_fake
def _(x, index, codebooks, scales, in_features, bits, tile_rows, tile_groups):
    return x.new_empty(x.shape[0], index.shape[1])


# -- python entry points ------------------------------------------------------------------
def _args(lay: VQLayout) -> tuple[int, int, int, int]:
    return lay.in_features, lay.bits, lay.tile_rows, lay.tile_groups


def dequantize(codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int) -> Tensor:
    """Packed codes (out, words_per_row) int32 -> dense weight (out, in) in the codebooks' dtype."""
    return _dequantize_op(codes, codebooks, scales, in_features, bits, tile_rows, tile_groups)


def lut_gemv(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int) -> Tensor:
    """x (B, in), B <= 8 -> (B, out) in x's dtype."""
    return _lut_gemv_op(x, codes, codebooks, scales, in_features, bits, tile_rows, tile_groups)


def lut_gemm(x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int) -> Tensor:
    """x (B, in) -> (B, out) in x's dtype."""
    return _lut_gemm_op(x, codes, codebooks, scales, in_features, bits, tile_rows, tile_groups)


def cpu_linear(x: Tensor, index: Tensor, codebooks: Tensor, scales: Tensor, in_features: int, bits: int, tile_rows: int, tile_groups: int) -> Tensor:
    """x (B, in) on CPU with the unpacked ``index`` from :func:`vq_kernels.cpu.prepare` -> (B, out)."""
    return _cpu_linear_op(x, index, codebooks, scales, in_features, bits, tile_rows, tile_groups)


def vq_linear(
    x: Tensor, codes: Tensor, codebooks: Tensor, scales: Tensor, layout: VQLayout, index: Tensor | None = None
) -> Tensor:
    """x (..., in) -> (..., out): picks the CPU index path, LUT-GEMV or GEMM by device and batch.

    ``index`` (CPU only) is a prepared unpacked index (see :func:`vq_kernels.cpu.prepare`).
    """
    check_input(x, layout, codebooks.device)
    x2 = x.reshape(-1, layout.in_features)  # (B, in)
    args: Any = _args(layout)
    if x2.shape[0] == 0:
        y = x2.new_zeros(0, layout.out_features)
    elif x2.device.type == "cpu" and index is not None:
        # eager calls skip the custom-op dispatcher (~70 us per call measured at 1536x576);
        # under torch.compile the op keeps the C++ call opaque to the tracer
        if torch.compiler.is_compiling():
            y = cpu_linear(x2, index, codebooks, scales, *args)
        else:
            y = cpu.linear(x2, index, codebooks, scales, layout)
    elif x2.shape[0] <= GEMV_MAX_BATCH:
        y = lut_gemv(x2, codes, codebooks, scales, *args)
    else:
        y = lut_gemm(x2, codes, codebooks, scales, *args)
    return y.reshape(*x.shape[:-1], layout.out_features)  # (..., out)
