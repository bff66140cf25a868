"""Single-layer solver properties: Hessian algebra against float64 oracles, GPTQ/GPTVQ vs RTN on
the proxy loss tr(ΔW H ΔWᵀ), the codebook update against the closed-form least squares."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from vq.weights.gptq import GPTQConfig, gptq_quantize
from vq.weights.gptvq import GPTVQConfig, gptvq_quantize, tile_shape, update_codebooks
from vq.weights.hessian import Hessian, damped, inverse_cholesky, proxy_loss
from vq.weights.rtn import RTNConfig, rtn_quantize


def layer(out=64, inp=128, n=2048, seed=0):
    """A weight and the Hessian of correlated, offset inputs (like post-norm LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5
    X = torch.randn(n, inp, generator=g) @ mix + 0.3 * torch.randn(inp, generator=g)
    X[:, :4] *= 8.0  # a few outlier channels
    W = torch.randn(out, inp, generator=g) * 0.05
    h = Hessian(inp)
    for chunk in X.split(500):
        h.add_batch(chunk)
    return W, h.H, X


def test_hessian_matches_float64_oracle():
    W, H, X = layer()
    oracle = 2.0 * X.double().T @ X.double() / X.shape[0]
    torch.testing.assert_close(H, oracle, rtol=1e-5, atol=1e-6)


def test_hessian_rejects_nan_activations():
    h = Hessian(8, name="blk.q_proj")
    x = torch.randn(4, 8)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="blk.q_proj.*NaN"):
        h.add_batch(x)


def test_inverse_cholesky_factorises_the_inverse():
    _, H, _ = layer(inp=32)
    Hd, dead = damped(H, 0.01)
    U = inverse_cholesky(Hd)
    assert not dead.any()
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(Hd), rtol=1e-8, atol=1e-10)
    assert torch.equal(U, U.triu())


def test_dead_inputs_are_zeroed():
    W, H, _ = layer(inp=32)
    H[5, :] = 0
    H[:, 5] = 0
    _, dead = damped(H, 0.01)
    assert dead.tolist() == [i == 5 for i in range(32)]
    q = gptq_quantize(W, H, GPTQConfig(bits=3, group_size=16))
    assert torch.all(q.dense()[:, 5].abs() <= q.codebooks().abs().amax())  # finite, on the grid


def test_rtn_is_on_grid_and_within_half_step():
    W, _, _ = layer()
    q = rtn_quantize(W, RTNConfig(bits=3, group_size=32))
    scale = q.tensors["group_scale"].float().repeat_interleave(32, dim=1)  # (out, in)
    assert torch.all((W - q.dense()).abs() <= scale / 2 + 1e-6)


def test_rtn_ragged_last_group():
    W, _, _ = layer(inp=80)
    q = rtn_quantize(W, RTNConfig(bits=4, group_size=32))  # groups of 32, 32, 16
    assert q.tensors["group_scale"].shape == (64, 3)
    assert (W - q.dense()).abs().max() < 0.05


def test_gptq_with_identity_hessian_is_rtn():
    W, _, _ = layer()
    H = torch.eye(W.shape[1], dtype=torch.float64)  # no correlation -> no error feedback
    q = gptq_quantize(W, H, GPTQConfig(bits=2, group_size=32))
    r = rtn_quantize(W, RTNConfig(bits=2, group_size=32))
    assert torch.equal(q.codes(), r.codes())


@pytest.mark.parametrize("bits", [2, 3])
def test_hessian_solvers_beat_rtn_on_proxy_loss(bits):
    W, H, _ = layer()
    rtn = proxy_loss(W, rtn_quantize(W, RTNConfig(bits=bits, group_size=32)).dense(), H)
    gptq = proxy_loss(W, gptq_quantize(W, H, GPTQConfig(bits=bits, group_size=32)).dense(), H)
    gptq_ao = proxy_loss(W, gptq_quantize(W, H, GPTQConfig(bits=bits, group_size=32, act_order=True)).dense(), H)
    vq = gptvq_quantize(W, H, GPTVQConfig(dim=2, index_bits=2 * bits, weights_per_codebook=4096, block_cols=64), seed=0)
    gptvq = proxy_loss(W, vq.dense(), H)
    assert gptq < 0.8 * rtn
    assert gptq_ao < 0.8 * rtn
    assert gptvq < gptq
    assert vq.bits_per_weight() < bits + 0.5


def test_gptvq_error_feedback_helps():
    """Same codebooks budget; the OBS feedback lowers the proxy loss versus plain Hessian-weighted
    k-means assignment (identity Hessian inside the solver = no feedback)."""
    W, H, _ = layer()
    cfg = GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=2048, block_cols=64, update_iters=0)
    with_fb = proxy_loss(W, gptvq_quantize(W, H, cfg).dense(), H)
    no_fb = proxy_loss(W, gptvq_quantize(W, torch.eye(W.shape[1], dtype=torch.float64), cfg).dense(), H)
    assert with_fb < no_fb


def test_codebook_update_never_hurts_and_helps():
    W, H, _ = layer()
    base = dict(dim=4, index_bits=6, weights_per_codebook=4096, block_cols=64, codebook_bits=None)
    before = proxy_loss(W, gptvq_quantize(W, H, GPTVQConfig(**base, update_iters=0)).dense(), H)
    after = proxy_loss(W, gptvq_quantize(W, H, GPTVQConfig(**base, update_iters=20)).dense(), H)
    assert after < 0.99 * before


def test_codebook_update_reaches_least_squares_optimum():
    """Float64 oracle: build the decode matrix P (ŵ = P c) and solve the normal equations."""
    g = torch.Generator().manual_seed(1)
    out, inp, d, K = 6, 8, 2, 4
    W = torch.randn(out, inp, generator=g)
    X = torch.randn(64, inp, generator=g)
    H = (2 * X.T @ X / 64).double()
    s = torch.rand(out, generator=g) + 0.5
    codes = torch.randint(0, K, (out, inp // d), generator=g)
    codes[0, : K] = torch.arange(K)  # every codeword used
    cb0 = torch.randn(1, 1, K, d, generator=g)
    new = update_codebooks(W / s[:, None], s, H, codes, cb0, tile_rows=out, iters=K * d)
    # oracle: vec(Ŵ) = P vec(C)
    P = torch.zeros(out * inp, K * d, dtype=torch.float64)
    for r in range(out):
        for gi in range(inp // d):
            for a in range(d):
                P[r * inp + gi * d + a, codes[r, gi] * d + a] = s[r]
    Hbig = torch.kron(torch.eye(out, dtype=torch.float64), H)  # loss = (w - Pc)ᵀ Hbig (w - Pc)
    c = torch.linalg.solve(P.T @ Hbig @ P, P.T @ Hbig @ W.double().reshape(-1))
    torch.testing.assert_close(new.reshape(-1).double(), c, rtol=1e-3, atol=1e-3)


def test_tile_shape_divides_columns():
    cfg = GPTVQConfig(dim=4, index_bits=8, weights_per_codebook=32768, block_cols=256)
    assert tile_shape(576, 576, cfg) == (192, 192)
    assert tile_shape(576, 1536, cfg) == (144, 256)
    with pytest.raises(ValueError, match="multiple of dim"):
        tile_shape(8, 10, cfg)


def test_tile_shape_whole_row_blocks_for_4bit_codes():
    from vq_kernels import cpu
    from vq_kernels.layout import VQLayout

    cfg = GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=4096, block_cols=256)
    assert tile_shape(576, 576, cfg) == (32, 192)  # 27 tiles of 22 rows -> 18 of 32
    assert tile_shape(1536, 576, cfg) == (32, 192)
    assert tile_shape(40, 576, GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=1 << 20)) == (40, 192)  # one tile
    q = gptvq_quantize(*layer(out=50, inp=96)[:2], GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=512, block_cols=32))
    assert q.layout.tile_rows == 32  # 3 tiles of 17 rows -> 2 of 32 (the last one ragged)
    if cpu.native_available():
        lay = VQLayout(50, 96, 2, 1, 16, 4, q.layout.tile_rows, q.layout.tile_groups)
        assert cpu.index_format(lay) == "u4"


def test_gptvq_codes_stored_layout():
    W, H, _ = layer(out=50, inp=96)
    q = gptvq_quantize(W, H, GPTVQConfig(dim=4, index_bits=5, weights_per_codebook=1024, block_cols=32))
    tile_rows, cols = tile_shape(50, 96, GPTVQConfig(dim=4, index_bits=5, weights_per_codebook=1024, block_cols=32))
    assert (q.layout.tile_rows, q.layout.tile_groups, q.layout.K, q.layout.d) == (tile_rows, cols // 4, 32, 4)
    assert q.codes().shape == (50, 24, 1) and int(q.codes().max()) < 32
    # decode by hand from the documented layout
    cb, sc, codes = q.codebooks(), q.scales(), q.codes()[:, :, 0]
    manual = torch.stack([
        torch.cat([cb[r // q.layout.tile_rows, g // q.layout.tile_groups, 0, codes[r, g]] for g in range(24)]) * sc[r]
        for r in range(50)
    ])
    assert torch.equal(manual, q.dense())


@pytest.mark.parametrize("bad", [dict(dim=0), dict(index_bits=17), dict(codebook_bits=4), dict(em_init="x"),
                                 dict(block_cols=2, dim=4)])
def test_gptvq_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GPTVQConfig(**bad)


def test_gptq_config_rejects_bad_values():
    with pytest.raises(ValueError):
        GPTQConfig(bits=0)
    with pytest.raises(ValueError):
        RTNConfig(group_size=0)
