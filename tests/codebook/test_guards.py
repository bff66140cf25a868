"""Inputs that used to kill the process in faiss or the native kernels now raise ``ValueError``.

Zero-width input reached integer divisions in C (SIGFPE); finite values near 1e18 make float32
squared distances overflow, after which faiss aborts on an uncaught C++ exception (SIGABRT) and
the native kernel returned codes >= k. The crashing cases run in one child process, so a
regression shows as failed tests here, not a dead test runner.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vq.codebook import _native
from vq.codebook.checks import MAX_ABS_VALUE, check_vectors
from vq.codebook.kmeans import KMeans, assign

try:
    import faiss  # noqa: F401
except ImportError:
    faiss = None

# name -> (statement run in the child, a fragment the ValueError message must hold)
CASES = {
    "fit-auto-zero-width": ("KMeans(4).fit(torch.zeros(10, 0))", "empty"),
    "fit-torch-zero-width": ("KMeans(4, backend='torch').fit(torch.zeros(10, 0))", "empty"),
    "fit-auto-zero-rows": ("KMeans(4).fit(torch.zeros(0, 3))", "empty"),
    "fit-auto-5e18": ("KMeans(4).fit(torch.randn(400, 4) * 5e18)", "at most 1e+15"),
    "fit-torch-1e18": ("KMeans(4, backend='torch').fit(torch.randn(400, 4) * 1e18)", "at most 1e+15"),
    "fit-float64-1e18": ("KMeans(4).fit(torch.randn(400, 4, dtype=torch.float64) * 1e18)", "at most 1e+15"),
    "fit-nan": ("KMeans(4).fit(torch.full((40, 4), float('nan')))", "NaN or Inf"),
    "assign-zero-width": ("assign(torch.zeros(10, 0), torch.zeros(4, 0))", "empty"),
    "assign-x-1e18": ("assign(torch.randn(100, 4) * 1e18, torch.randn(4, 4))", "x has values"),
    "assign-centroids-1e18": ("assign(torch.randn(100, 4), torch.randn(4, 4) * 1e18)", "centroids has values"),
    "kmeans++-1e18": ("kmeans_plusplus(torch.randn(100, 4) * 1e18, 4)", "at most 1e+15"),
    "native-nearest-zero-width": ("_native.nearest(torch.zeros(5, 0), torch.zeros(3, 0))", "d >= 1"),
    "native-kd-order-zero-width": ("_native.kd_order(torch.zeros(5, 0))", "d >= 1"),
    "fit-weights-overflow": ("KMeans(4).fit(torch.randn(400, 4) * 1e14, weights=torch.full((400, 4), 1e30))",
                             "overflow float32 weighted distances"),
    "fit-weights-overflow-rows": ("KMeans(4).fit(torch.randn(400, 4) * 1e14, weights=torch.full((400,), 1e30))",
                                  "rescale the weights"),
    "layer-init-5e18": ("VectorQuantizer(8, 16).train()(torch.randn(4, 256, 8) * 5e18)", "at most 1e+15"),
}
if faiss is not None:
    CASES["fit-faiss-zero-width"] = ("KMeans(4, backend='faiss').fit(torch.zeros(10, 0))", "empty")
    CASES["fit-faiss-5e18"] = ("KMeans(4, backend='faiss').fit(torch.randn(400, 4) * 5e18)", "at most 1e+15")

_CHILD = textwrap.dedent("""
    import json, sys, torch
    from vq.codebook import _native
    from vq.codebook.kmeans import KMeans, assign, kmeans_plusplus
    from vq_tokenizers.layers import VectorQuantizer
    torch.manual_seed(0)
    for name, stmt in json.loads(sys.argv[1]).items():
        if name.startswith("native-") and not _native.available():
            result = "skip"
        else:
            try:
                exec(stmt)
                result = "no error"
            except ValueError as e:
                result = "ValueError: " + str(e)
            except Exception as e:  # noqa: BLE001 — reported to the parent test
                result = type(e).__name__ + ": " + str(e)
        print(json.dumps([name, result]), flush=True)
""")


@pytest.fixture(scope="module")
def child_results() -> tuple[dict[str, str], subprocess.CompletedProcess]:
    stmts = {name: stmt for name, (stmt, _) in CASES.items()}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(stmts)], capture_output=True, text=True,
                          timeout=300, env=env)
    results = dict(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    return results, proc


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_value_error_not_crash(name, child_results):
    results, proc = child_results
    if name not in results:
        pytest.fail(f"the child process died (exit {proc.returncode}) before or at case {name!r}: "
                    f"{proc.stderr[-2000:]}")
    if results[name] == "skip":
        pytest.skip("native kernel not available")
    assert results[name].startswith("ValueError: "), results[name]
    assert CASES[name][1] in results[name], results[name]


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss is not None else []))
def test_values_at_the_bound_give_valid_codes(backend):
    """Uniform data filling [-MAX_ABS_VALUE, MAX_ABS_VALUE] in d = 64: finite distances, codes < k
    (with the native kernel's old padding norm of 1e30 the padding columns won: codes == k)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3000, 64, generator=g) * 2 - 1) * MAX_ABS_VALUE
    km = KMeans(8, niter=3, backend=backend).fit(x)
    idx, dist = assign(x, km.centroids)
    assert int(idx.min()) >= 0 and int(idx.max()) < 8
    assert bool(torch.isfinite(dist).all())
    # the fitted codebook is better than one centroid at the mean
    assert km.inertia < float(((x - x.mean(0)) ** 2).sum(dtype=torch.float64))


def test_moderate_weights_still_fit():
    """Hessian-like weights (1e6) on unit-scale data are far from the weighted-distance bound."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g)
    km = KMeans(4, niter=3, backend="torch").fit(x, weights=torch.rand(500, 4, generator=g) * 1e6)
    assert bool(torch.isfinite(km.centroids).all()) and km.inertia < float("inf")


def test_bound_is_inclusive_and_message_names_the_argument():
    check_vectors(torch.full((2, 3), -MAX_ABS_VALUE), name="w")
    with pytest.raises(ValueError, match=r"^w has values of magnitude up to 2e\+15; at most 1e\+15"):
        check_vectors(torch.full((2, 3), 2 * MAX_ABS_VALUE), name="w")
    with pytest.raises(ValueError, match="w contains NaN or Inf"):
        check_vectors(torch.tensor([[1.0, float("inf")]]), name="w")


@pytest.mark.skipif(faiss is None, reason="faiss not installed")
def test_faiss_exception_becomes_python_error_with_context(monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("Error in faiss::Clustering::train: simulated")

    monkeypatch.setattr(faiss.Kmeans, "train", boom)
    with pytest.raises(RuntimeError, match=r"faiss k-means \(k=4, n=50, d=3\) failed: .*simulated"):
        KMeans(4, backend="faiss").fit(torch.randn(50, 3))
