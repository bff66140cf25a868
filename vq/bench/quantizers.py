"""The quantizers ``vq bench utilization`` runs: ours (the core's codecs, plus the two thin
adapters a post-hoc benchmark needs) and the peers (faiss, vector-quantize-pytorch), all behind one
small interface, :class:`BenchQuantizer`:

    q.fit(x)                      # (n, d) float32 fit split
    codes = q.encode(x)           # (n, m) int64, column j in [0, ks[j])
    xhat = q.decode(codes)        # (n, d) float32
    q.prefix_decode(codes, s)     # residual families: the sum of the first s stages, else None
    q.bits_per_vector(), q.overhead_bits()

Names (``--quantizers``), ``:N`` sets the number of codebooks where a family has several:

=============  ==============================================================================
kmeans         ``vq.codebook.KMeans(K)``
rvq[:S]        ``ResidualVQ(d, S, K)``, S = 4 stages by default; per-stage figures
aq[:M]         ``AdditiveVQ(d, M, K, niter=3)``, M = 2 (the core needs M * K <= 8192: larger K run
               at the nearest K it takes, labelled)
pq[:G]         ``ProductVQ(d, G, K)``, G = 2 groups (d divisible by G)
fsq            ``FSQ(levels)`` on the top-r principal directions (r = len(levels)), each
               coordinate scaled to minimise the fit-set error; the grid nearest K (FSQ paper
               levels where K is one of its powers of two)
simvq          ``SimVQCodebook(d, K)``
e8p            ``E8P`` on every 8-dim block (d divisible by 8): 65536 codes per block, whatever K
pvq            ``PVQ(d, pulses, gain_bits)``: (pulses, gain bits in 2..8) with N(d, pulses) *
               2**gain_bits nearest K; codes [shape, gain], one joint codebook of that size
=============  ==============================================================================

Peers (run when installed): ``faiss-pq`` / ``faiss-rq`` / ``faiss-lsq`` (K rounded to a power of
two, LSQ capped at :data:`LSQ_MAX_K`; same number of codebooks as pq / rvq / aq), and vector-quantize-pytorch's ``vqp-vq``
(``VectorQuantize`` defaults), ``vqp-vq-kmeans`` (``kmeans_init=True, threshold_ema_dead_code=2``),
``vqp-rvq`` (``ResidualVQ``, S stages), ``vqp-fsq`` (``FSQ``, the same levels as fsq, its own
projections), ``vqp-simvq`` (``SimVQ``) — trained for a fixed number of steps on the fit split.
"""
from __future__ import annotations

import importlib.metadata
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vq.codebook import E8P, FSQ, PVQ, AdditiveVQ, KMeans, ProductVQ, ResidualVQ, SimVQCodebook
from vq.codebook.lattice import pyramid_count

__all__ = [
    "AQ_NITER",
    "BlockE8P",
    "OURS",
    "PCAFSQ",
    "PEERS",
    "BenchQuantizer",
    "E8P_FIT_BLOCKS",
    "LSQ_MAX_K",
    "QuantizerPlan",
    "available_peers",
    "fsq_levels",
    "parse_quantizer",
    "plan_quantizer",
    "pvq_params",
]

log = logging.getLogger(__name__)

OURS = ("kmeans", "rvq", "aq", "pq", "fsq", "simvq", "e8p", "pvq")
PEERS = ("faiss-pq", "faiss-rq", "faiss-lsq", "vqp-vq", "vqp-vq-kmeans", "vqp-rvq", "vqp-fsq", "vqp-simvq")
_DEFAULT_BOOKS = {"rvq": 4, "aq": 2, "pq": 2, "faiss-pq": 2, "faiss-rq": 4, "faiss-lsq": 2, "vqp-rvq": 4}
_AQ_MAX_BOOK_CODES = 8192  # AdditiveVQ's Gram matrix is (M k)^2
#: AdditiveVQ rounds (update + beam-search encode) after its residual-VQ start: 3, not the core's
#: 10, for run time (on 4x4 image patches, 2 x 1024: rounds 1-2 lowered the training error 7 %, and
#: 2 x 256 gained 1 % more from rounds 4-10)
AQ_NITER = 3
E8P_FIT_BLOCKS = 16384  # E8P learns one scale: fitted on at most this many 8-dim blocks
#: faiss LSQ is run up to this K: its ICM encoder costs M * K per step per vector, and a
#: 2 x 8192 run on 10^5 image patches had not finished after 100 s on the 2-core machine
LSQ_MAX_K = 1024
#: FSQ paper (Mentzer et al. 2023, table 1): levels for codebook sizes 2^8 .. 2^16
FSQ_PAPER_LEVELS = {
    2**8: (8, 6, 5), 2**10: (8, 5, 5, 5), 2**12: (7, 5, 5, 5, 5), 2**14: (8, 8, 8, 6, 5), 2**16: (8, 8, 8, 5, 5, 5),
}
_PEER_PACKAGE = {"faiss": "faiss-cpu", "vqp": "vector-quantize-pytorch"}


def parse_quantizer(name: str) -> tuple[str, int | None]:
    """``"rvq:8"`` -> ("rvq", 8); ``"kmeans"`` -> ("kmeans", None). Raises on unknown names."""
    base, _, arg = name.strip().partition(":")
    if base not in OURS and base not in PEERS:
        raise ValueError(f"unknown quantizer {name!r}; known: {', '.join(OURS)} and peers {', '.join(PEERS)}")
    if not arg:
        return base, _DEFAULT_BOOKS.get(base)
    if base not in _DEFAULT_BOOKS:
        raise ValueError(f"quantizer {base!r} takes no ':N' (only {', '.join(sorted(_DEFAULT_BOOKS))} do)")
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"quantizer {name!r}: ':N' must be a positive number of codebooks")
    return base, int(arg)


def fsq_levels(k: int, dim: int) -> tuple[int, ...]:
    """FSQ levels whose grid size is nearest ``k`` (in log2): the paper's choice for 2^8 .. 2^16,
    else the nearest non-increasing tuple of levels 5..8 over at most ``min(dim, 8)`` dims (ties:
    fewer dims). Levels of 5 or more are the paper's recommendation."""
    if k in FSQ_PAPER_LEVELS and len(FSQ_PAPER_LEVELS[k]) <= dim:
        return FSQ_PAPER_LEVELS[k]
    best: tuple[float, int, tuple[int, ...]] | None = None
    for r in range(1, min(dim, 8) + 1):
        for lv in itertools.combinations_with_replacement((8, 7, 6, 5), r):
            score = (abs(math.log2(math.prod(lv)) - math.log2(k)), r, lv)
            if best is None or score[:2] < best[:2]:
                best = score
    assert best is not None
    return best[2]


def pvq_params(k: int, dim: int) -> tuple[int, int]:
    """(pulses, gain_bits) with ``N(dim, pulses) * 2**gain_bits`` nearest ``k`` in log2
    (gain bits 2..8; ties: gain bits nearest 4, then fewer pulses)."""
    best = None
    for pulses in range(1, 65):
        n = pyramid_count(dim, pulses)
        if n > 2**40:
            break
        for g in range(2, 9):
            score = (abs(math.log2(n) + g - math.log2(k)), abs(g - 4), pulses)
            if best is None or score < best[0]:
                best = (score, pulses, g)
    assert best is not None
    return best[1], best[2]


@dataclass
class BenchQuantizer:
    """One quantizer at one size, ready to fit. ``ks`` are the per-column code ranges of
    ``encode``; ``joint`` marks codes whose columns form one codebook of ``size`` entries
    (PVQ's [shape, gain]); otherwise the columns are separate codebooks of ``size`` each."""

    name: str  # e.g. "rvq:4"
    label: str  # e.g. "rvq 4x1024"
    source: str  # "vq" or "peer: faiss 1.x" ...
    size: int
    ks: list[int]
    stage_names: list[str]
    params: dict[str, Any]
    fit_fn: Callable[[Tensor], None]
    encode_fn: Callable[[Tensor], Tensor]
    decode_fn: Callable[[Tensor], Tensor]
    bits_fn: Callable[[], float]
    overhead_fn: Callable[[], int]
    prefix_fn: Callable[[Tensor, int], Tensor] | None = None
    joint: bool = False
    notes: list[str] = field(default_factory=list)
    encode_rows: int = 65536  # rows per encode call (bounds every codec's temporaries)

    def fit(self, x: Tensor) -> None:
        self.fit_fn(x)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_fn(x)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decode_fn(codes)

    def prefix_decode(self, codes: Tensor, stages: int) -> Tensor | None:
        return None if self.prefix_fn is None else self.prefix_fn(codes, stages)

    def bits_per_vector(self) -> float:
        return float(self.bits_fn())

    def overhead_bits(self) -> int:
        return int(self.overhead_fn())


@dataclass(frozen=True)
class QuantizerPlan:
    """What one (quantizer, asked size) resolves to before anything is fitted."""

    name: str
    asked: int
    size: int
    note: str  # "" when the asked size is reached
    build: Callable[[int], BenchQuantizer]  # seed -> quantizer


# -- adapters over the core ---------------------------------------------------------------------
def _codec(name: str, label: str, codec: Any, size: int, ks: list[int], stage_names: list[str],
           params: dict[str, Any], prefix: bool = False, joint: bool = False) -> BenchQuantizer:
    def prefix_fn(codes: Tensor, s: int) -> Tensor:
        books = codec.codebooks  # (S, k, d)
        m = torch.arange(s)
        return books[m, codes[:, :s]].sum(dim=1)  # (n, s, d) -> (n, d)

    return BenchQuantizer(
        name, label, "vq", size, ks, stage_names, params,
        fit_fn=lambda x: codec.fit(x) and None, encode_fn=codec.encode, decode_fn=codec.decode,
        bits_fn=codec.bits_per_vector, overhead_fn=codec.overhead_bits,
        prefix_fn=prefix_fn if prefix else None, joint=joint,
    )


class PCAFSQ:
    """FSQ behind a linear map, the post-hoc analogue of the tokenizer's Linear -> FSQ -> Linear:
    ``z = ((x - mean) @ P) / s`` (P: top-r principal directions, s: per-coordinate scale picked
    from 48 candidates to minimise that coordinate's fit-set error on the FSQ grid), codes =
    ``FSQ(levels).encode(z)``, ``xhat = mean + (s * grid) @ P^T``."""

    def __init__(self, dim: int, levels: tuple[int, ...]):
        self.dim, self.fsq = dim, FSQ(list(levels))
        self.mean = torch.zeros(dim)
        self.P = torch.eye(dim)[:, : len(levels)]  # (d, r)
        self.scale = torch.ones(len(levels))

    def fit(self, x: Tensor) -> None:
        x = x.double()
        self.mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.P = vt[: self.fsq.dim].T.contiguous()  # (d, r)
        u = (x - self.mean) @ self.P  # (n, r)
        amax = u.abs().max(0).values.clamp_min(1e-12)  # (r,)
        cands = torch.linspace(0.1, 1.0, 48, dtype=torch.float64)[:, None] * amax  # (48, r)
        best = torch.full((self.fsq.dim,), math.inf, dtype=torch.float64)
        scale = amax.clone()
        for c in cands:
            err = ((self.fsq.decode(self.fsq.encode((u / c).float())).double() * c - u) ** 2).sum(0)  # (r,)
            better = err < best
            best, scale = torch.where(better, err, best), torch.where(better, c, scale)
        self.mean, self.P, self.scale = self.mean.float(), self.P.float(), scale.float()

    def encode(self, x: Tensor) -> Tensor:
        return self.fsq.encode(((x - self.mean) @ self.P) / self.scale)

    def decode(self, codes: Tensor) -> Tensor:
        return self.mean + (self.fsq.decode(codes) * self.scale) @ self.P.T

    def overhead_bits(self) -> int:  # mean, P, scale at fp16
        return (self.mean.numel() + self.P.numel() + self.scale.numel()) * 16


class BlockE8P:
    """E8P on each of the ``d / 8`` consecutive 8-dim blocks (one scale shared by all blocks)."""

    def __init__(self, dim: int):
        self.dim, self.m, self.e8p = dim, dim // 8, E8P()

    def fit(self, x: Tensor) -> None:
        blocks = x.reshape(-1, 8)  # (n, d) -> (n d/8, 8)
        if blocks.shape[0] > E8P_FIT_BLOCKS:  # one scalar is learned; its exact encoder runs ~9k blocks/s here
            gen = torch.Generator().manual_seed(0)
            blocks = blocks[torch.randperm(blocks.shape[0], generator=gen)[:E8P_FIT_BLOCKS]]
        self.e8p.fit(blocks)

    def encode(self, x: Tensor) -> Tensor:
        return self.e8p.encode(x.reshape(-1, 8)).reshape(-1, self.m)  # (n, d/8)

    def decode(self, codes: Tensor) -> Tensor:
        return self.e8p.decode(codes.reshape(-1, 1)).reshape(-1, self.dim)


def _plan_ours(base: str, books: int | None, k: int, dim: int, n_fit: int) -> QuantizerPlan:
    name = base if books is None else f"{base}:{books}"
    learned = base in ("kmeans", "rvq", "aq", "pq", "simvq")
    if learned and k > n_fit:
        raise ValueError(f"{name} cannot take K={k}: it needs at least K fit vectors, the fit split has {n_fit}")
    if learned and k < 2:
        raise ValueError(f"{name} cannot take K={k}: a learned codebook needs K >= 2")
    if base == "kmeans":
        return QuantizerPlan(name, k, k, "", lambda seed: _codec(
            name, f"kmeans K={k}", KMeans(k, seed=seed), k, [k], ["codebook"], {"k": k}))
    if base == "simvq":
        return QuantizerPlan(name, k, k, "", lambda seed: _codec(
            name, f"simvq K={k}", SimVQCodebook(dim, k, seed=seed), k, [k], ["codebook"], {"k": k}))
    if base == "rvq":
        return QuantizerPlan(name, k, k, "", lambda seed: _codec(
            name, f"rvq {books}x{k}", ResidualVQ(dim, books, k, seed=seed), k, [k] * books,
            [f"stage {s}" for s in range(books)], {"stages": books, "k": k}, prefix=True))
    if base == "aq":
        size = min(k, _AQ_MAX_BOOK_CODES // books)
        if size < 2:
            raise ValueError(f"{name} cannot run: AdditiveVQ needs codebooks * K <= {_AQ_MAX_BOOK_CODES}")
        note = "" if size == k else f"AdditiveVQ needs codebooks * K <= {_AQ_MAX_BOOK_CODES}: nearest K = {size}"
        return QuantizerPlan(name, k, size, note, lambda seed: _codec(
            name, f"aq {books}x{size}", AdditiveVQ(dim, books, size, niter=AQ_NITER, seed=seed), size, [size] * books,
            [f"codebook {s}" for s in range(books)], {"codebooks": books, "k": size, "niter": AQ_NITER}))
    if base == "pq":
        if dim % books:
            raise ValueError(f"{name} cannot run on dim {dim}: dim must be divisible by {books} groups")
        return QuantizerPlan(name, k, k, "", lambda seed: _codec(
            name, f"pq {books}x{k}", ProductVQ(dim, books, k, seed=seed), k, [k] * books,
            [f"group {s}" for s in range(books)], {"groups": books, "k": k}))
    if base == "fsq":
        levels = fsq_levels(k, dim)
        size = math.prod(levels)
        note = "" if size == k else f"nearest FSQ grid {list(levels)} = {size}"

        def build_fsq(seed: int) -> BenchQuantizer:
            q = PCAFSQ(dim, levels)
            return BenchQuantizer(name, f"fsq {list(levels)}", "vq", size, [size], ["grid"],
                                  {"levels": list(levels), "pca_dims": len(levels)},
                                  q.fit, q.encode, q.decode, q.fsq.bits_per_vector, q.overhead_bits)
        return QuantizerPlan(name, k, size, note, build_fsq)
    if base == "e8p":
        if dim % 8:
            raise ValueError(f"e8p cannot run on dim {dim}: E8P quantizes 8-dim blocks (dim divisible by 8)")
        note = "" if k == 65536 else "E8P is fixed at 65536 points per 8-dim block"

        def build_e8p(seed: int) -> BenchQuantizer:
            q = BlockE8P(dim)
            return BenchQuantizer(name, "e8p 65536" + ("" if q.m == 1 else f" x{q.m} blocks"), "vq", 65536,
                                  [65536] * q.m, [f"block {j}" for j in range(q.m)], {"blocks": q.m},
                                  q.fit, q.encode, q.decode, lambda: 16.0 * q.m, q.e8p.overhead_bits)
        return QuantizerPlan(name, k, 65536, note, build_e8p)
    if base == "pvq":
        pulses, gbits = pvq_params(k, dim)
        shapes = pyramid_count(dim, pulses)
        size = shapes * 2**gbits
        note = "" if size == k else f"nearest PVQ: {shapes} shapes ({pulses} pulses) x {2**gbits} gains = {size}"

        def build_pvq(seed: int) -> BenchQuantizer:
            codec = PVQ(dim, pulses, gbits)  # pulse count passed positionally (its keyword is being renamed)
            return BenchQuantizer(name, f"pvq {pulses}p/{gbits}b", "vq", size, [shapes, 2**gbits], ["shape", "gain"],
                                  {"pulses": pulses, "gain_bits": gbits}, lambda x: codec.fit(x) and None,
                                  codec.encode, codec.decode, codec.bits_per_vector, codec.overhead_bits, joint=True)
        return QuantizerPlan(name, k, size, note, build_pvq)
    raise AssertionError(base)


# -- peers -------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def available_peers() -> list[str]:
    """The peer names whose package is installed."""
    out = []
    for p in PEERS:
        dist = _PEER_PACKAGE[p.split("-")[0]]
        if _version(dist) is not None:
            out.append(p)
    return out


def _unpack(codes: np.ndarray, m: int, nbits: int) -> Tensor:
    """faiss bit-packed codes (n, code_size) uint8, LSB first -> (n, m) int64."""
    bits = np.unpackbits(codes, axis=1, bitorder="little")[:, : m * nbits].reshape(-1, m, nbits)
    return torch.from_numpy((bits.astype(np.int64) << np.arange(nbits)).sum(axis=2))


def _pack(codes: Tensor, nbits: int) -> np.ndarray:
    c = codes.numpy().astype(np.int64)  # (n, m)
    bits = ((c[:, :, None] >> np.arange(nbits)) & 1).astype(np.uint8).reshape(c.shape[0], -1)
    return np.packbits(bits, axis=1, bitorder="little")


def _plan_faiss(base: str, books: int, k: int, dim: int, n_fit: int) -> QuantizerPlan:
    name = f"{base}:{books}"
    nbits = max(1, min(16, round(math.log2(k))))
    note = "" if 2**nbits == k else f"faiss codebooks are powers of two: K = {2**nbits}"
    if base == "faiss-lsq" and 2**nbits > LSQ_MAX_K:
        nbits = int(math.log2(LSQ_MAX_K))
        note = f"faiss LSQ capped at K = {LSQ_MAX_K} (run time)"
    size = 2**nbits
    if size > n_fit:
        raise ValueError(f"{name} cannot take K={size}: it needs at least K fit vectors, the fit split has {n_fit}")
    if base == "faiss-pq" and dim % books:
        raise ValueError(f"{name} cannot run on dim {dim}: dim must be divisible by {books}")
    source = f"peer: faiss {_version('faiss-cpu')}"

    def build(seed: int) -> BenchQuantizer:
        import faiss

        if base == "faiss-pq":
            q = faiss.ProductQuantizer(dim, books, nbits)
            label, stage = f"faiss PQ {books}x{size}", "group"
        elif base == "faiss-rq":
            q = faiss.ResidualQuantizer(dim, books, nbits)
            label, stage = f"faiss RQ {books}x{size}", "stage"
        else:
            q = faiss.LocalSearchQuantizer(dim, books, nbits)
            q.random_seed = seed
            label, stage = f"faiss LSQ {books}x{size}", "codebook"

        def fit(x: Tensor) -> None:
            if base == "faiss-pq":
                q.cp.seed = seed
            faiss.omp_set_num_threads(torch.get_num_threads())
            q.train(np.ascontiguousarray(x.numpy()))

        def encode(x: Tensor) -> Tensor:
            return _unpack(q.compute_codes(np.ascontiguousarray(x.numpy())), books, nbits)

        def decode(codes: Tensor) -> Tensor:
            return torch.from_numpy(q.decode(_pack(codes, nbits)))

        def prefix(codes: Tensor, s: int) -> Tensor:
            books_t = torch.from_numpy(faiss.vector_to_array(q.codebooks).reshape(books, size, dim))
            return books_t[torch.arange(s), codes[:, :s]].sum(dim=1)

        def overhead() -> int:
            arr = q.centroids if base == "faiss-pq" else q.codebooks
            return faiss.vector_to_array(arr).size * 16

        return BenchQuantizer(name, label, source, size, [size] * books, [f"{stage} {j}" for j in range(books)],
                              {"codebooks": books, "nbits": nbits, "defaults": "faiss defaults"},
                              fit, encode, decode, lambda: float(books * nbits), overhead,
                              prefix_fn=prefix if base == "faiss-rq" else None)
    return QuantizerPlan(name, k, size, note, build)


def _plan_vqp(base: str, books: int | None, k: int, dim: int, n_fit: int, steps: int, batch: int) -> QuantizerPlan:
    name = base if books is None else f"{base}:{books}"
    source = f"peer: vector-quantize-pytorch {_version('vector-quantize-pytorch')}, {steps} steps x {batch} vectors"
    levels = fsq_levels(k, dim) if base == "vqp-fsq" else None
    size = math.prod(levels) if levels else k
    note = "" if size == k else f"nearest FSQ grid {list(levels)} = {size}"
    if base in ("vqp-vq", "vqp-vq-kmeans") and k > n_fit:
        raise ValueError(f"{name} cannot take K={k}: fewer fit vectors ({n_fit})")

    def build(seed: int) -> BenchQuantizer:
        import vector_quantize_pytorch as vqp

        torch.manual_seed(seed)
        if base == "vqp-vq":
            mod, label = vqp.VectorQuantize(dim=dim, codebook_size=k), f"vqp VQ K={k} (defaults)"
        elif base == "vqp-vq-kmeans":
            mod = vqp.VectorQuantize(dim=dim, codebook_size=k, kmeans_init=True, threshold_ema_dead_code=2)
            label = f"vqp VQ K={k} (kmeans init + dead-code expiry)"
        elif base == "vqp-rvq":
            mod, label = vqp.ResidualVQ(dim=dim, num_quantizers=books, codebook_size=k), f"vqp RVQ {books}x{k}"
        elif base == "vqp-fsq":
            mod, label = vqp.FSQ(levels=list(levels), dim=dim), f"vqp FSQ {list(levels)}"
        else:
            mod, label = vqp.SimVQ(dim=dim, codebook_size=k), f"vqp SimVQ K={k}"
        m = books if base == "vqp-rvq" else 1
        rows = max(1, 2**24 // max(size, 1))  # (rows, K) distance blocks of at most 64 MiB

        def forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
            out = mod(x[None])  # (1, n, d)
            q, idx = out[0][0], out[1][0]
            loss = out[2] if len(out) > 2 and base != "vqp-fsq" else None
            return q, idx.reshape(x.shape[0], m).long(), loss

        def fit(x: Tensor) -> None:
            if base == "vqp-vq-kmeans" and x.shape[0] < size:
                raise ValueError("kmeans_init needs at least K vectors in the first batch")
            gen = torch.Generator().manual_seed(seed)
            params = [p for p in mod.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-3) if params else None
            mod.train()
            bs = max(batch, size) if base == "vqp-vq-kmeans" else batch  # its k-means init runs on batch 1
            for step in tqdm(range(steps), desc=f"train {label}", leave=False, mininterval=1.0):
                xb = x[torch.randint(x.shape[0], (bs if step == 0 else batch,), generator=gen)]
                q, _, aux = forward(xb)
                loss = torch.nn.functional.mse_loss(q, xb) + (0.0 if aux is None else aux.sum())
                if opt is not None and loss.requires_grad:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            mod.eval()

        @torch.no_grad()
        def encode(x: Tensor) -> Tensor:
            return torch.cat([forward(x[lo : lo + rows])[1] for lo in range(0, x.shape[0], rows)])

        @torch.no_grad()
        def decode(codes: Tensor) -> Tensor:
            idx = codes[None] if m > 1 else codes[:, 0][None]  # (1, n, m) or (1, n)
            fn = mod.indices_to_codes if base in ("vqp-fsq", "vqp-simvq") else mod.get_output_from_indices
            return fn(idx)[0].float()

        @torch.no_grad()
        def prefix(codes: Tensor, s: int) -> Tensor:
            books_t = mod.codebooks  # (S, K, d)
            return mod.project_out(books_t[torch.arange(s), codes[:, :s]].sum(dim=1)).float()

        n_params = sum(p.numel() for p in mod.parameters()) + sum(b.numel() for n_, b in mod.named_buffers() if "embed" in n_ and "avg" not in n_)
        return BenchQuantizer(name, label, source, size, [size] * m,
                              [f"stage {j}" for j in range(m)] if m > 1 else ["codebook"],
                              {"k": size, "steps": steps, "batch": batch, **({"levels": list(levels)} if levels else {}),
                               **({"stages": m} if m > 1 else {})},
                              fit, encode, decode, lambda: m * math.log2(size), lambda: n_params * 16,
                              prefix_fn=prefix if base == "vqp-rvq" else None,
                              notes=[f"trained {steps} steps of {batch} fit vectors (Adam 1e-3 on its parameters, "
                                     "loss = MSE + its own auxiliary loss)"])
    return QuantizerPlan(name, k, size, note, build)


def plan_quantizer(name: str, k: int, dim: int, n_fit: int, peer_steps: int = 300, peer_batch: int = 1024) -> QuantizerPlan:
    """Resolve one ``--quantizers`` entry at one asked size K; raises ``ValueError`` (naming the
    quantizer and the size) when it cannot run there. Nothing is fitted."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"sizes must be positive ints, got {k!r}")
    base, books = parse_quantizer(name)
    if base in OURS:
        return _plan_ours(base, books, k, dim, n_fit)
    if base.startswith("faiss-"):
        return _plan_faiss(base, books or 1, k, dim, n_fit)
    return _plan_vqp(base, books, k, dim, n_fit, peer_steps, peer_batch)
