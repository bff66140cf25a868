"""Bit packing of VQ codes (docs/formats.md, "Bit packing").

The ``n_groups * M`` codes of one output row, in ``(g, m)`` row-major order, form a
little-endian bit stream: code ``j`` occupies stream bits ``[j*bits, (j+1)*bits)``; stream bit
``b`` is bit ``b % 32`` of word ``b // 32``. A code may straddle two words. Each row is packed
on its own into ``words_per_row = ceil(n_groups * M * bits / 32)`` words, stored as int32 (the
bit pattern of a uint32; safetensors has no uint32). Unused high bits of the last word are 0.

Both directions are vectorised torch on int64 intermediates (no Python loop over codes).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["index_bits", "words_per_row", "pack_codes", "unpack_codes", "check_bits"]

_U32 = 1 << 32


def check_bits(bits: int) -> int:
    """Validate a code width (1..16) and return it as int."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    return bits


def index_bits(K: int) -> int:
    """The code width of ``K`` codewords, ``max(1, ceil(log2 K))`` (the one place it is derived)."""
    return max(1, (K - 1).bit_length())


def words_per_row(n_groups: int, m: int, bits: int) -> int:
    """Number of int32 words holding one row of ``n_groups * m`` codes of ``bits`` bits."""
    return (n_groups * m * bits + 31) // 32


def _positions(n_codes: int, bits: int, device: torch.device) -> tuple[Tensor, Tensor]:
    start = torch.arange(n_codes, device=device, dtype=torch.int64) * bits  # (L,) stream bit
    return start // 32, start % 32  # word index, bit offset inside the word


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack logical codes into per-row little-endian bit streams.

    Args:
        codes: (out, n_groups, M) integer tensor with values in ``[0, 2**bits)``.
        bits: code width, 1..16.
    Returns:
        (out, words_per_row) int32, on ``codes``' device.
    """
    bits = check_bits(bits)
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    if codes.dim() != 3:
        raise ValueError(f"codes must have shape (out, n_groups, M), got {tuple(codes.shape)}")
    if codes.numel() and (bool((codes < 0).any()) or bool((codes >= (1 << bits)).any())):
        bad = codes[(codes < 0) | (codes >= (1 << bits))][0].item()
        raise ValueError(f"code {bad} does not fit in {bits} bits (valid range [0, {1 << bits}))")
    return pack(codes, bits)


def pack(codes: Tensor, bits: int) -> Tensor:
    """:func:`pack_codes` without the checks, for callers that checked ``codes`` and ``bits``
    where they entered (``VQLayout.pack``)."""
    out, n_groups, m = codes.shape
    flat = codes.reshape(out, n_groups * m).long()  # (out, L), (g, m) row-major
    n_words = words_per_row(n_groups, m, bits)
    word, off = _positions(n_groups * m, bits, codes.device)
    acc = torch.zeros(out, n_words + 1, dtype=torch.int64, device=codes.device)  # +1: spill word
    # bits never overlap, so adding == OR-ing; the low part stays < 2**32 after the mask.
    low = (flat << off) & (_U32 - 1)
    high = flat >> (32 - off)  # part that spills into the next word (0 when it does not straddle)
    acc.scatter_add_(1, word.expand(out, -1), low)
    acc.scatter_add_(1, (word + 1).expand(out, -1), high)
    acc = acc[:, :n_words]
    # reinterpret uint32 bit patterns as int32
    return torch.where(acc >= (1 << 31), acc - _U32, acc).to(torch.int32).contiguous()


def unpack_codes(packed: Tensor, bits: int, n_groups: int, m: int) -> Tensor:
    """Inverse of :func:`pack_codes`.

    Args:
        packed: (out, words_per_row) int32.
        bits: code width, 1..16.
        n_groups, m: logical code shape per row.
    Returns:
        (out, n_groups, m) int64 codes in ``[0, 2**bits)``.
    """
    bits = check_bits(bits)
    if not isinstance(packed, Tensor):
        raise TypeError(f"packed must be a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.int32:
        raise TypeError(f"packed codes must be int32, got dtype {packed.dtype}")
    n_words = words_per_row(n_groups, m, bits)
    if packed.dim() != 2 or packed.shape[1] != n_words:
        raise ValueError(
            f"packed codes must have shape (out, {n_words}) for n_groups={n_groups}, M={m}, "
            f"bits={bits}; got {tuple(packed.shape)}"
        )
    return unpack(packed, bits, n_groups, m)


def unpack(packed: Tensor, bits: int, n_groups: int, m: int) -> Tensor:
    """:func:`unpack_codes` without the checks (``VQLayout.unpack``)."""
    out = packed.shape[0]
    words = packed.long() & (_U32 - 1)  # (out, W) as uint32 values
    words = torch.cat([words, words.new_zeros(out, 1)], dim=1)  # (out, W+1): straddle guard
    word, off = _positions(n_groups * m, bits, packed.device)
    lo = words[:, word] >> off  # (out, L)
    hi = words[:, word + 1] << (32 - off)
    codes = (lo | hi) & ((1 << bits) - 1)
    return codes.reshape(out, n_groups, m)  # (out, n_groups, M)
