"""Quantizer layers for learned tokenizers: thin ``nn.Module`` s over :mod:`vq.codebook`.

Every layer takes channel-last input ``(..., dim)`` and returns one fixed NamedTuple::

    out = layer(x)
    out.quantized   # (..., dim) float32 — equals layer.decode(out.codes) bit for bit
    out.codes       # (...,) int64 (single codebook) or (..., stages) / (..., groups, stages)
    out.loss        # () float32, weighted commitment + codebook losses (add to the task loss)
    out.stats       # QuantizerStats: per-stage used fraction / perplexity of this batch

Nearest-code search is :func:`vq.codebook.assign` (chunked: the ``(rows, K)`` distance block
stays under ``chunk_bytes``, no ``n x K`` one-hot anywhere), so K = 65536 trains. Codebook
arithmetic runs in float32 with autocast disabled, whatever precision the model around it uses.

Distributed training (``torch.distributed`` initialised, world > 1): code counts and EMA sums
are all-reduced, k-means initialisation and dead-code re-seeding are computed on rank 0 and
broadcast, so every rank holds the identical codebook. Collectives run only when
``module.training and torch.is_grad_enabled()``, which is a per-step decision every rank makes
the same way in a DDP training step, so a rank that evaluates or runs under ``no_grad`` never
enters a collective alone (no hang).
"""
from __future__ import annotations

import logging
import math
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vq.codebook import KMeans, assign, check_codes
from vq.codebook.fsq import FSQ as FSQGrid
from vq.codebook.metrics import stage_stats
from vq.codebook.checks import check_channel_last, check_int_tensor, require_int
from vq.codebook.simvq import simvq_basis, simvq_codebook

__all__ = [
    "QuantizerStats",
    "QuantizerOutput",
    "VQConfig",
    "VectorQuantizer",
    "SimVQ",
    "FSQ",
    "ResidualVQ",
    "GroupedResidualVQ",
    "rotate_to",
    "QuantizerSpec",
]

log = logging.getLogger(__name__)

#: budget of the (rows, K) float32 distance block in the nearest-code search
DEFAULT_CHUNK_BYTES = 32 << 20


class QuantizerStats(NamedTuple):
    """Usage of this batch, one entry per stage (1 for single-codebook layers)."""

    used_fraction: Tensor  # (stages,) float32: codes hit at least once / K
    perplexity: Tensor  # (stages,) float32: exp(entropy) of the batch's code histogram
    commitment_loss: Tensor  # () unweighted ||z - sg(q)||^2 mean (summed over stages)
    codebook_loss: Tensor  # () unweighted ||sg(z) - q||^2 mean (0 for EMA / FSQ)


class QuantizerOutput(NamedTuple):
    quantized: Tensor
    codes: Tensor
    loss: Tensor
    stats: QuantizerStats


# -- helpers ---------------------------------------------------------------------------------
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _all_reduce_sum(t: Tensor) -> Tensor:
    if _world() > 1:
        dist.all_reduce(t)
    return t


def _broadcast(t: Tensor) -> Tensor:
    if _world() > 1:
        dist.broadcast(t, src=0)
    return t


def _batch_stats(codes: Tensor, k: int | list[int]) -> tuple[Tensor, Tensor]:
    """codes (n, m) in [0, k) -> used_fraction (m,), perplexity (m,) via vq.codebook.metrics."""
    s = stage_stats(codes.detach(), k)
    used = torch.tensor([d["used_fraction"] for d in s], dtype=torch.float32)
    ppl = torch.tensor([d["perplexity"] for d in s], dtype=torch.float32)
    return used, ppl


def rotate_to(e: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Rotation trick (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation
    Trick"): ``sg(lambda R) e`` where R rotates ``e`` onto ``q``'s direction and
    ``lambda = |q| / |e|``. The value is ``q`` (up to rounding); the gradient reaching ``e`` is
    ``lambda R^T g`` instead of the straight-through ``g``.

    e, q: (n, c) float. Returns (n, c).
    """
    with torch.no_grad():
        e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)  # (n, 1)
        q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
        e_hat, q_hat = e / e_norm, q / q_norm
        r = F.normalize(e_hat + q_hat, dim=-1)  # Householder direction
        scale = q_norm / e_norm
    # R e = e - 2 (e.r) r + 2 (e.e_hat) q_hat   (R = I - 2 r r^T + 2 q_hat e_hat^T)
    rot = e - 2.0 * (e * r).sum(-1, keepdim=True) * r + 2.0 * (e * e_hat).sum(-1, keepdim=True) * q_hat
    return scale * rot


# -- single codebook ---------------------------------------------------------------------------
_UPDATES = ("ema", "gradient")
_GRADIENTS = ("ste", "rotation")
_INITS = ("kmeans", "data", "random")


@dataclass(frozen=True)
class VQConfig:
    """Constructor arguments of :class:`VectorQuantizer` (validated on creation).

    Attributes:
        dim: input / output vector length.
        codebook_size: K.
        codebook_dim: if set and < ``dim``: factorised codebook (DAC-style) — the search runs on
            ``Linear(dim, codebook_dim)`` projections, the output goes back through
            ``Linear(codebook_dim, dim)``.
        cosine: l2-normalise projected inputs and codewords (cosine-similarity codes).
        update: ``"ema"`` (codebook = EMA of assigned vectors) or ``"gradient"`` (codebook is an
            ``nn.Parameter`` trained by the codebook loss).
        gradient: ``"ste"`` (straight-through) or ``"rotation"`` (rotation trick).
        decay: smallest EMA decay per step of the codebook statistics (0.98: a window of ~50
            steps, so codewords follow an encoder that is still moving; 0.99 measured worse on
            the patch bench at K = 1024, see docs/results.md).
        code_window: the EMA also spans at least this many vectors per code on average: the
            decay of a step with n vectors (all ranks) is ``max(decay, 1 - n / (code_window * K))``.
            With 1024 vectors a step that is 0.98 at K = 1024, 0.995 at K = 8192 and 0.9994 at
            K = 65536; a fixed 0.98 would make a large codebook's codewords the mean of < 1
            recent vector each (noise), which lowered held-out usage on the patch bench
            (docs/results.md). ``None``: the fixed ``decay``.
        commitment_weight, codebook_weight: loss weights (``loss = cw * commit + cbw * codebook``).
        init: ``"kmeans"`` — k-means on a buffer of ``init_vectors`` encoder outputs collected
            over several batches (at most ``init_max_batches`` once K vectors are buffered;
            Lloyd iterations only when >= 2 K vectors; the first batch's samples serve
            until then); ``"data"`` — codes sampled from the first batch; ``"random"`` — keep
            the random normal init (the collapse-prone classic).
        kmeans_iters: Lloyd iterations for that init (skipped when the buffer has < 2 K vectors).
        reseed: CVQ-style dead-code re-seeding from a ring buffer of recent encoder outputs.
        reseed_threshold: a code that has been hit since it was (re)seeded is dead when its EMA
            share of assignments falls below ``reseed_threshold / K`` (relative to a uniform
            share, whatever the batch size) and it was not hit in the current batch. With the
            default window (2 K vectors) one hit lifts the share to >= 0.5 / K, so 0.05 means "no
            hit in the last ~4.6 K vectors": a code at a uniform share is flagged by Poisson noise
            alone with probability ~e^-4.6 = 1 % (at 0.5 it would be ~e^-1.4, a quarter of the
            healthy codes churned, which lowers the held-out used fraction).
        reseed_threshold_unproven: the same threshold for a code never hit since it was
            (re)seeded. Such a code has shown no support in the data, so it is replaced sooner
            (0.5 / K: ~1.4 K vectors without a hit); this is what fixes a poor start (large K,
            few init vectors) within a short run.
        reseed_every: check for dead codes every this many training steps.
        usage_window: EMA window (in vectors) of the usage estimate; default ``2 K``: a code that
            stops being hit falls below a 0.5 share after ~1.4 K vectors, so large codebooks
            recover within a short run (a live code re-seeded by chance only moves to data).
        recent_vectors: size of the ring buffer of recent encoder outputs (default max(4096, K)).
        chunk_bytes: distance-block budget of the nearest-code search.
        seed: seeds init sampling and re-seeding.
    """

    dim: int
    codebook_size: int
    codebook_dim: int | None = None
    cosine: bool = False
    update: str = "ema"
    gradient: str = "ste"
    decay: float = 0.98
    code_window: float | None = 25.0
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    init: str = "kmeans"
    init_vectors: int | None = None
    init_max_batches: int = 32
    kmeans_iters: int = 10
    reseed: bool = True
    reseed_threshold: float = 0.05
    reseed_threshold_unproven: float = 0.5
    reseed_every: int = 10
    usage_window: int | None = None
    recent_vectors: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("dim", self.dim, 1)
        require_int("codebook_size", self.codebook_size, 2)
        if self.codebook_dim is not None:
            require_int("codebook_dim", self.codebook_dim, 1)
        if self.update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}, got {self.update!r}")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.gradient not in _GRADIENTS:
            raise ValueError(f"gradient must be one of {_GRADIENTS}, got {self.gradient!r}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.code_window is not None and not self.code_window > 0:
            raise ValueError(f"code_window must be > 0 or None, got {self.code_window}")
        for name in ("commitment_weight", "codebook_weight", "reseed_threshold", "reseed_threshold_unproven"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("init_vectors", "usage_window", "recent_vectors"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), 1)
        require_int("init_max_batches", self.init_max_batches, 1)
        require_int("kmeans_iters", self.kmeans_iters, 0)
        require_int("reseed_every", self.reseed_every, 1)
        require_int("chunk_bytes", self.chunk_bytes, 1024)
        require_int("seed", self.seed, 0)

    @property
    def inner_dim(self) -> int:
        return self.codebook_dim if self.codebook_dim is not None else self.dim


class VectorQuantizer(nn.Module):
    """Vector quantizer with EMA or gradient codebook, k-means init, dead-code re-seeding.

    ``VectorQuantizer(dim, codebook_size, **options)``; options are the fields of
    :class:`VQConfig`. Input ``(..., dim)`` float (any dtype; computed in float32), output
    :class:`QuantizerOutput` with ``codes`` of shape ``(...)`` int64 in ``[0, K)``.

    Order inside a training step: search (codes from the current codebook) -> EMA update and
    re-seeding (codes hit in this batch are never re-seeded) -> ``quantized`` gathered from the
    updated codebook, so ``decode(codes)`` equals ``quantized`` exactly, in training too.
    """

    def __init__(self, dim: int, codebook_size: int, **options: Any):
        super().__init__()
        self.config = VQConfig(dim=dim, codebook_size=codebook_size, **options)
        cfg = self.config
        self.dim, self.codebook_size = dim, codebook_size
        c = cfg.inner_dim
        factorised = cfg.codebook_dim is not None and cfg.codebook_dim != dim
        self.project_in: nn.Module = nn.Linear(dim, c) if factorised else nn.Identity()
        self.project_out: nn.Module = nn.Linear(c, dim) if factorised else nn.Identity()
        self._make_codebook(c)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        # EMA share of assignments per code (uniform = 1/K); drives re-seeding
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))
        # whether each code has been hit since it was (re)seeded; picks its re-seeding threshold
        self.register_buffer("proven", torch.zeros(codebook_size, dtype=torch.bool))
        if cfg.update == "ema":
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", self.codebook.detach().clone())
        n_recent = cfg.recent_vectors or max(4096, codebook_size)
        self.register_buffer("recent", torch.zeros(n_recent, c), persistent=False)
        self._recent_filled = 0
        self.n_reseeded = 0  # codes re-seeded so far in this process (monitoring)
        self._recent_pos = 0
        self._init_buffer: list[Tensor] = []
        self._gen = torch.Generator().manual_seed(cfg.seed)

    # -- resume state ----------------------------------------------------------------------
    def resume_state(self) -> dict[str, Tensor]:
        """Training state outside ``state_dict()`` that an exact resume needs, as CPU tensors:
        the sampling generator (``gen``, uint8), the ring buffer of recent encoder outputs
        (``recent`` (n_recent, c), ``recent_pos_filled`` int64 (2,)), the k-means init buffer
        (``init_buffer`` (rows, c) with ``init_buffer_sizes`` int64 (batches,)) and
        ``n_reseeded`` int64 ()."""
        buf = self._init_buffer
        c = self.recent.shape[1]
        return {
            "gen": self._gen.get_state(),
            "recent": self.recent.detach().cpu().clone(),
            "recent_pos_filled": torch.tensor([self._recent_pos, self._recent_filled], dtype=torch.int64),
            "init_buffer": torch.cat(buf).detach().cpu() if buf else torch.zeros(0, c),
            "init_buffer_sizes": torch.tensor([b.shape[0] for b in buf], dtype=torch.int64),
            "n_reseeded": torch.tensor(self.n_reseeded, dtype=torch.int64),
        }

    def load_resume_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`resume_state` returned (shapes checked)."""
        if state["recent"].shape != self.recent.shape:
            raise ValueError(f"resume state: recent buffer {tuple(state['recent'].shape)}, "
                             f"this layer has {tuple(self.recent.shape)}")  # fmt: skip
        self._gen.set_state(state["gen"])
        self.recent.copy_(state["recent"])
        self._recent_pos, self._recent_filled = (int(v) for v in state["recent_pos_filled"])
        dev = self.recent.device
        self._init_buffer = [b.to(dev) for b in state["init_buffer"].split(state["init_buffer_sizes"].tolist())]
        self.n_reseeded = int(state["n_reseeded"])

    # -- codebook ------------------------------------------------------------------------
    def _make_codebook(self, c: int) -> None:
        init = torch.randn(self.codebook_size, c, generator=torch.Generator().manual_seed(self.config.seed))
        init = init * c**-0.5  # unit expected norm
        if self.config.cosine:
            init = F.normalize(init, dim=-1)
        if self.config.update == "gradient":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)

    def effective_codebook(self) -> Tensor:
        """(K, c) float32 codewords used for search and decode (with grad in gradient mode)."""
        cb = self.codebook
        return F.normalize(cb, dim=-1) if self.config.cosine and self.config.update == "gradient" else cb

    @property
    def learns_codebook_by_gradient(self) -> bool:
        return self.config.update == "gradient"

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> QuantizerOutput:
        x = check_channel_last(x, self.dim)
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(-1, self.dim).float()  # (n, dim)
            z = self._project(flat)  # (n, c)
            updating = self.training and torch.is_grad_enabled()
            if updating:
                self._maybe_init(z.detach())
            codes, _ = assign(z.detach(), self.effective_codebook().detach(), chunk_bytes=self.config.chunk_bytes)
            if updating:  # also during the k-means buffering phase, from the data-sampled start
                self._update(z.detach(), codes)
            q = F.embedding(codes, self.effective_codebook())  # (n, c)
            commit = F.mse_loss(z, q.detach())
            cb_loss = F.mse_loss(q, z.detach()) if self.learns_codebook_by_gradient else commit.new_zeros(())
            loss = self.config.commitment_weight * commit + self.config.codebook_weight * cb_loss
            g = rotate_to(z, q.detach()) if self.config.gradient == "rotation" else z
            out = q.detach() + (g - g.detach())  # value exactly q, gradient of g
            out = self.project_out(out)  # (n, dim)
            used, ppl = _batch_stats(codes[:, None], self.codebook_size)
        stats = QuantizerStats(used, ppl, commit.detach(), cb_loss.detach())
        return QuantizerOutput(out.reshape(*lead, self.dim), codes.reshape(lead), loss, stats)

    def _project(self, flat: Tensor) -> Tensor:
        z = self.project_in(flat)
        return F.normalize(z, dim=-1) if self.config.cosine else z

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(..., dim) -> codes (...) int64, without updating anything."""
        x = check_channel_last(x, self.dim)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self._project(x.reshape(-1, self.dim).float())
            codes, _ = assign(z, self.effective_codebook(), chunk_bytes=self.config.chunk_bytes)
        return codes.reshape(x.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        """codes (...) int in [0, K) -> (..., dim) float32, equal to the forward's ``quantized``."""
        codes = check_int_tensor(codes)
        flat = check_codes(codes.reshape(-1, 1), 1, self.codebook_size)[:, 0]  # (n,)
        with torch.autocast(device_type=codes.device.type, enabled=False):
            out = self.project_out(F.embedding(flat, self.effective_codebook()))
        return out.reshape(*codes.shape, self.dim)

    @torch.no_grad()
    def refine_codebook(self, x: Tensor, iters: int = 10, split: float = 0.0, split_share: float = 0.0) -> list[float]:
        """Lloyd iterations of the codebook on inputs ``x`` (..., dim) of the trained model (e.g.
        encoder outputs of the training set, model frozen), starting from the current codewords:
        :class:`vq.codebook.KMeans` warm-started from them, with ``empty="keep"``.

        Each iteration assigns every vector to its nearest code and moves each code that got
        vectors to their mean (codes without vectors stay), so the mean squared quantization
        error on ``x`` never increases. The EMA statistics are reset to the new codewords, so
        training can go on from them. With ``torch.distributed`` initialised, every rank passes
        its own shard and the sums are all-reduced (``KMeans(all_reduce=...)``; collective: call
        it on every rank).

        ``split`` > 0, ``split_share``: KMeans's ELBG-style moves (Patane & Russo 2001) in all
        iterations but the last ``max(1, ceil(iters / 3))``: codes resting on a few outliers
        move to cut large cells in two, which Lloyd alone never does; deterministic, identical
        on every rank. ``split_share``: only cells holding at least this fraction of a uniform
        share (``n / K`` vectors) are cut. The moves lower the error most by cutting large
        sparse cells, whose halves new data then rarely hits: on the patch bench unrestricted
        moves took the held-out used fraction at 10 K vectors from 0.98 to 0.94
        (docs/results.md). There 0.5 kept >= 95 % used at K = 1024 and 8192 (2812 and 351
        vectors per code); K = 65536 with only 44 vectors per code needed 0.7, as the shares of
        so few vectors are noisy.

        Returns the mean squared error per vector (summed over the c codebook coordinates)
        before each iteration and after the last: ``iters + 1`` floats (non-increasing when
        ``split`` is 0, and over the last ``max(1, ceil(iters / 3)) + 1`` otherwise).
        """
        if isinstance(self, SimVQ):
            raise TypeError("SimVQ's codebook is basis @ W; refine_codebook needs free codewords")
        require_int("iters", iters, 0)
        x = check_channel_last(x, self.dim)
        cfg, k = self.config, self.codebook_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self._project(x.reshape(-1, self.dim).float())  # (n, c)
            km = KMeans(k, niter=iters, init=self.effective_codebook().detach(), backend="torch",
                        chunk_bytes=cfg.chunk_bytes, empty="keep", split=split, split_share=split_share,
                        spherical=cfg.cosine, all_reduce=_all_reduce_sum if _world() > 1 else None).fit(z)
            self.codebook.data.copy_(km.centroids)  # unit rows already when cosine (spherical)
        if cfg.update == "ema":
            self.ema_sum.copy_(self.codebook * self.ema_count[:, None])
        n = float(_all_reduce_sum(torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device)))
        history = [e / n for e in km.history + [km.inertia]]
        log.info("refined %d codes on %d vectors (%d ELBG moves): mse %.4g -> %.4g",
                 k, int(n), km.n_moved, history[0], history[-1])  # fmt: skip
        return history

    # -- training-time state updates -----------------------------------------------------------
    @torch.no_grad()
    def _maybe_init(self, z: Tensor) -> None:
        if bool(self.initialized):
            return
        cfg, k = self.config, self.codebook_size
        first = not self._init_buffer
        self._init_buffer.append(z)
        if cfg.init == "random":
            return self._finish_init(z.shape[0])
        if first:  # start from data points right away (rank 0's)
            self._set_codebook(_broadcast(self._sample_rows(z, k).contiguous()))
            self._reset_stats(z.shape[0])
        if cfg.init == "data":
            return self._finish_init(z.shape[0])
        want = cfg.init_vectors or 4 * k
        have = sum(b.shape[0] for b in self._init_buffer)
        ready = torch.tensor(float(have >= want or (len(self._init_buffer) >= cfg.init_max_batches and have >= k)))
        if _world() > 1:
            dist.all_reduce(ready, op=dist.ReduceOp.MAX)
        if not bool(ready):
            return
        buf = torch.cat(self._init_buffer)  # (have, c)
        if _rank() == 0:
            if buf.shape[0] >= 2 * k:
                km = KMeans(k, niter=cfg.kmeans_iters, init="k-means++" if k <= 1024 else "random", seed=cfg.seed)
                centroids = km.fit(buf).centroids.to(buf.device)
                log.info("k-means init of %d codes on %d buffered vectors", k, buf.shape[0])
            else:
                centroids = self._sample_rows(buf, k)
                log.info("codebook init: %d buffered vectors < 2K, sampled codes from data", buf.shape[0])
            self._set_codebook(centroids)
        self._finish_init(z.shape[0])

    def _finish_init(self, n: int) -> None:
        self._set_codebook(_broadcast(self.codebook.detach().clone()))
        self._reset_stats(n)
        self.initialized.fill_(True)
        for batch in self._init_buffer:
            self._push_recent(batch)
        self._init_buffer = []

    def _reset_stats(self, n: int) -> None:
        """EMA statistics consistent with the current codebook, every code at a uniform share."""
        if self.config.update == "ema":
            self.ema_count.fill_(max(n * _world() / self.codebook_size, 1e-3))
            self.ema_sum.copy_(self.codebook * self.ema_count[:, None])
        self.usage.fill_(1.0 / self.codebook_size)
        self.proven.fill_(False)

    def _set_codebook(self, rows: Tensor) -> None:
        rows = F.normalize(rows, dim=-1) if self.config.cosine else rows
        self.codebook.data.copy_(rows)

    def _sample_rows(self, z: Tensor, count: int) -> Tensor:
        """``count`` rows of ``z`` chosen at random (without replacement when possible)."""
        n = z.shape[0]
        if n >= count:
            idx = torch.randperm(n, generator=self._gen)[:count]
        else:
            idx = torch.randint(n, (count,), generator=self._gen)
        return z[idx.to(z.device)]

    def _push_recent(self, z: Tensor) -> None:
        size = self.recent.shape[0]
        z = z[-size:]
        m = z.shape[0]
        end = self._recent_pos + m
        if end <= size:
            self.recent[self._recent_pos : end] = z
        else:
            cut = size - self._recent_pos
            self.recent[self._recent_pos :] = z[:cut]
            self.recent[: m - cut] = z[cut:]
        self._recent_pos = end % size
        self._recent_filled = min(size, self._recent_filled + m)

    @torch.no_grad()
    def _update(self, z: Tensor, codes: Tensor) -> None:
        """EMA statistics, usage and re-seeding; every rank sees the same all-reduced counts."""
        cfg, k, c = self.config, self.codebook_size, z.shape[1]
        self.steps += 1
        self._push_recent(z)
        counts = torch.bincount(codes, minlength=k).float()  # (k,)
        if cfg.update == "ema":
            sums = torch.zeros(k, c, device=z.device).index_add_(0, codes, z)  # (k, c)
            packed = _all_reduce_sum(torch.cat([counts[:, None], sums], dim=1))  # (k, 1 + c)
            counts, sums = packed[:, 0], packed[:, 1:]
            decay = self.ema_decay(float(counts.sum()))
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (total + k * 1e-5) * total  # Laplace smoothing
            self._set_codebook(self.ema_sum / smoothed[:, None])
        else:
            counts = _all_reduce_sum(counts)
        n_global = counts.sum()
        window = cfg.usage_window or 2 * k
        rate = float(min(1.0, max(n_global / window, 1e-3)))
        self.usage.mul_(1 - rate).add_(counts / n_global, alpha=rate)
        self.proven |= counts > 0  # all-reduced counts: identical on every rank
        if cfg.reseed and int(self.steps) % cfg.reseed_every == 0:
            self._reseed(counts, n_global)

    def ema_decay(self, n: float) -> float:
        """EMA decay of a training step with ``n`` vectors (all ranks): ``decay``, or longer so
        the EMA spans ``code_window`` vectors per code on average."""
        cfg = self.config
        if cfg.code_window is None:
            return cfg.decay
        return max(cfg.decay, 1.0 - n / (cfg.code_window * self.codebook_size))

    def _reseed(self, counts: Tensor, n_global: Tensor) -> None:
        k = self.codebook_size
        cfg = self.config
        threshold = torch.where(self.proven, cfg.reseed_threshold, cfg.reseed_threshold_unproven) / k  # (k,)
        dead = ((self.usage < threshold) & (counts == 0)).to(torch.uint8)
        dead = _broadcast(dead).bool()  # rank 0 decides
        n_dead = int(dead.sum())
        if n_dead == 0 or self._recent_filled == 0:
            return
        anchors = self._sample_rows(self.recent[: self._recent_filled], n_dead)  # (n_dead, c)
        anchors = _broadcast(anchors.contiguous())
        self.codebook.data[dead] = F.normalize(anchors, dim=-1) if self.config.cosine else anchors
        self.usage[dead] = 1.0 / k  # grace period: a fresh code starts at a uniform share
        self.proven[dead] = False
        if self.config.update == "ema":
            fresh = float(n_global) / k
            self.ema_count[dead] = fresh
            self.ema_sum[dead] = self.codebook.data[dead] * fresh
        self.n_reseeded += n_dead
        log.debug("re-seeded %d dead codes of %d", n_dead, k)


class SimVQ(VectorQuantizer):
    """SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models
    with One Linear Layer"): codewords = frozen random basis @ learnable linear map
    (:func:`vq.codebook.simvq.simvq_codebook`), so every code moves with every gradient step.
    Codebook by gradient (rotation trick by default); no EMA, no re-seeding.

    Init (``init="data"``, default): on the first training batch ``W`` is set so the codebook's
    second moment matches the encoder outputs' (``W = sqrt(c) chol(E[z z^T])^T``; the basis rows
    have covariance I/c), broadcast from rank 0 — without it the random codebook's scale is
    unrelated to the encoder's and a few codes take everything. ``init="random"``: W = I.
    State: ``basis`` (K, c) buffer (:func:`vq.codebook.simvq.simvq_basis`), ``weight`` (c, c).
    """

    def __init__(self, dim: int, codebook_size: int, **options: Any):
        for fixed in ("update", "reseed"):
            if fixed in options:
                raise ValueError(f"SimVQ fixes {fixed!r}; it cannot be set")
        options.setdefault("gradient", "rotation")
        options.setdefault("init", "data")
        if options["init"] == "kmeans":
            raise ValueError("SimVQ supports init='data' or 'random'")
        super().__init__(dim, codebook_size, update="gradient", reseed=False, **options)

    def _make_codebook(self, c: int) -> None:
        self.register_buffer("basis", simvq_basis(self.codebook_size, c, seed=self.config.seed))
        self.weight = nn.Parameter(torch.eye(c))

    def effective_codebook(self) -> Tensor:
        cb = simvq_codebook(self.basis, self.weight)  # (K, c)
        return F.normalize(cb, dim=-1) if self.config.cosine else cb

    @property
    def codebook(self) -> Tensor:  # read-only view for callers that inspect codewords
        return self.effective_codebook()

    @torch.no_grad()
    def _maybe_init(self, z: Tensor) -> None:
        if bool(self.initialized):
            return
        if self.config.init == "data":
            c = z.shape[1]
            second = z.T @ z / z.shape[0] + 1e-6 * torch.eye(c, device=z.device)  # (c, c)
            w = math.sqrt(c) * torch.linalg.cholesky(second).T
            self.weight.data.copy_(_broadcast(w.contiguous()))
        self.initialized.fill_(True)

    def _update(self, z: Tensor, codes: Tensor) -> None:
        """Nothing to update outside the gradient step (no EMA, no re-seeding)."""


# -- finite scalar quantization ------------------------------------------------------------------
class FSQ(nn.Module):
    """FSQ layer (Mentzer et al. 2023): ``Linear(dim, len(levels))`` -> tanh bound -> per-coordinate
    rounding on the grid of :class:`vq.codebook.fsq.FSQ` (straight-through) -> ``Linear`` back.
    No codebook to learn, no auxiliary loss (``loss`` is 0). K = prod(levels).
    """

    def __init__(self, dim: int, levels: list[int] | tuple[int, ...]):
        super().__init__()
        require_int("dim", dim, 1)
        self.grid = FSQGrid(list(levels))
        self.dim, self.levels, self.codebook_size = dim, list(levels), self.grid.codebook_size
        d = len(self.levels)
        self.project_in: nn.Module = nn.Linear(dim, d) if d != dim else nn.Identity()
        self.project_out: nn.Module = nn.Linear(d, dim) if d != dim else nn.Identity()

    def forward(self, x: Tensor) -> QuantizerOutput:
        x = check_channel_last(x, self.dim)
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            b = torch.tanh(self.project_in(x.reshape(-1, self.dim).float()))  # (n, d) in (-1, 1)
            digits = self.grid.quantize_digits(b.detach())  # (n, d) int64
            q = self.grid.digits_to_values(digits).to(b.device)
            out = self.project_out(q + (b - b.detach()))  # straight-through, value exactly q
            codes = self.grid.codes_to_index(digits)  # (n,)
            used, ppl = _batch_stats(codes[:, None], self.codebook_size)
        zero = out.new_zeros(())
        return QuantizerOutput(out.reshape(*lead, self.dim), codes.reshape(lead), zero, QuantizerStats(used, ppl, zero, zero))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.forward(x).codes

    def decode(self, codes: Tensor) -> Tensor:
        """codes (...) int in [0, prod(levels)) -> (..., dim) float32."""
        codes = check_int_tensor(codes)
        digits = self.grid.index_to_codes(codes.reshape(-1))  # (n, d), range-checked
        with torch.autocast(device_type=codes.device.type, enabled=False):
            out = self.project_out(self.grid.digits_to_values(digits))
        return out.reshape(*codes.shape, self.dim)


# -- residual ------------------------------------------------------------------------------------
class ResidualVQ(nn.Module):
    """Residual VQ: ``stages`` :class:`VectorQuantizer` stages, each with its own codebook (and its
    own projections when ``codebook_dim`` is set), each quantizing what the previous left.

    Quantizer dropout (SoundStream): during training, a fraction ``quantizer_dropout`` of the
    examples (index 0 of the input; rows of a 2-D input) keep only a random number of stages
    ``n_q ~ U{1..stages}``; dropped stages contribute nothing and get code ``-1``. Every stage
    still sees and learns from all vectors. ``forward(x, n_stages=m)`` keeps the first m stages
    for everyone (bitrate scaling at inference).

    Codes: (..., stages) int64 in ``[-1, K)``, ``-1`` = stage not used. ``decode`` accepts the same.
    The stage quantizers are ``vqs`` (state-dict keys ``vqs.<i>.``; ``stages.<i>.`` from before
    issue #12 still load).
    """

    def __init__(self, dim: int, codebook_size: int, stages: int, *, quantizer_dropout: float = 0.0, **vq_options: Any):
        super().__init__()
        require_int("stages", stages, 1)
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        seed = vq_options.pop("seed", 0)
        self.dim, self.codebook_size, self.stages = dim, codebook_size, stages
        self.quantizer_dropout = quantizer_dropout
        self.vqs = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, seed=seed + i, **vq_options) for i in range(stages)
        )
        self.register_load_state_dict_pre_hook(_load_old_stage_keys)

    def sample_stages(self, n_examples: int, n_stages: int | None, device: torch.device) -> Tensor:
        """(n_examples,) int64 number of stages each example keeps."""
        if n_stages is not None:
            require_int("n_stages", n_stages, 1)
            if n_stages > self.stages:
                raise ValueError(f"n_stages={n_stages} exceeds the {self.stages} stages of this quantizer")
            return torch.full((n_examples,), n_stages, dtype=torch.int64, device=device)
        keep = torch.full((n_examples,), self.stages, dtype=torch.int64, device=device)
        if self.training and self.quantizer_dropout > 0:
            drop = torch.rand(n_examples, device=device) < self.quantizer_dropout
            keep = torch.where(drop, torch.randint(1, self.stages + 1, (n_examples,), device=device), keep)
        return keep

    def forward(self, x: Tensor, n_stages: int | None = None) -> QuantizerOutput:
        x = check_channel_last(x, self.dim)
        examples = x.shape[0] if x.dim() > 1 else 1
        keep = self.sample_stages(examples, n_stages, x.device)  # (B,)
        per_row = keep.repeat_interleave(x[..., 0].numel() // examples)  # (n,)
        return self._run(x, per_row)

    def _run(self, x: Tensor, keep: Tensor) -> QuantizerOutput:
        """x (..., dim); keep (n,) stages kept per flattened row."""
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            residual = x.reshape(-1, self.dim).float()  # (n, dim)
            out = torch.zeros_like(residual)
            codes, loss, parts = [], residual.new_zeros(()), []
            for i, vq in enumerate(self.vqs):
                o = vq(residual)
                on = keep > i  # (n,)
                out = out + o.quantized * on[:, None].to(out.dtype)
                residual = residual - o.quantized.detach()
                codes.append(torch.where(on, o.codes, torch.full_like(o.codes, -1)))
                loss = loss + o.loss
                parts.append(o.stats)
        stats = QuantizerStats(
            torch.cat([s.used_fraction for s in parts]),
            torch.cat([s.perplexity for s in parts]),
            sum(s.commitment_loss for s in parts),
            sum(s.codebook_loss for s in parts),
        )
        codes_t = torch.stack(codes, dim=-1)  # (n, stages)
        return QuantizerOutput(out.reshape(*lead, self.dim), codes_t.reshape(*lead, self.stages), loss, stats)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (..., stages) int in [-1, K) (-1 = stage unused) -> (..., dim) float32."""
        codes = check_int_tensor(codes)
        if codes.dim() == 0 or codes.shape[-1] != self.stages:
            raise ValueError(f"codes must have shape (..., {self.stages}), got {tuple(codes.shape)}")
        flat = codes.reshape(-1, self.stages)  # (n, stages)
        if bool(((flat < -1) | (flat >= self.codebook_size)).any()):
            bad = flat[(flat < -1) | (flat >= self.codebook_size)][0].item()
            raise ValueError(f"codes out of range: found {bad}, valid range is [-1, {self.codebook_size})")
        out = torch.zeros(flat.shape[0], self.dim, device=codes.device)
        for i, vq in enumerate(self.vqs):
            on = flat[:, i] >= 0
            out = out + vq.decode(flat[:, i].clamp_min(0)) * on[:, None].to(out.dtype)
        return out.reshape(*codes.shape[:-1], self.dim)

    def bitrate(self, frames_per_second: float, n_stages: int | None = None) -> float:
        """bits/s = frames/s x stages x log2(K)."""
        return frames_per_second * (n_stages or self.stages) * math.log2(self.codebook_size)


def _load_old_stage_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of :class:`ResidualVQ`: state written before issue #12 named the
    stage quantizers ``stages`` (now the stage count), so ``<prefix>stages.<i>.`` -> ``<prefix>vqs.<i>.``."""
    old, new = prefix + "stages.", prefix + "vqs."
    for key in [k for k in state_dict if k.startswith(old)]:
        renamed = new + key[len(old) :]
        if renamed in state_dict:
            raise ValueError(f"state dict has both {key!r} (old name) and {renamed!r}")
        state_dict[renamed] = state_dict.pop(key)


class GroupedResidualVQ(nn.Module):
    """``groups`` independent :class:`ResidualVQ` on equal slices of the channel dimension.

    Codes: (..., groups, stages). Quantizer dropout draws one ``n_q`` per example shared by all
    groups. Stats are concatenated group-major: entry ``g * stages + s``.
    """

    def __init__(self, dim: int, codebook_size: int, stages: int, groups: int, **rvq_options: Any):
        super().__init__()
        require_int("groups", groups, 1)
        if dim % groups:
            raise ValueError(f"dim={dim} is not divisible by groups={groups}")
        seed = rvq_options.pop("seed", 0)
        self.dim, self.groups, self.stages, self.codebook_size = dim, groups, stages, codebook_size
        self.rvqs = nn.ModuleList(
            ResidualVQ(dim // groups, codebook_size, stages, seed=seed + 1000 * g, **rvq_options) for g in range(groups)
        )

    def forward(self, x: Tensor, n_stages: int | None = None) -> QuantizerOutput:
        x = check_channel_last(x, self.dim)
        examples = x.shape[0] if x.dim() > 1 else 1
        keep = self.rvqs[0].sample_stages(examples, n_stages, x.device)
        per_row = keep.repeat_interleave(x[..., 0].numel() // examples)  # (n,)
        outs = [r._run(part, per_row) for r, part in zip(self.rvqs, x.chunk(self.groups, dim=-1))]
        stats = QuantizerStats(
            torch.cat([o.stats.used_fraction for o in outs]),  # (groups * stages,)
            torch.cat([o.stats.perplexity for o in outs]),
            sum(o.stats.commitment_loss for o in outs),
            sum(o.stats.codebook_loss for o in outs),
        )
        return QuantizerOutput(
            torch.cat([o.quantized for o in outs], dim=-1),
            torch.stack([o.codes for o in outs], dim=-2),  # (..., groups, stages)
            sum(o.loss for o in outs),
            stats,
        )

    def decode(self, codes: Tensor) -> Tensor:
        """codes (..., groups, stages) -> (..., dim) float32."""
        codes = check_int_tensor(codes)
        if codes.dim() < 2 or tuple(codes.shape[-2:]) != (self.groups, self.stages):
            raise ValueError(f"codes must have shape (..., {self.groups}, {self.stages}), got {tuple(codes.shape)}")
        return torch.cat([r.decode(codes[..., g, :]) for g, r in enumerate(self.rvqs)], dim=-1)

    def bitrate(self, frames_per_second: float, n_stages: int | None = None) -> float:
        return self.groups * self.rvqs[0].bitrate(frames_per_second, n_stages)


_KINDS = ("vq", "simvq", "fsq", "rvq", "grvq")
#: keys of quantizer specs saved before issue #12 ("one name per idea") -> today's field names
_RENAMED_SPEC_KEYS = {"levels": "stages"}


@dataclass(frozen=True)
class QuantizerSpec:
    """Which bottleneck a model uses; ``build(dim)`` makes the layer. JSON round-trip via
    ``dataclasses.asdict`` / :meth:`from_dict` (which also reads specs saved before a rename).

    kind: ``vq`` | ``simvq`` | ``fsq`` | ``rvq`` | ``grvq``; ``stages`` (rvq / grvq: codebooks in sequence),
    ``groups`` (grvq), ``fsq_levels`` (fsq), ``quantizer_dropout`` (rvq / grvq), ``options``:
    extra :class:`VQConfig` fields for the vector-quantizer kinds (e.g. ``{"update": "gradient"}``).
    """

    kind: str = "vq"
    codebook_size: int = 1024
    stages: int = 1
    groups: int = 1
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    quantizer_dropout: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"quantizer kind must be one of {_KINDS}, got {self.kind!r}")
        require_int("codebook_size", self.codebook_size, 2)
        require_int("stages", self.stages, 1)
        require_int("groups", self.groups, 1)
        object.__setattr__(self, "fsq_levels", tuple(self.fsq_levels))
        opts = self.options.items() if isinstance(self.options, dict) else self.options
        object.__setattr__(self, "options", tuple((str(k), v) for k, v in opts))
        if self.kind == "fsq" and self.options:
            raise ValueError("fsq takes no VQ options")

    @classmethod
    def from_dict(cls, d: dict[str, Any], defaults: "QuantizerSpec | None" = None) -> "QuantizerSpec":
        """The spec a (JSON) dict describes, fields it leaves out taken from ``defaults`` (or the
        dataclass defaults). The one place old keys are read: ``"levels"`` (RVQ / GRVQ stage count
        before issue #12) means ``"stages"``; a dict giving both with different values is an error."""
        if not isinstance(d, dict):
            raise TypeError(f"a quantizer spec must be a dict, got {type(d).__name__}")
        fields = dict(d)
        for old, new in _RENAMED_SPEC_KEYS.items():
            if old in fields:
                value = fields.pop(old)
                if new in fields and fields[new] != value:
                    raise ValueError(
                        f"quantizer spec gives both {old!r}={value!r} (the old name) and {new!r}={fields[new]!r}"
                    )
                fields[new] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown quantizer spec fields {sorted(unknown)}; known: {sorted(known)}")
        return dataclasses.replace(defaults, **fields) if defaults is not None else cls(**fields)

    def build(self, dim: int) -> nn.Module:
        opts = dict(self.options)
        if self.kind == "vq":
            return VectorQuantizer(dim, self.codebook_size, **opts)
        if self.kind == "simvq":
            return SimVQ(dim, self.codebook_size, **opts)
        if self.kind == "fsq":
            return FSQ(dim, list(self.fsq_levels))
        if self.kind == "rvq":
            return ResidualVQ(dim, self.codebook_size, self.stages, quantizer_dropout=self.quantizer_dropout, **opts)
        return GroupedResidualVQ(
            dim, self.codebook_size, self.stages, self.groups, quantizer_dropout=self.quantizer_dropout, **opts
        )

    def bits_per_frame(self, n_stages: int | None = None) -> float:
        """Code bits per latent position (all stages, or the first ``n_stages``)."""
        if self.kind == "fsq":
            return math.log2(math.prod(self.fsq_levels))
        stages = (n_stages or self.stages) if self.kind in ("rvq", "grvq") else 1
        groups = self.groups if self.kind == "grvq" else 1
        return groups * stages * math.log2(self.codebook_size)
