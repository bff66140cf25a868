"""FSQ: exact index <-> digit <-> point bijection, nearest-grid encode, round trips."""
import itertools
import math

import pytest
import torch

from vq.codebook import FSQ, load_codec, save_codec


@pytest.mark.parametrize("levels", [[2], [3], [3, 4, 5], [2, 2, 2], [8, 5], [4, 7, 2, 3]])
def test_whole_codebook_bijection(levels):
    f = FSQ(levels)
    n = math.prod(levels)
    idx = torch.arange(n)
    digits = f.index_to_codes(idx)
    # mixed radix, first coordinate least significant: matches itertools order reversed
    expect = torch.tensor([list(reversed(t)) for t in itertools.product(*[range(lv) for lv in reversed(levels)])])
    assert torch.equal(digits, expect)
    assert torch.equal(f.codes_to_index(digits), idx)
    pts = f.decode(idx[:, None])
    assert torch.unique(pts, dim=0).shape[0] == n  # distinct points
    assert torch.equal(f.encode(pts), idx[:, None])  # every index -> point -> same index
    assert pts.min() >= -1 and pts.max() <= 1


def test_large_codebook_random_indices():
    f = FSQ([8, 8, 8, 5, 5, 5])
    assert f.codebook_size == 64000
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, f.codebook_size, (5000,), generator=g)
    assert torch.equal(f.codes_to_index(f.index_to_codes(idx)), idx)
    assert torch.equal(f.encode(f.decode(idx[:, None]))[:, 0], idx)
    assert f.bits_per_vector() == pytest.approx(math.log2(64000))


def test_encode_is_nearest_grid_point():
    f = FSQ([3, 4, 5])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3000, 3, generator=g, dtype=torch.float64) * 2.6 - 1.3  # some outside [-1, 1]
    cb = f.codebook().double()
    d = torch.cdist(x, cb)
    best = d.min(dim=1).values
    got = d.gather(1, f.encode(x))[:, 0]
    assert torch.allclose(got, best, atol=1e-6)


def test_level_grids_odd_has_zero_even_offset():
    f = FSQ([5, 4])
    v = f.digits_to_values(torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3], [4, 3]]))
    assert v[:, 0].tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert v[:, 1].tolist() == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0, 1.0])


def test_fit_is_noop_and_save_load(tmp_path):
    f = FSQ([7, 6, 5])
    x = torch.randn(100, 3)
    assert f.fit(x) is f
    save_codec(f, tmp_path / "fsq.safetensors")
    g = load_codec(tmp_path / "fsq.safetensors")
    assert isinstance(g, FSQ) and g.levels == [7, 6, 5]
    assert torch.equal(g.encode(x), f.encode(x))
    assert f.overhead_bits() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        FSQ([])
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([3, 1])
    with pytest.raises(TypeError, match="int"):
        FSQ([3, 2.5])
    with pytest.raises(TypeError, match="list"):
        FSQ(5)
    with pytest.raises(ValueError, match="int64"):
        FSQ([1000] * 7)
    f = FSQ([3, 3])
    with pytest.raises(ValueError, match="dimension"):
        f.encode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        f.encode(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="out of range"):
        f.decode(torch.tensor([[9]]))
    with pytest.raises(ValueError, match="out of range"):
        f.codes_to_index(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="weights"):
        f.fit(torch.zeros(4, 2), torch.ones(3))
