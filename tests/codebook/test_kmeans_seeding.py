"""k-means++ seeding on a sample (vq.codebook.kmeans.kmeans_plusplus) and the C seeder."""
import math

import pytest
import torch

from vq.codebook import KMeans, _native, assign
from vq.codebook import kmeans as km_mod
from vq.codebook.kmeans import _TorchD2, kmeans_plusplus


@pytest.fixture(params=["native", "native-kd", "torch", "torch-kd"])
def seeder(request, monkeypatch):
    """Run a test on both seeders, the C loop and the torch steps, each on the candidates in
    their own order and in k-d order (KPP_WORK = 0 orders every seeding)."""
    if request.param.startswith("native") or request.param.endswith("kd"):
        if not _native.available():
            pytest.skip("no C compiler: native kernel unavailable")
    if request.param.startswith("torch"):
        monkeypatch.setattr(_native.NativeD2, "create", classmethod(lambda *a, **k: None))
    if request.param.endswith("kd"):
        monkeypatch.setattr(km_mod, "KPP_WORK", 0)
    return request.param


def _mixture(n=20000, d=4, centers=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * 5
    lab = torch.randint(centers, (n,), generator=g)
    return mu[lab] + 0.3 * torch.randn(n, d, generator=g)


def _row_index(x, c):
    """(k,) index of each row of c in x (-1 where c's row is not a row of x)."""
    eq = (c[:, None, :] == x[None]).all(-1)  # (k, n)
    return torch.where(eq.any(1), eq.float().argmax(1), torch.full((len(c),), -1))


def _seed_mse(x, c, w=None):
    wf = torch.ones_like(x) if w is None else (w[:, None].expand_as(x) if w.dim() == 1 else w)
    return (wf[:, None] * (x[:, None] - c[None]) ** 2).sum(-1).min(1).values.mean().item()


@pytest.mark.parametrize("sample_size", [300, None, 10**9])
def test_picks_distinct_rows_of_x(sample_size, seeder):
    x = _mixture(n=3000, d=5)
    c = kmeans_plusplus(x, 60, generator=torch.Generator().manual_seed(0), sample_size=sample_size)
    assert c.shape == (60, 5) and c.dtype == torch.float32
    idx = _row_index(x, c)
    assert bool((idx >= 0).all())
    assert torch.unique(idx).numel() == 60


def test_sampled_seeding_stays_inside_its_sample():
    """With sample_size m the picks are rows of the generator's permutation prefix of length m."""
    x = _mixture(n=5000, d=3)
    c = kmeans_plusplus(x, 40, generator=torch.Generator().manual_seed(3), sample_size=200)
    prefix = torch.randperm(5000, generator=torch.Generator().manual_seed(3))[:200]
    assert bool(torch.isin(_row_index(x, c), prefix).all())


@pytest.mark.parametrize("kind", ["rows", "coords"])
def test_zero_weight_rows_are_never_picked(kind, seeder):
    # the zero-weight rows sit far from everything: unweighted D^2 sampling would pick them first
    x = _mixture(n=4000, d=4, seed=1)
    far = torch.arange(4000) % 4 == 0
    x[far] += 1000.0
    g = torch.Generator().manual_seed(1)
    w = torch.rand(4000, generator=g) + 0.1 if kind == "rows" else torch.rand(4000, 4, generator=g) + 0.1
    w[far] = 0.0
    for sample_size in (500, None):
        for seed in range(3):
            c = kmeans_plusplus(x, 50, w, torch.Generator().manual_seed(seed), sample_size=sample_size)
            idx = _row_index(x, c)
            assert bool((idx >= 0).all()) and torch.unique(idx).numel() == 50
            assert not bool(far[idx].any())


def test_per_sample_weight_pulls_centres_to_heavy_rows(seeder):
    # two equal, well separated blobs; weight 50 on one: D^2 * w sampling puts most centres there
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g) + 100.0])
    w = torch.cat([torch.full((2000,), 50.0), torch.ones(2000)])
    heavy = []
    for weights in (None, w):
        c = kmeans_plusplus(x, 40, weights, torch.Generator().manual_seed(0), sample_size=800)
        heavy.append(int((c[:, 0] < 50).sum()))
    assert heavy[1] >= 35 and heavy[1] > heavy[0]


@pytest.mark.parametrize("kind", [None, "rows", "coords"])
def test_deterministic_under_seed(kind, seeder):
    x = _mixture(n=3000, d=4, seed=4)
    g = torch.Generator().manual_seed(4)
    w = None if kind is None else (torch.rand(3000, generator=g) if kind == "rows" else torch.rand(3000, 4, generator=g))
    a = kmeans_plusplus(x, 30, w, torch.Generator().manual_seed(11), sample_size=600)
    b = kmeans_plusplus(x, 30, w, torch.Generator().manual_seed(11), sample_size=600)
    other = kmeans_plusplus(x, 30, w, torch.Generator().manual_seed(12), sample_size=600)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)


@pytest.mark.parametrize("kind", [None, "rows", "coords"])
def test_d2_draw_matches_float64_inverse_cdf(kind, seeder):
    """Step 1 of the seeder picks the smallest i with cumsum(w_i D_i^2) > u * total, D^2 to the
    first centre, over m = 1003 rows (several 256-row blocks and a padded tail), in random row
    order and in k-d order (where the C seeder skips leaves)."""
    g = torch.Generator().manual_seed(5)
    m, d = 1003, 6
    x = torch.randn(m, d, generator=g)
    w = None if kind is None else (torch.rand(m, generator=g) if kind == "rows" else torch.rand(m, d, generator=g))
    w_coord = w if kind == "coords" else None
    w_mass = w if kind == "rows" else None
    order = _native.kd_order(x)
    for perm in [torch.arange(m)] + ([] if order is None else [order]):
        xp = x[perm]
        wc = None if w_coord is None else w_coord[perm]
        wm = None if w_mass is None else w_mass[perm]
        first = int(torch.nonzero(perm == 7)[0, 0])
        d2_ref = (((xp.double() - xp[first].double()) ** 2) * (1.0 if wc is None else wc.double())).sum(1)
        cdf = (d2_ref * (1.0 if wm is None else wm.double())).cumsum(0)
        u = torch.rand(200, generator=g, dtype=torch.float64)
        ref = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(m - 1)
        seeder_obj = _native.NativeD2.create(xp, wc, wm) or _TorchD2(xp, wc, wm)
        zero = torch.zeros((), dtype=torch.float64)
        got = torch.stack([seeder_obj.seed(first, torch.stack([zero, ui]))[1] for ui in u])
        assert (got == ref).float().mean() >= 0.99  # a float32 D^2 may flip a draw on a boundary
        assert bool((got != first).all())


@pytest.mark.parametrize("kind", [None, "rows", "coords"])
def test_every_step_matches_float64_oracle_in_kd_order(kind, seeder):
    """All k steps over k-d ordered rows (where the C seeder skips far leaves): each pick is the
    float64 inverse-CDF draw given the picks before it."""
    g = torch.Generator().manual_seed(13)
    x = _mixture(n=3001, d=3, centers=30, seed=13)
    x = x[_native.kd_order(x)] if _native.available() else x
    w = None if kind is None else (torch.rand(3001, generator=g) if kind == "rows" else torch.rand(3001, 3, generator=g))
    w_coord = w if kind == "coords" else None
    w_mass = w if kind == "rows" else None
    u = torch.rand(60, generator=g, dtype=torch.float64)
    seeder_obj = _native.NativeD2.create(x, w_coord, w_mass) or _TorchD2(x, w_coord, w_mass)
    got = seeder_obj.seed(5, u)
    wc = torch.ones_like(x, dtype=torch.float64) if w_coord is None else w_coord.double()
    closest = torch.full((3001,), math.inf, dtype=torch.float64)
    agree = 0
    for j in range(1, 60):
        closest = torch.minimum(closest, (wc * (x.double() - x[got[j - 1]].double()) ** 2).sum(1))
        cdf = (closest * (1.0 if w_mass is None else w_mass.double())).cumsum(0)
        ref = int(torch.searchsorted(cdf, u[j] * cdf[-1], right=True).clamp_max(3000))
        agree += int(ref == int(got[j]))
    assert agree >= 57  # a float32 D^2 may flip a draw that lands on a boundary
    assert torch.unique(got).numel() == 60


def test_kd_order_is_a_permutation_into_compact_leaves():
    if not _native.available():
        pytest.skip("no C compiler: native kernel unavailable")
    x = _mixture(n=4099, d=3, seed=12)
    order = _native.kd_order(x)
    assert torch.equal(order.sort().values, torch.arange(4099))
    leaves = x[order[:4096]].reshape(256, 16, 3)  # (leaves, VL, d)
    spread = (leaves.amax(1) - leaves.amin(1)).sum(-1).mean()  # mean box size of a 16-row leaf
    rand = x[:4096].reshape(256, 16, 3)
    assert spread < 0.2 * (rand.amax(1) - rand.amin(1)).sum(-1).mean()
    dup = torch.zeros(100, 2)  # identical rows: no split, still a permutation
    assert torch.equal(_native.kd_order(dup).sort().values, torch.arange(100))




def test_native_and_torch_seeders_agree():
    if not _native.available():
        pytest.skip("no C compiler: native kernel unavailable")
    x = _mixture(n=6000, d=5, seed=6)
    x = x[_native.kd_order(x)]  # the order kmeans_plusplus hands both seeders
    g = torch.Generator().manual_seed(6)
    for w in (None, torch.rand(6000, generator=g), torch.rand(6000, 5, generator=g)):
        w_coord = w if (w is not None and w.dim() == 2) else None
        w_mass = w if (w is not None and w.dim() == 1) else None
        u = torch.rand(64, generator=g, dtype=torch.float64)
        a = _native.NativeD2.create(x, w_coord, w_mass).seed(3, u)
        b = _TorchD2(x, w_coord, w_mass).seed(3, u)
        # the same uniforms; float32 sums in another order may flip a near-tie draw, after
        # which the two runs diverge, so the leading picks agree and the seedings' costs too
        assert torch.equal(a[:8], b[:8])
        assert _seed_mse(x, x[a], w) == pytest.approx(_seed_mse(x, x[b], w), rel=0.15)


def test_seeding_cost_well_below_random_rows():
    x = _mixture(n=8000, d=4, centers=80, seed=7)
    rand = [_seed_mse(x, x[torch.randperm(8000, generator=torch.Generator().manual_seed(s))[:80]]) for s in range(3)]
    for sample_size in (640, None):
        pp = [_seed_mse(x, kmeans_plusplus(x, 80, generator=torch.Generator().manual_seed(s), sample_size=sample_size))
              for s in range(3)]
        assert max(pp) < 0.5 * min(rand)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_default_fit_beats_random_init_on_clustered_data(backend, monkeypatch):
    """KMeans's default seeding (k-means++ on a sample: KPP_WORK = 0 forces the 8 k-row sample
    at this size) ends at a lower MSE than init='random' after the same Lloyd iterations."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    monkeypatch.setattr(km_mod, "KPP_WORK", 0)
    assert km_mod._seeding_sample_size(20000, 150, 4) == 1200
    x = _mixture(n=20000, d=4, centers=150, seed=8)
    for seed in range(2):
        pp = KMeans(150, niter=8, backend=backend, seed=seed).fit(x)
        rnd = KMeans(150, niter=8, backend=backend, init="random", seed=seed).fit(x)
        mse_pp, mse_rnd = (float(assign(x, m.centroids)[1].mean()) for m in (pp, rnd))
        assert mse_pp < 0.8 * mse_rnd


def test_weighted_default_fit_beats_random_init(monkeypatch):
    monkeypatch.setattr(km_mod, "KPP_WORK", 0)
    x = _mixture(n=12000, d=4, centers=100, seed=9)
    w = torch.rand(12000, 4, generator=torch.Generator().manual_seed(9)) + 0.05

    def obj(c):
        return float(assign(x, c, weights=w)[1].sum())

    pp = KMeans(100, niter=8, seed=0).fit(x, weights=w)
    rnd = KMeans(100, niter=8, init="random", seed=0).fit(x, weights=w)
    assert obj(pp.centroids) < 0.8 * obj(rnd.centroids)


def test_fewer_distinct_rows_than_k_still_returns_rows_of_x(seeder):
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]).repeat(40, 1)
    c = kmeans_plusplus(x, 5, generator=torch.Generator().manual_seed(0))
    assert c.shape == (5, 2) and bool((_row_index(x, c) >= 0).all())
    assert torch.unique(c, dim=0).shape[0] == 3  # all three distinct points, then repeats


def test_sample_size_rule():
    f = km_mod._seeding_sample_size
    assert f(3000, 40, 5) == 3000  # cheap: exact k-means++ over every row
    assert f(200_000, 4096, 8) == 8 * 4096  # the shape: 8 rows per centre
    assert f(100, 50, 2) == 100
    assert f(10**6, 256, 4) == km_mod.KPP_WORK // (256 * 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_seeding_picks_distinct_rows():
    x = _mixture(n=3000, d=5).cuda()
    c = kmeans_plusplus(x, 60, generator=torch.Generator().manual_seed(0), sample_size=600)
    assert c.device.type == "cuda"
    idx = _row_index(x.cpu(), c.cpu())
    assert bool((idx >= 0).all()) and torch.unique(idx).numel() == 60


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: kmeans_plusplus(torch.randn(5, 2), 6), ValueError, "k must be <= 5"),
        (lambda: kmeans_plusplus(torch.randn(5, 2), 0), ValueError, "k must be >= 1"),
        (lambda: kmeans_plusplus(torch.randn(5, 2), 2.0), TypeError, "k must be an int"),
        (lambda: kmeans_plusplus(torch.randn(50, 2), 10, sample_size=5), ValueError, "sample_size must be >= 10"),
        (lambda: kmeans_plusplus(torch.randn(50, 2), 10, sample_size=20.0), TypeError, "sample_size must be an int"),
        (lambda: kmeans_plusplus(torch.randn(50, 2), 3, torch.ones(49)), ValueError, "weights must have shape"),
        (lambda: kmeans_plusplus(torch.randn(50, 2), 3, -torch.ones(50)), ValueError, "non-negative"),
        (lambda: kmeans_plusplus(torch.randn(50, 2), 3, torch.zeros(50, 2)), ValueError, "all zero"),
        (lambda: kmeans_plusplus(torch.full((50, 2), math.nan), 3), ValueError, "NaN or Inf"),
        (lambda: kmeans_plusplus(torch.randn(50), 3), ValueError, r"shape \(n, d\)"),
        (lambda: kmeans_plusplus(torch.ones(50, 2, dtype=torch.int64), 3), TypeError, "floating-point"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_no_compiler_seeds_on_the_torch_path(run_without_compiler):
    code = (
        "import torch; from vq.codebook import _native; from vq.codebook.kmeans import kmeans_plusplus;"
        "x = torch.randn(3000, 4); c = kmeans_plusplus(x, 50, generator=torch.Generator().manual_seed(0), sample_size=400);"
        "rows = (c[:, None] == x[None]).all(-1).any(1);"
        "print(_native.available(), _native.kd_order(x) is None, bool(rows.all()), torch.unique(c, dim=0).shape[0])"
    )
    assert run_without_compiler(code) == "False True True 50"
