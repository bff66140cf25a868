"""Triton kernels (CPU interpreter without a GPU) against the reference.

decode: bit-exact; gemv / gemm: relative error < 1e-5 against a float64 reference. Every scratch
and output buffer the launchers allocate is pre-filled with NaN, so an element a kernel forgets
to write shows up as NaN.
"""
import pytest
import torch

triton = pytest.importorskip("triton")

from vq_kernels import reference  # noqa: E402
from vq_kernels import triton_lut as tk  # noqa: E402
from vq_kernels.layout import VQLayout  # noqa: E402
from vq_kernels.packing import pack_codes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    real_empty = torch.empty

    def nan_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        return t.fill_(float("nan")) if t.dtype.is_floating_point else t

    monkeypatch.setattr(tk.torch, "empty", nan_empty)


def _inputs(case, seed, dtype=torch.float32):
    codes, cb, sc, lay = case.make(seed, dtype)
    packed = pack_codes(codes, lay.bits).to(DEVICE)
    return codes, packed, cb.to(DEVICE), sc.to(DEVICE), lay


def test_dequantize_bit_exact(case):
    codes, packed, cb, sc, lay = _inputs(case, seed=100)
    w = tk.dequantize(packed, cb, sc, lay)
    want = reference.dequantize(codes.to(DEVICE), cb, sc, lay.tile_rows, lay.tile_groups)
    assert w.dtype == want.dtype and torch.equal(w, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dequantize_bit_exact_other_dtypes(dtype):
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(0, 256, (19, 5, 2), generator=g)
    cb = torch.randn(1, 2, 2, 256, 8, generator=g).to(dtype)
    sc = (torch.rand(19, generator=g) + 0.5).to(dtype)
    lay = VQLayout.infer(codes, cb, tile_groups=3)
    w = tk.dequantize(pack_codes(codes, 8).to(DEVICE), cb.to(DEVICE), sc.to(DEVICE), lay)
    assert w.dtype == dtype
    assert torch.equal(w, reference.dequantize(codes.to(DEVICE), cb.to(DEVICE), sc.to(DEVICE), 19, 3))


def test_gemv_matches_float64(case, rel_err):
    codes, packed, cb, sc, lay = _inputs(case, seed=200)
    for b, split_k in [(1, None), (3, 1), (8, 3)]:
        x = torch.randn(b, case.inp, generator=torch.Generator().manual_seed(b)).to(DEVICE)
        ref = reference.vq_linear(x.double(), codes.to(DEVICE), cb.double(), sc.double(), lay.tile_rows, lay.tile_groups)
        y = tk.lut_gemv(x, packed, cb, sc, lay, split_k=split_k, force_lut=True)
        assert y.shape == (b, case.out) and y.dtype == torch.float32
        assert rel_err(y, ref) < 1e-5, (b, split_k)


def test_gemm_matches_float64(case, rel_err):
    codes, packed, cb, sc, lay = _inputs(case, seed=300)
    for b in (1, 20):
        x = torch.randn(b, case.inp, generator=torch.Generator().manual_seed(b)).to(DEVICE)
        ref = reference.vq_linear(x.double(), codes.to(DEVICE), cb.double(), sc.double(), lay.tile_rows, lay.tile_groups)
        y = tk.lut_gemm(x, packed, cb, sc, lay)
        assert y.shape == (b, case.out)
        assert rel_err(y, ref) < 1e-5, b


def test_half_activations_gemm(rel_err):
    g = torch.Generator().manual_seed(8)
    codes = torch.randint(0, 256, (40, 8, 2), generator=g)
    cb = torch.randn(1, 1, 2, 256, 8, generator=g).half()
    sc = (torch.rand(40, generator=g) + 0.5).half()
    lay = VQLayout.infer(codes, cb)
    x = torch.randn(17, 64, generator=g).half()
    y = tk.lut_gemm(x.to(DEVICE), pack_codes(codes, 8).to(DEVICE), cb.to(DEVICE), sc.to(DEVICE), lay)
    ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double())
    assert y.dtype == torch.float16 and rel_err(y.cpu(), ref) < 2e-3  # fp16 output rounding


class _NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched")


def test_out_of_range_codes_raise_before_any_kernel(monkeypatch):
    for name in ("_dequant_kernel", "_table_kernel", "_gather_kernel", "_gemm_kernel"):
        monkeypatch.setattr(tk, name, _NoLaunch())
    codes = torch.zeros(6, 21, 1, dtype=torch.long)
    codes[5, 20, 0] = 11  # K = 10 in 4 bits: 10..15 are representable but invalid
    cb, sc = torch.randn(1, 1, 1, 10, 2).to(DEVICE), torch.ones(6).to(DEVICE)
    lay = VQLayout(6, 42, 2, 1, 10, 4, 6, 21)
    packed = pack_codes(codes, 4).to(DEVICE)
    x = torch.randn(2, 42).to(DEVICE)
    with pytest.raises(ValueError, match="out of range"):
        tk.dequantize(packed, cb, sc, lay)
    with pytest.raises(ValueError, match="out of range"):
        tk.lut_gemv(x, packed, cb, sc, lay)
    with pytest.raises(ValueError, match="out of range"):
        tk.lut_gemm(x, packed, cb, sc, lay)


def test_launchers_validate(monkeypatch):
    for name in ("_dequant_kernel", "_table_kernel", "_gather_kernel", "_gemm_kernel"):
        monkeypatch.setattr(tk, name, _NoLaunch())
    lay = VQLayout(6, 42, 2, 1, 16, 4, 6, 21)
    packed = pack_codes(torch.zeros(6, 21, 1, dtype=torch.long), 4).to(DEVICE)
    cb, sc = torch.randn(1, 1, 1, 16, 2).to(DEVICE), torch.ones(6).to(DEVICE)
    x = torch.randn(2, 42).to(DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        tk.lut_gemm(torch.randn(42, 2).to(DEVICE).T, packed, cb, sc, lay)
    with pytest.raises(ValueError, match="contiguous"):
        tk.dequantize(packed, torch.randn(1, 1, 1, 16, 4).to(DEVICE)[..., ::2], sc, lay)
    with pytest.raises(TypeError, match="int32"):
        tk.dequantize(packed.long(), cb, sc, lay)
    with pytest.raises(ValueError, match="packed codes must have shape"):
        tk.dequantize(packed[:, :-1].contiguous(), cb, sc, lay)
    with pytest.raises(TypeError, match="Triton kernels take"):
        tk.lut_gemm(x.double(), packed, cb, sc, lay)
    with pytest.raises(ValueError, match="1 <= B <= 8"):
        tk.lut_gemv(torch.randn(9, 42).to(DEVICE), packed, cb, sc, lay)
    with pytest.raises(ValueError, match="x must have shape"):
        tk.lut_gemv(torch.randn(2, 40).to(DEVICE), packed, cb, sc, lay)
