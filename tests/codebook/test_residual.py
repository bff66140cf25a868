"""ResidualVQ: stage ordering, beam search vs greedy and vs brute force, faiss parity, I/O, errors."""
import pytest
import torch

from vq.codebook import ResidualVQ, load_codec, save_codec
from vq.codebook.residual import residual_beam_search, sum_codewords


def mixture(n: int, d: int, seed: int = 0, comps: int = 24) -> torch.Tensor:
    """Seeded Gaussian mixture (n, d) float32: random means, per-component spread."""
    g = torch.Generator().manual_seed(seed)
    mu, spread = torch.randn(comps, d, generator=g) * 3, torch.rand(comps, 1, generator=g) + 0.1
    lab = torch.randint(comps, (n,), generator=g)
    return mu[lab] + torch.randn(n, d, generator=g) * spread[lab]


def mse(x: torch.Tensor, xhat: torch.Tensor) -> float:
    return float(((x - xhat) ** 2).sum(1).mean())


@pytest.fixture
def faiss_one_thread():
    """faiss with one OpenMP thread (busy-waiting threads crawl on a shared 2-core box)."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield faiss
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x = mixture(4000, 8)
    return x[:3000], x[3000:]


@pytest.fixture(scope="module")
def rvq(data):
    return ResidualVQ(8, 3, 16, niter=15, seed=0).fit(data[0])


def test_more_stages_lower_error(data):
    """Stage-wise fitting makes an s-stage codec the first s stages of a longer one."""
    train, test = data
    books = ResidualVQ(8, 4, 16, niter=15).fit(train).codebooks
    assert torch.equal(ResidualVQ(8, 2, 16, niter=15).fit(train).codebooks, books[:2])
    prefixes = [ResidualVQ(8, s, 16).load_state_dict({"codebooks": books[:s]}) for s in (1, 2, 3, 4)]
    errs = [mse(test, q.decode(q.encode(test))) for q in prefixes]
    assert all(b < 0.95 * a for a, b in zip(errs, errs[1:])), errs


def test_beam_not_worse_than_greedy(rvq, data):
    test = data[1]
    eg = ((test - rvq.decode(rvq.encode(test, beam=1))) ** 2).sum(1)
    eb = ((test - rvq.decode(rvq.encode(test, beam=8))) ** 2).sum(1)
    assert bool((eb <= eg + 1e-5).all())  # per vector: the greedy path is kept when it wins
    assert float(eb.mean()) < 0.98 * float(eg.mean())


def test_full_beam_is_exhaustive(data):
    """With beam >= k, two stages are searched exhaustively: equal to brute force over k^2 sums."""
    train, test = data
    q = ResidualVQ(8, 2, 8, niter=10).fit(train)
    combos = torch.cartesian_prod(torch.arange(8), torch.arange(8))  # (64, 2)
    best = torch.cdist(test.double(), q.decode(combos).double()).pow(2).min(1).values
    codes, err = residual_beam_search(test, q.codebooks, beam=8)
    assert torch.allclose(err.double(), best, rtol=1e-4, atol=1e-4)
    assert torch.allclose(((test - q.decode(codes)) ** 2).sum(1).double(), best, rtol=1e-4, atol=1e-4)


def test_weighted_search_is_exhaustive_with_full_beam():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(300, 6, generator=g), torch.rand(300, 6, generator=g)
    books = torch.randn(2, 5, 6, generator=g)
    combos = torch.cartesian_prod(torch.arange(5), torch.arange(5))  # (25, 2)
    rec = sum_codewords(books, combos)  # (25, 6)
    brute = (w[:, None] * (x[:, None] - rec[None]) ** 2).sum(-1).min(1).values  # (300,)
    _, err = residual_beam_search(x, books, beam=5, weights=w)
    assert torch.allclose(err, brute, rtol=1e-4, atol=1e-5)


def test_chunking_does_not_change_results(rvq, data):
    test = data[1]
    a = residual_beam_search(test, rvq.codebooks, beam=4)
    b = residual_beam_search(test, rvq.codebooks, beam=4, chunk_bytes=50_000)  # 28 rows a chunk, ragged end
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_weighted_fit_beats_unweighted_on_weighted_objective(data):
    train = data[0]
    w = torch.ones(8).repeat(train.shape[0], 1)
    w[:, :2] = 50.0  # two coordinates matter much more
    def objective(q):
        return float((w * (train - q.decode(q.encode(train, weights=w))) ** 2).sum(1).mean())
    plain, weighted = ResidualVQ(8, 2, 16, niter=10).fit(train), ResidualVQ(8, 2, 16, niter=10).fit(train, weights=w)
    assert objective(weighted) < 0.9 * objective(plain)


def test_train_beam(data):
    """train_beam=1 is the classic greedy fit; a beam-trained codec is a valid codec too."""
    train, test = data
    assert torch.equal(ResidualVQ(8, 2, 16, niter=5).fit(train).codebooks,
                       ResidualVQ(8, 2, 16, niter=5, beam=4, train_beam=1).fit(train).codebooks)
    q = ResidualVQ(8, 2, 16, niter=5, train_beam=4).fit(train)
    e = [mse(test, q.decode(q.encode(test, beam=b))) for b in (1, 4)]
    assert e[1] <= e[0] < mse(test, torch.zeros_like(test))


def test_within_10_percent_of_faiss(data, faiss_one_thread):
    faiss = faiss_one_thread
    train, test = data
    ref = faiss.ResidualQuantizer(8, 3, 4)  # d=8, M=3 stages, 4 bits = our k=16; default beam 5
    ref.train(train.numpy())
    e_faiss = mse(test, torch.from_numpy(ref.decode(ref.compute_codes(test.numpy()))))
    ours = ResidualVQ(8, 3, 16, niter=20).fit(train)
    for beam in (1, 5):
        assert mse(test, ours.decode(ours.encode(test, beam=beam))) <= 1.1 * e_faiss


def test_save_load_bit_exact(rvq, data, tmp_path):
    save_codec(rvq, tmp_path / "rvq.safetensors")
    back = load_codec(tmp_path / "rvq.safetensors")
    assert isinstance(back, ResidualVQ) and back.config() == rvq.config()
    assert torch.equal(back.codebooks, rvq.codebooks)
    assert torch.equal(back.encode(data[1], beam=4), rvq.encode(data[1], beam=4))


def test_bits(rvq):
    assert rvq.bits_per_vector() == 12.0
    assert rvq.overhead_bits() == 3 * 16 * 8 * 16


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(dim=8, stages=0, k=4), ValueError),
        (dict(dim=8, stages=2, k=0), ValueError),
        (dict(dim=0, stages=2, k=4), ValueError),
        (dict(dim=8, stages=2, k=4, beam=0), ValueError),
        (dict(dim=8, stages=2, k=4, train_beam=0), ValueError),
        (dict(dim=8, stages=2, k=4, backend="cuda"), ValueError),
        (dict(dim=8, stages=2.0, k=4), TypeError),
    ],
)
def test_bad_constructor_args(kwargs, err):
    with pytest.raises(err):
        ResidualVQ(**kwargs)


def test_bad_inputs(rvq, data):
    train = data[0]
    with pytest.raises(ValueError, match="k = 64"):
        ResidualVQ(8, 2, 64).fit(train[:10])
    with pytest.raises(ValueError, match="dimension"):
        rvq.encode(torch.randn(5, 7))
    bad = train[:20].clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ResidualVQ(8, 2, 4).fit(bad)
    with pytest.raises(ValueError, match="shape"):
        ResidualVQ(8, 2, 4).fit(train[:20], weights=torch.ones(19))
    with pytest.raises(ValueError, match="non-negative"):
        ResidualVQ(8, 2, 4).fit(train[:20], weights=-torch.ones(20))
    with pytest.raises(ValueError, match="out of range"):
        rvq.decode(torch.tensor([[0, 1, 16]]))
    with pytest.raises(ValueError, match="shape"):
        rvq.decode(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beam"):
        rvq.encode(train[:5], beam=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        ResidualVQ(8, 2, 4).encode(train[:5])
