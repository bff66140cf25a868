"""The metrics the benchmark adds (entropy in bits, sorted usage), the usage curve and the
per-stage figures of a 2-stage codec, against hand-computed values."""
import math

import pytest
import torch

from vq.bench.quantizers import fsq_levels, plan_quantizer, pvq_params
from vq.bench.utilization import _usage_figures, usage_curve
from vq.codebook import metrics as M


def test_entropy_bits_uniform_single_and_known():
    k = 8
    assert M.usage_entropy_bits(torch.arange(k).repeat(3), k) == pytest.approx(3.0)  # log2 8
    assert M.usage_entropy_bits(torch.full((50,), 5), k) == pytest.approx(0.0, abs=1e-12)
    # p = [1/2, 1/4, 1/4, 0]: H = 1/2 + 2 * 1/4 * 2 = 1.5 bits
    assert M.usage_entropy_bits(torch.tensor([0, 0, 1, 2]), 4) == pytest.approx(1.5)


def test_sorted_usage_share():
    s = M.sorted_usage_share(torch.tensor([3, 3, 3, 1]), 4)
    assert s.tolist() == [0.75, 0.25, 0.0, 0.0]
    assert float(s.sum()) == pytest.approx(1.0)


def test_usage_curve_uniform_and_single_code():
    k = 64
    c = usage_curve(torch.full((k,), 7))
    assert c["share_x_k"] == [pytest.approx(1.0)] * len(c["share_x_k"])  # uniform share = 1
    assert c["rank_fraction"][0] == 0.0 and c["rank_fraction"][-1] == 1.0
    one = usage_curve(torch.tensor([10] + [0] * (k - 1)))
    assert one["share_x_k"][0] == pytest.approx(k)  # one code holds everything: share 1 = K / K
    assert all(v == 0 for v in one["share_x_k"][1:])


def test_per_stage_figures_of_a_two_stage_codec():
    # stage 0 uses codes 0,0,1,2 of 4 (p = 1/2, 1/4, 1/4): perplexity 2^1.5; stage 1 only code 3
    codes = torch.tensor([[0, 3], [0, 3], [1, 3], [2, 3]])
    q = plan_quantizer("rvq:2", 4, dim=2, n_fit=100).build(0)
    fig = _usage_figures(codes, q)
    s0, s1 = fig["stages"]
    assert (s0["used"], s0["n_dead"], s0["used_fraction"]) == (3, 1, 0.75)
    assert s0["perplexity"] == pytest.approx(2**1.5) and s0["entropy_bits"] == pytest.approx(1.5)
    assert (s1["used"], s1["n_dead"], s1["perplexity"]) == (1, 3, pytest.approx(1.0))
    # headline figures are means over the two codebooks
    assert fig["used_fraction"] == pytest.approx((0.75 + 0.25) / 2)
    assert fig["perplexity"] == pytest.approx((2**1.5 + 1) / 2)
    assert fig["dead_codes"] == 4
    assert [s["name"] for s in fig["stages"]] == ["stage 0", "stage 1"]


def test_joint_codebook_figures_pvq():
    q = plan_quantizer("pvq", 64, dim=8, n_fit=100).build(0)  # 16 shapes x 4 gains, joint
    assert q.joint and q.ks == [16, 4] and q.size == 64
    codes = torch.tensor([[0, 0], [0, 1], [15, 3], [15, 3]])  # joint indices 0, 1, 63, 63
    fig = _usage_figures(codes, q)
    assert fig["used_fraction"] == pytest.approx(3 / 64)
    assert fig["perplexity"] == pytest.approx(2**1.5)  # p = 1/4, 1/4, 1/2
    assert fig["dead_codes"] == 61


def test_fsq_and_pvq_nearest_sizes():
    assert fsq_levels(1024, 16) == (8, 5, 5, 5)  # the FSQ paper's 2^10 entry
    lv = fsq_levels(8192, 16)
    assert abs(math.log2(math.prod(lv)) - 13) <= abs(math.log2(15360) - 13)
    assert pvq_params(8192, 16) == (2, 4)  # N(16, 2) = 512 shapes x 16 gains = 8192 exactly
    plan = plan_quantizer("fsq", 1024, dim=16, n_fit=10)
    assert plan.size == 1000 and "nearest FSQ grid" in plan.note
    assert plan_quantizer("e8p", 256, dim=8, n_fit=10).size == 65536
    assert plan_quantizer("kmeans", 256, dim=8, n_fit=1000).note == ""
    aq = plan_quantizer("aq:2", 8192, dim=8, n_fit=10**5)  # the core's AdditiveVQ needs M * K <= 8192
    assert aq.size == 4096 and "nearest K = 4096" in aq.note
    assert plan_quantizer("faiss-pq:2", 1000, dim=8, n_fit=10**4).size == 1024  # powers of two


def test_uniform_used_fraction_reference():
    q = plan_quantizer("kmeans", 4, dim=2, n_fit=100).build(0)
    fig = _usage_figures(torch.tensor([[0], [1]]), q)
    assert fig["uniform_used_fraction"] == pytest.approx(1 - 0.75**2)  # 1 - (1 - 1/K)^n


@pytest.mark.parametrize("name,k,dim,n_fit,msg", [
    ("kmeans", 512, 8, 100, "at least K fit vectors"),
    ("pq:3", 16, 8, 1000, "divisible by 3"),
    ("e8p", 16, 12, 1000, "8-dim blocks"),
    ("zzz", 16, 8, 1000, "unknown quantizer"),
    ("kmeans:2", 16, 8, 1000, "takes no ':N'"),
])
def test_sizes_a_quantizer_cannot_take(name, k, dim, n_fit, msg):
    with pytest.raises(ValueError, match=msg):
        plan_quantizer(name, k, dim, n_fit)
