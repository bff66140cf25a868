"""Optional native CPU kernel for nearest-centroid search (``csrc/nearest.c``).

Why: on the CPU a torch assignment costs at least one pass over an (n, k) block for the
distances and another for the argmin; faiss fuses both and is 5-15x faster for d <= 16
(measured by bench/kmeans.py). This small C file (no torch headers, ~1 s to build) fuses them
too. It is compiled with the system C compiler on first use and cached (the project's one
build-and-load helper, :func:`vq_kernels.native.load_library`), then loaded with ctypes. When no
compiler is available, or ``VQ_NO_NATIVE=1``, :func:`nearest` returns ``None`` and callers use the
pure-torch chunked path. ctypes releases the GIL, so rows are split across
``torch.get_num_threads()`` Python threads.
"""
from __future__ import annotations

import ctypes
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from vq_kernels.native import load_library

__all__ = ["nearest", "available", "kmeans_plusplus"]

_SRC = Path(__file__).parent / "csrc" / "nearest.c"
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=c99", "-fopenmp-simd"]
_pool: ThreadPoolExecutor | None = None
_MIN_ROWS_PER_THREAD = 2048
_VL = 16  # vector width of csrc/nearest.c (VL)
_PAD_NORM = 1e30


@lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    lib = load_library(_SRC, _FLAGS, os.environ.get("CC", "cc"))
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.vq_nearest.argtypes = [p, p, p, p, p, i64, i64, i64, p, p]
    lib.vq_nearest.restype = None
    lib.vq_kpp_update.argtypes = [p, p, p, p, p, i64, i64]
    lib.vq_kpp_update.restype = ctypes.c_double
    lib.vq_kpp_sample.argtypes = [p, p, i64, ctypes.c_double]
    lib.vq_kpp_sample.restype = i64
    return lib


def available() -> bool:
    return _load() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def nearest(x: Tensor, c: Tensor, w: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """Fused nearest centroid on the CPU, or ``None`` when the kernel is unavailable.

    x: (n, d) float32 CPU; c: (k, d) float32; w: None or (n, d) float32 per-coordinate weights.
    Returns (idx (n,) int64, dist (n,) float32 weighted squared distance).
    """
    lib = _load()
    if lib is None or x.device.type != "cpu":
        return None
    global _pool
    x = x.float().contiguous()
    w = None if w is None else w.float().contiguous()
    n, d = x.shape
    k = c.shape[0]
    kp = -(-k // _VL) * _VL
    ct = torch.zeros(d, kp)  # (d, kp) transposed, zero-padded centroids
    ct[:, :k] = c.float().T
    cn = torch.full((kp,), _PAD_NORM)  # (kp,) squared norms; padding never wins
    cn[:k] = (ct[:, :k] * ct[:, :k]).sum(0)
    ct2 = None
    if w is not None:
        ct2 = ct * ct  # (d, kp)
        ct2[:, k:] = _PAD_NORM
    idx = torch.empty(n, dtype=torch.int64)
    dist = torch.empty(n, dtype=torch.float32)
    threads = max(1, min(torch.get_num_threads(), n // _MIN_ROWS_PER_THREAD))

    def run(s: int, e: int) -> None:
        lib.vq_nearest(
            x.data_ptr() + s * d * 4, None if w is None else w.data_ptr() + s * d * 4,
            ct.data_ptr(), _ptr(ct2), cn.data_ptr(), e - s, d, kp,
            idx.data_ptr() + s * 8, dist.data_ptr() + s * 4,
        )

    if threads == 1:
        run(0, n)
    else:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vq-nearest")
        bounds = [n * t // threads for t in range(threads + 1)]
        list(_pool.map(lambda t: run(bounds[t], bounds[t + 1]), range(threads)))
    return idx, dist


def kmeans_plusplus(
    x: Tensor, k: int, first: int, w_coord: Tensor | None, w_rows: Tensor | None, generator: torch.Generator | None
) -> Tensor | None:
    """k-means++ seeding on the CPU in C, or ``None`` when the kernel is unavailable.

    The k sequential D^2-sampling steps each touch all n rows with a handful of operations;
    as torch ops every step pays several dispatches and thread wake-ups, which on a busy
    2-core machine made k = 4096 seeding of 2e5 points take 130 s (bench/kmeans.py). Here
    each step is one pass in C. Same sampling rule as the torch version in kmeans.py.
    x: (n, d) float32 CPU; first: index of the first centre; w_coord: None or (n, d) weights of the
    distance; w_rows: None or (n,) weights of the sampling mass. Returns (k, d).
    """
    lib = _load()
    if lib is None or x.device.type != "cpu":
        return None
    x = x.float().contiguous()
    wc = None if w_coord is None else w_coord.float().contiguous()
    wr = None if w_rows is None else w_rows.float().contiguous()
    n, d = x.shape
    centers = torch.empty(k, d, dtype=torch.float32)
    closest = torch.full((n,), float("inf"), dtype=torch.float32)
    total = 0.0
    for j in range(k):
        if j == 0:
            i = first
        elif total <= 0.0 or not math.isfinite(total):  # fewer distinct points than k
            i = int(torch.randint(n, (1,), generator=generator))
        else:
            u = float(torch.rand(1, generator=generator, dtype=torch.float64)) * total
            i = lib.vq_kpp_sample(closest.data_ptr(), _ptr(wr), n, u)
        centers[j] = x[i]
        total = lib.vq_kpp_update(x.data_ptr(), _ptr(wc), centers[j].data_ptr(), _ptr(wr), closest.data_ptr(), n, d)
    return centers

