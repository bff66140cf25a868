"""VectorQuantizer.refine_codebook: Lloyd iterations on encoder outputs of a trained model."""
import pytest
import torch

from vq_tokenizers import SimVQ, VectorQuantizer


def _clusters(n: int, k: int = 32, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(k, d, generator=g)
    return centers[torch.randint(k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)  # (n, d)


@pytest.mark.parametrize("options", [{}, {"update": "gradient"}, {"codebook_dim": 4}])
def test_refine_lowers_error_monotonically_and_keeps_decode_exact(options):
    torch.manual_seed(0)
    x = _clusters(4000)
    vq = VectorQuantizer(8, 64, init="data", **options)
    vq(x[:256])  # data init from one small batch: far from the k-means optimum on all of x
    vq.eval()
    before = vq.codebook.detach().clone()
    hist = vq.refine_codebook(x, iters=8)
    assert len(hist) == 9
    assert all(b <= a * (1 + 1e-6) for a, b in zip(hist, hist[1:]))  # Lloyd never increases it
    assert hist[-1] < 0.8 * hist[0]
    out = vq(x)
    assert torch.equal(vq.decode(out.codes), out.quantized)
    # codes no vector chose keep their codeword; the others moved to their cell means
    z = vq.project_in(x).detach()
    final = vq.refine_codebook(x, iters=0)[0]
    assert final == pytest.approx(hist[-1], rel=1e-5)
    if options.get("codebook_dim") is None:
        assert abs(final - float((z - out.quantized.detach()).square().sum(1).mean())) < 1e-4 * final + 1e-6
    assert not torch.equal(before, vq.codebook.detach())


def test_refine_resets_ema_statistics_to_the_new_codewords():
    x = _clusters(3000)
    vq = VectorQuantizer(8, 32, init="data")
    vq(x[:128])
    vq.refine_codebook(x, iters=5)
    refined = vq.codebook.clone()
    # the EMA codebook is ema_sum / smoothed ema_count: after the reset it reproduces the refined
    # codewords (up to Laplace smoothing), so a following training step starts from them
    assert torch.allclose(vq.ema_sum / vq.ema_count[:, None], refined, atol=1e-5)


def _outlier_start(vq: VectorQuantizer, g: torch.Generator) -> torch.Tensor:
    """32 tight clusters of 100 points + 16 far outliers; the codebook starts on the 16
    outliers and 16 of the 32 cluster centres (Lloyd alone never leaves that trap)."""
    centers = 4 * torch.randn(32, 8, generator=g)
    outliers = 40 + torch.randn(16, 8, generator=g)
    x = torch.cat([centers.repeat_interleave(100, 0) + 0.1 * torch.randn(3200, 8, generator=g), outliers])
    vq.codebook.data.copy_(torch.cat([outliers, centers[:16]]))
    return x  # (3216, 8)


def test_refine_elbg_moves_free_codes_stuck_on_outliers():
    g = torch.Generator().manual_seed(0)
    plain, moved = VectorQuantizer(8, 32), VectorQuantizer(8, 32)
    x = _outlier_start(plain, g)
    moved.codebook.data.copy_(plain.codebook)
    h_plain = plain.refine_codebook(x, iters=9)
    h_moved = moved.refine_codebook(x, iters=9, split=0.25)
    assert h_moved[-1] < 0.5 * h_plain[-1]  # ELBG beats Lloyd from the same start
    assert all(b <= a * (1 + 1e-6) for a, b in zip(h_moved[-4:], h_moved[-3:]))  # last 3 plain Lloyd
    counts = torch.bincount(moved.encode(x), minlength=32)
    assert int((counts == 1).sum()) < 16  # codes left the single outliers
    out = moved(x)
    assert torch.equal(moved.decode(out.codes), out.quantized)


def test_refine_split_share_leaves_small_cells_uncut():
    """split_share above the largest cell's share (plain Lloyd keeps the cells it starts with
    here): no cell may be cut, so the result is plain Lloyd's; at 1.5 the cells holding two or
    more clusters (>= ~2 uniform shares) are cut: the trap still opens."""
    g = torch.Generator().manual_seed(0)
    plain, none, some = VectorQuantizer(8, 32), VectorQuantizer(8, 32), VectorQuantizer(8, 32)
    x = _outlier_start(plain, g)
    none.codebook.data.copy_(plain.codebook)
    some.codebook.data.copy_(plain.codebook)
    counts = torch.bincount(plain.encode(x), minlength=32).float()
    largest = float(counts.max() / counts.mean())
    assert largest >= 2.0
    h_plain = plain.refine_codebook(x, iters=9)
    assert none.refine_codebook(x, iters=9, split=0.25, split_share=1.01 * largest) == h_plain
    assert torch.equal(none.codebook, plain.codebook)
    assert some.refine_codebook(x, iters=9, split=0.25, split_share=1.5)[-1] < 0.5 * h_plain[-1]


def test_refine_elbg_beats_lloyd_on_the_brute_force_optimum_gap():
    """Gaussian blobs of unequal size, codebook started on data points: ELBG ends closer to the
    best of many k-means restarts (a float64 brute-force oracle) than plain Lloyd."""
    g = torch.Generator().manual_seed(1)
    centers = 6 * torch.randn(24, 4, generator=g)
    sizes = torch.randint(20, 400, (24,), generator=g)
    x = torch.cat([c + torch.randn(int(s), 4, generator=g) for c, s in zip(centers, sizes)])  # (n, 4)
    start = x[torch.randperm(x.shape[0], generator=g)[:24]]
    plain, moved = VectorQuantizer(4, 24), VectorQuantizer(4, 24)
    plain.codebook.data.copy_(start)
    moved.codebook.data.copy_(start)
    e_plain = plain.refine_codebook(x, iters=30)[-1]
    e_moved = moved.refine_codebook(x, iters=30, split=0.2)[-1]
    assert e_moved < 0.9 * e_plain
    best = min(_lloyd64(x.double(), x[torch.randperm(x.shape[0], generator=g)[:24]].double()) for _ in range(20))
    assert e_moved < 1.05 * best  # within 5 % of the best of 20 restarts


def _lloyd64(x: torch.Tensor, c: torch.Tensor, iters: int = 50) -> float:
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(c.shape[0]):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    return float(torch.cdist(x, c).min(1).values.square().mean())


def test_refine_elbg_makes_no_move_at_the_optimum():
    """Codewords on the centres of well-separated tight clusters: removing any code costs more
    than splitting any cell saves, so ELBG leaves the codebook as plain Lloyd does."""
    x = _clusters(4000)
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(32, 8, generator=g)  # the same centres _clusters(seed=0) draws
    a, b = VectorQuantizer(8, 32), VectorQuantizer(8, 32)
    a.codebook.data.copy_(centers)
    b.codebook.data.copy_(centers)
    assert a.refine_codebook(x, iters=4) == b.refine_codebook(x, iters=4, split=0.5)
    assert torch.equal(a.codebook, b.codebook)


def test_refine_rejects_simvq_and_bad_arguments():
    with pytest.raises(TypeError, match="SimVQ"):
        SimVQ(8, 16).refine_codebook(torch.randn(10, 8))
    vq = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match="iters"):
        vq.refine_codebook(torch.randn(10, 8), iters=-1)
    with pytest.raises(ValueError, match="last dimension"):
        vq.refine_codebook(torch.randn(10, 9))
    for bad in (-0.1, 0.6, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="split"):
            vq.refine_codebook(torch.randn(10, 8), split=bad)
    for bad in (-1.0, float("inf"), "0.5"):
        with pytest.raises(ValueError, match="split_share"):
            vq.refine_codebook(torch.randn(10, 8), split=0.1, split_share=bad)
