"""Residual / additive VQ against faiss at equal bits, on image patches.

Data: grayscale pixel patches (``--patch`` rows x cols, d = rows * cols) from scikit-learn's and
scikit-image's bundled photographs, normalised with the training mean and std. ``--split random``
(default) draws disjoint train and held-out patches from all images; ``--split images`` takes
held-out patches from images never seen in training (adds a distribution shift).

Pairs, all at M codebooks of ``index_bits`` bits (M * index_bits bits per vector), measured in one run:

* ``vq.ResidualVQ`` greedy             vs ``faiss.ResidualQuantizer`` with max_beam_size = 1
* ``vq.ResidualVQ`` beam B             vs ``faiss.ResidualQuantizer`` with max_beam_size = B
* ``vq.ResidualVQ`` beam B, trained with beam B (``train_beam``, as faiss trains) vs the same
* ``vq.AdditiveVQ`` (beam B)           vs ``faiss.LocalSearchQuantizer``

Reports held-out MSE per dimension, the ratio ours / faiss (< 1: ours is better), fit and encode
times and their ratios. Both libraries get the same number of threads (``--threads``).
The last line printed is one JSON object with every figure.

    python bench/rq_vs_faiss.py                       # defaults: 2x4 patches (d=8), M=2, 8 bits
    python bench/rq_vs_faiss.py --patch 4 4 --M 4     # 16-dim patches, 4 codebooks (slower)
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vq.codebook import AdditiveVQ, ResidualVQ
from vq.codebook.metrics import mse
from vq_tokenizers.data import builtin_images

from _report import print_result
from _timing import timed

TRAIN_IMAGES = ("china", "astronaut", "camera", "coffee", "rocket", "brick", "grass", "moon", "coins")
TEST_IMAGES = ("flower", "chelsea", "gravel", "immunohistochemistry")  # held out under --split images
SPLITS = ("random", "images")


@dataclass(frozen=True)
class Experiment:
    patch: tuple[int, int] = (2, 4)
    M: int = 2
    index_bits: int = 8
    n_train: int = 50_000
    n_test: int = 20_000
    beam: int = 5
    kmeans_niter: int = 10  # faiss ResidualQuantizer default (cp.niter)
    aq_niter: int = 4
    lsq_train_iters: int = 25  # faiss's default
    threads: int = 1
    seed: int = 0
    split: str = "random"

    def __post_init__(self) -> None:
        if len(self.patch) != 2 or min(self.patch) < 1:
            raise ValueError(f"patch must be two positive ints, got {self.patch}")
        for name in ("M", "index_bits", "n_train", "n_test", "beam", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.index_bits > 12:
            raise ValueError(f"index_bits must be <= 12, got {self.index_bits}")

    @property
    def dim(self) -> int:
        return self.patch[0] * self.patch[1]


#: rq_vs_faiss's image names -> vq_tokenizers.data.builtin_images names
_BUILTIN = {"china": "sklearn_china", "flower": "sklearn_flower"}


def _image(name: str) -> np.ndarray:
    """One bundled photograph as a 2-d float64 array in [0, 1]: the luma of its RGB."""
    rgb = builtin_images([_BUILTIN.get(name, name)])[_BUILTIN.get(name, name)]  # (H, W, 3) float32
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)


def _patches(names: tuple[str, ...], patch: tuple[int, int]) -> np.ndarray:
    """Non-overlapping patches of every image: (n, ph * pw)."""
    ph, pw = patch
    out = []
    for name in names:
        img = _image(name)
        h, w = (img.shape[0] // ph) * ph, (img.shape[1] // pw) * pw
        p = img[:h, :w].reshape(h // ph, ph, w // pw, pw).transpose(0, 2, 1, 3)  # (H/ph, W/pw, ph, pw)
        out.append(p.reshape(-1, ph * pw))  # (n_img, d)
    return np.concatenate(out)


def load_data(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(exp.seed)
    if exp.split == "images":
        train, test = _patches(TRAIN_IMAGES, exp.patch), _patches(TEST_IMAGES, exp.patch)
    else:
        pool = _patches(TRAIN_IMAGES + TEST_IMAGES, exp.patch)
        pool = pool[rng.permutation(len(pool))]
        train, test = pool[: len(pool) - exp.n_test], pool[len(pool) - exp.n_test :]
    if len(train) < exp.n_train or len(test) < exp.n_test:
        raise ValueError(f"only {len(train)} train / {len(test)} test patches available for patch {exp.patch}")
    train = train[rng.choice(len(train), exp.n_train, replace=False)]
    test = test[rng.choice(len(test), exp.n_test, replace=False)]
    mean, std = train.mean(0), train.std()
    norm = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return norm(train), norm(test)


def run_ours(codec, train: torch.Tensor, test: torch.Tensor, **encode_kw) -> dict:
    fit_s, _ = timed(lambda: codec.fit(train))
    enc_s, codes = timed(lambda: codec.encode(test, **encode_kw))
    return {"mse": mse(test, codec.decode(codes)), "fit_s": fit_s, "encode_s": enc_s}


def run_faiss(quantizer, train: torch.Tensor, test: torch.Tensor) -> dict:
    xtr, xte = train.numpy(), test.numpy()
    fit_s, _ = timed(lambda: quantizer.train(xtr))
    enc_s, codes = timed(lambda: quantizer.compute_codes(xte))
    return {"mse": mse(test, torch.from_numpy(quantizer.decode(codes))), "fit_s": fit_s, "encode_s": enc_s}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Experiment()
    ap.add_argument("--patch", type=int, nargs=2, default=list(d.patch))
    for name in ("M", "index_bits", "n_train", "n_test", "beam", "kmeans_niter", "aq_niter", "lsq_train_iters", "threads", "seed"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(d, name))
    ap.add_argument("--split", choices=SPLITS, default=d.split)
    args = vars(ap.parse_args(argv))
    exp = Experiment(**{**args, "patch": tuple(args["patch"])})

    import faiss

    torch.set_num_threads(exp.threads)
    faiss.omp_set_num_threads(exp.threads)
    train, test = load_data(exp)
    k, dim = 2**exp.index_bits, exp.dim
    print(f"data: {len(train)} train / {len(test)} held-out {exp.patch[0]}x{exp.patch[1]} patches (d={dim}); "
          f"M={exp.M} x {exp.index_bits} bits = {exp.M * exp.index_bits} bits/vector; threads={exp.threads}")

    def faiss_rq(beam: int):
        rq = faiss.ResidualQuantizer(dim, exp.M, exp.index_bits)  # faiss: (d, M, nbits)
        rq.max_beam_size = beam
        rq.cp.niter = exp.kmeans_niter
        return rq

    lsq = faiss.LocalSearchQuantizer(dim, exp.M, exp.index_bits)  # faiss: (d, M, nbits)
    lsq.train_iters = exp.lsq_train_iters
    faiss_beam = run_faiss(faiss_rq(exp.beam), train, test)
    rows = {
        "rvq_greedy": (
            run_ours(ResidualVQ(dim, exp.M, k, niter=exp.kmeans_niter, seed=exp.seed), train, test, beam=1),
            run_faiss(faiss_rq(1), train, test), "faiss RQ beam 1",
        ),
        "rvq_beam": (
            run_ours(ResidualVQ(dim, exp.M, k, niter=exp.kmeans_niter, seed=exp.seed), train, test, beam=exp.beam),
            faiss_beam, f"faiss RQ beam {exp.beam}",
        ),
        "rvq_beam_trained": (
            run_ours(ResidualVQ(dim, exp.M, k, niter=exp.kmeans_niter, seed=exp.seed, train_beam=exp.beam), train,
                     test, beam=exp.beam),
            faiss_beam, f"faiss RQ beam {exp.beam}",
        ),
        "aq": (
            run_ours(AdditiveVQ(dim, exp.M, k, niter=exp.aq_niter, beam=exp.beam, kmeans_niter=exp.kmeans_niter,
                                seed=exp.seed), train, test),
            run_faiss(lsq, train, test), f"faiss LSQ ({exp.lsq_train_iters} iters)",
        ),
    }
    names = {
        "rvq_greedy": "ResidualVQ greedy",
        "rvq_beam": f"ResidualVQ beam {exp.beam}",
        "rvq_beam_trained": f"ResidualVQ beam {exp.beam}, train_beam {exp.beam}",
        "aq": f"AdditiveVQ beam {exp.beam}",
    }
    print(f"| ours | peer | ours MSE/dim | peer MSE/dim | MSE ratio | ours fit s | peer fit s | fit ratio | encode ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    result = {"experiment": {**asdict(exp), "dim": dim}, "rows": {}}
    for key, (ours, peer, peer_name) in rows.items():
        r = {
            "ours": ours, "peer": peer, "peer_name": peer_name,
            "mse_ratio": ours["mse"] / peer["mse"],
            "fit_ratio": ours["fit_s"] / peer["fit_s"],
            "encode_ratio": ours["encode_s"] / peer["encode_s"],
        }
        result["rows"][key] = r
        print(f"| {names[key]} | {peer_name} | {ours['mse']:.5f} | {peer['mse']:.5f} | {r['mse_ratio']:.3f} | "
              f"{ours['fit_s']:.1f} | {peer['fit_s']:.1f} | {r['fit_ratio']:.2f} | {r['encode_ratio']:.2f} |")
    print_result(result)
    return result


if __name__ == "__main__":
    main()
