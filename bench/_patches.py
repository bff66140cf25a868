"""The patch data and post-hoc k-means baseline shared by the tokenizer benches
(``tokenizer_layers.py``, ``tokenizer_vq_ceiling.py``). Not a bench: imported by them (they run
as scripts from the repo root, so ``bench/`` is on ``sys.path``)."""
from __future__ import annotations

import numpy as np
import torch

from vq_tokenizers.data import builtin_images, image_patches

__all__ = ["split_patches", "pca_basis", "faiss_kmeans"]


def split_patches(p: int, stride: int = 2, flip: bool = False, band: int = 32,
                  fit_stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image cut into horizontal bands of ``band`` rows; of every 4 bands the first 3 give
    training patches (``stride``; ``flip`` adds the mirror image of every training patch), the
    4th the held-out pool (stride 1, never flipped). Each patch lies inside one group of bands:
    disjoint pixels, and both sides sample the whole height of every image, so they share one
    distribution (a top 75 % / bottom 25 % split did not: sky, page margins and the moon's black
    sky sit at the top; see docs/results.md). ``fit_stride``: the post-hoc fit set, the same
    training bands at that stride (default: the training set itself).
    Returns (train, fit, held), values centred: [-0.5, 0.5], (n, p * p) each."""
    fit_stride = stride if fit_stride is None else fit_stride
    train, fit, held = [], [], []
    for im in builtin_images().values():
        for start in range(0, im.shape[0], 4 * band):
            cut, end = min(start + 3 * band, im.shape[0]), min(start + 4 * band, im.shape[0])
            if cut - start >= p:
                train.append(image_patches([im[start:cut]], p, stride))
                if fit_stride != stride:
                    fit.append(image_patches([im[start:cut]], p, fit_stride))
            if end - cut >= p:
                held.append(image_patches([im[cut:end]], p, 1))

    def centred(parts: list[torch.Tensor]) -> torch.Tensor:
        t = torch.cat(parts) - 0.5  # (n, p * p)
        if flip:  # left-right mirror: rearrange '(n) (r c) -> (n) (r c_reversed)'
            t = torch.cat([t, t.view(-1, p, p).flip(-1).reshape(-1, p * p)])
        return t

    train_t = centred(train)
    return train_t, (centred(fit) if fit else train_t), torch.cat(held) - 0.5


def pca_basis(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (p*p,) and the top-``dim`` principal directions (p*p, dim) of the rows of ``x``."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dim].T.astype(np.float32)


def faiss_kmeans(feats: np.ndarray, k: int, niter: int, seed: int):
    """faiss k-means (``faiss.Kmeans``, trained) on every row of ``feats`` (n, d) float32: its
    ``max_points_per_centroid`` is raised to ceil(n / k), so nothing is silently subsampled."""
    import faiss

    km = faiss.Kmeans(feats.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=-(-feats.shape[0] // k))
    km.train(feats)
    return km
