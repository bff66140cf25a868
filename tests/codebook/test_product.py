"""ProductVQ: equals KMeans at groups=1, exact product-codebook search, weights, faiss, I/O, errors."""
import pytest
import torch

from vq.codebook import KMeans, ProductVQ, load_codec, save_codec


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(20, 8, generator=g) * 2
    return centers[torch.randint(20, (3000,), generator=g)] + 0.5 * torch.randn(3000, 8, generator=g)


@pytest.fixture(scope="module")
def pq(x):
    return ProductVQ(8, 4, 16, niter=10).fit(x)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_one_group_matches_kmeans(x, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    q = ProductVQ(8, 1, 32, niter=8, seed=5, backend=backend).fit(x)
    km = KMeans(32, niter=8, seed=5, backend=backend).fit(x)
    assert torch.equal(q.codebooks[0], km.centroids)
    assert torch.equal(q.encode(x), km.encode(x))
    assert torch.equal(q.decode(q.encode(x)), km.decode(km.encode(x)))


def test_encode_is_nearest_in_product_codebook(x, pq):
    """Per-group argmin is the exact nearest point of the product codebook: compare to brute force."""
    q = ProductVQ(8, 2, 6, niter=5).fit(x)
    combos = torch.cartesian_prod(torch.arange(6), torch.arange(6))  # (36, 2): the whole codebook
    brute = torch.cdist(x.double(), q.decode(combos).double()).pow(2).min(1).values
    got = ((x - q.decode(q.encode(x))) ** 2).sum(1).double()
    assert torch.allclose(got, brute, rtol=1e-5, atol=1e-5)


def test_decode_layout(pq):
    codes = torch.tensor([[1, 2, 3, 4], [0, 0, 15, 7]])
    xhat = pq.decode(codes)
    for r in range(2):
        for g in range(4):
            assert torch.equal(xhat[r, 2 * g : 2 * g + 2], pq.codebooks[g, codes[r, g]])


@pytest.mark.parametrize("kind", ["per-sample", "per-coordinate"])
def test_weighted_fit_beats_unweighted_on_weighted_objective(x, kind):
    g = torch.Generator().manual_seed(0)
    if kind == "per-sample":
        w = torch.where(torch.rand(x.shape[0], generator=g) < 0.1, 100.0, 1.0)  # 10% of rows matter
        wc = w[:, None].expand_as(x)
    else:
        w = torch.ones_like(x)
        w[:, ::2] = 30.0  # the first coordinate of each 2-d group matters more
        wc = w
    def objective(q):
        return float((wc * (x - q.decode(q.encode(x, weights=w))) ** 2).sum(1).mean())
    plain, weighted = ProductVQ(8, 4, 8, niter=10).fit(x), ProductVQ(8, 4, 8, niter=10).fit(x, weights=w)
    assert objective(weighted) < 0.95 * objective(plain)


def test_group_with_zero_importance_still_fits(x):
    w = torch.ones_like(x)
    w[:, 2:4] = 0.0  # group 1 has no importance anywhere
    q = ProductVQ(8, 4, 8, niter=3).fit(x, weights=w)
    assert torch.isfinite(q.codebooks).all() and q.codebooks[1].unique(dim=0).shape[0] == 8


def test_close_to_faiss_product_quantizer(x):
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # busy-waiting OpenMP threads crawl on a shared 2-core box
    try:
        ref = faiss.ProductQuantizer(8, 4, 4)
        ref.train(x.numpy())
        e_faiss = float(((x - torch.from_numpy(ref.decode(ref.compute_codes(x.numpy())))) ** 2).sum(1).mean())
    finally:
        faiss.omp_set_num_threads(before)
    q = ProductVQ(8, 4, 16, niter=25).fit(x)
    assert float(((x - q.decode(q.encode(x))) ** 2).sum(1).mean()) <= 1.05 * e_faiss


def test_save_load_bit_exact(pq, x, tmp_path):
    save_codec(pq, tmp_path / "pq.safetensors")
    back = load_codec(tmp_path / "pq.safetensors")
    assert isinstance(back, ProductVQ) and back.config() == pq.config()
    assert torch.equal(back.codebooks, pq.codebooks)
    assert torch.equal(back.encode(x), pq.encode(x))


def test_bits(pq):
    assert pq.bits_per_vector() == 16.0
    assert pq.overhead_bits() == 4 * 16 * 2 * 16


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(dim=8, groups=3, k=4), ValueError, "divisible"),
        (dict(dim=8, groups=0, k=4), ValueError, "groups"),
        (dict(dim=8, groups=2, k=0), ValueError, "k must"),
        (dict(dim=8, groups=2, k=4, niter=-1), ValueError, "niter"),
        (dict(dim=8, groups=2, k=4, backend="gpu"), ValueError, "backend"),
        (dict(dim=8, groups=2, k="4"), TypeError, "k must"),
    ],
)
def test_bad_constructor_args(kwargs, err, match):
    with pytest.raises(err, match=match):
        ProductVQ(**kwargs)


def test_bad_inputs(pq, x):
    with pytest.raises(ValueError, match="k = 16"):
        ProductVQ(8, 2, 16).fit(x[:15])
    with pytest.raises(ValueError, match="dimension"):
        pq.encode(x[:, :6])
    with pytest.raises(ValueError, match="empty"):
        pq.encode(x[:0])
    bad = x[:50].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ProductVQ(8, 2, 4).fit(bad)
    with pytest.raises(ValueError, match="shape"):
        ProductVQ(8, 2, 4).fit(x[:50], weights=torch.ones(50, 4))
    with pytest.raises(ValueError, match="non-negative"):
        ProductVQ(8, 2, 4).fit(x[:50], weights=torch.full((50,), -1.0))
    with pytest.raises(TypeError, match="integer"):
        pq.decode(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="out of range"):
        pq.decode(torch.tensor([[0, -1, 0, 0]]))
    with pytest.raises(ValueError, match="codebooks must have shape"):
        ProductVQ(8, 4, 16).load_state_dict({"codebooks": torch.zeros(4, 16, 3)})
