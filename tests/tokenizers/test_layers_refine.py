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


def test_refine_splitting_frees_codes_stuck_on_outliers():
    g = torch.Generator().manual_seed(0)
    plain, split = VectorQuantizer(8, 32), VectorQuantizer(8, 32)
    x = _outlier_start(plain, g)
    split.codebook.data.copy_(plain.codebook)
    h_plain = plain.refine_codebook(x, iters=9)
    h_split = split.refine_codebook(x, iters=9, min_count=3)
    assert h_split[-1] < 0.5 * h_plain[-1]  # splitting beats Lloyd from the same start (measured 0.33x)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(h_split[-4:], h_split[-3:]))  # last 3 plain Lloyd
    counts = torch.bincount(split.encode(x), minlength=32)
    assert int((counts == 1).sum()) < 16  # codes left the single outliers
    out = split(x)
    assert torch.equal(split.decode(out.codes), out.quantized)


def test_refine_splitting_without_small_cells_is_plain_lloyd():
    x = _clusters(4000)
    a, b = VectorQuantizer(8, 32, init="data"), VectorQuantizer(8, 32, init="data")
    a(x[:256])
    b.load_state_dict(a.state_dict())
    b.initialized.fill_(True)
    assert a.refine_codebook(x, iters=4) == b.refine_codebook(x, iters=4, min_count=1)
    assert torch.equal(a.codebook, b.codebook)


def test_refine_rejects_simvq_and_bad_arguments():
    with pytest.raises(TypeError, match="SimVQ"):
        SimVQ(8, 16).refine_codebook(torch.randn(10, 8))
    vq = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match="iters"):
        vq.refine_codebook(torch.randn(10, 8), iters=-1)
    with pytest.raises(ValueError, match="last dimension"):
        vq.refine_codebook(torch.randn(10, 9))
    for bad in (-1.0, float("nan"), "3"):
        with pytest.raises(ValueError, match="min_count"):
            vq.refine_codebook(torch.randn(10, 8), min_count=bad)
