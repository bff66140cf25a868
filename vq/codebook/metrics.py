"""Codebook quality metrics: code usage (used fraction, perplexity, dead codes), per-stage
statistics for multi-codebook codes, and reconstruction error (MSE, SQNR in dB).

All functions validate their inputs and return plain Python numbers or small CPU tensors.

    >>> counts = usage(codes, k)                  # (k,) int64
    >>> usage_perplexity(codes, k)                # exp(entropy), in [1, k]
    >>> stage_stats(rvq_codes, k)                 # one dict per stage / codebook
    >>> sqnr_db(x, xhat)                          # 10 log10(sum x^2 / sum (x - xhat)^2)
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vq.codebook.checks import check_codes, require_int

__all__ = [
    "usage",
    "used_fraction",
    "usage_perplexity",
    "dead_codes",
    "stage_stats",
    "mse",
    "sqnr_db",
    "usage_entropy_bits",
    "sorted_usage_share",
]


def _single_codes(codes: Any, k: int) -> Tensor:
    """Accept codes of shape (n,) or (n, 1); return validated (n,) int64."""
    k = require_int("k", k, 1)
    if isinstance(codes, Tensor) and codes.dim() == 1:
        codes = codes[:, None]  # (n, 1)
    if isinstance(codes, Tensor) and codes.dim() == 2 and codes.shape[1] != 1:
        raise ValueError(
            f"codes must have shape (n,) or (n, 1), got {tuple(codes.shape)}; "
            "use stage_stats for multi-codebook codes (n, m)"
        )
    codes = check_codes(codes, 1, k)
    if codes.shape[0] == 0:
        raise ValueError("codes is empty (n = 0)")
    return codes[:, 0]


def _perplexity_from_counts(counts: Tensor) -> float:
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def usage(codes: Tensor, k: int) -> Tensor:
    """Number of times each code is used.

    Args:
        codes: (n,) or (n, 1) integer codes in ``[0, k)``.
        k: codebook size.
    Returns:
        (k,) int64 counts on the CPU.
    """
    c = _single_codes(codes, k)
    return torch.bincount(c.cpu(), minlength=k)


def used_fraction(codes: Tensor, k: int) -> float:
    """Fraction of the ``k`` codes used at least once, in ``(0, 1]``."""
    return float((usage(codes, k) > 0).sum()) / k


def usage_perplexity(codes: Tensor, k: int) -> float:
    """``exp(H)`` of the empirical code distribution (H in nats): 1 when a single code is used,
    ``k`` when all ``k`` codes are used equally often."""
    return _perplexity_from_counts(usage(codes, k))


def dead_codes(codes: Tensor, k: int) -> Tensor:
    """Indices (sorted, int64) of the codes that are never used."""
    return torch.nonzero(usage(codes, k) == 0).flatten()


def stage_stats(codes: Tensor, k: int | list[int] | tuple[int, ...]) -> list[dict[str, float | int]]:
    """Usage statistics per stage (residual VQ) or per codebook (additive / product VQ).

    Args:
        codes: (n, m) integer codes; column ``j`` indexes codebook ``j``.
        k: codebook size, one int for all stages or a list of ``m`` sizes.
    Returns:
        ``m`` dicts with keys ``stage``, ``k``, ``used``, ``used_fraction``, ``perplexity``,
        ``entropy_bits`` and ``n_dead``.
    """
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(f"codes must have shape (n, m), got shape {tuple(codes.shape)}")
    m = codes.shape[1]
    if m == 0:
        raise ValueError("codes has no stages (m = 0)")
    if isinstance(k, (list, tuple)):
        ks = list(k)
    elif isinstance(k, int) and not isinstance(k, bool):
        ks = [k] * m
    else:
        raise TypeError(f"k must be an int or a list of ints, got {type(k).__name__}")
    if len(ks) != m:
        raise ValueError(f"k lists {len(ks)} codebook sizes but codes has {m} columns")
    for j, kj in enumerate(ks):
        require_int(f"k[{j}]", kj, 1)
    codes = check_codes(codes, m, ks)
    if codes.shape[0] == 0:
        raise ValueError("codes is empty (n = 0)")
    out = []
    for j, kj in enumerate(ks):
        counts = torch.bincount(codes[:, j].cpu(), minlength=kj)
        ppl = _perplexity_from_counts(counts)
        used = int((counts > 0).sum())
        out.append(
            {
                "stage": j,
                "k": kj,
                "used": used,
                "used_fraction": used / kj,
                "perplexity": ppl,
                "entropy_bits": math.log2(ppl),
                "n_dead": kj - used,
            }
        )
    return out


def _check_pair(x: Any, xhat: Any) -> tuple[Tensor, Tensor]:
    for name, t in (("x", x), ("xhat", xhat)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    if x.shape != xhat.shape:
        raise ValueError(f"x and xhat must have the same shape, got {tuple(x.shape)} and {tuple(xhat.shape)}")
    return x.double(), xhat.to(x.device).double()


def mse(x: Tensor, xhat: Tensor) -> float:
    """Mean squared error over all elements (accumulated in float64)."""
    x, xhat = _check_pair(x, xhat)
    return float(((x - xhat) ** 2).mean())


def sqnr_db(x: Tensor, xhat: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - xhat)^2)`` in dB.

    ``inf`` for an exact reconstruction; raises ``ValueError`` if ``x`` is all zero.
    """
    x, xhat = _check_pair(x, xhat)
    signal = float((x**2).sum())
    if signal == 0.0:
        raise ValueError("x is all zero: SQNR is undefined")
    noise = float(((x - xhat) ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


def usage_entropy_bits(codes: Tensor, k: int) -> float:
    """Entropy of the empirical code distribution in bits, in ``[0, log2 k]``: ``log2 k`` when all
    ``k`` codes are used equally often, 0 when a single code is used. ``log2`` of
    :func:`usage_perplexity`; compare it with ``log2 k``, the bits an index spends."""
    return math.log2(usage_perplexity(codes, k))


def sorted_usage_share(codes: Tensor, k: int) -> Tensor:
    """Share of the ``n`` codes taken by each of the ``k`` codes, sorted in decreasing order:
    (k,) float64 summing to 1 (the "code-usage curve"; zeros at the end are the dead codes)."""
    counts = usage(codes, k).double()
    return torch.sort(counts / counts.sum(), descending=True).values
