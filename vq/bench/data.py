"""Inputs of ``vq bench``: a fit split and a held-out split of d-dimensional vectors.

Sources (:func:`load_data`):

- ``FILE.npy`` / ``FILE.safetensors`` (``FILE.safetensors:KEY`` when it holds several tensors):
  an (n, w) array, validated once here (rank 2, non-empty, finite; errors name the file). Rows
  are split 80 / 20 at random (seeded); with ``dim`` < w (w divisible by dim) every row is then
  cut into w / dim vectors, so the pieces of one row stay in one split.
- ``gaussian``: i.i.d. N(0, 1) vectors (synthetic, for sanity), ``dim`` default 8.
- ``image-patches``: grey ``p x p`` patches (``dim = p * p``, default 16) of the offline images of
  scikit-image / scikit-learn (``vq_tokenizers.data.builtin_images``), non-overlapping, values
  centred to [-0.5, 0.5]; fit and held-out split BY IMAGE (a seeded quarter of the images is
  held out), so held-out figures measure generalisation to unseen pictures.
- ``llm-weights``: d-vectors (``dim`` default 8) of the decoder Linears of the default SmolLM2
  model (``vq.weights.hf``, offline): every weight row scaled to unit RMS (the row scales a
  compressor stores separately), then cut into consecutive ``dim``-long pieces; fit and
  held-out split BY LAYER (every 5th decoder block held out).

``max_vectors`` caps each split (fit and held-out alike) by a seeded uniform subsample.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["BenchData", "BUILTIN_SETS", "load_array", "load_data"]

log = logging.getLogger(__name__)

BUILTIN_SETS = ("gaussian", "image-patches", "llm-weights")
DEFAULT_DIMS = {"gaussian": 8, "image-patches": 16, "llm-weights": 8}
HELDOUT_FRACTION = 0.2
GAUSSIAN_VECTORS = 50_000
LLM_HELDOUT_EVERY = 5  # decoder blocks 4, 9, 14, ... are held out


@dataclass(frozen=True)
class BenchData:
    """Two splits of vectors: ``fit`` (n_fit, d) and ``heldout`` (n_heldout, d), float32."""

    name: str
    fit: Tensor
    heldout: Tensor
    split: str  # how the split was made, in words

    @property
    def dim(self) -> int:
        return int(self.fit.shape[1])

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "dim": self.dim, "n_fit": int(self.fit.shape[0]),
            "n_heldout": int(self.heldout.shape[0]), "split": self.split,
        }


def load_array(path: str | Path) -> Tensor:
    """Read one (n, w) array from ``.npy`` or ``.safetensors`` (``file.safetensors:KEY``) and
    validate it: rank 2, non-empty, floating point or integer, finite. Returns float32."""
    spec = str(path)
    key = None
    if ".safetensors:" in spec:
        spec, key = spec.split(".safetensors:", 1)
        spec += ".safetensors"
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{p}: not a plain .npy array ({e})") from e
    elif p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types on a corrupt header
            raise ValueError(f"{p}: not a readable safetensors file ({e})") from e
        if key is None:
            if len(tensors) != 1:
                raise ValueError(f"{p} holds {len(tensors)} tensors {sorted(tensors)[:8]}; "
                                 f"name one: --data {p}:KEY")
            key = next(iter(tensors))
        if key not in tensors:
            raise ValueError(f"{p} has no tensor {key!r}; it holds {sorted(tensors)[:8]}")
        arr = tensors[key]
    else:
        raise ValueError(f"{p}: unsupported data file type {p.suffix!r} (give .npy or .safetensors, "
                         f"or one of {', '.join(BUILTIN_SETS)})")
    if arr.ndim != 2:
        raise ValueError(f"{p}: expected a rank-2 array (n vectors, width), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{p}: the array is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{p}: expected a numeric array, got dtype {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"{p}: {bad} of {x.shape[0]} rows contain NaN or Inf")
    return x


def _subsample(x: Tensor, n: int | None, gen: torch.Generator) -> Tensor:
    if n is None or x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=gen)[:n].sort().values]


def _cut(x: Tensor, dim: int | None, what: str) -> Tensor:
    """(n, w) -> (n * w / dim, dim): consecutive pieces of every row."""
    if dim is None or dim == x.shape[1]:
        return x
    if dim > x.shape[1] or x.shape[1] % dim:
        raise ValueError(f"{what}: width {x.shape[1]} is not a multiple of --dim {dim}")
    return x.reshape(-1, dim)  # (n, w) -> (n w/dim, dim)


def _from_array(spec: str, dim: int | None, gen: torch.Generator) -> BenchData:
    x = load_array(spec)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{spec}: need at least 2 rows to split into fit and held-out, got {n}")
    perm = torch.randperm(n, generator=gen)
    n_held = max(1, int(round(HELDOUT_FRACTION * n)))
    held, fit = perm[:n_held].sort().values, perm[n_held:].sort().values
    return BenchData(Path(spec.split(":")[0]).name, _cut(x[fit], dim, spec), _cut(x[held], dim, spec),
                     f"rows split at random: {n - n_held} fit / {n_held} held-out rows (seeded)")


def _gaussian(dim: int, n: int, gen: torch.Generator) -> BenchData:
    x = torch.randn(n, dim, generator=gen)
    n_held = int(round(HELDOUT_FRACTION * n))
    return BenchData("gaussian", x[n_held:], x[:n_held], "i.i.d. N(0, I) draws, 80 / 20")


def _image_patches(dim: int, seed: int) -> BenchData:
    from vq_tokenizers.data import builtin_images, image_patches

    p = int(round(math.sqrt(dim)))
    if p * p != dim:
        raise ValueError(f"image-patches: --dim must be a square (p x p grey patches), got {dim}")
    images = builtin_images()
    names = sorted(images)
    held_names = sorted(random.Random(seed).sample(names, max(1, len(names) // 4)))
    fit_names = [n for n in names if n not in held_names]
    fit = image_patches([images[n] for n in fit_names], p, p) - 0.5  # (n, p*p)
    held = image_patches([images[n] for n in held_names], p, p) - 0.5
    return BenchData("image-patches", fit, held,
                     f"by image: {len(fit_names)} fit, {len(held_names)} held-out ({', '.join(held_names)}); "
                     f"{p}x{p} grey patches, stride {p}")


def _llm_weights(dim: int) -> BenchData:
    from vq.weights.hf import DEFAULT_MODEL, block_linears, decoder_blocks, load_model

    model = load_model(DEFAULT_MODEL)
    fit, held = [], []
    blocks = decoder_blocks(model)
    for b, block in enumerate(blocks):
        for name, lin in block_linears(block).items():
            w = lin.weight.detach().float()  # (out, in)
            if w.shape[1] % dim:
                raise ValueError(f"llm-weights: block {b} {name} has {w.shape[1]} inputs, not a multiple of --dim {dim}")
            w = w / w.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)  # unit-RMS rows
            v = w.reshape(-1, dim)  # (out, in) -> (out in/dim, dim)
            (held if b % LLM_HELDOUT_EVERY == LLM_HELDOUT_EVERY - 1 else fit).append(v)
    del model
    n_held_blocks = sum(1 for b in range(len(blocks)) if b % LLM_HELDOUT_EVERY == LLM_HELDOUT_EVERY - 1)
    return BenchData("llm-weights", torch.cat(fit), torch.cat(held),
                     f"by layer: SmolLM2-135M decoder Linears, {len(blocks) - n_held_blocks} blocks fit, "
                     f"{n_held_blocks} held-out (every {LLM_HELDOUT_EVERY}th); unit-RMS rows cut into {dim}-vectors")


def load_data(source: str, dim: int | None = None, seed: int = 0, max_vectors: int | None = None) -> BenchData:
    """Load a built-in set (:data:`BUILTIN_SETS`) or an array file and split it (module docstring).

    ``max_vectors`` caps each split (seeded uniform subsample). Deterministic for a given ``seed``."""
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"--dim must be a positive int, got {dim!r}")
    if max_vectors is not None and max_vectors < 2:
        raise ValueError(f"--max-vectors must be >= 2, got {max_vectors}")
    gen = torch.Generator().manual_seed(seed)
    if source in BUILTIN_SETS:
        d = DEFAULT_DIMS[source] if dim is None else dim
        if source == "gaussian":
            data = _gaussian(d, max_vectors or GAUSSIAN_VECTORS, gen)
        elif source == "image-patches":
            data = _image_patches(d, seed)
        else:
            data = _llm_weights(d)
    elif source.endswith((".npy", ".safetensors")) or ".safetensors:" in source or Path(source).exists():
        data = _from_array(source, dim, gen)
    else:
        raise FileNotFoundError(f"--data {source!r}: no such file, and not a built-in set ({', '.join(BUILTIN_SETS)})")
    if max_vectors is not None and max(data.fit.shape[0], data.heldout.shape[0]) > max_vectors:
        data = BenchData(data.name, _subsample(data.fit, max_vectors, gen), _subsample(data.heldout, max_vectors, gen),
                         data.split + f"; each split subsampled to at most {max_vectors} vectors (seeded)")
    log.info("data %s: %d fit / %d held-out vectors of dim %d", data.name, data.fit.shape[0],
             data.heldout.shape[0], data.dim)
    return data
