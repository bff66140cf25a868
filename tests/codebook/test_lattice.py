"""Lattice codebooks: E8 nearest point vs brute force, E8P (65536 points, exact nearest),
PVQ exact enumeration."""
import itertools
import json
import math

import pytest
import torch

from vq.codebook import E8, E8P, PVQ, load_codec, save_codec
from vq.codebook.lattice import _e8p_encode_unit, e8p_codebook, e8p_source_points, pyramid_count


# -- E8 ------------------------------------------------------------------------------------------
def _offsets() -> torch.Tensor:
    """All vectors in {-1, 0, 1}^8 with at most 4 non-zero entries, (1697, 8)."""
    off = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=8)), dtype=torch.float64)
    return off[(off != 0).sum(1) <= 4]


def _brute_e8(x: torch.Tensor) -> torch.Tensor:
    """Squared distance to the nearest E8 point by exhaustive search over a candidate set that
    provably contains it: E8's covering radius is 1, so the nearest point p has |x - p|^2 <= 1.
    In its coset (c = 0 or 1/2) let r = round(x - c) + c; then p_i - r_i is in {-1, 0, 1} and
    every coordinate with p_i != r_i costs at least 1/4, so at most 4 coordinates differ."""
    off = _offsets()
    best = []
    for xc in x.split(100):  # (c, 8)
        d_min = None
        for c in (0.0, 0.5):
            p = torch.round(xc - c)[:, None, :] + c + off  # (c, 1697, 8) candidates
            d = ((p - xc[:, None, :]) ** 2).sum(2)
            d = d.masked_fill((p.sum(2) % 2) != 0, float("inf")).min(1).values  # even sum only
            d_min = d if d_min is None else torch.minimum(d_min, d)
        best.append(d_min)
    return torch.cat(best)


def _in_e8(p: torch.Tensor) -> torch.Tensor:
    frac = p - torch.floor(p)
    all_int = (frac == 0).all(1)
    all_half = (frac == 0.5).all(1)
    return (all_int | all_half) & ((p.sum(1) % 2) == 0)


@pytest.mark.parametrize("scale", [0.37, 1.0, 2.5])
def test_e8_nearest_matches_brute_force(scale):
    g = torch.Generator().manual_seed(int(scale * 100))
    x = torch.randn(700, 8, generator=g, dtype=torch.float64) * 3.0
    lat = E8(scale)
    p = lat.nearest(x)
    assert p.dtype == torch.float64 and p.shape == x.shape
    z = torch.round(p / scale * 2) / 2  # unscaled lattice coordinates (exact half-integers)
    assert torch.allclose(z * scale, p, rtol=0, atol=1e-12)
    assert bool(_in_e8(z).all())
    got = ((x - p) ** 2).sum(1)
    ref = _brute_e8(x / scale) * scale**2
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_e8_nearest_of_lattice_points_and_float32():
    # lattice points (from both cosets) map to themselves
    g = torch.Generator().manual_seed(3)
    z = torch.randint(-3, 4, (500, 8), generator=g).double()
    z[:, 0] += z.sum(1) % 2  # even sum -> D8
    pts = torch.cat([z, z + 0.5])
    assert torch.equal(E8().nearest(pts), pts)
    x32 = torch.randn(100, 8, generator=g)
    assert E8(0.5).nearest(x32).dtype == torch.float32


def test_e8_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        E8(0.0)
    with pytest.raises(ValueError, match="scale"):
        E8(float("nan"))
    with pytest.raises(TypeError, match="scale"):
        E8("1")
    with pytest.raises(ValueError, match="dimension"):
        E8().nearest(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="NaN"):
        E8().nearest(torch.full((1, 8), float("inf")))


# -- E8P -----------------------------------------------------------------------------------------
def test_e8p_codebook_structure():
    src = e8p_source_points()
    assert src.shape == (256, 8) and torch.unique(src, dim=0).shape[0] == 256
    norms = (src**2).sum(1)
    assert int((norms <= 10).sum()) == 227 and int((norms == 12).sum()) == 29
    cb = e8p_codebook()
    assert cb.shape == (65536, 8)
    assert torch.unique(cb, dim=0).shape[0] == 65536  # distinct
    # every point is an E8 (D8 + 1/2) point shifted by +-1/4 on all coordinates
    for delta in (0.25, -0.25):
        part = cb[(cb[:, 0] - delta - 0.5) % 1 == 0]
        assert part.shape[0] == 32768
        assert bool(_in_e8(part - delta).all())


def test_e8p_roundtrip_whole_codebook():
    q = E8P()
    cb = q.decode(torch.arange(65536)[:, None])
    assert torch.equal(q.encode(cb)[:, 0], torch.arange(65536))
    assert q.bits_per_vector() == 16.0


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_e8p_encode_is_exact_nearest(scale):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64) * scale
    cb = e8p_codebook()
    codes = E8P().encode(x)[:, 0]
    for lo in range(0, 300, 100):
        d = torch.cdist(x[lo : lo + 100], cb) ** 2  # (100, 65536) brute force
        got = d.gather(1, codes[lo : lo + 100, None])[:, 0]
        assert torch.allclose(got, d.min(1).values, rtol=0, atol=1e-10)


def test_e8p_pruned_search_equals_full_search():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1500, 8, generator=g, dtype=torch.float64)
    full = _e8p_encode_unit(x, topk=256)
    assert torch.equal(_e8p_encode_unit(x, topk=1), full)  # forces the exact fallback path
    assert torch.equal(_e8p_encode_unit(x, topk=8, chunk=777), full)


def test_e8p_fit_scale_lowers_error_and_save_load(tmp_path):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1000, 8, generator=g) * 0.02  # weight-like magnitudes
    q = E8P()
    err_unit = float(((q.reconstruct(x) - x) ** 2).mean())
    q.fit(x)
    err_fit = float(((q.reconstruct(x) - x) ** 2).mean())
    assert err_fit < 0.1 * err_unit
    # fitted scale is (locally) least-squares: a nearby scale is no better
    for f in (0.95, 1.05):
        q2 = E8P().load_state_dict({"scale": q.scale * f})
        assert float(((q2.reconstruct(x) - x) ** 2).mean()) >= err_fit * (1 - 1e-6)
    # 2 bits/weight on Gaussian data: well above 2-bit scalar (Lloyd-Max ~9.3 dB)
    sqnr = 10 * math.log10(float((x**2).sum()) / float(((q.reconstruct(x) - x) ** 2).sum()))
    assert sqnr > 9.3
    save_codec(q, tmp_path / "e8p.safetensors")
    r = load_codec(tmp_path / "e8p.safetensors")
    assert torch.equal(r.scale, q.scale)
    assert torch.equal(r.encode(x), q.encode(x))
    assert torch.equal(r.decode(q.encode(x)), q.decode(q.encode(x)))


def test_e8p_weighted_fit_prefers_heavy_rows():
    g = torch.Generator().manual_seed(10)
    x = torch.cat([torch.randn(500, 8, generator=g), 5 * torch.randn(500, 8, generator=g)])
    w = torch.cat([torch.ones(500), torch.full((500,), 1e-3)])
    s_w = float(E8P().fit(x, w).scale)
    s_u = float(E8P().fit(x).scale)
    assert s_w < s_u


def test_e8p_bad_inputs():
    q = E8P()
    with pytest.raises(ValueError, match="out of range"):
        q.decode(torch.tensor([[65536]]))
    with pytest.raises(ValueError, match="dimension"):
        q.encode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        q.fit(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="weights"):
        q.fit(torch.zeros(2, 8), -torch.ones(2))
    with pytest.raises(ValueError, match="scale"):
        q.load_state_dict({"scale": torch.tensor([-1.0])})
    with pytest.raises(ValueError, match="niter"):
        E8P(niter=-1)


# -- PVQ -----------------------------------------------------------------------------------------
def _all_pyramid_points(d: int, k: int) -> set[tuple[int, ...]]:
    return {p for p in itertools.product(range(-k, k + 1), repeat=d) if sum(map(abs, p)) == k}


@pytest.mark.parametrize("d,k", [(1, 3), (2, 1), (3, 4), (4, 3), (5, 2), (6, 1)])
def test_pvq_whole_codebook_bijection(d, k):
    pts = _all_pyramid_points(d, k)
    assert pyramid_count(d, k) == len(pts)
    pv = PVQ(d, k)
    idx = torch.arange(pv.num_shapes)
    y = pv.index_to_point(idx)
    assert {tuple(r) for r in y.tolist()} == pts  # onto, and distinct (sizes equal)
    assert torch.equal(pv.point_to_index(y), idx)
    assert torch.equal(pv.project(y.double()), y)  # lattice points project onto themselves


def test_pvq_large_random_indices():
    pv = PVQ(16, 10)
    assert pv.num_shapes == pyramid_count(16, 10)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, pv.num_shapes, (5000,), generator=g)
    y = pv.index_to_point(idx)
    assert bool((y.abs().sum(1) == 10).all())
    assert torch.equal(pv.point_to_index(y), idx)
    assert torch.equal(pv.project(y.float()), y)
    assert torch.equal(pv.point_to_index(pv.project(y.double() * 0.37)), idx)  # scale-invariant
    ends = torch.tensor([0, pv.num_shapes - 1])
    assert torch.equal(pv.point_to_index(pv.index_to_point(ends)), ends)


def test_pvq_projection_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 12, generator=g, dtype=torch.float64)
    x[0] = 0.0
    pv = PVQ(12, 7)
    y = pv.project(x)
    assert bool((y.abs().sum(1) == 7).all())
    assert bool(((y == 0) | (torch.sign(y) == torch.sign(x)) | (x == 0)).all())


@pytest.mark.parametrize("d,k", [(4, 5), (6, 4), (3, 9)])
def test_pvq_projection_near_exhaustive_optimum(d, k):
    # the best shape maximises the cosine to x; compare with an exhaustive search over all shapes
    pv = PVQ(d, k)
    allp = pv.index_to_point(torch.arange(pv.num_shapes)).double()
    u = allp / allp.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(d * 10 + k)
    x = torch.randn(2000, d, generator=g, dtype=torch.float64)
    xn = x / x.norm(dim=1, keepdim=True)
    opt = (xn @ u.T).max(1).values
    y = pv.project(x).double()
    got = (xn * y / y.norm(dim=1, keepdim=True)).sum(1)
    assert float((got >= opt - 1e-12).double().mean()) > 0.95  # optimal on most rows
    assert float((1 - got**2).mean()) <= 1.02 * float((1 - opt**2).mean())


def test_pvq_more_pulses_lower_error_and_codec_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 8, generator=g)
    errs = []
    for k in (2, 4, 8, 16):
        pv = PVQ(8, k, gain_bits=8).fit(x)
        errs.append(float(((pv.reconstruct(x) - x) ** 2).mean()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.5 * errs[0]
    codes = pv.encode(x)
    assert codes.shape == (3000, 2) and codes.dtype == torch.int64
    save_codec(pv, tmp_path / "pvq.safetensors")
    r = load_codec(tmp_path / "pvq.safetensors")
    assert torch.equal(r.gain_range, pv.gain_range)
    assert torch.equal(r.encode(x), codes)
    assert torch.equal(r.decode(codes), pv.decode(codes))
    assert pv.bits_per_vector() == math.ceil(math.log2(pyramid_count(8, 16))) + 8


def _write_pvq_file(path, config: dict, gain_range) -> None:
    """A PVQ file as save_codec writes it, with a hand-written config (e.g. an old one)."""
    from safetensors.torch import save_file

    save_file({"gain_range": gain_range}, str(path), metadata={"codec": "PVQ", "config": json.dumps(config)})


def test_pvq_config_names_the_pulses_and_old_files_with_key_K_still_load(tmp_path):
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(3))
    pv = PVQ(8, pulses=5, gain_bits=6).fit(x)
    assert pv.config() == {"dim": 8, "pulses": 5, "gain_bits": 6}
    # written before the rename: the pulse count under "K"
    _write_pvq_file(tmp_path / "old.safetensors", {"dim": 8, "K": 5, "gain_bits": 6}, pv.gain_range)
    old = load_codec(tmp_path / "old.safetensors")
    assert old.config() == pv.config()
    assert torch.equal(old.encode(x), pv.encode(x))
    _write_pvq_file(tmp_path / "bad.safetensors", {"dim": 8, "pulse": 5}, pv.gain_range)
    with pytest.raises(ValueError, match="does not match PVQ's arguments"):
        load_codec(tmp_path / "bad.safetensors")


def test_pvq_gain_and_zero_vector():
    pv = PVQ(4, 3, gain_bits=4)
    x = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 30.0, 0.0, 0.0]])
    pv.fit(x)
    codes = pv.encode(x)
    assert codes[1, 1] == 0  # zero vector -> gain index 0
    xhat = pv.decode(codes)
    assert torch.equal(xhat[1], torch.zeros(4))
    assert torch.allclose(xhat[[0, 2]], x[[0, 2]], rtol=1e-5)  # range ends are exact levels


def test_pvq_bad_inputs():
    with pytest.raises(ValueError, match="dim"):
        PVQ(0, 3)
    with pytest.raises(ValueError, match="pulses"):
        PVQ(4, 0)
    with pytest.raises(ValueError, match="int64"):
        PVQ(200, 200)
    with pytest.raises(ValueError, match="gain_bits"):
        PVQ(4, 2, gain_bits=0)
    with pytest.raises(TypeError, match="pulses"):
        PVQ(4, 2.0)
    pv = PVQ(4, 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        pv.encode(torch.randn(3, 4))
    with pytest.raises(ValueError, match="L1 norm"):
        pv.point_to_index(torch.tensor([[1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="integer"):
        pv.point_to_index(torch.tensor([[1.5, 0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="out of range"):
        pv.index_to_point(torch.tensor([pv.num_shapes]))
    pv.fit(torch.randn(10, 4))
    with pytest.raises(ValueError, match="out of range"):
        pv.decode(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="dimension"):
        pv.encode(torch.randn(3, 5))
    with pytest.raises(ValueError, match="all zero"):
        PVQ(4, 2).fit(torch.zeros(3, 4))
