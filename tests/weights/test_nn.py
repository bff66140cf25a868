"""VQLinear: forward == F.linear(x, to_dense()), construction checks, safetensors, compile."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vq_kernels import reference
from vq.weights.nn import VQLinear


def _layer(seed=0, out=24, inp=40, d=4, M=2, K=16, tr=8, tg=3, bias=True, **kw):
    g = torch.Generator().manual_seed(seed)
    n_groups = inp // d
    codes = torch.randint(0, K, (out, n_groups, M), generator=g)
    cb = torch.randn(-(-out // tr), -(-n_groups // tg), M, K, d, generator=g)
    sc = torch.rand(out, generator=g) + 0.5
    b = torch.randn(out, generator=g) if bias else None
    return VQLinear.from_codes(codes, cb, sc, b, tile_rows=tr, tile_groups=tg, **kw), codes, cb, sc


def test_metadata_and_round_trip_of_codes():
    layer, codes, cb, sc = _layer()
    assert (layer.in_features, layer.out_features, layer.d, layer.M, layer.K, layer.bits) == (40, 24, 4, 2, 16, 4)
    assert (layer.tile_rows, layer.tile_groups) == (8, 3)
    assert layer.codes.dtype == torch.int32 and layer.codes.shape == (24, (10 * 2 * 4 + 31) // 32)
    assert torch.equal(layer.unpacked_codes(), codes)
    assert torch.equal(layer.to_dense(), reference.dequantize(codes, cb, sc, 8, 3))


@pytest.mark.parametrize("shape", [(1, 40), (5, 40), (2, 3, 40), (40,), (0, 40)])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_forward_equals_dense_linear(shape, backend):
    layer, *_ = _layer(backend=backend)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    want = F.linear(x.double(), layer.to_dense().double(), layer.bias.double())
    assert y.shape == (*shape[:-1], 24) and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_no_grad_and_bias_free():
    layer, *_ = _layer(bias=False)
    assert layer.bias is None
    x = torch.randn(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.to_dense().T, rtol=1e-5, atol=1e-5)


def test_construction_validates():
    _, codes, cb, sc = _layer()
    with pytest.raises(ValueError, match="out of range"):
        bad = codes.clone()
        bad[3, 2, 1] = 16
        VQLinear.from_codes(bad, cb, sc, tile_rows=8, tile_groups=3, bits=5)
    with pytest.raises(ValueError, match="codebooks must have shape"):
        VQLinear.from_codes(codes, cb[:1], sc, tile_rows=8, tile_groups=3)
    with pytest.raises(ValueError, match="scales"):
        VQLinear.from_codes(codes, cb, sc[:5], tile_rows=8, tile_groups=3)
    with pytest.raises(ValueError, match="bias"):
        VQLinear.from_codes(codes, cb, sc, torch.zeros(3), tile_rows=8, tile_groups=3)
    with pytest.raises(TypeError, match="integer"):
        VQLinear.from_codes(codes.float(), cb, sc, tile_rows=8, tile_groups=3)
    with pytest.raises(ValueError, match="do not fit"):
        VQLinear.from_codes(codes, cb, sc, tile_rows=8, tile_groups=3, bits=3)
    with pytest.raises(ValueError, match="multiple of d"):
        VQLinear(42, 8, d=4, K=16)


def test_safetensors_round_trip_exact(tmp_path):
    layer, *_ = _layer(bits=5)  # K=16 in 5 bits: loading also re-checks the code range
    path = tmp_path / "layer.safetensors"
    save_file(layer.state_dict(), str(path))
    state = load_file(str(path))
    assert set(state) == {"codes", "codebooks", "scales", "bias"}
    cfg = layer.config()
    fresh = VQLinear(**cfg)
    fresh.load_state_dict(state)
    for k, v in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    x = torch.randn(2, 40)
    assert torch.equal(fresh(x), layer(x))
    # a corrupted file is caught on load, before any forward
    state["codes"][0, 0] = -1  # every 5-bit field becomes 31 >= K
    with pytest.raises(ValueError, match="out of range"):
        VQLinear(**cfg).load_state_dict(state)


def test_half_codebooks_with_float32_scales():
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 256, (16, 4, 1), generator=g)
    cb = torch.randn(1, 1, 1, 256, 8, generator=g).half()
    sc = torch.rand(16, generator=g)
    layer = VQLinear.from_codes(codes, cb, sc)
    assert layer.codebooks.dtype == torch.float16 and layer.scales.dtype == torch.float32
    x = torch.randn(3, 32, generator=g)
    torch.testing.assert_close(layer(x).double(), reference.vq_linear(x.double(), codes, cb.double(), sc.double()), rtol=1e-5, atol=1e-5)


def test_from_dense_approximates_and_more_codewords_help():
    g = torch.Generator().manual_seed(6)
    lin = torch.nn.Linear(32, 48, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 32, generator=g))
    errs = []
    for K, M in [(4, 1), (64, 1), (64, 2)]:
        q = VQLinear.from_dense(lin, d=4, K=K, M=M, tile_rows=24, niter=8)
        assert torch.equal(q.bias, lin.bias.detach())
        errs.append(float((q.to_dense() - lin.weight.detach()).pow(2).mean() / lin.weight.detach().pow(2).mean()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] < 0.5  # 64 codewords for 4-d Gaussian vectors: far better than nothing


def test_from_dense_is_the_cores_residual_vq_per_tile():
    """Each tile's codes and codebooks are what vq.codebook.ResidualVQ gives on its vectors."""
    from vq.codebook import ResidualVQ

    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(24, 20, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(20, 24, generator=g))
    q = VQLinear.from_dense(lin, d=3, K=16, M=2, tile_rows=8, tile_groups=4, niter=5, seed=2)
    assert (q.layout.row_tiles, q.layout.group_tiles) == (3, 2)
    w = lin.weight.detach()
    s = w.pow(2).mean(1).sqrt()
    assert torch.equal(q.scales, s)
    vecs = (w / s[:, None]).reshape(20, 8, 3)  # (out, n_groups, d)
    codes = q.unpacked_codes()
    for i, j in [(0, 0), (2, 1)]:  # a full tile and the last, 4-row one
        block = vecs[i * 8 : (i + 1) * 8, j * 4 : (j + 1) * 4]  # (rows, 4, d)
        x = block.reshape(-1, 3)
        rvq = ResidualVQ(3, 2, 16, niter=5, seed=2).fit(x)
        assert torch.equal(q.codebooks[i, j], rvq.codebooks)
        assert torch.equal(codes[i * 8 : (i + 1) * 8, j * 4 : (j + 1) * 4].reshape(-1, 2), rvq.encode(x))


def test_from_dense_small_tile_gets_fewer_codewords():
    """A tile with fewer vectors than K: one codeword per vector, exact up to rounding."""
    lin = torch.nn.Linear(8, 3, bias=False)
    q = VQLinear.from_dense(lin, d=4, K=16)  # 3 rows x 2 groups = 6 vectors
    assert q.K == 16 and q.bits == 4
    assert int(q.unpacked_codes().max()) < 6 and not q.codebooks[0, 0, 0, 6:].any()
    torch.testing.assert_close(q.to_dense(), lin.weight.detach(), rtol=1e-5, atol=1e-6)


def test_torch_compile():
    layer, *_ = _layer()
    layer.prepare_cpu()
    x = torch.randn(3, 40)
    want = layer(x)
    try:
        compiled = torch.compile(layer, fullgraph=True)
        got = compiled(x)
    except Exception as e:  # noqa: BLE001 - only a missing compiler toolchain is a skip
        if "compiler" in str(e).lower() and "cxx" in str(e).lower():
            pytest.skip(f"torch.compile unavailable: {e}")
        raise
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_cpu_index_cache_follows_the_weights():
    """The cached CPU index is dropped on load_state_dict / .to(): no stale codes are used."""
    a, *_ = _layer(seed=1)
    b, *_ = _layer(seed=2)
    x = torch.randn(2, 40)
    a(x)  # builds a's CPU index
    assert a._cpu_index is not None
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    a.to(torch.float64)
    assert a._cpu_index is None
    torch.testing.assert_close(a(x.double()), F.linear(x.double(), a.to_dense(), a.bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [16, 64])  # the 4-bit CPU index and the byte index
def test_cpu_plan_follows_in_place_edits(K):
    """Codes, codebooks or scales changed in place after a forward: the next forward uses them."""
    layer, *_ = _layer(seed=4, K=K, tr=16, bias=False)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    layer(x)
    with torch.no_grad():
        layer.codebooks.mul_(-2.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense()), rtol=1e-5, atol=1e-5)
        layer.scales.add_(1.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense()), rtol=1e-5, atol=1e-5)
        layer.codes.copy_(layer.codes.flip(0))
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense()), rtol=1e-5, atol=1e-5)
        layer.codebooks = torch.randn(layer.codebooks.shape, generator=torch.Generator().manual_seed(6))  # replaced
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense()), rtol=1e-5, atol=1e-5)


def test_without_cache_same_result():
    cached, *_ = _layer(seed=3)
    plain, *_ = _layer(seed=3, cpu_cache=False)
    g = torch.Generator().manual_seed(7)
    for b in (1, 12):
        x = torch.randn(b, 40, generator=g)
        torch.testing.assert_close(plain(x), cached(x), rtol=1e-5, atol=1e-5)  # fp32 sums in other orders
    assert plain._cpu_index is None
