"""How much room is there below the patch bench's PCA + k-means baseline at one K?

Any bottleneck "encoder -> nearest of K codes -> decoder" is a K-point vector quantizer of the
64-pixel patches, so the held-out error of the best one is bounded by what k-means in pixel space
reaches. On the data of ``bench/tokenizer_layers.py`` (same split, stride-1 fit set, the whole
held-out pool of 754 017 patches) this prints, for one K:

- the baseline, faiss k-means on the d-dim PCA features, after ``--niters`` Lloyd iterations each;
- the same partition (the first ``--niters`` entry) decoded to the 64-dim mean of each cell instead of the PCA
  reconstruction of its centroid (what an ideal decoder could add);
- faiss k-means on the 64-dim pixels (``--pixel-niter``, 0 to skip: slow);
- from the baseline's own first-entry centroids, ``--more`` further iterations of plain Lloyd vs
  ELBG moves (``VectorQuantizer.refine_codebook`` with ``split`` / ``split_share``) on the same
  PCA features: better k-means on the baseline's own terms.

    python bench/tokenizer_vq_ceiling.py --k 1024                 # ~6 min on one CPU thread

Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vq_tokenizers import VectorQuantizer

from _patches import faiss_kmeans, pca_basis, split_patches
from _report import print_result


def nearest(centroids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries), 1)[1][:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--niters", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--pixel-niter", type=int, default=10)
    ap.add_argument("--more", type=int, default=15)
    ap.add_argument("--split", type=float, default=0.05)
    ap.add_argument("--split-share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    _, fit, held = split_patches(8, 2, fit_stride=1)
    f, h = fit.numpy(), held.numpy()
    mean, basis = pca_basis(f, args.dim)  # (64,), (64, d)
    ff = np.ascontiguousarray((f - mean) @ basis)
    hf = np.ascontiguousarray((h - mean) @ basis)
    res: dict = {"K": args.k, "fit_points": int(f.shape[0]), "heldout_points": int(h.shape[0])}
    res["pca_floor"] = float(((hf @ basis.T + mean - h) ** 2).mean())

    def pca_mse(centroids: np.ndarray) -> float:
        return float(((centroids[nearest(centroids, hf)] @ basis.T + mean - h) ** 2).mean())

    first = None
    for niter in args.niters:
        t0 = time.perf_counter()
        km = faiss_kmeans(ff, args.k, niter, args.seed)
        res[f"pca_kmeans_{niter}"] = pca_mse(km.centroids)
        print(f"PCA-{args.dim} k-means, {niter} iterations: held-out MSE {res[f'pca_kmeans_{niter}']:.6f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        first = km.centroids.copy() if first is None else first
    a = torch.from_numpy(nearest(first, ff).astype(np.int64))
    cell_mean = torch.zeros(args.k, 64).index_add_(0, a, fit) / torch.bincount(a, minlength=args.k).clamp(min=1)[:, None]
    res["pca_partition_cell_mean"] = float(((cell_mean.numpy()[nearest(first, hf)] - h) ** 2).mean())
    print(f"same partition ({args.niters[0]} it.), 64-dim cell means: {res['pca_partition_cell_mean']:.6f}", flush=True)
    if args.pixel_niter:
        km = faiss_kmeans(np.ascontiguousarray(f), args.k, args.pixel_niter, args.seed)
        res[f"pixel_kmeans_{args.pixel_niter}"] = float(((km.centroids[nearest(km.centroids, h)] - h) ** 2).mean())
        print(f"64-dim k-means, {args.pixel_niter} iterations: {res[f'pixel_kmeans_{args.pixel_niter}']:.6f}", flush=True)
    for name, split in (("lloyd", 0.0), ("elbg", args.split)):
        vq = VectorQuantizer(args.dim, args.k)
        vq.codebook.data.copy_(torch.from_numpy(first))
        vq.refine_codebook(torch.from_numpy(ff), args.more, split, args.split_share)
        res[f"more_{args.more}_{name}"] = pca_mse(vq.codebook.detach().numpy())
        print(f"{args.niters[0]} iterations + {args.more} of {name}: {res[f'more_{args.more}_{name}']:.6f}", flush=True)
    print_result(res)


if __name__ == "__main__":
    main()
