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

__all__ = ["nearest", "available", "NativeD2"]

_SRC = Path(__file__).parent / "csrc" / "nearest.c"
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=c99", "-fopenmp-simd"]
_MIN_ROWS_PER_THREAD = 2048
_VL = 16  # vector width of csrc/nearest.c (VL)
_PAD_NORM = 1e30


@lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    """One worker pool per thread count, kept for the life of the process."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vq-nearest")


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
        bounds = [n * t // threads for t in range(threads + 1)]
        list(_pool(threads).map(lambda t: run(bounds[t], bounds[t + 1]), range(threads)))
    return idx, dist


class NativeD2:
    """k-means++ step primitives in C (same interface as ``kmeans._TorchD2``).

    The k sequential D^2-sampling steps each touch all n rows with a handful of operations;
    as torch ops every step pays several dispatches and thread wake-ups, which on a busy
    2-core machine made k = 4096 seeding of 2e5 points take 130 s (bench/kmeans.py). Here
    each step is one single-threaded pass in C.
    """

    def __init__(self, lib: ctypes.CDLL, x: Tensor, w_coord: Tensor | None, w_mass: Tensor | None):
        self.lib = lib
        self.x = x.float().contiguous()  # (n, d)
        self.wc = None if w_coord is None else w_coord.float().contiguous()  # (n, d)
        self.wm = None if w_mass is None else w_mass.float().contiguous()  # (n,)
        self.closest = torch.full((x.shape[0],), math.inf, dtype=torch.float32)

    @classmethod
    def create(cls, x: Tensor, w_coord: Tensor | None, w_mass: Tensor | None) -> "NativeD2 | None":
        """The C stepper for CPU tensors, or ``None`` when the kernel is unavailable."""
        lib = _load()
        return None if lib is None or x.device.type != "cpu" else cls(lib, x, w_coord, w_mass)

    def update(self, c: Tensor) -> float:
        """closest = min(closest, D^2 to c); returns the sampling mass sum(closest * w_mass)."""
        c = c.float().contiguous()
        n, d = self.x.shape
        return self.lib.vq_kpp_update(self.x.data_ptr(), _ptr(self.wc), c.data_ptr(), _ptr(self.wm),
                                      self.closest.data_ptr(), n, d)

    def sample(self, target: float) -> int:
        """Smallest i whose cumulative mass exceeds ``target``."""
        return self.lib.vq_kpp_sample(self.closest.data_ptr(), _ptr(self.wm), self.x.shape[0], target)
