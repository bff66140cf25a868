"""The pure-torch oracle against the docs/formats.md formula written as plain loops."""
import pytest
import torch

from vq_kernels import reference


def _loop_dequantize(codes, codebooks, scales, tr, tg):
    out, n_groups, m_books = codes.shape
    d = codebooks.shape[-1]
    w = torch.zeros(out, n_groups * d, dtype=torch.float64)
    for r in range(out):
        for g in range(n_groups):
            v = sum(codebooks[r // tr, g // tg, m, codes[r, g, m]].double() for m in range(m_books))
            w[r, g * d:(g + 1) * d] = scales[r].double() * v
    return w


def test_dequantize_matches_formula(case):
    if case.out * case.inp > 5000:
        pytest.skip("loop oracle only on small cases")
    codes, cb, sc, lay = case.make(seed=1)
    w = reference.dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups)
    assert w.shape == (case.out, case.inp) and w.dtype == cb.dtype
    torch.testing.assert_close(w.double(), _loop_dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups), rtol=1e-6, atol=1e-6)


def test_vq_linear_is_x_times_wt(case):
    codes, cb, sc, lay = case.make(seed=2, dtype=torch.float64)
    x = torch.randn(3, 2, case.inp, dtype=torch.float64)
    y = reference.vq_linear(x, codes, cb, sc, lay.tile_rows, lay.tile_groups)
    w = _loop_dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups) if case.out * case.inp <= 5000 else \
        reference.dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups)
    torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)


def test_half_codebooks_decode_in_fp32_then_round():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (4, 3, 2), generator=g)
    cb = torch.randn(1, 1, 2, 16, 4, generator=g).half()
    sc = torch.rand(4, generator=g).half()
    w = reference.dequantize(codes, cb, sc)
    assert w.dtype == torch.float16
    want = ((cb.float()[0, 0, 0][codes[..., 0]] + cb.float()[0, 0, 1][codes[..., 1]]) * sc.float()[:, None, None])
    assert torch.equal(w, want.reshape(4, 12).half())


def test_reference_rejects_bad_codes():
    cb = torch.randn(1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match="out of range"):
        reference.dequantize(torch.tensor([[[4]]]), cb, torch.ones(1))
    with pytest.raises(ValueError, match="scales"):
        reference.dequantize(torch.tensor([[[3]]]), cb, torch.ones(2))
    with pytest.raises(ValueError, match="x must have shape"):
        reference.vq_linear(torch.randn(1, 3), torch.tensor([[[3]]]), cb, torch.ones(1))
