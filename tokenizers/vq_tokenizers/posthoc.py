"""Post-training steps on a trained tokenizer, with the encoder and the codebook frozen.

``refit_decoder`` fits a copy of the decoder to the final partition of a fit set (the
``+refine+dec`` rows of ``bench/tokenizer_layers.py``; the codebook side is
``VectorQuantizer.refine_codebook``).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from vq.codebook.checks import check_int_tensor, check_vectors, require_int, require_number

__all__ = ["refit_decoder"]


def refit_decoder(dec: nn.Module, q: Tensor, codes: Tensor, x: Tensor, steps: int, lr: float) -> nn.Module:
    """A copy of ``dec`` refitted to a frozen partition; ``dec`` itself is left unchanged.

    ``q`` (n, d) float: the quantized latents of the fit vectors, ``codes`` (n,) int: their codes,
    ``x`` (n, D) float: the fit vectors (the decoder's targets). Every vector of a cell has the
    same ``q``, so ``sum_i |dec(q_i) - x_i|^2 = sum_j n_j |dec(q_j) - mean_j(x)|^2 + const``:
    ``steps`` full-batch Adam steps (learning rate cosine-decayed from ``lr`` to 0) on the cell
    means, weighted by the cell counts, minimise the same squared error as training on every
    vector, for the cost of (number of used codes) rows a step. Returns the copy in eval mode.
    """
    q = check_vectors(q, name="q")
    x = check_vectors(x, name="x")
    codes = check_int_tensor(codes)
    if codes.shape != (q.shape[0],) or x.shape[0] != q.shape[0]:
        raise ValueError(f"codes must have shape (n,) and x (n, D) for q of shape {tuple(q.shape)}, "
                         f"got codes {tuple(codes.shape)} and x {tuple(x.shape)}")  # fmt: skip
    if bool((codes < 0).any()):
        raise ValueError("codes must be >= 0 (dropped stages, code -1, have no cell)")
    require_int("steps", steps, 0)
    require_number("lr", lr, 0.0, low_open=True)
    k = int(codes.max()) + 1
    counts = torch.bincount(codes, minlength=k).to(q.dtype)  # (k,)
    cells = torch.zeros(k, q.shape[1], device=q.device, dtype=q.dtype).index_add_(0, codes, q)  # (k, d)
    means = torch.zeros(k, x.shape[1], device=q.device, dtype=q.dtype).index_add_(0, codes, x.to(q))  # (k, D)
    hit = counts > 0
    cells, means, counts = cells[hit] / counts[hit, None], means[hit] / counts[hit, None], counts[hit]
    weight = (counts / counts.sum())[:, None]  # (cells, 1)
    refit = copy.deepcopy(dec).train()
    opt = torch.optim.Adam(refit.parameters(), lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = (weight * (refit(cells) - means).square()).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return refit.eval()
