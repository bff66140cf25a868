import math

import pytest
import torch

from vq.codebook import KMeans, _native, assign, assign_excluding, load_codec, save_codec

faiss = pytest.importorskip("faiss")


@pytest.fixture(params=["native", "chunked"])
def path(request, monkeypatch):
    """Run a test on both CPU search paths: the fused native kernel and pure-torch chunks."""
    if request.param == "native":
        if not _native.available():
            pytest.skip("no C compiler: native kernel unavailable")
    else:
        monkeypatch.setattr(_native, "nearest", lambda *a, **k: None)
    return request.param


def _mixture(n=6000, d=8, centers=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * 4
    lab = torch.randint(centers, (n,), generator=g)
    return mu[lab] + torch.randn(n, d, generator=g) * torch.rand(d, generator=g)


def _mse(x, c):
    return ((x[:, None] - c[None]) ** 2).sum(-1).min(1).values.mean().item()


@pytest.mark.parametrize("n,d,k", [(5000, 4, 64), (3000, 16, 100), (777, 3, 17)])
def test_assign_matches_brute_force_and_faiss(n, d, k, path):
    g = torch.Generator().manual_seed(n)
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    idx, dist = assign(x, c, chunk_bytes=4096)  # tiny chunks exercise the loop
    ref = ((x.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    best = ref.min(1).values
    # exact up to float32 ties: the chosen centroid is optimal within rounding
    assert torch.allclose(ref.gather(1, idx[:, None])[:, 0], best, rtol=1e-5, atol=1e-5)
    assert torch.allclose(dist.double(), best, rtol=1e-4, atol=1e-4)
    index = faiss.IndexFlatL2(d)
    index.add(c.numpy())
    _, fi = index.search(x.numpy(), 1)
    assert (idx.numpy() == fi[:, 0]).mean() > 0.999


def test_assign_per_coordinate_weights_brute_force(path):
    g = torch.Generator().manual_seed(1)
    x, c, w = torch.randn(500, 6, generator=g), torch.randn(33, 6, generator=g), torch.rand(500, 6, generator=g)
    idx, dist = assign(x, c, weights=w)
    ref = (w.double()[:, None] * (x.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    assert torch.allclose(ref.gather(1, idx[:, None])[:, 0], ref.min(1).values, rtol=1e-5, atol=1e-6)
    assert torch.allclose(dist.double(), ref.min(1).values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_mse_within_one_percent_of_faiss(backend, path):
    x = _mixture()
    k = 64
    ours = KMeans(k, niter=20, backend=backend, init="k-means++", seed=0).fit(x)
    theirs = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, max_points_per_centroid=10**6)
    theirs.train(x.numpy())
    ours_mse, faiss_mse = _mse(x, ours.centroids), _mse(x, torch.from_numpy(theirs.centroids))
    assert ours_mse <= faiss_mse * 1.01
    assert math.isclose(ours.inertia / len(x), ours_mse, rel_tol=1e-4)


def test_lloyd_objective_monotone_and_seeded_determinism():
    x = _mixture(seed=3)
    a = KMeans(32, niter=15, backend="torch", seed=7).fit(x)
    b = KMeans(32, niter=15, backend="torch", seed=7).fit(x)
    assert torch.equal(a.centroids, b.centroids)
    h = a.history + [a.inertia]
    assert all(h[i + 1] <= h[i] * (1 + 1e-6) for i in range(len(h) - 1))


@pytest.mark.parametrize("kind", ["rows", "coords"])
def test_weighted_kmeans_beats_unweighted_on_weighted_objective(kind, path):
    x = _mixture(n=4000, d=4, centers=60, seed=5)
    g = torch.Generator().manual_seed(5)
    w = torch.rand(len(x), generator=g) ** 4 if kind == "rows" else torch.rand(len(x), 4, generator=g) ** 4
    wf = w[:, None].expand_as(x) if kind == "rows" else w

    def weighted_obj(c):
        return (wf[:, None] * (x[:, None] - c[None]) ** 2).sum(-1).min(1).values.sum().item()

    plain = KMeans(16, niter=25, backend="torch", seed=0).fit(x)
    weighted = KMeans(16, niter=25, backend="torch", seed=0).fit(x, weights=w)
    assert weighted_obj(weighted.centroids) < weighted_obj(plain.centroids)
    if kind == "rows":  # faiss takes per-sample weights too
        fw = KMeans(16, niter=25, backend="faiss", seed=0).fit(x, weights=w)
        assert weighted_obj(fw.centroids) < weighted_obj(plain.centroids)


def test_empty_clusters_are_repaired():
    # 3 distinct points repeated; k = 3 with random init on duplicates would leave empties
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]).repeat(50, 1)
    km = KMeans(3, niter=10, init="random", backend="torch", seed=1).fit(x)
    assert km.inertia == pytest.approx(0.0, abs=1e-6)


def test_encode_decode_and_save_load_roundtrip(tmp_path):
    x = _mixture(n=2000)
    km = KMeans(32, niter=5, seed=0).fit(x)
    codes = km.encode(x)
    assert codes.shape == (2000, 1) and codes.dtype == torch.int64
    assert torch.equal(km.decode(codes), km.centroids[codes[:, 0]])
    save_codec(km, tmp_path / "km.safetensors")
    back = load_codec(tmp_path / "km.safetensors")
    assert torch.equal(back.centroids, km.centroids) and back.config() == km.config()
    assert torch.equal(back.encode(x), codes)


def test_chunked_memory_bound_any_n(path):
    # n * k * 4 bytes would be 400 MB unchunked; a 1 MiB budget must give identical codes
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(100_000, 4, generator=g), torch.randn(1000, 4, generator=g)
    a, _ = assign(x[:5000], c, chunk_bytes=2**20)
    b, _ = assign(x[:5000], c, chunk_bytes=2**26)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: KMeans(10).fit(torch.randn(5, 2)), "larger than the number of vectors"),
        (lambda: KMeans(2).fit(torch.tensor([[0.0, float("nan")], [1.0, 1.0], [2.0, 2.0]])), "NaN or Inf"),
        (lambda: KMeans(2).fit(torch.tensor([[0.0, float("inf")], [1.0, 1.0], [2.0, 2.0]])), "NaN or Inf"),
        (lambda: KMeans(2).fit(torch.randn(10)), r"shape \(n, d\)"),
        (lambda: KMeans(2).fit(torch.empty(0, 3)), "empty"),
        (lambda: KMeans(2).fit(torch.randn(10, 3), weights=torch.ones(9)), "weights must have shape"),
        (lambda: KMeans(2).fit(torch.randn(10, 3), weights=-torch.ones(10)), "non-negative"),
        (lambda: KMeans(0), "positive int"),
        (lambda: KMeans(2, init="bogus"), "init must be"),
        (lambda: KMeans(2, backend="bogus"), "backend must be"),
        (lambda: KMeans(2, backend="faiss").fit(torch.randn(10, 3), weights=torch.ones(10, 3)), "per-sample"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_and_codes():
    km = KMeans(4, niter=2).fit(torch.randn(50, 3))
    with pytest.raises(TypeError, match="floating-point"):
        km.encode(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="dimension 2, expected 3"):
        km.encode(torch.randn(5, 2))
    with pytest.raises(ValueError, match="out of range"):
        km.decode(torch.tensor([[4]]))
    with pytest.raises(TypeError, match="integer"):
        km.decode(torch.tensor([[1.0]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        KMeans(4).encode(torch.randn(5, 3))


def test_native_and_chunked_paths_agree():
    if not _native.available():
        pytest.skip("no C compiler: native kernel unavailable")
    g = torch.Generator().manual_seed(2)
    for n, d, k in [(1, 1, 1), (7, 5, 3), (1000, 8, 17), (513, 70, 300)]:  # tails of every tile
        x, c, w = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g), torch.rand(n, d, generator=g)
        for weights in (None, w):
            ni, nd = _native.nearest(x, c, weights)
            ref = ((x.double()[:, None] - c.double()[None]) ** 2 * (1 if weights is None else weights.double()[:, None])).sum(-1)
            assert torch.allclose(ref.gather(1, ni[:, None])[:, 0], ref.min(1).values, rtol=1e-5, atol=1e-5)
            assert torch.allclose(nd.double(), ref.min(1).values, rtol=1e-4, atol=1e-4)


def test_native_ties_pick_smallest_index():
    if not _native.available():
        pytest.skip("no C compiler: native kernel unavailable")
    c = torch.zeros(40, 3)  # all centroids identical: argmin must be 0, like torch.argmin
    idx, _ = _native.nearest(torch.randn(10, 3), c)
    assert torch.equal(idx, torch.zeros(10, dtype=torch.int64))


def test_no_compiler_falls_back_to_pure_torch(tmp_path, run_without_compiler):
    code = (
        "import torch; from vq.codebook import _native, assign;"
        "x = torch.randn(100, 3); i, _ = assign(x, x[:7]);"
        "print(_native.available(), bool((i[:7] == torch.arange(7)).all()))"
    )
    assert run_without_compiler(code) == "False True"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", [None, "rows", "coords"])
def test_kmeans_plusplus_native_matches_torch(kind, monkeypatch):
    """The C seeding loop follows the torch one draw for draw (same generator stream)."""
    if not _native.available():
        pytest.skip("no C compiler: native kernel unavailable")
    from vq.codebook.kmeans import kmeans_plusplus

    x = _mixture(n=3000, d=5, seed=9)
    g = torch.Generator().manual_seed(4)
    w = None if kind is None else (torch.rand(3000, generator=g) if kind == "rows" else torch.rand(3000, 5, generator=g))
    fast = kmeans_plusplus(x, 40, w, torch.Generator().manual_seed(1))
    monkeypatch.setattr(_native.NativeD2, "create", classmethod(lambda *a, **k: None))
    slow = kmeans_plusplus(x, 40, w, torch.Generator().manual_seed(1))
    assert torch.equal(fast[0], slow[0])
    # both are rows of x, distinct; the seedings' objectives agree (the draws follow the same
    # generator stream, but float32 sums in another order may flip a near-tie draw)
    assert torch.unique(fast, dim=0).shape[0] == 40
    assert bool((fast[:, None, :] == x[None]).all(-1).any(1).all())
    wf = torch.ones_like(x) if w is None else (w[:, None].expand_as(x) if w.dim() == 1 else w)
    obj = [(wf[:, None] * (x[:, None] - c[None]) ** 2).sum(-1).min(1).values.sum().item() for c in (fast, slow)]
    assert obj[0] == pytest.approx(obj[1], rel=0.15)


def test_assign_excluding_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(900, 5, generator=g), torch.randn(37, 5, generator=g)
    own, _ = assign(x, c)
    exclude = torch.where(torch.arange(900) % 3 == 0, own, torch.randint(37, (900,), generator=g))
    idx, dist = assign_excluding(x, c, exclude, chunk_bytes=4096)  # tiny chunks exercise the loop
    ref = ((x.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    ref[torch.arange(900), exclude] = math.inf
    assert not bool((idx == exclude).any())
    assert torch.allclose(ref.gather(1, idx[:, None])[:, 0], ref.min(1).values, rtol=1e-5, atol=1e-5)
    assert torch.allclose(dist.double(), ref.min(1).values, rtol=1e-4, atol=1e-4)
    # excluding the own code of rows that sit on it: the second-nearest, never the same point
    assert bool((dist[::3] >= assign(x[::3], c)[1] - 1e-5).all())


def test_assign_excluding_bad_input():
    x, c = torch.randn(10, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="exclude must be a tensor of shape"):
        assign_excluding(x, c, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude out of range"):
        assign_excluding(x, c, torch.full((10,), 4))
    with pytest.raises(TypeError, match="integer"):
        assign_excluding(x, c, torch.zeros(10))
    with pytest.raises(ValueError, match=">= 2 centroids"):
        assign_excluding(x, c[:1], torch.zeros(10, dtype=torch.long))


# -- options for refining a codebook one holds: warm start, all_reduce, ELBG, empty, spherical ----
@pytest.mark.parametrize("kind", [None, "coords"])
def test_warm_start_continues_a_fit_exactly(kind, tmp_path):
    """a iterations, then a warm start from those centroids for b more == a + b iterations."""
    x = _mixture(n=3000, d=5, seed=11)
    w = None if kind is None else torch.rand(3000, 5, generator=torch.Generator().manual_seed(1))
    full = KMeans(24, niter=9, init="random", backend="torch", seed=2).fit(x, weights=w)
    first = KMeans(24, niter=4, init="random", backend="torch", seed=2).fit(x, weights=w)
    rest = KMeans(24, niter=5, init=first.centroids, backend="torch").fit(x, weights=w)
    assert torch.equal(rest.centroids, full.centroids)
    assert first.history + rest.history == full.history and rest.inertia == full.inertia
    # init=None continues from the centroids a KMeans holds, e.g. loaded from a file
    save_codec(KMeans(24, niter=5, init=first.centroids, backend="torch"), tmp_path / "warm.safetensors")
    back = load_codec(tmp_path / "warm.safetensors")
    assert back.init is None
    assert torch.equal(back.fit(x, weights=w).centroids, full.centroids)


def test_warm_start_fits_fewer_vectors_than_clusters_and_keeps_empty_ones():
    g = torch.Generator().manual_seed(0)
    c0, x = torch.randn(64, 3, generator=g), torch.randn(10, 3, generator=g)
    km = KMeans(64, niter=1, init=c0, empty="keep").fit(x)  # 10 vectors, 64 clusters
    idx = ((x[:, None] - c0[None]) ** 2).sum(-1).argmin(1)  # brute-force assignment to c0
    for j in range(64):
        ref = x[idx == j].mean(0) if (idx == j).any() else c0[j]
        assert torch.allclose(km.centroids[j], ref, atol=1e-6)
    n_empty = int((idx.bincount(minlength=64) == 0).sum())
    assert n_empty >= 54 and int((km.centroids == c0).all(1).sum()) == n_empty
    # the default re-seeds empty clusters on the 10 points (all of them: fewer points than empties)
    reseeded = KMeans(64, niter=1, init=c0).fit(x).centroids
    assert int((reseeded == c0).all(1).sum()) == n_empty - 10
    assert bool((reseeded[:, None] == x[None]).all(-1).any(0).all())


def _shard_fits(shards, **options):
    """One KMeans per shard, in lockstep threads; all_reduce sums the shards' tensors (a 2-rank
    all-reduce without processes). Returns the fitted KMeans, one per shard."""
    import threading

    barrier, box = threading.Barrier(len(shards)), [None] * len(shards)
    calls = [0] * len(shards)

    def hook_for(r):
        def hook(t):
            calls[r] += 1
            box[r] = t.clone()
            barrier.wait()
            total = sum(box)
            barrier.wait()
            return total
        return hook

    kms = [KMeans(all_reduce=hook_for(r), **options) for r in range(len(shards))]
    threads = [threading.Thread(target=km.fit, args=(s,)) for km, s in zip(kms, shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return kms, calls


def test_all_reduce_hook_gives_the_centroids_of_one_fit_on_all_shards():
    x = _mixture(n=5000, d=6, centers=30, seed=4)
    c0 = x[torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:30]]
    one = KMeans(30, niter=8, init=c0, empty="keep").fit(x)
    (a, b), calls = _shard_fits([x[:1800], x[1800:]], k=30, niter=8, init=c0, empty="keep")
    assert torch.equal(a.centroids, b.centroids)  # every rank the same centroids
    assert a.history == b.history and a.inertia == b.inertia
    assert calls == [9, 9]  # one collective per iteration, one for the final objective
    assert torch.allclose(a.centroids, one.centroids, atol=1e-5)
    assert a.history == pytest.approx(one.history, rel=1e-6) and a.inertia == pytest.approx(one.inertia, rel=1e-6)


def _outlier_trap(seed=0):
    """32 tight clusters of 100 points + 16 far outliers; start: the 16 outliers and 16 of the
    32 cluster centres (Lloyd alone never leaves that trap)."""
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(32, 8, generator=g)
    outliers = 40 + torch.randn(16, 8, generator=g)
    x = torch.cat([centers.repeat_interleave(100, 0) + 0.1 * torch.randn(3200, 8, generator=g), outliers])
    return x, torch.cat([outliers, centers[:16]])  # (3216, 8), (32, 8)


def test_elbg_beats_lloyd_on_the_outlier_trap():
    x, c0 = _outlier_trap()
    plain = KMeans(32, niter=9, init=c0, empty="keep").fit(x)
    moved = KMeans(32, niter=9, init=c0, empty="keep", split=0.25).fit(x)
    assert plain.n_moved == 0 and moved.n_moved > 0
    assert moved.inertia < 0.5 * plain.inertia
    tail = moved.history[-3:] + [moved.inertia]  # the last ceil(9 / 3) iterations are plain Lloyd
    assert all(b <= a * (1 + 1e-6) for a, b in zip(tail, tail[1:]))
    # brute force: every cluster now holds more than a single outlier, most hold ~100 points
    counts = ((x[:, None] - moved.centroids[None]) ** 2).sum(-1).argmin(1).bincount(minlength=32)
    assert int((counts == 1).sum()) < 16


def test_elbg_with_all_reduce_matches_one_process_and_agrees_across_ranks():
    x, c0 = _outlier_trap(seed=1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(2))
    one = KMeans(32, niter=9, init=c0, empty="keep", split=0.25).fit(x)
    (a, b), calls = _shard_fits([x[perm[:1000]], x[perm[1000:]]], k=32, niter=9, init=c0, empty="keep", split=0.25)
    assert torch.equal(a.centroids, b.centroids) and a.n_moved == b.n_moved == one.n_moved > 0
    assert calls == [10 + 6, 10 + 6]  # 9 + 1 as above, plus one per ELBG iteration (9 - ceil(9 / 3) = 6)
    assert a.inertia == pytest.approx(one.inertia, rel=1e-4)


def test_spherical_keeps_unit_centroids_and_never_raises_the_objective():
    x = torch.nn.functional.normalize(_mixture(n=3000, d=4, seed=6), dim=1)
    km = KMeans(20, niter=10, init=x[:20], spherical=True, empty="keep").fit(x)
    assert torch.allclose(km.centroids.norm(dim=1), torch.ones(20), atol=1e-6)
    h = km.history + [km.inertia]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(h, h[1:])) and h[-1] < 0.8 * h[0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: KMeans(4, init=torch.randn(3, 2)), r"init must have shape \(4, d\)"),
        (lambda: KMeans(4, init=torch.randn(4)), r"init must have shape \(n, d\)"),
        (lambda: KMeans(2, init=torch.tensor([[0.0, float("nan")], [1.0, 1.0]])), "init contains NaN"),
        (lambda: KMeans(2, init=torch.randn(2, 3), dim=4), "init has dimension 3, expected 4"),
        (lambda: KMeans(2, init=torch.randn(2, 3)).fit(torch.randn(10, 4)), "x has dimension 4, expected 3"),
        (lambda: KMeans(2, init=None).fit(torch.randn(10, 4)), "holds none"),
        (lambda: KMeans(2, init="bogus"), "init must be"),
        (lambda: KMeans(2, split=-0.1), "split must be"),
        (lambda: KMeans(2, split=0.6), "split must be"),
        (lambda: KMeans(2, split=float("nan")), "split must be"),
        (lambda: KMeans(2, split="0.1"), "split must be"),
        (lambda: KMeans(2, split=0.1, split_share=-1.0), "split_share must be"),
        (lambda: KMeans(2, split=0.1).fit(torch.randn(10, 3), weights=torch.ones(10)), "unweighted"),
        (lambda: KMeans(2, empty="bogus"), "empty must be"),
        (lambda: KMeans(2, all_reduce=lambda t: t, empty="keep"), "needs a warm start"),
        (lambda: KMeans(2, init=torch.randn(2, 3), all_reduce=lambda t: t), "empty='keep'"),
        (lambda: KMeans(2, init=torch.randn(2, 3), all_reduce=3, empty="keep"), "callable"),
        (lambda: KMeans(2, init=torch.randn(2, 3), all_reduce=lambda t: None, empty="keep").fit(torch.randn(10, 3)),
         "all_reduce must return"),
        (lambda: KMeans(2, backend="faiss", split=0.1).fit(torch.randn(10, 3)), "faiss backend takes none"),
        (lambda: KMeans(2, init=torch.randn(2, 3), backend="faiss").fit(torch.randn(10, 3)), "faiss backend takes none"),
    ],
)
def test_refinement_options_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
