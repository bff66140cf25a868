"""``bench_utilization``: fit a list of quantizers x codebook sizes on a fit split and measure,
on the held-out split, how well each uses its codebook and what it costs.

    data = load_data("image-patches", seed=0)
    results = bench_utilization(data, UtilizationConfig(quantizers=("kmeans", "rvq"), sizes=(256, 1024)))

Per run (one quantizer at one size; the schema is in docs/formats.md, "Utilization results"):
used fraction, usage perplexity and its ratio to K, entropy in bits vs log2 K, dead codes — for
codecs with several codebooks the mean over codebooks, plus one row per stage / codebook (and,
for residual families, the MSE after each stage) —, MSE and SQNR, code bits and all-in bits
per vector (codebook overhead amortised over the held-out vectors), fit time, encode
throughput, and the sorted code-usage curve. Usage on the fit split is measured on a seeded
subsample of the same size as the held-out split, so the two used fractions are comparable.
Every figure is computed by :mod:`vq.codebook.metrics` from the (n, m) codes, for peers too.
Memory: encoding runs in chunks of ``encode_rows`` vectors and every codec assigns in bounded
blocks, so no n x K matrix is formed.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vq.bench.data import BenchData
from vq.bench.quantizers import (
    OURS, PEERS, BenchQuantizer, QuantizerPlan, available_peers, parse_quantizer, plan_quantizer,
)
from vq.codebook import metrics

__all__ = ["SCHEMA", "UtilizationConfig", "bench_utilization", "plan_runs", "usage_curve"]

log = logging.getLogger(__name__)

SCHEMA = "vq.bench.utilization/1"
CURVE_POINTS = 101
DEFAULT_QUANTIZERS = OURS


@dataclass(frozen=True)
class UtilizationConfig:
    """What ``vq bench utilization`` runs.

    quantizers: names of :mod:`vq.bench.quantizers` (``rvq:8`` sets the stage count).
    sizes: asked codebook sizes K (per codebook for multi-codebook codecs).
    peers: peer names to add, ``("auto",)`` = every installed peer, ``()`` = none.
    seed: seeds every codec, the peers' training and the fit-set subsample.
    peer_steps / peer_batch: training of the vector-quantize-pytorch peers.
    skip_unsupported: record (quantizer, size) pairs that cannot run as skipped instead of
        refusing the whole run.
    """

    quantizers: tuple[str, ...] = DEFAULT_QUANTIZERS
    sizes: tuple[int, ...] = (256, 1024, 8192)
    peers: tuple[str, ...] = ("auto",)
    seed: int = 0
    peer_steps: int = 300
    peer_batch: int = 1024
    skip_unsupported: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantizers", tuple(self.quantizers))
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "peers", tuple(self.peers))
        if not self.quantizers and not self.peers:
            raise ValueError("no quantizers given")
        if not self.sizes:
            raise ValueError("no sizes given")
        for k in self.sizes:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"sizes must be positive ints, got {k!r}")
        for q in self.quantizers:
            base, _ = parse_quantizer(q)
        for p in self.peers:
            if p != "auto":
                base, _ = parse_quantizer(p)
                if base not in PEERS:
                    raise ValueError(f"{p!r} is not a peer; peers: {', '.join(PEERS)}")
        for name in ("peer_steps", "peer_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UtilizationConfig":
        return cls(**d)

    def peer_names(self) -> list[str]:
        if "auto" in self.peers:
            return available_peers()
        return list(self.peers)


@dataclass
class _Planned:
    plan: QuantizerPlan
    asked: list[int] = field(default_factory=list)


def plan_runs(config: UtilizationConfig, dim: int, n_fit: int) -> tuple[list[_Planned], list[dict[str, Any]]]:
    """Resolve every (quantizer, size) before fitting anything: ``(runs, skipped)``. Pairs that
    resolve to the same quantizer at the same size run once (e.g. e8p at every K). Raises
    ``ValueError`` on the first pair of ours that cannot run unless ``skip_unsupported``; peers
    that cannot take a size are always recorded as skipped."""
    runs: dict[tuple[str, int], _Planned] = {}
    skipped = []
    peers = config.peer_names()
    for name in list(config.quantizers) + peers:
        for k in config.sizes:
            try:
                plan = plan_quantizer(name, k, dim, n_fit, config.peer_steps, config.peer_batch)
            except ValueError as e:
                if not config.skip_unsupported and name not in peers:  # peers are extras: always skipped
                    raise
                skipped.append({"quantizer": name, "asked_size": k, "reason": str(e)})
                continue
            key = (plan.name, plan.size)
            runs.setdefault(key, _Planned(plan)).asked.append(k)
    return list(runs.values()), skipped


def usage_curve(counts: Tensor, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Sorted code-usage curve, downsampled: ``rank_fraction`` (rank / K in [0, 1]) and
    ``share_x_k`` (the code's share of the n codes times K: 1 = a uniform share, 0 = dead)."""
    k = counts.numel()
    share = torch.sort(counts.double() / counts.sum(), descending=True).values * k
    ranks = torch.unique(torch.linspace(0, k - 1, min(points, k)).round().long())
    return {"rank_fraction": [round(float(r) / max(k - 1, 1), 5) for r in ranks],
            "share_x_k": [float(f"{float(share[r]):.4g}") for r in ranks]}


def _usage_figures(codes: Tensor, q: BenchQuantizer) -> dict[str, Any]:
    """Codebook figures from (n, m) codes: joint codebook or mean over codebooks + per stage."""
    stages = metrics.stage_stats(codes, q.ks)
    for s, nm in zip(stages, q.stage_names):
        s["name"] = nm
    if q.joint:
        radix = torch.tensor([math.prod(q.ks[j + 1 :]) for j in range(len(q.ks))], dtype=torch.int64)
        flat = (codes * radix).sum(dim=1)  # (n,) joint index in [0, size)
        counts = metrics.usage(flat, q.size)
        ppl = metrics.usage_perplexity(flat, q.size)
        top = {"used_fraction": metrics.used_fraction(flat, q.size), "perplexity": ppl,
               "dead_codes": int(metrics.dead_codes(flat, q.size).numel())}
        curves = [usage_curve(counts)]
    else:
        ppl = sum(s["perplexity"] for s in stages) / len(stages)
        top = {"used_fraction": sum(s["used_fraction"] for s in stages) / len(stages), "perplexity": ppl,
               "dead_codes": sum(s["n_dead"] for s in stages)}
        curves = [usage_curve(torch.bincount(codes[:, j], minlength=kj)) for j, kj in enumerate(q.ks)]
    top["perplexity_ratio"] = top["perplexity"] / q.size
    n = codes.shape[0]
    # what a codebook used uniformly at random would reach with these n vectors: 1 - (1 - 1/K)^n
    top["uniform_used_fraction"] = -math.expm1(n * math.log1p(-1.0 / q.size)) if q.size > 1 else 1.0
    top["entropy_bits"] = (sum(s["entropy_bits"] for s in stages) / len(stages)) if not q.joint else math.log2(ppl)
    top["log2_k"] = math.log2(q.size)
    top["stages"] = stages
    top["usage_curves"] = curves
    return top


def _encode(q: BenchQuantizer, x: Tensor, desc: str, progress: bool) -> Tensor:
    parts = []
    rows = q.encode_rows
    for lo in tqdm(range(0, x.shape[0], rows), desc=desc, leave=False, disable=not progress or x.shape[0] <= rows):
        parts.append(q.encode(x[lo : lo + rows]))
    return torch.cat(parts)


def _decode(q: BenchQuantizer, codes: Tensor) -> Tensor:
    return torch.cat([q.decode(codes[lo : lo + q.encode_rows]) for lo in range(0, codes.shape[0], q.encode_rows)])


def _run_one(p: _Planned, data: BenchData, fit_eval: Tensor, seed: int, progress: bool) -> dict[str, Any]:
    plan = p.plan
    q = plan.build(seed)
    t0 = time.perf_counter()
    q.fit(data.fit)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = _encode(q, data.heldout, f"encode {q.label}", progress)
    enc_s = time.perf_counter() - t0
    xhat = _decode(q, codes)
    held = _usage_figures(codes, q)
    held["mse"] = metrics.mse(data.heldout, xhat)
    held["sqnr_db"] = metrics.sqnr_db(data.heldout, xhat)
    if q.prefix_fn is not None and codes.shape[1] > 1:
        for s in range(1, codes.shape[1] + 1):
            xs = q.prefix_decode(codes, s)
            held["stages"][s - 1]["mse_after"] = metrics.mse(data.heldout, xs)
    fcodes = _encode(q, fit_eval, f"encode fit {q.label}", progress)
    fit_fig = _usage_figures(fcodes, q)
    fit_fig["mse"] = metrics.mse(fit_eval, _decode(q, fcodes))
    fit_fig.pop("usage_curves")
    bits = q.bits_per_vector()
    overhead = q.overhead_bits()
    return {
        "quantizer": plan.name, "label": q.label, "source": q.source, "asked_sizes": p.asked,
        "size": plan.size, "size_note": plan.note, "codebooks": len(q.ks), "ks": q.ks, "joint": q.joint,
        "params": q.params, "notes": q.notes,
        "bits_per_vector": bits, "overhead_bits": overhead,
        "all_in_bits_per_vector": bits + overhead / data.heldout.shape[0],
        "fit_seconds": fit_s, "encode_vectors_per_second": data.heldout.shape[0] / max(enc_s, 1e-9),
        "heldout": held, "fit": fit_fig,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_utilization(data: BenchData, config: UtilizationConfig, progress: bool = True,
                      command: list[str] | None = None) -> dict[str, Any]:
    """Run every planned quantizer on ``data``; returns the results dict (docs/formats.md)."""
    runs, skipped = plan_runs(config, data.dim, data.fit.shape[0])
    gen = torch.Generator().manual_seed(config.seed)
    n_eval = min(data.fit.shape[0], data.heldout.shape[0])
    fit_eval = data.fit[torch.randperm(data.fit.shape[0], generator=gen)[:n_eval].sort().values]
    out_runs = []
    started = time.perf_counter()
    for p in tqdm(runs, desc="vq bench utilization", disable=not progress):
        log.info("running %s at K=%d (asked %s)", p.plan.name, p.plan.size, p.asked)
        is_peer = p.plan.name.split(":")[0] in PEERS
        try:
            out_runs.append(_run_one(p, data, fit_eval, config.seed, progress))
        except Exception as e:  # a failing peer must not sink a long run; ours must
            if not is_peer:
                raise
            log.warning("peer %s at K=%d failed: %s", p.plan.name, p.plan.size, e)
            skipped.append({"quantizer": p.plan.name, "asked_size": p.asked[0], "reason": f"peer failed: {e}"})
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "command": command,
        "config": config.to_dict(),
        "data": data.summary(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "total_seconds": time.perf_counter() - started,
        "runs": out_runs,
        "skipped": skipped,
    }
