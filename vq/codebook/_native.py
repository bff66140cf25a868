"""Optional native CPU kernels for nearest-centroid search and k-means++ seeding (``csrc/nearest.c``).

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

__all__ = ["nearest", "available", "kd_order", "NativeD2"]

_SRC = Path(__file__).parent / "csrc" / "nearest.c"
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=c99", "-fopenmp-simd"]
_MIN_ROWS_PER_THREAD = 2048
_VL = 16  # vector width of csrc/nearest.c (VL)
#: "norm" of the padding centroids: float32's largest value, so a padding column loses to every
#: real centroid whose distance is finite (with 1e30, data near vq.codebook.checks.MAX_ABS_VALUE
#: had real distances above the padding's and got codes >= k)
_PAD_NORM = float(torch.finfo(torch.float32).max)
_KPP_BLOCK = _VL * _VL  # rows per block of 16 leaves in csrc/nearest.c (KPP_BLOCK)


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
    lib.vq_kd_order.argtypes = [p, i64, i64, p]
    lib.vq_kd_order.restype = None
    lib.vq_kpp_seed.argtypes = [p, p, p, i64, i64, i64, i64, p, p]
    lib.vq_kpp_seed.restype = ctypes.c_int
    return lib


def available() -> bool:
    return _load() is not None


def _require_2d(x: Tensor, name: str) -> None:
    """The C kernels index rows of width d and divide by both: an empty or zero-width input would
    crash the process (SIGFPE), so it is refused here. Callers validate values
    (:func:`vq.codebook.checks.check_vectors`) before the kernels see them."""
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) tensor with d >= 1, got shape {tuple(x.shape)}")


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
    _require_2d(x, "x")
    _require_2d(c, "centroids")
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have dimension {c.shape[1]}, x has {x.shape[1]}")
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


def kd_order(x: Tensor) -> Tensor | None:
    """(m,) int64 permutation putting the rows of x (m, d) in k-d order (recursive median splits
    on the widest coordinate down to VL-row leaves, each spatially compact), or ``None`` when
    the kernel is unavailable. Any device (ordered on a CPU copy); O(m d log m)."""
    lib = _load()
    if lib is None:
        return None
    _require_2d(x, "x")
    x = x.detach().float().cpu().contiguous()
    order = torch.arange(x.shape[0], dtype=torch.int64)
    lib.vq_kd_order(x.data_ptr(), x.shape[0], x.shape[1], order.data_ptr())
    return order


class NativeD2:
    """k-means++ seeding in C (same interface as ``kmeans._TorchD2``): the whole loop in one call.

    Each of the k sequential D^2-sampling steps would touch all m rows. As torch ops every step
    pays several dispatches and thread wake-ups (k = 4096 seeding of 2e5 points took 130 s on a
    busy 2-core machine); one C pass per step still paid ctypes and Python per step. Here
    ``vq_kpp_seed`` runs all k steps, VL rows at a time, skipping every VL-row leaf whose
    bounding box is too far from the new centre to lower any of its distances (see
    ``csrc/nearest.c``); that pays off when the rows come in :func:`kd_order`.
    """

    def __init__(self, lib: ctypes.CDLL, x: Tensor, w_coord: Tensor | None, w_mass: Tensor | None):
        self.lib = lib
        m, d = x.shape
        self.m, self.mp = m, -(-m // _KPP_BLOCK) * _KPP_BLOCK
        self.xt = torch.zeros(d, self.mp)  # (d, mp) transposed, zero-padded rows
        self.xt[:, :m] = x.float().T
        self.wt = None
        if w_coord is not None:
            self.wt = torch.zeros(d, self.mp)  # (d, mp)
            self.wt[:, :m] = w_coord.float().T
        self.roww = None
        if w_mass is not None:
            self.roww = torch.zeros(self.mp)  # (mp,) padding carries no mass
            self.roww[:m] = w_mass.float()

    @classmethod
    def create(cls, x: Tensor, w_coord: Tensor | None, w_mass: Tensor | None) -> "NativeD2 | None":
        """The C seeder for CPU tensors, or ``None`` when the kernel is unavailable."""
        lib = _load()
        if lib is None or x.device.type != "cpu":
            return None
        _require_2d(x, "x")
        return cls(lib, x, w_coord, w_mass)

    def seed(self, first: int, u: Tensor) -> Tensor:
        """k-means++ picks (k,) int64 row indices of ``x``, starting at row ``first``; step
        j >= 1 draws with the uniform ``u[j]`` (``u``: (k,) float64 in [0, 1)). Zero mass:
        row floor(u[j] * m)."""
        k = u.numel()
        u = u.double().contiguous()
        picked = torch.empty(k, dtype=torch.int64)  # (k,)
        picked[0] = first
        status = self.lib.vq_kpp_seed(self.xt.data_ptr(), _ptr(self.wt), _ptr(self.roww), self.m, self.mp,
                                      self.xt.shape[0], k, u.data_ptr(), picked.data_ptr())
        if status != 0:
            raise MemoryError(f"k-means++ seeding: no scratch memory for {self.m} rows")
        return picked
