"""k-means speed and quality: vq (auto and torch backends) vs faiss and scikit-learn.

Same data, same k, same iterations, all peers in one run. Rows:

- ``faiss``: ``faiss.Kmeans`` (random initialisation), every point used;
- ``vq default``: ``KMeans(k, niter=...)`` as a new user calls it: k-means++ seeding (on a
  sample, ``vq.codebook.kmeans.kmeans_plusplus``), auto backend (faiss's Lloyd when installed);
- ``vq-auto random`` / ``vq-torch random``: ``init="random"`` (faiss's own scheme), auto and torch
  backends;
- ``sklearn``: scikit-learn's Lloyd, random initialisation.

Data sets. Tuning set (``patches``, the shapes of issue #2; the seeding sample size was chosen
on it): overlapping image patches from the images shipped with scikit-image and scikit-learn
(d = 4: 2x2, d = 8: 2x4, d = 64: 8x8 grey patches), standardised, 20 iterations. Held-out sets,
not looked at while tuning: ``gaussian``, i.i.d. N(0, 1) data at the issue #12 shape (2e5 x 8,
k = 4096, 10 iterations: data of a new user's own), and ``mixture``, a Gaussian mixture of 2000
anisotropic clusters in d = 16 (k = 1024, 10 iterations). MSE is measured on all points at the
final centroids. Prints a table and, as the last line, one JSON object.

    .venv/bin/python bench/kmeans.py                 # tuning + held-out shapes
    .venv/bin/python bench/kmeans.py --threads 1     # every peer on one thread
    .venv/bin/python bench/kmeans.py --quick         # small shapes, a smoke test
"""
from __future__ import annotations

import argparse
import platform
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vq.codebook import KMeans, _native, assign
from vq.codebook.kmeans import kmeans_plusplus

from _report import print_result
from _timing import timed


@dataclass(frozen=True)
class Shape:
    n: int
    d: int
    k: int
    data: str = "patches"  # "patches" (tuning set), "gaussian" or "mixture" (held out)
    niter: int = 20


TUNING = (Shape(1_000_000, 4, 256), Shape(200_000, 8, 4096), Shape(100_000, 64, 1024))
HELD_OUT = (Shape(200_000, 8, 4096, "gaussian", 10), Shape(300_000, 16, 1024, "mixture", 10))


@dataclass(frozen=True)
class Experiment:
    shapes: tuple[Shape, ...] = TUNING + HELD_OUT
    seed: int = 0
    data_seed: int = 1  # held-out data sets are drawn with their own seed
    sklearn: bool = True
    repeats: int = 1


def image_patches(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) float32 standardised grey patches (ph x pw = d) from the packaged images."""
    from skimage import color, data
    from sklearn.datasets import load_sample_images

    imgs = [load_sample_images().images[i] for i in range(2)]
    imgs += [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon")]
    grey = [color.rgb2gray(im) if im.ndim == 3 else im / 255.0 for im in imgs]
    ph = {4: 2, 8: 2, 16: 4, 64: 8}.get(d, 1)
    pw = d // ph
    rng = np.random.default_rng(seed)
    per = -(-n // len(grey))
    out = []
    for g in grey:
        g = np.asarray(g, dtype=np.float32)
        r = rng.integers(0, g.shape[0] - ph, per)
        c = rng.integers(0, g.shape[1] - pw, per)
        idx_r = r[:, None, None] + np.arange(ph)[None, :, None]  # (per, ph, 1)
        idx_c = c[:, None, None] + np.arange(pw)[None, None, :]  # (per, 1, pw)
        out.append(g[idx_r, idx_c].reshape(per, d))  # (per, d)
    x = np.concatenate(out)[:n]
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) float32 i.i.d. N(0, 1)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def mixture(n: int, d: int, seed: int, clusters: int = 2000) -> torch.Tensor:
    """(n, d) float32 Gaussian mixture: N(0, 9 I) means, per-cluster per-axis scales in (0.1, 1.1),
    cluster sizes drawn from a Dirichlet(1) (uneven)."""
    g = torch.Generator().manual_seed(seed)
    mu = 3.0 * torch.randn(clusters, d, generator=g)  # (clusters, d)
    scale = 0.1 + torch.rand(clusters, d, generator=g)  # (clusters, d)
    p = -torch.log(torch.rand(clusters, generator=g))  # Dirichlet(1) weights, unnormalised
    lab = torch.multinomial(p / p.sum(), n, replacement=True, generator=g)  # (n,)
    return mu[lab] + scale[lab] * torch.randn(n, d, generator=g)


def make_data(s: Shape, e: Experiment) -> torch.Tensor:
    if s.data == "patches":
        return image_patches(s.n, s.d, e.seed)
    if s.data == "gaussian":
        return gaussian(s.n, s.d, e.data_seed)
    if s.data == "mixture":
        return mixture(s.n, s.d, e.data_seed)
    raise ValueError(f"unknown data set {s.data!r}")


def mse(x: torch.Tensor, c: torch.Tensor) -> float:
    """Mean over the rows of x of the squared distance to the nearest centroid (sum over d)."""
    return float(assign(x, c)[1].double().mean())


def run_shape(s: Shape, e: Experiment) -> dict:
    import faiss

    x = make_data(s, e)
    xn = x.numpy()
    rows = {}

    def faiss_fit():
        km = faiss.Kmeans(s.d, s.k, niter=s.niter, seed=e.seed, max_points_per_centroid=-(-s.n // s.k),
                          min_points_per_centroid=1)
        km.train(xn)
        return torch.from_numpy(km.centroids.copy())

    t, c = timed(faiss_fit, e.repeats)
    rows["faiss"] = (t, mse(x, c))
    t, km = timed(lambda: KMeans(s.k, niter=s.niter, seed=e.seed).fit(x), e.repeats)
    rows["vq default"] = (t, mse(x, km.centroids))
    for name, backend in (("vq-auto random", "auto"), ("vq-torch random", "torch")):
        t, km = timed(lambda: KMeans(s.k, niter=s.niter, init="random", backend=backend, seed=e.seed).fit(x),
                      e.repeats)
        rows[name] = (t, mse(x, km.centroids))
    if e.sklearn:
        from sklearn.cluster import KMeans as SKKMeans

        t, sk = timed(lambda: SKKMeans(s.k, init="random", n_init=1, max_iter=s.niter, tol=0.0,
                                       algorithm="lloyd", random_state=e.seed).fit(xn), 1)
        rows["sklearn"] = (t, mse(x, torch.from_numpy(sk.cluster_centers_.astype(np.float32))))
    seeding, _ = timed(lambda: kmeans_plusplus(x, s.k, generator=torch.Generator().manual_seed(e.seed)), e.repeats)
    tf, mf = rows["faiss"]
    out = {name: {"seconds": round(t, 3), "time_vs_faiss": round(t / tf, 3), "mse": m, "mse_vs_faiss": round(m / mf, 4)}
           for name, (t, m) in rows.items()}
    out["vq default"]["seeding_seconds"] = round(seeding, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="best-of-N timing for faiss and vq")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every peer (torch, faiss, sklearn); 1 is robust on a busy machine")
    args = ap.parse_args()
    if args.threads is not None:
        import faiss
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
    e = Experiment(sklearn=not args.no_sklearn, repeats=args.repeats)
    if args.quick:
        e = Experiment(shapes=(Shape(50_000, 4, 64), Shape(20_000, 8, 256), Shape(10_000, 64, 128),
                               Shape(20_000, 8, 512, "gaussian", 10), Shape(30_000, 16, 128, "mixture", 10)),
                       sklearn=e.sklearn, repeats=e.repeats)
    results = {}
    print(f"threads={torch.get_num_threads()} native_kernel={_native.available()} cpu={platform.processor() or platform.machine()}")
    print(f"{'data, n x d x k, iters':>32} {'method':>16} {'seconds':>9} {'x faiss':>8} {'MSE':>10} {'MSE/faiss':>9}")
    for s in e.shapes:
        res = run_shape(s, e)
        key = f"{s.data} {s.n}x{s.d}x{s.k} it{s.niter}"
        results[key] = res
        for name, r in res.items():
            print(f"{key:>32} {name:>16} {r['seconds']:9.2f} {r['time_vs_faiss']:8.2f} {r['mse']:10.5f} "
                  f"{r['mse_vs_faiss']:9.4f}", flush=True)
        print(f"{key:>32} {'(vq seeding)':>16} {res['vq default']['seeding_seconds']:9.2f}", flush=True)
    print_result({"bench": "kmeans", "experiment": asdict(e), "results": results})


if __name__ == "__main__":
    main()
