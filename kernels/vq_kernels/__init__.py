"""vq_kernels — lookup-table decode kernels for VQ-compressed linear layers.

Modules: :mod:`~vq_kernels.packing` (bit packing), :mod:`~vq_kernels.layout` (the shared
layout + input checks), :mod:`~vq_kernels.reference` (pure-torch oracles),
:mod:`~vq_kernels.cpu` (CPU fast path), :mod:`~vq_kernels.triton_lut` (Triton kernels) and
:mod:`~vq_kernels.ops` (``torch.library`` custom ops, dispatch by device). Depends only on
torch (and triton for the GPU kernels); never imports ``vq``.
"""
from vq_kernels.layout import VQLayout
from vq_kernels.packing import pack_codes, unpack_codes, words_per_row

__all__ = ["VQLayout", "pack_codes", "unpack_codes", "words_per_row"]
