"""Quantizer layers, ours vs vector-quantize-pytorch, in the same tiny autoencoder.

Grey 8x8 patches of offline natural images (scikit-image / scikit-learn); training and held-out
patches come from disjoint, interleaved row bands of every image (3 of every 4 bands of 32 rows
train, the 4th held out). The autoencoder (64 -> 256 -> d -> 256 -> 64, GELU) is the
same for every run; only the bottleneck changes; same steps, batch, Adam learning-rate schedule
(linear warmup, then cosine decay to 0 by default), training data and seed.
Reported per (K, method): held-out MSE, held-out used fraction and usage perplexity (held-out set
of 10 K vectors drawn from the pool, so every code can be hit), the MSE on the whole held-out
pool (754 017 patches: a finer estimate of the same quantity), steps/s and its ratio to vector-quantize-pytorch's
VectorQuantize at the same K, peak RSS growth (CPU) or peak CUDA memory. Baseline: post-hoc
faiss k-means with K centroids on d-dim PCA features of the training patches.

    python bench/tokenizer_layers.py --ks 1024 8192 --methods ours_vq vqp_vq   # 3000 steps
    python bench/tokenizer_layers.py --ks 65536 --steps 6000 --methods ours_vq  # peer cannot run
    python bench/tokenizer_layers.py --ks 1024 --steps 100 # quick

Every method at 3000 steps is slow for some peers (vector-quantize-pytorch's SimVQ at K = 8192
runs ~0.2 steps/s on one CPU thread): pick ``--methods``. ``ours_vq`` / ``ours_vq_rotation``
also get a ``+refine`` row: the same trained model after ``refine_codebook`` (8 Lloyd iterations
on the encodings of every training-band patch at ``--fit-stride`` 1, i.e. every position; the
first 5 also make ELBG moves: up to 5 % of the codes, the ones with the least error, go to the cells
holding >= half a uniform share whose split saves more than their removal costs, see
``refine_codebook(split, split_share)``), a post-hoc
step like the k-means baseline's, which samples its points from the same stride-1 set. Each
``+refine`` row is followed by a ``+refine+dec`` row: the same partition, with a copy of the
decoder refitted to it (``vq_tokenizers.posthoc.refit_decoder``: encoder and codebook frozen, ``--decoder-refit-steps`` full-batch Adam
steps on the count-weighted cell means; the used fraction cannot change).
    python bench/tokenizer_layers.py --ks 8192 --methods ours_vq --vq-option decay=0.99  # side run
    python bench/tokenizer_layers.py --ks 65536 --methods ours_vq --refine-split-share 0.7 1  # one row per share

Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vq.codebook.metrics import used_fraction, usage_perplexity
from vq_tokenizers import FSQ, ResidualVQ, SimVQ, VectorQuantizer
from vq_tokenizers.posthoc import refit_decoder

from _patches import faiss_kmeans, pca_basis, split_patches
from _report import print_result

log = logging.getLogger("bench.tokenizer_layers")

FSQ_LEVELS = {1024: [8, 8, 4, 4], 8192: [8, 8, 8, 4, 4], 65536: [8, 8, 8, 8, 4, 4]}
SCHEDULES = ("cosine", "constant")
METHODS = ("ours_vq", "ours_vq_rotation", "ours_simvq", "ours_fsq", "ours_rvq2",
           "vqp_vq", "vqp_simvq", "vqp_fsq", "vqp_rvq2")  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    ks: tuple[int, ...] = (1024, 8192, 65536)
    methods: tuple[str, ...] = METHODS
    dim: int = 16
    steps: int = 3000
    batch: int = 1024
    lr: float = 2e-3
    patch: int = 8
    heldout_factor: int = 10
    kmeans_niter: int = 10
    baseline_points_per_code: int | None = None  # None: every fit point
    schedule: str = "cosine"
    warmup_frac: float = 0.05
    train_stride: int = 2
    fit_stride: int = 1
    flip: bool = False
    refine_iters: int = 8
    refine_split: float = 0.05
    refine_split_share: tuple[float, ...] = (0.5,)  # several: one refined row each, same trained model
    decoder_refit_steps: int = 500  # 0: no +refine+dec rows
    vq_options: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        bad = set(self.methods) - set(METHODS)
        if bad:
            raise ValueError(f"unknown methods {sorted(bad)}; known: {METHODS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.decoder_refit_steps < 0:
            raise ValueError(f"decoder_refit_steps must be >= 0, got {self.decoder_refit_steps}")
        if self.steps < 1 or self.train_stride < 1 or self.fit_stride < 1:
            raise ValueError(f"steps, train_stride and fit_stride must be >= 1, got {self.steps}, "
                             f"{self.train_stride}, {self.fit_stride}")
        for k in self.ks:
            if k not in FSQ_LEVELS:
                raise ValueError(f"K must be one of {sorted(FSQ_LEVELS)}, got {k}")


def lr_factor(step: int, exp: Experiment) -> float:
    """Multiplier of ``exp.lr`` at ``step`` (0-based): linear warmup over ``warmup_frac`` of the
    steps, then constant or cosine decay to 0 at the last step."""
    warm = int(exp.warmup_frac * exp.steps)
    if step < warm:
        return (step + 1) / warm
    if exp.schedule == "constant":
        return 1.0
    t = (step - warm) / max(1, exp.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * t))


class Bottleneck(nn.Module):
    """Adapts either library's layer to (quantized, codes (n, m), aux loss)."""

    def __init__(self, kind: str, k: int, d: int, vq_options: dict[str, Any] | None = None):
        super().__init__()
        self.kind = kind
        opts = vq_options or {}  # side runs: VQConfig overrides of ours_vq / ours_vq_rotation
        if kind == "ours_vq":
            self.q = VectorQuantizer(d, k, **opts)
        elif kind == "ours_vq_rotation":
            self.q = VectorQuantizer(d, k, **{"update": "gradient", "gradient": "rotation", **opts})
        elif kind == "ours_simvq":
            self.q = SimVQ(d, k)
        elif kind == "ours_fsq":
            self.q = FSQ(d, FSQ_LEVELS[k])
        elif kind == "ours_rvq2":
            self.q = ResidualVQ(d, k, 2)
        else:
            import vector_quantize_pytorch as vqp

            if kind == "vqp_vq":  # its anti-collapse options on: k-means init, dead-code expiry
                self.q = vqp.VectorQuantize(d, k, decay=0.99, kmeans_init=True, threshold_ema_dead_code=2)
            elif kind == "vqp_simvq":
                self.q = vqp.SimVQ(d, k)
            elif kind == "vqp_fsq":
                self.q = vqp.FSQ(FSQ_LEVELS[k], dim=d)
            elif kind == "vqp_rvq2":
                self.q = vqp.ResidualVQ(dim=d, codebook_size=k, num_quantizers=2, kmeans_init=True,
                                        threshold_ema_dead_code=2)  # fmt: skip
            else:
                raise ValueError(kind)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.kind.startswith("ours"):
            o = self.q(z)
            codes = o.codes if o.codes.dim() == 2 else o.codes[:, None]
            return o.quantized, codes, o.loss
        out = self.q(z[:, None, :])  # its layers want (batch, seq, d)
        if self.kind == "vqp_fsq":
            quantized, codes = out
            loss = z.new_zeros(())
        else:
            quantized, codes, loss = out[0], out[1], out[2]
        codes = codes.reshape(z.shape[0], -1)  # (n, m)
        return quantized[:, 0], codes, loss.sum()


def make_ae(d: int, p: int) -> tuple[nn.Module, nn.Module]:
    enc = nn.Sequential(nn.Linear(p * p, 256), nn.GELU(), nn.Linear(256, d))
    dec = nn.Sequential(nn.Linear(d, 256), nn.GELU(), nn.Linear(256, p * p))
    return enc, dec


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return math.nan


def _reset_peak() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return _rss_mb("VmRSS")


def run_one(exp: Experiment, kind: str, k: int, train: torch.Tensor, held: torch.Tensor, device: str,
            fit: torch.Tensor | None = None, pool: torch.Tensor | None = None) -> list[dict]:
    """Train one bottleneck on ``train``; one row, plus, when ``exp.refine_iters``, per refinement
    share a ``<kind>+refine`` row (same training, then ``refine_codebook`` on the encodings of every
    ``fit`` patch, default ``train``) and, when ``exp.decoder_refit_steps``, a ``<kind>+refine+dec`` row."""
    torch.manual_seed(exp.seed)
    enc, dec = make_ae(exp.dim, exp.patch)
    bott = Bottleneck(kind, k, exp.dim, dict(exp.vq_options))
    model = nn.ModuleList([enc, bott, dec]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=exp.lr)
    gen = torch.Generator().manual_seed(exp.seed + 1)
    base = _reset_peak()
    times = []
    for step in range(exp.steps):
        for group in opt.param_groups:
            group["lr"] = exp.lr * lr_factor(step, exp)
        x = train[torch.randint(train.shape[0], (exp.batch,), generator=gen)].to(device)
        t0 = time.perf_counter()
        q, _, aux = bott(enc(x))
        loss = (dec(q) - x).square().mean() + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # median step: robust to load bursts from other processes on a shared machine, and leaves
    # out the one-off k-means init step of either library
    step_s = float(np.median(times))
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else _rss_mb("VmHWM") - base
    model.eval()
    row = {"K": k, "method": kind, **evaluate(enc, bott, dec, held, k, device, pool),
           "steps_per_s": 1.0 / step_s, "train_s": float(np.sum(times)), "peak_mem_mb": peak}  # fmt: skip
    if not (exp.refine_iters and kind in ("ours_vq", "ours_vq_rotation")):
        return [row]
    with torch.no_grad():
        fit = train if fit is None else fit
        z = torch.cat([enc(fit[s : s + 65536].to(device)) for s in range(0, fit.shape[0], 65536)])
    trained = {name: t.clone() for name, t in bott.q.state_dict().items()}
    rows = [row]
    for share in exp.refine_split_share:
        bott.q.load_state_dict(trained)  # every share refines the same trained codebook
        t0 = time.perf_counter()
        hist = bott.q.refine_codebook(z, exp.refine_iters, exp.refine_split, share)  # latent MSE before / after each iteration
        tag = "" if len(exp.refine_split_share) == 1 else f"@{share:g}"
        rows.append({**row, "method": f"{kind}+refine{tag}", **evaluate(enc, bott, dec, held, k, device, pool),
                     "refine_split_share": share, "refine_s": time.perf_counter() - t0,
                     "refine_latent_mse": [hist[0], hist[-1]]})  # fmt: skip
        if exp.decoder_refit_steps:
            t0 = time.perf_counter()
            with torch.no_grad():
                q, codes, _ = bott(z)  # the final partition of the fit set
            refit = refit_decoder(dec, q, codes[:, 0], fit, exp.decoder_refit_steps, exp.lr)
            rows.append({**rows[-1], "method": f"{kind}+refine+dec{tag}",
                         **evaluate(enc, bott, refit, held, k, device, pool),
                         "decoder_refit_s": time.perf_counter() - t0})  # fmt: skip
    return rows


def evaluate(enc: nn.Module, bott: nn.Module, dec: nn.Module, held: torch.Tensor, k: int, device: str,
             pool: torch.Tensor | None = None) -> dict:
    """Held-out MSE (per pixel), min-over-stages used fraction and usage perplexity on ``held``;
    with ``pool``, also the MSE on all of it (``pool_mse``: 754 017 patches, a finer estimate)."""
    err, codes = 0.0, []
    with torch.no_grad():
        for s in range(0, held.shape[0], 8192):
            x = held[s : s + 8192].to(device)
            q, c, _ = bott(enc(x))
            err += float((dec(q) - x).square().sum())
            codes.append(c.cpu())
    codes = torch.cat(codes)  # (n_held, m)
    m = codes.shape[1]
    used = [used_fraction(codes[:, j], k) for j in range(m)]
    ppl = [usage_perplexity(codes[:, j], k) for j in range(m)]
    out = {"stages": m, "heldout_mse": err / held.numel(), "heldout_used_fraction": min(used),
           "heldout_perplexity": min(ppl)}  # fmt: skip
    if pool is not None:
        with torch.no_grad():
            sq = sum(float((dec(bott(enc(x))[0]) - x).square().sum())
                     for x in (pool[s : s + 8192].to(device) for s in range(0, pool.shape[0], 8192)))  # fmt: skip
        out["pool_mse"] = sq / pool.numel()
    return out


def faiss_pca_kmeans(exp: Experiment, k: int, train: torch.Tensor, held: torch.Tensor,
                     pool: torch.Tensor | None = None) -> dict:
    """Post-hoc baseline: PCA to ``dim`` on ``train`` (the bench passes the post-hoc fit set),
    faiss k-means (K) in that space on all of them, or on ``baseline_points_per_code`` x K (faiss's
    own cap, ``max_points_per_centroid``, is set to match, so nothing is silently subsampled)."""
    import faiss

    gen = torch.Generator().manual_seed(exp.seed)
    ppc = exp.baseline_points_per_code
    n_fit = train.shape[0] if ppc is None else min(train.shape[0], ppc * k)
    sample = train[torch.randperm(train.shape[0], generator=gen)[:n_fit]].numpy()
    mean, basis = pca_basis(sample, exp.dim)  # (p*p,), (p*p, d)
    feats = np.ascontiguousarray((sample - mean) @ basis)
    faiss.omp_set_num_threads(torch.get_num_threads())  # --threads caps faiss too
    t0 = time.perf_counter()
    km = faiss_kmeans(feats, k, exp.kmeans_niter, exp.seed)
    secs = time.perf_counter() - t0

    def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row's PCA features, and its reconstruction (n, p*p)."""
        _, idx = km.index.search(np.ascontiguousarray((x - mean) @ basis), 1)
        return idx[:, 0], km.centroids[idx[:, 0]] @ basis.T + mean

    h = held.numpy()
    idx, rec = quantize(h)
    codes = torch.from_numpy(idx.astype(np.int64))
    out = {
        "K": k, "method": "faiss_pca_kmeans", "stages": 1, "heldout_mse": float(((rec - h) ** 2).mean()),
        "heldout_used_fraction": used_fraction(codes, k), "heldout_perplexity": usage_perplexity(codes, k),
        "train_points": int(feats.shape[0]), "fit_s": secs,
    }  # fmt: skip
    if pool is not None:
        p = pool.numpy()
        out["pool_mse"] = float(((quantize(p)[1] - p) ** 2).mean())
    return out


def _parse_option(text: str) -> tuple[str, Any]:
    """``name=json`` -> (name, value); a value that is not JSON stays a string."""
    name, _, raw = text.partition("=")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=list(Experiment.ks))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help="none: the baseline only")
    ap.add_argument("--steps", type=int, default=Experiment.steps)
    ap.add_argument("--batch", type=int, default=Experiment.batch)
    ap.add_argument("--dim", type=int, default=Experiment.dim)
    ap.add_argument("--lr", type=float, default=Experiment.lr, help="peak Adam learning rate (every method)")
    ap.add_argument("--kmeans-niter", type=int, default=Experiment.kmeans_niter)
    ap.add_argument("--baseline-points-per-code", type=int, default=Experiment.baseline_points_per_code,
                    help="baseline k-means on this many points per centroid (default: every fit point)")
    ap.add_argument("--schedule", choices=SCHEDULES, default=Experiment.schedule)
    ap.add_argument("--warmup-frac", type=float, default=Experiment.warmup_frac)
    ap.add_argument("--train-stride", type=int, default=Experiment.train_stride)
    ap.add_argument("--fit-stride", type=int, default=Experiment.fit_stride,
                    help="stride of the training-band patches the post-hoc fits use (baseline k-means, refinement)")
    ap.add_argument("--flip", action="store_true", help="add mirrored training patches (training side only)")
    ap.add_argument("--vq-option", action="append", default=[], metavar="NAME=JSON",
                    help="VQConfig override for ours_vq / ours_vq_rotation (side runs), e.g. decay=0.99")
    ap.add_argument("--refine-iters", type=int, default=Experiment.refine_iters,
                    help="after training: Lloyd iterations of ours_vq's codebook on the training encodings")
    ap.add_argument("--refine-split", type=float, default=Experiment.refine_split,
                    help="refinement's ELBG moves: fraction of the codes that may move per iteration (0: plain Lloyd)")
    ap.add_argument("--refine-split-share", type=float, nargs="+", default=list(Experiment.refine_split_share),
                    help="ELBG cuts only cells with at least this fraction of a uniform share of the vectors; "
                         "several values: one refined row each (ours_vq+refine@S), all from the same trained model")
    ap.add_argument("--decoder-refit-steps", type=int, default=Experiment.decoder_refit_steps,
                    help="after refinement: full-batch Adam steps refitting a copy of the decoder to the final "
                         "partition (encoder and codebook frozen), one +refine+dec row each (0: none)")
    ap.add_argument("--seed", type=int, default=Experiment.seed)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss CPU threads (1: least noisy on a shared machine)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    exp = Experiment(ks=tuple(args.ks), methods=tuple(args.methods), steps=args.steps, batch=args.batch, lr=args.lr,
                     dim=args.dim, kmeans_niter=args.kmeans_niter,
                     baseline_points_per_code=args.baseline_points_per_code, schedule=args.schedule,
                     warmup_frac=args.warmup_frac, train_stride=args.train_stride, fit_stride=args.fit_stride, flip=args.flip,
                     refine_iters=args.refine_iters, refine_split=args.refine_split, refine_split_share=tuple(args.refine_split_share),
                     decoder_refit_steps=args.decoder_refit_steps,
                     vq_options=tuple(_parse_option(o) for o in args.vq_option), seed=args.seed)  # fmt: skip
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train, fit, pool = split_patches(exp.patch, exp.train_stride, exp.flip, fit_stride=exp.fit_stride)
    log.info("training patches %d, post-hoc fit patches %d, held-out pool %d", train.shape[0], fit.shape[0], pool.shape[0])
    rows = []
    for k in exp.ks:
        n_held = exp.heldout_factor * k
        if pool.shape[0] < n_held:
            raise ValueError(f"held-out pool has {pool.shape[0]} patches, need {n_held} for K={k}")
        held = pool[torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(7))[:n_held]]
        if not args.no_baseline:
            rows.append(faiss_pca_kmeans(exp, k, fit, held, pool))
            log.info("%s", rows[-1])
        for kind in exp.methods:
            for row in run_one(exp, kind, k, train, held, device, fit, pool):
                rows.append(row)
                log.info("%s", row)
        ref = next((r["steps_per_s"] for r in rows if r["K"] == k and r["method"] == "vqp_vq"), None)
        for r in rows:
            if r["K"] == k and "steps_per_s" in r and ref:
                r["speed_vs_vqp_vq"] = r["steps_per_s"] / ref
    print(f"{'K':>6} {'method':<24} {'mse':>9} {'pool mse':>9} {'used':>6} {'ppl':>9} {'steps/s':>8} {'x vqp_vq':>8} {'peakMB':>8}")
    for r in rows:
        print(f"{r['K']:>6} {r['method']:<24} {r['heldout_mse']:>9.5f} {r['pool_mse']:>9.6f} {r['heldout_used_fraction']:>6.3f} "
              f"{r['heldout_perplexity']:>9.1f} {r.get('steps_per_s', math.nan):>8.2f} "
              f"{r.get('speed_vs_vqp_vq', math.nan):>8.2f} {r.get('peak_mem_mb', math.nan):>8.1f}")  # fmt: skip
    print_result({"experiment": asdict(exp), "device": device, "rows": rows})


if __name__ == "__main__":
    main()
