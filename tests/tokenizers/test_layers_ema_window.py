"""VectorQuantizer EMA window: at least ``code_window`` vectors per code, whatever K and batch."""
import pytest
import torch

from vq_tokenizers import VectorQuantizer


def test_decay_follows_vectors_per_code():
    assert VectorQuantizer(4, 1024).ema_decay(1024) == pytest.approx(0.98)  # the floor
    assert VectorQuantizer(4, 8192).ema_decay(1024) == pytest.approx(0.995)
    assert VectorQuantizer(4, 65536).ema_decay(1024) == pytest.approx(1 - 1 / 1600)
    assert VectorQuantizer(4, 65536, code_window=None).ema_decay(1024) == 0.98
    with pytest.raises(ValueError, match="code_window"):
        VectorQuantizer(4, 16, code_window=0.0)


def _codeword_error(**options) -> float:
    """Median squared distance of codewords to their true cluster centre after training on
    small batches (1/16 vector per code per step): the EMA noise of each codeword."""
    torch.manual_seed(0)
    k, d, batch = 256, 8, 16
    centers = 10 * torch.randn(k, d)
    g = torch.Generator().manual_seed(1)
    vq = VectorQuantizer(d, k, **options)
    for _ in range(1500):
        x = centers[torch.randint(k, (batch,), generator=g)] + torch.randn(batch, d, generator=g)
        vq(x.requires_grad_())
    err = torch.cdist(vq.codebook, centers).min(1).values.square()  # (k,)
    return float(err.median())


def test_longer_window_for_few_vectors_per_code_gives_cleaner_codewords():
    # fixed 0.98: each codeword averages ~50 steps x 1/16 ~ 3 vectors (error ~ d / 3);
    # the window of 25 vectors per code (decay 0.9975 here) averages ~8x more
    fixed = _codeword_error(code_window=None)
    ours = _codeword_error()
    assert ours < fixed / 3
