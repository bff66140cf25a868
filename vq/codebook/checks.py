"""The one module of argument and tensor checks, shared by the core, the solvers and the layers.

Every check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, with a
message that names the argument, what was expected and what was given. Call them where
untrusted input enters (a public function, a config's ``__post_init__``, a loader), not again
on every inner call.

(``vq_kernels`` keeps its own launch checks in ``vq_kernels.layout``: that package imports only
torch/triton by design.)
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = [
    "require_int",
    "require_number",
    "require_choice",
    "require_k_le_n",
    "check_vectors",
    "check_channel_last",
    "check_weights",
    "check_codes",
    "check_int_tensor",
    "MAX_ABS_VALUE",
    "InputError",
]


class InputError(ValueError):
    """The content of an input file or data set is wrong (not a parameter): the message names the
    file. The ``vq`` command line exits with its input-error code for it (see ``vq.cli``)."""


#: Largest magnitude accepted in vectors to quantize. Squared distances are computed in float32
#: (faiss, the native kernel, the torch path): with |x|, |c| <= 1e15 every term of
#: sum_j (x_j - c_j)^2 stays under 4e30, so sums over d < 8e7 coordinates stay finite
#: (float32 max 3.4e38). Past about 1e18 they overflow to inf, the argmin has no winner and faiss
#: aborts the process (an uncaught C++ exception), so such data is refused, not clipped.
MAX_ABS_VALUE = 1e15
#: bound on d * max(weights) * (2 max |x|)^2 (:func:`check_weights`): a sixteenth of float32's
#: largest value, room for the expanded form w c^2 - 2 w x c and for sums over rows
_WEIGHTED_LIMIT = float(torch.finfo(torch.float32).max) / 16


def require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int (not bool) in ``[minimum, maximum]``; returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def require_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite real number (not bool) in the interval ``low .. high`` (closed ends
    unless ``low_open`` / ``high_open``); ``None`` passes when ``optional``. Returns it as a float."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def require_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` must be one of ``choices``; returns it."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def require_k_le_n(k: int, n: int) -> None:
    """k-means needs at least k training vectors."""
    if k > n:
        raise ValueError(f"k = {k} codewords need at least {k} training vectors, got n = {n}")


def _require_float_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_values(x: Tensor, name: str, hint: str = "") -> None:
    """Finite and at most :data:`MAX_ABS_VALUE` in magnitude (one min/max pass; NaN propagates)."""
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if -MAX_ABS_VALUE <= lo and hi <= MAX_ABS_VALUE:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf{hint}")
    raise ValueError(
        f"{name} has values of magnitude up to {max(-lo, hi):.3g}; at most {MAX_ABS_VALUE:g} is supported "
        "(squared distances are computed in float32), so rescale the data"
    )


def check_vectors(x: Any, dim: int | None = None, name: str = "x") -> Tensor:
    """Validate a batch of vectors (n, d) and return it as a float tensor (float64 kept, else
    float32). ``TypeError`` for non-tensors / non-float dtypes; ``ValueError`` for wrong rank,
    wrong last dimension, empty input (no rows or zero width), non-finite values or values
    beyond :data:`MAX_ABS_VALUE` in magnitude."""
    x = _require_float_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {dim}")
    _check_values(x, name)
    return x if x.dtype == torch.float64 else x.float()


def check_channel_last(x: Any, dim: int, name: str = "x") -> Tensor:
    """Validate channel-last input ``(..., dim)`` (tokenizer layers) before any heavy work: the
    same value checks as :func:`check_vectors` (finite, at most :data:`MAX_ABS_VALUE`)."""
    x = _require_float_tensor(x, name)
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} has last dimension {x.shape[-1] if x.dim() else None}, expected {dim} "
            f"(layers take channel-last input (..., {dim}); shape was {tuple(x.shape)})"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    _check_values(x, name, " (diverged encoder or learning rate too high?)")
    return x


def check_weights(weights: Any, x: Tensor, name: str = "weights") -> Tensor | None:
    """Validate importance weights for ``x`` (n, d): shape (n,) or (n, d), finite, >= 0, not all 0,
    and small enough that weighted squared distances stay finite in float32.

    Returns ``None`` when ``weights`` is ``None``, else a tensor of ``x``'s dtype and device.
    """
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(weights).__name__}")
    n, d = x.shape
    if tuple(weights.shape) not in ((n,), (n, d)):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, {d}) to match x, got {tuple(weights.shape)}")
    weights = weights.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    if not bool((weights > 0).any()):
        raise ValueError(f"{name} are all zero")
    # weighted squared distances, sum_j w_ij (x_ij - c_j)^2 <= d * max w * (2 max |x|)^2, are float32
    w_max, x_max = float(weights.max()), float(x.detach().abs().max())
    if w_max * (2.0 * x_max) ** 2 * d > _WEIGHTED_LIMIT:
        raise ValueError(
            f"{name} up to {w_max:.3g} with |x| up to {x_max:.3g} (d = {d}) overflow float32 weighted distances; "
            "rescale the weights (k-means' result does not change when all weights are scaled by one factor)"
        )
    return weights


def check_int_tensor(codes: Any, name: str = "codes") -> Tensor:
    """An integer tensor of any shape, returned as int64."""
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
    return codes.long()


def check_codes(codes: Any, m: int, k: int | list[int] | tuple[int, ...], name: str = "codes") -> Tensor:
    """Validate integer codes of shape (n, m) with ``0 <= codes[:, j] < k[j]``; return int64."""
    codes = check_int_tensor(codes, name)
    if codes.dim() != 2 or codes.shape[1] != m:
        raise ValueError(f"{name} must have shape (n, {m}), got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        return codes
    ks = [k] * m if isinstance(k, int) else list(k)
    upper = torch.tensor(ks, device=codes.device)
    if bool((codes < 0).any()) or bool((codes >= upper).any()):
        bad = codes[(codes < 0) | (codes >= upper)][0].item()
        raise ValueError(f"{name} out of range: found {bad}, valid range is [0, {ks}) per column")
    return codes
