"""CPU decode speed: VQLinear's CPU path vs ``torch.nn.functional.linear`` in float32.

Both run in the same process, interleaved round by round (so load from other processes hits
both alike); each figure is a median over rounds. Two clocks: wall time with ``--threads``
threads (what a user sees) and, with one thread, the thread's CPU time (``time.thread_time``:
robust to the time-sharing of a busy machine, so the ratio is the per-core cost ratio). Weights are random — the speed of a table
lookup does not depend on the values. Layouts at 2 bits/weight (``--layouts``, default both):
``1x4d2`` = one K=16 codebook of d=2 vectors (GPTVQ-style 2-D VQ; the 4-bit in-register table
kernel), ``2x8`` = AQLM-style M=2 additive codebooks of K=256, d=8 (the byte-index LUT kernel);
``1x8d4`` (one K=256 codebook, d=4) on request.

    .venv/bin/python bench/lut_cpu.py [--quick] [--layouts 1x4d2,2x8] [--batches 1,8] [--threads N]

Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from vq.weights.nn import VQLinear
from vq_kernels import cpu
from vq_kernels.packing import index_bits

log = logging.getLogger("bench.lut_cpu")

LAYOUTS = {"2x8": dict(M=2, K=256, d=8), "1x8d4": dict(M=1, K=256, d=4), "1x4d2": dict(M=1, K=16, d=2)}


@dataclass(frozen=True)
class Experiment:
    shapes: tuple[tuple[int, int], ...] = ((576, 576), (1536, 576), (4096, 4096), (4096, 11008))  # (out, in)
    batches: tuple[int, ...] = (1, 8)
    layouts: tuple[str, ...] = ("1x4d2", "2x8")
    rounds: int = 15
    inner: int = 3  # calls per timed sample
    threads: int = field(default_factory=torch.get_num_threads)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.layouts:
            if name not in LAYOUTS:
                raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {name!r}")
        if self.rounds < 3 or self.inner < 1:
            raise ValueError("rounds >= 3 and inner >= 1 required")


def _time(fn, inner: int, clock=time.perf_counter) -> float:
    t0 = clock()
    for _ in range(inner):
        fn()
    return (clock() - t0) / inner


def _race(ours_fn, dense_fn, exp: "Experiment", threads: int, clock) -> tuple[float, float, float, float]:
    """Median and minimum seconds per call of both (ours_med, dense_med, ours_min, dense_min),
    interleaved round by round. The minimum is the least disturbed round on a shared machine."""
    torch.set_num_threads(threads)
    for _ in range(2):  # warm-up (builds the native kernels on first use)
        ours_fn(), dense_fn()
    ours, dense = [], []
    for _ in range(exp.rounds):
        ours.append(_time(ours_fn, exp.inner, clock))
        dense.append(_time(dense_fn, exp.inner, clock))
    return statistics.median(ours), statistics.median(dense), min(ours), min(dense)


def _random_layer(out: int, inp: int, M: int, K: int, d: int, gen: torch.Generator) -> VQLinear:
    n_groups = inp // d
    codes = torch.randint(0, K, (out, n_groups, M), generator=gen)
    codebooks = torch.randn(1, 1, M, K, d, generator=gen) * 0.02
    scales = torch.rand(out, generator=gen) + 0.5
    return VQLinear.from_codes(codes, codebooks, scales)


def _bits(spec: dict) -> float:
    return spec["M"] * index_bits(spec["K"]) / spec["d"]


def run(exp: Experiment) -> dict:
    gen = torch.Generator().manual_seed(exp.seed)
    rows = []
    for name in exp.layouts:
        spec = LAYOUTS[name]
        for out, inp in exp.shapes:
            layer = _random_layer(out, inp, **spec, gen=gen)
            layer.prepare_cpu()
            w = layer.to_dense().float().contiguous()  # (out, in) fp32 peer weight
            for b in exp.batches:
                x = torch.randn(b, inp, generator=gen)
                with torch.no_grad():
                    ref = F.linear(x.double(), w.double())
                    err = float((layer(x).double() - ref).abs().max() / ref.abs().max())
                    t_ours, t_dense, w_ours, w_dense = _race(
                        lambda: layer(x), lambda: F.linear(x, w), exp, exp.threads, time.perf_counter
                    )
                    c_ours, c_dense, m_ours, m_dense = _race(
                        lambda: layer(x), lambda: F.linear(x, w), exp, 1, time.thread_time
                    )
                row = dict(
                    layout=name, bits_per_weight=_bits(spec), index=cpu.index_format(layer.layout), out=out, inp=inp,
                    batch=b, ours_ms=t_ours * 1e3, dense_fp32_ms=t_dense * 1e3, speedup=t_dense / t_ours,
                    min_ours_ms=w_ours * 1e3, min_dense_fp32_ms=w_dense * 1e3, min_speedup=w_dense / w_ours,
                    cpu1_ours_ms=c_ours * 1e3, cpu1_dense_ms=c_dense * 1e3, cpu1_speedup=c_dense / c_ours,
                    cpu1_min_ours_ms=m_ours * 1e3, cpu1_min_dense_ms=m_dense * 1e3, cpu1_min_speedup=m_dense / m_ours,
                    rel_err=err,
                )
                log.info(
                    "%-5s %5d x %-5d B=%-3d wall(%d thr): ours %.3f dense %.3f ms = %.2fx (min: %.2fx) | cpu(1 thr):"
                    " ours %.3f dense %.3f ms = %.2fx (min: %.2fx)",
                    name, out, inp, b, exp.threads, row["ours_ms"], row["dense_fp32_ms"], row["speedup"],
                    row["min_speedup"], row["cpu1_ours_ms"], row["cpu1_dense_ms"], row["cpu1_speedup"],
                    row["cpu1_min_speedup"],
                )
                rows.append(row)
    torch.set_num_threads(exp.threads)
    return dict(
        experiment=asdict(exp), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        native=cpu.native_available(), machine=platform.processor() or platform.machine(),
        load_average=os.getloadavg(), torch=torch.__version__, rows=rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two small shapes, few rounds (smoke test)")
    p.add_argument("--layouts", default="1x4d2,2x8", help=f"comma-separated, from {sorted(LAYOUTS)}")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,576x576 (out x in); default: the issue's four")
    p.add_argument("--torch-fallback", action="store_true", help="disable the C++ kernels (pure-torch CPU path)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.torch_fallback:
        os.environ["VQ_NO_NATIVE"] = "1"  # read on the first kernel call
    kw = dict(layouts=tuple(a.layouts.split(",")), batches=tuple(int(v) for v in a.batches.split(",")),
              threads=a.threads)
    if a.shapes:
        kw["shapes"] = tuple(tuple(int(v) for v in sh.split("x")) for sh in a.shapes.split(","))
    exp = Experiment(rounds=a.rounds, **kw)
    if a.quick:
        exp = Experiment(**{**kw, "shapes": ((576, 576), (1536, 576))}, rounds=3, inner=1)
    res = run(exp)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
