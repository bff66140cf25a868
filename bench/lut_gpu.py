"""GPU check and timing of the Triton VQ kernels against the reference and cuBLAS fp16.

1. correctness: every Triton kernel (dequantize, lut_gemv, lut_gemm) against
   ``vq_kernels.reference`` — decode bit-exact, float32 matmuls relative error < 1e-5 against a
   float64 reference, every layout (1 codebook d in {2,4,8} up to 2^16 entries, 2x8 additive,
   tiles), odd shapes;
2. timing (GPU only): ``triton.testing.do_bench`` medians of our ops vs ``torch.matmul`` in fp16
   (cuBLAS) at 2 bits/weight, batch 1 / 8 / 64, with rotating buffers (enough copies of every
   weight that the set exceeds L2, so the cache never holds the next call's weights);
   effective bandwidth = compulsory bytes (codes + codebooks + scales + x + y) / time, and its
   share of the card's HBM peak.

    python bench/lut_gpu.py            # on a CUDA machine (see bench/gpu_check.sh)
    python bench/lut_gpu.py --dry-run  # CPU, TRITON_INTERPRET=1, tiny shapes: checks only

Imports only torch, triton, vq_kernels and bench/_report.py. Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass

from _report import print_result

log = logging.getLogger("bench.lut_gpu")

#: HBM peak in bytes/s by device-name substring (vendor data sheets)
HBM_PEAK = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}
#: layouts at 2 bits/weight: name -> (M, K, d)
LAYOUTS = {"2x8": (2, 256, 8), "1x16": (1, 65536, 8)}


@dataclass(frozen=True)
class Experiment:
    shapes: tuple[tuple[int, int], ...] = ((4096, 4096), (8192, 28672), (28672, 8192))  # (out, in)
    batches: tuple[int, ...] = (1, 8, 64)
    layouts: tuple[str, ...] = ("2x8", "1x16")
    l2_bytes: int = 50 << 20  # H100 L2; rotating sets are sized to 4x this
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [n for n in self.layouts if n not in LAYOUTS]
        if bad:
            raise ValueError(f"unknown layouts {bad}; known {sorted(LAYOUTS)}")


# correctness cases: (out, in, d, M, K, tile_rows, tile_groups)
CHECKS = [
    (6, 42, 2, 1, 16, None, None),
    (123, 432, 4, 1, 256, None, None),
    (37, 96, 8, 1, 65536, None, None),
    (19, 40, 8, 2, 256, None, None),
    (70, 64, 8, 2, 256, 32, 3),
    (33, 48, 4, 3, 8, 16, None),
    (123, 431, 1, 1, 16, None, None),
]
CHECKS_GPU = [(1000, 1032, 8, 2, 256, None, None), (515, 2048, 4, 1, 4096, 128, 64), (4096, 4096, 8, 2, 256, None, None)]


def _make(torch, out, inp, d, m, k, tr, tg, dtype, device, gen):
    from vq_kernels.layout import VQLayout
    from vq_kernels.packing import pack_codes

    n_groups = inp // d
    lay = VQLayout.make(out, inp, d=d, K=k, M=m, tile_rows=tr, tile_groups=tg)
    codes = torch.randint(0, k, (out, n_groups, m), generator=gen)
    cb = (torch.randn(lay.codebook_shape, generator=gen) * 0.05).to(dtype)
    sc = (torch.rand(out, generator=gen) + 0.5).to(dtype)
    return codes.to(device), pack_codes(codes, lay.bits).to(device), cb.to(device), sc.to(device), lay


def check(torch, device: str, cases) -> list[dict]:
    """Run every kernel on every case; raise AssertionError on the first mismatch."""
    from vq_kernels import reference
    from vq_kernels import triton_lut as tk

    gen = torch.Generator().manual_seed(1)
    rows = []
    for case in cases:
        codes, packed, cb, sc, lay = _make(torch, *case, torch.float32, device, gen)
        w = tk.dequantize(packed, cb, sc, lay)
        ok_decode = bool(torch.equal(w, reference.dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups)))
        errs = {}
        for b in (1, 3, 8, 20):
            x = torch.randn(b, lay.in_features, generator=gen).to(device)
            ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double(), lay.tile_rows, lay.tile_groups)
            for name, fn in (("gemv", tk.lut_gemv), ("gemm", tk.lut_gemm)):
                if name == "gemv" and b > tk.GEMV_MAX_BATCH:
                    continue
                y = fn(x, packed, cb, sc, lay)
                err = float((y.double() - ref).abs().max() / ref.abs().max())
                errs[f"{name}_b{b}"] = err
        worst = max(errs.values())
        rows.append(dict(case=list(case), decode_exact=ok_decode, worst_rel_err=worst))
        log.info("check %-40s decode exact=%s worst rel err %.2e", case, ok_decode, worst)
        assert ok_decode, f"decode mismatch for {case}"
        assert worst < 1e-5, f"relative error {worst} >= 1e-5 for {case}: {errs}"
    return rows


def _rotating(n: int, make):
    bufs = [make() for _ in range(n)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % n
        return bufs[state["i"]]

    return nxt


def _wall_median_ms(fn, warmup: int = 1, rep: int = 3, return_mode: str = "median") -> float:
    """Dry-run stand-in for triton.testing.do_bench (no CUDA events on CPU): 1 warm-up, 3 runs."""
    warmup, rep = min(warmup, 1), min(rep, 3)
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[len(ts) // 2]


def timing(torch, exp: Experiment, device: str = "cuda") -> list[dict]:
    """Our kernels vs torch.matmul fp16 (cuBLAS), do_bench medians, rotating weights."""
    from vq_kernels import triton_lut as tk

    if device == "cuda":
        import triton

        bench = triton.testing.do_bench
        name = torch.cuda.get_device_name()
    else:  # dry run: exercises this code path only, the times mean nothing
        bench, name = _wall_median_ms, "cpu"
    peak = next((v for k, v in HBM_PEAK.items() if k in name), None)
    gen = torch.Generator().manual_seed(exp.seed)
    rows = []
    for out, inp in exp.shapes:
        dense_bytes = out * inp * 2
        n_dense = max(2, -(-4 * exp.l2_bytes // dense_bytes))
        dense_w = _rotating(n_dense, lambda: torch.randn(out, inp, device=device, dtype=torch.float16))
        for lname in exp.layouts:
            m, k, d = LAYOUTS[lname]
            _, packed, cb, sc, lay = _make(torch, out, inp, d, m, k, None, None, torch.float16, device, gen)
            vq_bytes = packed.numel() * 4 + cb.numel() * 2 + sc.numel() * 2
            n_vq = max(2, -(-4 * exp.l2_bytes // vq_bytes))
            # copies of the same weights at different addresses: same work, cold cache
            weights = _rotating(n_vq, lambda: (packed.clone(), cb.clone(), sc.clone()))
            for b in exp.batches:
                x = torch.randn(b, inp, device=device, dtype=torch.float16)

                def dense():
                    return torch.matmul(x, dense_w().T)

                t_dense = bench(dense, warmup=25, rep=100, return_mode="median") * 1e-3
                # small batches: time both the table kernel and the decode+dot kernel
                kernels = [tk.lut_gemv, tk.lut_gemm] if b <= tk.GEMV_MAX_BATCH else [tk.lut_gemm]
                for kernel in kernels:
                    def ours(kernel=kernel):
                        p, c, s = weights()
                        return kernel(x, p, c, s, lay)

                    t_ours = bench(ours, warmup=25, rep=100, return_mode="median") * 1e-3
                    moved = vq_bytes + x.numel() * 2 + b * out * 2
                    row = dict(
                        out=out, inp=inp, layout=lname, batch=b, kernel=kernel.__name__, ours_us=t_ours * 1e6,
                        cublas_fp16_us=t_dense * 1e6, speedup=t_dense / t_ours, ours_GBps=moved / t_ours / 1e9,
                        hbm_frac=(moved / t_ours / peak) if peak else None,
                    )
                    log.info(
                        "%5d x %-5d %-4s B=%-3d %-8s ours %8.1f us  cuBLAS fp16 %8.1f us  %.2fx  %.0f GB/s",
                        out, inp, lname, b, kernel.__name__, row["ours_us"], row["cublas_fp16_us"],
                        row["speedup"], row["ours_GBps"],
                    )
                    rows.append(row)
            del weights
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes, checks only")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before vq_kernels.triton_lut is imported
    import torch

    t0 = time.time()
    res: dict = dict(dry_run=a.dry_run)
    if a.dry_run:
        res["checks"] = check(torch, "cpu", CHECKS)
        tiny = Experiment(shapes=((48, 64),), batches=(1, 17), layouts=("2x8",), l2_bytes=1 << 12)
        res["timing_code_path"] = timing(torch, tiny, device="cpu")
    else:
        if not torch.cuda.is_available():
            log.error("no CUDA device: run with --dry-run on a CPU machine")
            sys.exit(2)
        import triton

        res.update(device=torch.cuda.get_device_name(), triton=triton.__version__)
        res["checks"] = check(torch, "cuda", CHECKS + CHECKS_GPU)
        res["timing"] = timing(torch, Experiment())
    res["seconds"] = time.time() - t0
    print_result(res)  # + "run": date, machine, torch, commit


if __name__ == "__main__":
    main()
