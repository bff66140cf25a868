"""CPU fast path (C++ LUT kernels and the torch fallback) against the float64 reference."""
import subprocess
import sys

import pytest
import torch

from vq_kernels import cpu, ops, reference
from vq_kernels.packing import pack_codes


@pytest.fixture(params=["native", "torch"])
def impl(request, monkeypatch):
    if request.param == "native":
        if not cpu.native_available():
            pytest.skip("C++ CPU kernels could not be built here")
    else:
        monkeypatch.setattr(cpu, "_native", lambda: None)
    return request.param


def test_dequantize_bit_exact(case, impl):
    codes, cb, sc, lay = case.make(seed=10)
    idx = cpu.prepare(codes, lay)
    want = reference.dequantize(codes, cb, sc, lay.tile_rows, lay.tile_groups)
    assert torch.equal(cpu.dequantize(idx, cb, sc, lay), want)
    assert torch.equal(cpu.dequantize(idx, cb, sc, lay, slice(1, 5)), want[1:5])


@pytest.mark.parametrize("batch", [1, 3, 8, 11, 130])
def test_linear_matches_float64_reference(case, impl, batch, rel_err):
    codes, cb, sc, lay = case.make(seed=20 + batch)
    idx = cpu.prepare(pack_codes(codes, lay.bits), lay)  # also exercises prepare() on packed codes
    x = torch.randn(batch, case.inp, generator=torch.Generator().manual_seed(batch))
    ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double(), lay.tile_rows, lay.tile_groups)
    y = cpu.linear(x, idx, cb, sc, lay)
    assert y.shape == (batch, case.out) and y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-5
    if batch <= cpu.GEMV_MAX_BATCH:  # the GEMM path also serves small batches
        assert rel_err(cpu.lut_gemm(x, idx, cb, sc, lay), ref) < 1e-5


def test_four_bit_index_for_small_codebooks():
    from vq_kernels.layout import VQLayout

    if not cpu.native_available():
        pytest.skip("C++ CPU kernels could not be built here")
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (37, 9, 1), generator=g)  # J = 9: the last pair is half padding
    lay = VQLayout.infer(codes, torch.zeros(1, 1, 1, 16, 2))
    idx = cpu.prepare(codes, lay)
    assert cpu.index_format(lay) == "u4" and idx.dtype == torch.uint8 and idx.shape == (3, 5, 16)
    assert int(idx[0, 0, 1]) == int(codes[1, 0, 0]) | int(codes[1, 1, 0]) << 4  # row 1, slots 0 and 1
    assert int(idx[2, 4, 4]) == int(codes[36, 8, 0])  # row 36 = block 2 lane 4, slot 8, high nibble 0
    assert torch.equal(idx[2, :, 5:], torch.zeros(5, 11, dtype=torch.uint8))  # padding rows
    tiled = VQLayout.infer(codes, torch.zeros(2, 1, 1, 16, 2), tile_rows=20)  # 20-row tiles: byte index
    assert cpu.index_format(tiled) == "u8"


def test_four_bit_kernels_without_avx512(rel_err, monkeypatch):
    """The portable loops (a build without AVX-512, as on a CPU without it) agree with the reference."""
    from vq_kernels.layout import VQLayout
    from vq_kernels.native import load_library

    if not cpu.native_available():
        pytest.skip("C++ CPU kernels could not be built here")
    dll = load_library(cpu._SRC, [*cpu._FLAGS, "-mno-avx512f"], "g++")
    assert dll is not None and dll.vq_lut16_vectorised() == 0
    monkeypatch.setattr(cpu, "_native", lambda: cpu._bind(dll))
    cpu._vectorised_u4.cache_clear()
    try:
        g = torch.Generator().manual_seed(6)
        codes = torch.randint(0, 12, (45, 11, 2), generator=g)
        cb, sc = torch.randn(3, 4, 2, 12, 4, generator=g), torch.rand(45, generator=g) + 0.5
        lay = VQLayout.infer(codes, cb, tile_rows=16, tile_groups=3)
        idx = cpu.prepare(codes, lay)
        assert cpu.index_format(lay) == "u4"
        want = reference.dequantize(codes, cb, sc, 16, 3)
        assert torch.equal(cpu.dequantize(idx, cb, sc, lay), want)
        for b in (1, 5, 200):
            x = torch.randn(b, 44, generator=g)
            ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double(), 16, 3)
            assert rel_err(cpu.linear(x, idx, cb, sc, lay), ref) < 1e-5
    finally:
        cpu._vectorised_u4.cache_clear()


def test_half_codebooks(rel_err):
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 256, (20, 6, 2), generator=g)
    cb = torch.randn(1, 1, 2, 256, 8, generator=g).half()
    sc = torch.rand(20, generator=g).half()
    from vq_kernels.layout import VQLayout

    lay = VQLayout.infer(codes, cb)
    idx = cpu.prepare(codes, lay)
    assert torch.equal(cpu.dequantize(idx, cb, sc, lay), reference.dequantize(codes, cb, sc))
    x = torch.randn(2, 48, generator=g)
    ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double())
    assert rel_err(cpu.lut_gemv(x, idx, cb, sc, lay), ref) < 1e-5


def test_ops_dispatch_to_cpu_for_packed_codes(rel_err):
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 16, (7, 10, 1), generator=g)
    cb, sc = torch.randn(1, 1, 1, 16, 4, generator=g), torch.rand(7, generator=g)
    packed = pack_codes(codes, 4)
    w = ops.dequantize(packed, cb, sc, 40, 4, 7, 10)
    assert torch.equal(w, reference.dequantize(codes, cb, sc))
    for b in (1, 9):
        x = torch.randn(b, 40, generator=g)
        ref = reference.vq_linear(x.double(), codes, cb.double(), sc.double())
        assert rel_err(ops.lut_gemv(x, packed, cb, sc, 40, 4, 7, 10) if b == 1 else ops.lut_gemm(x, packed, cb, sc, 40, 4, 7, 10), ref) < 1e-5


def test_out_of_range_codes_raise_before_any_gather(monkeypatch):
    # K = 5 with 3-bit codes: 5, 6, 7 are representable but invalid
    codes = torch.zeros(4, 3, 1, dtype=torch.long)
    codes[2, 1, 0] = 6
    packed = pack_codes(codes, 3)
    cb, sc = torch.randn(1, 1, 1, 5, 2), torch.ones(4)

    def boom(*a, **k):
        raise AssertionError("a kernel ran")

    monkeypatch.setattr(cpu, "_native", boom)
    monkeypatch.setattr(cpu, "_tables", boom)
    with pytest.raises(ValueError, match="out of range"):
        ops.dequantize(packed, cb, sc, 6, 3, 4, 3)
    with pytest.raises(ValueError, match="out of range"):
        ops.lut_gemv(torch.randn(1, 6), packed, cb, sc, 6, 3, 4, 3)


def test_launchers_validate_inputs():
    codes = torch.zeros(4, 3, 1, dtype=torch.long)
    cb, sc = torch.randn(1, 1, 1, 8, 2), torch.ones(4)
    packed = pack_codes(codes, 3)
    with pytest.raises(TypeError, match="int32"):
        ops.dequantize(packed.long(), cb, sc, 6, 3, 4, 3)
    with pytest.raises(ValueError, match="codebooks must have shape"):
        ops.dequantize(packed, torch.randn(2, 1, 1, 8, 2), sc, 6, 3, 4, 3)
    with pytest.raises(ValueError, match="scales"):
        ops.dequantize(packed, cb, sc[:3], 6, 3, 4, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        ops.lut_gemv(torch.randn(1, 8), packed, cb, sc, 6, 3, 4, 3)
    with pytest.raises(TypeError, match="float"):
        ops.lut_gemv(torch.ones(1, 6, dtype=torch.long), packed, cb, sc, 6, 3, 4, 3)
    with pytest.raises(ValueError, match="multiple of d"):
        ops.dequantize(packed, cb, sc, 7, 3, 4, 3)


def test_native_build_falls_back_without_compiler(tmp_path):
    """No compiler -> a logged warning and the torch path, never a crash."""
    code = (
        "import torch, vq_kernels.cpu as c; from vq_kernels.layout import VQLayout;"
        "lay = VQLayout(3, 4, 2, 1, 4, 2, 3, 2); idx = c.prepare(torch.zeros(3, 2, 1, dtype=torch.long), lay);"
        "y = c.lut_gemv(torch.ones(1, 4), idx, torch.ones(1, 1, 1, 4, 2), torch.ones(3), lay);"
        "print(c.native_available(), y.tolist())"
    )
    env = {"VQ_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/g++", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "False [[4.0, 4.0, 4.0]]"


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and dispatch of every op agree (torch.library.opcheck)."""
    from vq_kernels.layout import VQLayout

    g = torch.Generator().manual_seed(9)
    codes = torch.randint(0, 16, (10, 6, 2), generator=g)
    cb, sc = torch.randn(2, 1, 2, 16, 4, generator=g), torch.rand(10, generator=g) + 0.5
    lay = VQLayout(10, 24, 4, 2, 16, 4, 5, 6)
    packed = pack_codes(codes, 4)
    meta = (24, 4, 5, 6)
    x1, x9 = torch.randn(1, 24, generator=g), torch.randn(9, 24, generator=g)
    torch.library.opcheck(torch.ops.vq.dequantize.default, (packed, cb, sc, *meta))
    torch.library.opcheck(torch.ops.vq.lut_gemv.default, (x1, packed, cb, sc, *meta))
    torch.library.opcheck(torch.ops.vq.lut_gemm.default, (x9, packed, cb, sc, *meta))
    torch.library.opcheck(torch.ops.vq.cpu_linear.default, (x1, cpu.prepare(codes, lay), cb, sc, *meta))


def test_failed_build_leaves_no_files(tmp_path):
    code = "import vq_kernels.cpu as c; print(c.native_available())"
    env = {"VQ_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/g++", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    assert list(tmp_path.iterdir()) == []
