"""SimVQ codebook: C = frozen basis @ learned W."""
import pytest
import torch

from vq.codebook import KMeans, SimVQCodebook, load_codec, save_codec
from vq.codebook.simvq import simvq_basis, simvq_codebook, simvq_solve_w


def _data(n=1500, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(20, d, generator=g) * 3
    return centers[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, d, generator=g) * 0.5


def test_fit_lowers_mse_monotonically():
    x = _data()
    s = SimVQCodebook(6, 32, rank=4, seed=1, niter=15).fit(x)
    h = s.history
    assert len(h) >= 2 and h[-1] < h[0]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(h, h[1:]))  # alternating LS never increases
    xhat = s.decode(s.encode(x))
    assert float(((x - xhat) ** 2).mean()) == pytest.approx(h[-1], rel=1e-4)


def test_codebook_is_basis_times_w_and_basis_is_frozen():
    x = _data()
    s = SimVQCodebook(6, 16, seed=3, niter=5)
    b0 = s.basis.clone()
    s.fit(x)
    assert torch.equal(s.basis, b0) and torch.equal(b0, simvq_basis(16, 6, seed=3))
    assert torch.allclose(s.codebook(), simvq_codebook(s.basis, s.W), atol=1e-5)
    assert s.codebook().shape == (16, 6)


def test_full_rank_reaches_kmeans_quality():
    # with rank = k the basis is invertible, so SimVQ is as expressive as k-means
    x = _data(seed=4)
    s = SimVQCodebook(6, 12, rank=12, seed=0, niter=20).fit(x)
    km = KMeans(12, niter=30, seed=0, backend="torch").fit(x)
    err_km = float(((x - km.decode(km.encode(x))) ** 2).mean())
    assert s.history[-1] <= err_km * 1.05


@pytest.mark.parametrize("kind", ["none", "rows", "coords"])
def test_solve_w_matches_weighted_lstsq_oracle(kind):
    g = torch.Generator().manual_seed(5)
    k, r, n, d = 10, 4, 300, 3
    B = torch.randn(k, r, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    codes = torch.randint(0, k, (n,), generator=g)
    w = {"none": None, "rows": torch.rand(n, generator=g, dtype=torch.float64),
         "coords": torch.rand(n, d, generator=g, dtype=torch.float64)}[kind]
    W = simvq_solve_w(B, x, codes, w, ridge=0.0)
    wf = torch.ones(n, d, dtype=torch.float64) if w is None else (w[:, None].expand(n, d) if w.dim() == 1 else w)
    for t in range(d):  # column t: min sum_i w_it (x_it - B[c_i] . W[:, t])^2
        sw = wf[:, t].sqrt()
        ref = torch.linalg.lstsq(sw[:, None] * B[codes], (sw * x[:, t])[:, None]).solution[:, 0]
        assert torch.allclose(W[:, t], ref, atol=1e-9)


def test_weighted_fit_and_save_load(tmp_path):
    x = _data(seed=6)
    w = torch.rand(x.shape[0], 6, generator=torch.Generator().manual_seed(0))
    s = SimVQCodebook(6, 16, rank=5, seed=2, niter=5).fit(x, w)
    save_codec(s, tmp_path / "simvq.safetensors")
    r = load_codec(tmp_path / "simvq.safetensors")
    assert isinstance(r, SimVQCodebook)
    assert torch.equal(r.W, s.W) and torch.equal(r.basis, s.basis)
    assert torch.equal(r.codebook(), s.codebook())
    assert torch.equal(r.encode(x), s.encode(x))
    assert s.bits_per_vector() == 4.0 and s.overhead_bits() == 16 * 6 * 16


def test_bad_inputs():
    with pytest.raises(ValueError, match="k"):
        SimVQCodebook(4, 0)
    with pytest.raises(ValueError, match="rank"):
        SimVQCodebook(4, 8, rank=0)
    with pytest.raises(TypeError, match="rank"):
        SimVQCodebook(4, 8, rank=2.0)
    s = SimVQCodebook(4, 64)
    with pytest.raises(RuntimeError, match="not fitted"):
        s.encode(torch.randn(3, 4))
    with pytest.raises(ValueError, match="larger than"):
        s.fit(torch.randn(10, 4))
    with pytest.raises(ValueError, match="dimension"):
        s.fit(torch.randn(100, 5))
    with pytest.raises(ValueError, match="NaN"):
        s.fit(torch.full((100, 4), float("nan")))
    s = SimVQCodebook(4, 8, niter=2).fit(torch.randn(50, 4))
    with pytest.raises(ValueError, match="out of range"):
        s.decode(torch.tensor([[8]]))
    with pytest.raises(ValueError, match="basis"):
        s.load_state_dict({"W": s.W})
