"""vq.codebook.metrics against hand-computed values."""
import math

import pytest
import torch

from vq.codebook import metrics as M


def test_uniform_usage_perplexity_is_k():
    k = 16
    codes = torch.arange(k).repeat(5)  # every code 5 times
    assert M.usage_perplexity(codes, k) == pytest.approx(k, rel=1e-12)
    assert M.used_fraction(codes, k) == 1.0
    assert M.dead_codes(codes, k).numel() == 0
    assert torch.equal(M.usage(codes, k), torch.full((k,), 5))


def test_single_code_perplexity_is_one():
    codes = torch.full((100, 1), 3)
    assert M.usage_perplexity(codes, 8) == pytest.approx(1.0)
    assert M.used_fraction(codes, 8) == pytest.approx(1 / 8)
    assert M.dead_codes(codes, 8).tolist() == [0, 1, 2, 4, 5, 6, 7]


def test_known_distribution():
    codes = torch.tensor([0, 0, 1, 2])  # p = [1/2, 1/4, 1/4, 0]: H = 1.5 bits
    assert M.usage(codes, 4).tolist() == [2, 1, 1, 0]
    assert M.usage_perplexity(codes, 4) == pytest.approx(2**1.5)
    assert M.used_fraction(codes, 4) == 0.75
    assert M.dead_codes(codes, 4).tolist() == [3]


def test_stage_stats():
    codes = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0]])
    st = M.stage_stats(codes, [4, 2])
    assert [s["stage"] for s in st] == [0, 1]
    assert st[0]["perplexity"] == pytest.approx(4.0) and st[0]["n_dead"] == 0
    assert st[0]["entropy_bits"] == pytest.approx(2.0)
    assert st[1]["perplexity"] == pytest.approx(1.0) and st[1]["n_dead"] == 1
    assert st[1]["used_fraction"] == 0.5 and st[1]["k"] == 2
    assert len(M.stage_stats(codes, 4)) == 2


def test_mse_and_sqnr():
    x = torch.ones(4, 2)
    xhat = 0.9 * x
    assert M.mse(x, xhat) == pytest.approx(0.01)
    assert M.sqnr_db(x, xhat) == pytest.approx(20.0)  # 10 log10(8 / 0.08)
    assert M.sqnr_db(x, x) == math.inf


def test_bad_inputs():
    with pytest.raises(ValueError, match="out of range"):
        M.usage(torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError, match="out of range"):
        M.usage(torch.tensor([-1, 0]), 4)
    with pytest.raises(TypeError, match="integer"):
        M.usage(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match="stage_stats"):
        M.usage(torch.zeros(3, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.usage(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="empty"):
        M.usage(torch.zeros(0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="codebook sizes"):
        M.stage_stats(torch.zeros(3, 2, dtype=torch.long), [4])
    with pytest.raises(ValueError, match="same shape"):
        M.mse(torch.ones(3, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        M.mse(torch.tensor([float("nan")]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="all zero"):
        M.sqnr_db(torch.zeros(3), torch.ones(3))
    with pytest.raises(TypeError):
        M.mse([1.0], torch.ones(1))
