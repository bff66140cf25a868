"""The compressed-model directory: corrupted / truncated files and config-tensor mismatches raise
clear errors; a failed save never replaces a good directory."""
from __future__ import annotations

import json

import pytest
import torch

from vq.weights import format as F
from vq.weights.format import QuantizedWeight, quantize_codebook_8bit


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_tensor_file(saved, tmp_path):
    d = _copy(saved, tmp_path / "t")
    data = (d / F.MODEL_FILE).read_bytes()
    (d / F.MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        F.load(d)


def test_corrupted_header(saved, tmp_path):
    d = _copy(saved, tmp_path / "c")
    data = bytearray((d / F.MODEL_FILE).read_bytes())
    data[8:20] = b"\x00garbage!!!\x01"
    (d / F.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        F.load(d)


def test_corrupted_json(saved, tmp_path):
    d = _copy(saved, tmp_path / "j")
    (d / F.CONFIG_FILE).write_text('{"format": "vq", "layers": {')
    with pytest.raises(ValueError, match="corrupted or truncated"):
        F.load(d)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        F.load(tmp_path / "nope")


@pytest.mark.parametrize("field,value", [("bits", 4), ("tile_groups", 16), ("out_features", 48), ("kind", "lattice")])
def test_config_tensor_mismatch(saved, tmp_path, field, value):
    d = _copy(saved, tmp_path / f"m_{field}")
    cfg = json.loads((d / F.CONFIG_FILE).read_text())
    name = next(iter(cfg["layers"]))
    cfg["layers"][name][field] = value
    (d / F.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{name}.*(mismatch|unknown layer kind)"):
        F.load(d)


def test_missing_dense_tensor_in_config(saved, tmp_path):
    d = _copy(saved, tmp_path / "dense")
    cfg = json.loads((d / F.CONFIG_FILE).read_text())
    cfg["dense"].pop("model.norm.weight")
    (d / F.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config/tensor mismatch.*model.norm.weight"):
        F.load(d)


def test_failed_save_keeps_the_good_directory(saved, tmp_path, monkeypatch):
    d = _copy(saved, tmp_path / "keep")
    before = (d / F.MODEL_FILE).read_bytes()
    model = F.load(d)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(F, "write_tensors", boom)
    with pytest.raises(OSError):
        F.save(d, model, {}, {}, overwrite=True)
    assert (d / F.MODEL_FILE).read_bytes() == before
    F.load(d)


def test_codebook_8bit_is_exact_on_its_grid():
    cb = torch.randn(2, 3, 1, 16, 4)
    q = quantize_codebook_8bit(cb)
    deq = q["codebook_min"].float()[..., None, None] + q["codebook_scale"].float()[..., None, None] * q["codebooks_q"].float()
    step = q["codebook_scale"].float()[..., None, None]
    assert torch.all((deq - cb).abs() <= step / 2 + 1e-6)


def test_quantized_weight_rejects_inconsistent_tensors():
    codes = torch.randint(0, 16, (8, 4))
    qw = QuantizedWeight.from_vq(codes, torch.randn(1, 1, 16, 2), torch.ones(8), tile_rows=8, tile_groups=4)
    bad = dict(qw.tensors)
    bad["scales"] = torch.ones(7, dtype=torch.float16)
    with pytest.raises(ValueError, match="config/tensor mismatch: scales"):
        QuantizedWeight.from_stored(qw.meta(), bad, name="x")
    bad = dict(qw.tensors)
    bad["codebooks_q"] = bad["codebooks_q"].float()
    with pytest.raises(ValueError, match="mismatch"):
        QuantizedWeight.from_stored(qw.meta(), bad, name="x")


def test_module_shares_the_stored_layout_and_packed_codes():
    """to_module hands the stored packed codes and the very layout object to the VQLinear."""
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 12, (40, 6), generator=g)  # K = 12 in 4 bits
    qw = QuantizedWeight.from_vq(codes, torch.randn(3, 2, 12, 3, generator=g), torch.rand(40, generator=g) + 0.5,
                                 tile_rows=16, tile_groups=3, codebook_bits=None)
    assert (qw.layout.bits, qw.layout.row_tiles, qw.layout.group_tiles) == (4, 3, 2)
    mod = qw.to_module()
    assert mod.layout is qw.layout
    assert torch.equal(mod.codes, qw.tensors["codes"]) and mod.codes.data_ptr() != qw.tensors["codes"].data_ptr()
    assert torch.equal(mod.unpacked_codes()[..., 0], codes)
    assert torch.equal(mod.to_dense(), qw.dense())


def test_stored_layout_errors_name_the_layer():
    codes = torch.randint(0, 16, (8, 4))
    qw = QuantizedWeight.from_vq(codes, torch.randn(1, 1, 16, 2), torch.ones(8), tile_rows=8, tile_groups=4)
    for field, value in [("K", 17), ("d", 3), ("tile_rows", 0), ("bits", True)]:
        with pytest.raises(ValueError, match=f"^x: config/tensor mismatch: bad layout.*{field}"):
            QuantizedWeight.from_stored({**qw.meta(), field: value}, dict(qw.tensors), name="x")
    bad = dict(qw.tensors)
    bad["codebooks_q"] = bad["codebooks_q"].clone()
    bad["scales"] = torch.full((8,), float("nan"), dtype=torch.float16)
    with pytest.raises(ValueError, match="x: scales contains NaN"):
        QuantizedWeight.from_stored(qw.meta(), bad, name="x")


def test_stored_codes_out_of_range_are_caught():
    codes = torch.randint(0, 12, (8, 4))  # K = 12 in 4 bits: 12..15 are not codes
    qw = QuantizedWeight.from_vq(codes, torch.randn(1, 1, 12, 2), torch.ones(8), tile_rows=8, tile_groups=4)
    bad = dict(qw.tensors)
    bad["codes"] = torch.full_like(bad["codes"], -1)  # every field 15
    with pytest.raises(ValueError, match="x: codes out of range"):
        QuantizedWeight.from_stored(qw.meta(), bad, name="x")
