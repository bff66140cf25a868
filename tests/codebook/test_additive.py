"""AdditiveVQ: monotone objective, beats residual VQ at equal bits, exact search scoring,
least squares vs a dense float64 oracle, weights, I/O, errors."""
import pytest
import torch

from vq.codebook import AdditiveVQ, ResidualVQ, load_codec, save_codec
from vq.codebook.additive import additive_beam_search, least_squares_codebooks
from vq.codebook.residual import sum_codewords


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(7)
    basis = torch.randn(3, 8, generator=g)  # correlated data: a 3-d subspace plus noise
    x = torch.randn(3500, 3, generator=g) @ basis + 0.3 * torch.randn(3500, 8, generator=g)
    return x[:2500], x[2500:]


@pytest.fixture(scope="module")
def aq(data):
    return AdditiveVQ(8, 2, 16, niter=6, beam=4, kmeans_niter=15).fit(data[0])


def mse(x, xhat):
    return float(((x - xhat) ** 2).sum(1).mean())


def test_objective_non_increasing(aq):
    h = aq.history
    assert len(h) >= 3
    assert all(b <= a for a, b in zip(h, h[1:])), h
    assert h[-1] < 0.99 * h[0]  # the alternation does real work beyond the residual-VQ start


def test_history_matches_training_error(aq, data):
    """The recorded objective is the training error of the final codebooks (best state kept)."""
    train = data[0]
    assert mse(train, aq.decode(aq.encode(train))) <= aq.history[-1] * 1.02


def test_beats_residual_vq_at_equal_bits(aq, data):
    train, test = data
    rvq = ResidualVQ(8, 2, 16, niter=15).fit(train)
    assert aq.bits_per_vector() == rvq.bits_per_vector() == 8.0
    for x in (train, test):
        e_aq = mse(x, aq.decode(aq.encode(x)))
        assert e_aq <= mse(x, rvq.decode(rvq.encode(x, beam=4)))
        assert e_aq < 0.97 * mse(x, rvq.decode(rvq.encode(x, beam=1)))


def test_beam_search_never_worse_and_exactly_scored():
    g = torch.Generator().manual_seed(2)
    x, books = torch.randn(400, 6, generator=g), torch.randn(3, 7, 6, generator=g)
    start = torch.randint(7, (400, 3), generator=g)
    e0 = ((x - sum_codewords(books, start)) ** 2).sum(1)
    codes, err = additive_beam_search(x, books, start, beam=8, steps=6)
    assert torch.allclose(err, ((x - sum_codewords(books, codes)) ** 2).sum(1), rtol=1e-5, atol=1e-5)
    assert bool((err <= e0 + 1e-5).all())
    combos = torch.cartesian_prod(*[torch.arange(7)] * 3)  # (343, 3): the whole code space
    brute = torch.cdist(x.double(), sum_codewords(books, combos).double()).pow(2).min(1).values
    assert bool((err.double() >= brute - 1e-4).all())
    assert float(err.mean()) < 1.02 * float(brute.mean())  # from random codes to near the optimum


def test_weighted_beam_search_scores_exactly():
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(200, 5, generator=g), torch.rand(200, 5, generator=g)
    books, start = torch.randn(2, 6, 5, generator=g), torch.randint(6, (200, 2), generator=g)
    codes, err = additive_beam_search(x, books, start, beam=3, steps=2, weights=w)
    assert torch.allclose(err, (w * (x - sum_codewords(books, codes)) ** 2).sum(1), rtol=1e-5, atol=1e-5)
    chunked = additive_beam_search(x, books, start, beam=3, steps=2, weights=w, chunk_bytes=10_000)  # 7-row chunks
    assert torch.equal(codes, chunked[0])


@pytest.mark.parametrize("kind", [None, "per-sample", "per-coordinate"])
def test_least_squares_matches_dense_oracle(kind):
    """Reconstructions B C equal those of a dense float64 weighted least-squares solve."""
    g = torch.Generator().manual_seed(5)
    n, d, M, k = 300, 4, 3, 5
    x, codes = torch.randn(n, d, generator=g), torch.randint(k, (n, M), generator=g)
    w = {None: None, "per-sample": torch.rand(n, generator=g) + 0.1, "per-coordinate": torch.rand(n, d, generator=g) + 0.1}[kind]
    B = torch.zeros(n, M * k, dtype=torch.float64)
    B[torch.arange(n)[:, None], codes + torch.arange(M) * k] = 1.0  # one-hot design (n, M k)
    wc = torch.ones(n, d, dtype=torch.float64) if w is None else (w.double()[:, None] if w.dim() == 1 else w.double()).expand(n, d)
    oracle = torch.stack([
        B @ torch.linalg.lstsq(B * wc[:, j : j + 1].sqrt(), x.double()[:, j] * wc[:, j].sqrt(), driver="gelsd").solution for j in range(d)
    ], 1)  # (n, d): per-coordinate weighted least-squares fit
    books = least_squares_codebooks(x, codes, k, torch.zeros(M, k, d), w, ridge=1e-9)
    assert torch.allclose(sum_codewords(books, codes).double(), oracle, atol=1e-4)


def test_weighted_fit_beats_unweighted_on_weighted_objective(data):
    train = data[0][:1500]
    w = torch.ones_like(train)
    w[:, 5:] = 40.0  # the last three coordinates matter most
    def objective(q):
        return float((w * (train - q.decode(q.encode(train, weights=w))) ** 2).sum(1).mean())
    kw = dict(niter=3, beam=2, kmeans_niter=8)
    assert objective(AdditiveVQ(8, 2, 8, **kw).fit(train, weights=w)) < 0.95 * objective(AdditiveVQ(8, 2, 8, **kw).fit(train))


def test_save_load_bit_exact(aq, data, tmp_path):
    save_codec(aq, tmp_path / "aq.safetensors")
    back = load_codec(tmp_path / "aq.safetensors")
    assert isinstance(back, AdditiveVQ) and back.config() == aq.config()
    assert torch.equal(back.codebooks, aq.codebooks)
    assert torch.equal(back.encode(data[1]), aq.encode(data[1]))


def test_bits(aq):
    assert aq.overhead_bits() == 2 * 16 * 8 * 16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=8, codebooks=0, k=4), "codebooks"),
        (dict(dim=8, codebooks=2, k=0), "k must"),
        (dict(dim=8, codebooks=2, k=4, beam=0), "beam"),
        (dict(dim=8, codebooks=2, k=4, ridge=0.0), "ridge"),
        (dict(dim=8, codebooks=4, k=4096), "8192"),
    ],
)
def test_bad_constructor_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdditiveVQ(**kwargs)


def test_bad_inputs(aq, data):
    train = data[0]
    with pytest.raises(ValueError, match="k = 32"):
        AdditiveVQ(8, 2, 32).fit(train[:20])
    with pytest.raises(ValueError, match="dimension"):
        aq.encode(train[:, :4])
    bad = train[:40].clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        AdditiveVQ(8, 2, 4).fit(bad)
    with pytest.raises(ValueError, match="shape"):
        AdditiveVQ(8, 2, 4).fit(train[:40], weights=torch.ones(40, 3))
    with pytest.raises(ValueError, match="out of range"):
        aq.decode(torch.tensor([[16, 0]]))
    with pytest.raises(ValueError, match="shape"):
        aq.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="not fitted"):
        AdditiveVQ(8, 2, 4).decode(torch.zeros(1, 2, dtype=torch.long))
