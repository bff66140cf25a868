"""Calibration / evaluation text and perplexity.

The built-in corpus ``pydoc`` is Python's own help text (``pydoc_data.topics``): every topic, in
sorted key order, joined by blank lines. Its token stream is split once: the first 80% of the
tokens are the calibration split, the last 20% the held-out evaluation split (never calibrated
on). Both are cut into fixed, non-overlapping windows of ``seq_len`` (512) tokens.

Perplexity = exp(mean next-token negative log-likelihood) over every window; a window of ``L``
tokens scores ``L - 1`` predictions, and the trailing partial window is dropped.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vq.codebook.checks import InputError

__all__ = [
    "PYDOC",
    "CALIB_FRACTION",
    "SEQ_LEN",
    "load_text",
    "tokenize",
    "split_tokens",
    "windows",
    "calibration_windows",
    "eval_windows",
    "perplexity",
]

log = logging.getLogger(__name__)

PYDOC = "pydoc"
CALIB_FRACTION = 0.8
SEQ_LEN = 512


def load_text(source: str | os.PathLike) -> str:
    """``"pydoc"`` -> the built-in corpus; anything else is a UTF-8 text file."""
    if str(source) == PYDOC:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(source)!r} not found (or use {PYDOC!r})")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file {path} is empty")
    return text


def tokenize(tokenizer, text: str) -> Tensor:
    """The whole text as one (n,) int64 token stream."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
    return ids.long()


def split_tokens(ids: Tensor, fraction: float = CALIB_FRACTION) -> tuple[Tensor, Tensor]:
    """(calibration, held-out) = first ``fraction`` of the tokens, the rest."""
    cut = int(len(ids) * fraction)
    return ids[:cut], ids[cut:]


def windows(ids: Tensor, seq_len: int = SEQ_LEN, what: str = "text") -> Tensor:
    """Non-overlapping windows (n_windows, seq_len); raises if not even one window fits."""
    n = len(ids) // seq_len
    if n == 0:  # the text given is too short: an input error (vq exit code 3), not a bad parameter
        raise InputError(
            f"{what} has {len(ids)} tokens, shorter than one {seq_len}-token window; give a longer text"
        )
    return ids[: n * seq_len].reshape(n, seq_len)  # (n_windows, seq_len)


def _corpus_windows(tokenizer, source: str | os.PathLike, part: str, seq_len: int) -> Tensor:
    ids = tokenize(tokenizer, load_text(source))
    if str(source) == PYDOC:
        calib, held = split_tokens(ids)
        ids = calib if part == "calib" else held
        what = f"the pydoc {'calibration' if part == 'calib' else 'held-out'} split"
    else:
        what = f"text file {source}"
    return windows(ids, seq_len, what)


def calibration_windows(tokenizer, source: str | os.PathLike = PYDOC, n: int | None = None,
                        seq_len: int = SEQ_LEN) -> Tensor:
    """Calibration windows (n, seq_len): ``pydoc`` -> its first 80%; a file -> all of it.

    ``n`` keeps ``n`` evenly spaced windows (deterministic) instead of all of them.
    """
    w = _corpus_windows(tokenizer, source, "calib", seq_len)
    if n is not None:
        if n < 1:
            raise ValueError(f"number of calibration windows must be >= 1, got {n}")
        if n < len(w):
            keep = torch.linspace(0, len(w) - 1, n).round().long()
            w = w[keep]
    return w


def eval_windows(tokenizer, source: str | os.PathLike = PYDOC, seq_len: int = SEQ_LEN) -> Tensor:
    """Evaluation windows (n, seq_len): ``pydoc`` -> its held-out last 20%; a file -> all of it."""
    return _corpus_windows(tokenizer, source, "eval", seq_len)


@torch.no_grad()
def perplexity(model: nn.Module, win: Tensor, batch_size: int = 4, progress: bool = True) -> tuple[float, int]:
    """Perplexity of ``model`` over windows (n, seq_len) int64; returns (perplexity, predicted tokens)."""
    if win.dim() != 2 or win.shape[0] < 1 or win.shape[1] < 2:  # n = 0 would divide by zero below
        raise ValueError(f"windows must have shape (n >= 1, seq_len >= 2), got {tuple(win.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters(), torch.empty(0)).device
    nll, count = 0.0, 0
    for s in tqdm(range(0, len(win), batch_size), desc="perplexity", unit="batch", disable=not progress):
        batch = win[s : s + batch_size].to(device)  # (b, L)
        logits = model(input_ids=batch, use_cache=False).logits.float()  # (b, L, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("the model produced NaN/Inf logits")
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        nll += float(loss)
        count += batch[:, 1:].numel()
    return math.exp(nll / count), count
