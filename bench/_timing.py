"""Wall-clock timing shared by the bench scripts (not a bench: imported by them; they run as
scripts from the repo root, so ``bench/`` is on ``sys.path``). GPU timings use
``triton.testing.do_bench`` instead (bench/lut_gpu.py)."""
from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["timed", "race"]


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """(best seconds of ``repeats`` calls of ``fn``, what the last call returned)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def race(ours: Callable[[], Any], peer: Callable[[], Any], rounds: int, inner: int = 1,
         warmup: int = 1) -> tuple[list[float], list[float]]:
    """Seconds per call of ``ours`` and ``peer``, one entry per round, the two interleaved round by
    round (a load burst on a shared machine hits both), after ``warmup`` calls of each. Each round
    times ``inner`` back-to-back calls."""
    for _ in range(warmup):
        ours(), peer()
    t_ours, t_peer = [], []
    for _ in range(rounds):
        for fn, out in ((ours, t_ours), (peer, t_peer)):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) / inner)
    return t_ours, t_peer
