"""Bit packing: exact round trip at every width, the documented stream layout, bad input."""
import pytest
import torch

from vq_kernels.packing import pack_codes, unpack_codes, words_per_row


@pytest.mark.parametrize("bits", range(1, 17))
def test_round_trip_every_width(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (5, 13, 3), generator=g)
    codes[0] = (1 << bits) - 1  # all-ones row: every bit of the stream set
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, words_per_row(13, 3, bits))
    assert torch.equal(unpack_codes(packed, bits, 13, 3), codes)


def _stream_bits(codes_row, bits):
    return [(int(c) >> i) & 1 for c in codes_row for i in range(bits)]


@pytest.mark.parametrize("bits", [3, 7, 12])
def test_layout_is_little_endian_stream(bits):
    """Word w bit i == stream bit 32*w+i; unused high bits of the last word are zero."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1 << bits, (2, 11, 2), generator=g)
    packed = pack_codes(codes, bits)
    for r in range(2):
        stream = _stream_bits(codes[r].reshape(-1), bits)
        words = [int(w) & 0xFFFFFFFF for w in packed[r]]
        got = [(words[b // 32] >> (b % 32)) & 1 for b in range(32 * len(words))]
        assert got[: len(stream)] == stream
        assert not any(got[len(stream):])


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="does not fit"):
        pack_codes(torch.tensor([[[4]]]), 2)
    with pytest.raises(ValueError, match="does not fit"):
        pack_codes(torch.tensor([[[-1]]]), 2)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(1, 1, 1, dtype=torch.long), 17)
    with pytest.raises(TypeError):
        pack_codes(torch.zeros(1, 1, 1), 4)
    with pytest.raises(ValueError, match="shape"):
        pack_codes(torch.zeros(1, 1, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="shape"):
        unpack_codes(torch.zeros(2, 5, dtype=torch.int32), 4, 3, 1)
    with pytest.raises(TypeError, match="int32"):
        unpack_codes(torch.zeros(2, 1, dtype=torch.int64), 4, 3, 1)


def test_code_bits_is_the_smallest_width_holding_k():
    from vq_kernels.packing import index_bits

    for K in range(1, 70000, 97):
        want = next(b for b in range(1, 18) if (1 << b) >= K)  # brute force
        assert index_bits(K) == want
    assert [index_bits(k) for k in (1, 2, 3, 4, 5, 16, 17, 256, 257, 65536)] == [1, 1, 2, 2, 3, 4, 5, 8, 9, 16]


def test_layout_pack_unpack_equal_the_checked_functions():
    from vq_kernels.layout import VQLayout

    lay = VQLayout.make(7, 30, d=3, K=40, M=2)  # 6 bits, 10 groups x 2 codes per row
    assert (lay.bits, lay.tile_rows, lay.tile_groups, lay.words_per_row) == (6, 7, 10, 4)
    codes = torch.randint(0, 40, (7, 10, 2), generator=torch.Generator().manual_seed(3))
    packed = lay.pack(codes)
    assert torch.equal(packed, pack_codes(codes, 6))
    assert torch.equal(lay.unpack(packed), unpack_codes(packed, 6, 10, 2))
    assert torch.equal(lay.unpack(packed), codes)
