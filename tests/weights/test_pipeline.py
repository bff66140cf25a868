"""The block-by-block pipeline on a tiny random Llama: resume, save/load exactness, bit
accounting against the bytes on disk, and every bad input's error."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vq.weights import format as F
from vq.weights import pipeline
from vq.weights.gptvq import GPTVQConfig
from vq.weights.pipeline import CompressConfig, compress, method_config

from .conftest import tiny_llama

GPTVQ_SMALL = GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=1024, block_cols=32, em_iters=4, update_iters=4)


def _config(method: str = "gptvq") -> CompressConfig:
    solver = GPTVQ_SMALL if method == "gptvq" else method_config(method, 3, group_size=32)
    return CompressConfig(solver=solver, batch_size=4, seed=3)


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        all(torch.equal(a[k].tensors[t], b[k].tensors[t]) for t in a[k].tensors) for k in a
    )


@pytest.mark.parametrize("method", ["rtn", "gptq", "gptvq"])
def test_save_load_forward_is_exact(method, calib, tmp_path):
    res = compress(tiny_llama(), _config(method), calib, progress=False)
    F.save(tmp_path / "m", res.model, res.layers, res.config.to_dict())
    loaded = F.load(tmp_path / "m")
    x = torch.randint(0, 256, (2, 40))
    assert torch.equal(res.model(x).logits, loaded(x).logits)
    names = [n for n, m in loaded.named_modules() if type(m).__name__ == "VQLinear"]
    assert len(names) == 14  # 2 blocks × 7 Linears
    assert not any(isinstance(m, nn.Linear) for n, m in loaded.named_modules() if n.startswith("model.layers"))


def test_calibrated_vq_tracks_the_original_better_than_rtn(calib):
    ref = tiny_llama()
    x = torch.randint(0, 256, (2, 40))
    a = ref(x).logits

    def err(solver):
        b = compress(tiny_llama(), CompressConfig(solver=solver, batch_size=4), calib, progress=False).model(x).logits
        return float((a - b).pow(2).mean() / a.pow(2).mean())

    assert err(GPTVQ_SMALL) < err(method_config("rtn", 2, group_size=32))


def test_resume_equals_uninterrupted(calib, tmp_path, monkeypatch):
    full = compress(tiny_llama(layers=3), _config(), calib, checkpoint_dir=tmp_path / "a", progress=False)

    class Killed(Exception):
        pass

    real = pipeline._save_block
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise Killed

    monkeypatch.setattr(pipeline, "_save_block", save_then_die)
    with pytest.raises(Killed):
        compress(tiny_llama(layers=3), _config(), calib, checkpoint_dir=tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["blocks_done"] == 1
    resumed = compress(tiny_llama(layers=3), _config(), calib, checkpoint_dir=tmp_path / "b", resume=True,
                       progress=False)
    assert _tensors_equal(full.layers, resumed.layers)
    x = torch.randint(0, 256, (2, 40))
    assert torch.equal(full.model(x).logits, resumed.model(x).logits)


def test_resume_rejects_a_different_run(calib, tmp_path):
    compress(tiny_llama(), _config(), calib, checkpoint_dir=tmp_path / "c", progress=False)
    other = CompressConfig(solver=GPTVQ_SMALL, batch_size=4, seed=4)
    with pytest.raises(ValueError, match="different model, calibration text or config"):
        compress(tiny_llama(), other, calib, checkpoint_dir=tmp_path / "c", resume=True, progress=False)


def test_bit_accounting_matches_bytes_on_disk(calib, tmp_path):
    res = compress(tiny_llama(), _config("gptvq"), calib, progress=False)
    out = F.save(tmp_path / "m", res.model, res.layers, res.config.to_dict())
    cfg = json.loads((out / F.CONFIG_FILE).read_text())
    per_layer: dict[str, int] = {name: 0 for name in cfg["layers"]}
    dense_bytes = 0
    with safe_open(str(out / F.MODEL_FILE), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            owner = [n for n in per_layer if key.startswith(n + ".") and key[len(n) + 1 :] != "bias"]
            if owner:
                per_layer[owner[0]] += t.numel() * t.element_size() * 8
            else:
                dense_bytes += t.numel() * t.element_size()
    for name, meta in cfg["layers"].items():
        assert meta["nbits"] == per_layer[name]
        assert meta["bits_per_weight"] == per_layer[name] / (meta["out_features"] * meta["in_features"])
    total_bits = sum(per_layer.values())
    assert cfg["bits"]["nbits"] == total_bits == res.report["nbits"]
    n_weights = sum(m["out_features"] * m["in_features"] for m in cfg["layers"].values())
    assert cfg["bits"]["bits_per_weight"] == pytest.approx(total_bits / n_weights, rel=1e-12)
    # the file is the payload plus the safetensors header (JSON) and nothing else
    size = (out / F.MODEL_FILE).stat().st_size
    with open(out / F.MODEL_FILE, "rb") as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")
    assert size == header + total_bits // 8 + dense_bytes


def test_gptvq_bits_by_hand():
    """Codes + 8-bit codebooks with their fp16 scale/min + fp16 row scales, for one layer."""
    W = torch.randn(96, 128) * 0.02
    H = torch.eye(128, dtype=torch.float64)
    cfg = GPTVQConfig(dim=4, index_bits=8, weights_per_codebook=8192, block_cols=64, em_iters=2, update_iters=0)
    from vq.weights.gptvq import gptvq_quantize, tile_shape

    q = gptvq_quantize(W, H, cfg)
    tile_rows, cols = tile_shape(96, 128, cfg)
    n_tiles = -(-96 // tile_rows) * (128 // cols)
    words = -(-(128 // 4) * 8 // 32)
    expect = 96 * words * 32 + n_tiles * (256 * 4 * 8 + 2 * 16) + 96 * 16
    assert q.nbits() == expect


# -- bad inputs -----------------------------------------------------------------------------------
class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(8)])


def test_model_without_linear_layers(calib):
    with pytest.raises(ValueError, match="no nn.Linear layers"):
        compress(NoLinear(), _config(), calib, progress=False)


def test_model_without_blocks(calib):
    with pytest.raises(ValueError, match="no decoder-block stack"):
        compress(nn.Sequential(nn.Linear(4, 4)), _config(), calib, progress=False)


def test_nan_in_weights(calib):
    m = tiny_llama()
    m.model.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"1\.mlp\.up_proj.*NaN"):
        compress(m, _config(), calib, progress=False)


def test_nan_in_activations(calib):
    m = tiny_llama()
    m.model.embed_tokens.weight[:] = float("nan")
    with pytest.raises(ValueError, match="activations.*NaN"):
        compress(m, _config(), calib, progress=False)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'awq'"):
        method_config("awq", 2)
    with pytest.raises(ValueError, match="unknown method"):
        CompressConfig.from_dict({"method": "awq"})
    with pytest.raises(TypeError, match="unknown solver config"):
        CompressConfig(solver=object())


def test_bad_calibration_tensor():
    with pytest.raises(ValueError, match="calib must be"):
        compress(tiny_llama(), _config(), torch.zeros(0, 64, dtype=torch.long), progress=False)


def test_config_round_trips_through_json():
    for method in ("rtn", "gptq", "gptvq"):
        c = CompressConfig(solver=method_config(method, 2), seed=7)
        assert CompressConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_dim_not_dividing_in_features_falls_back_per_layer(calib):
    """64 % 3 != 0: every layer takes d=2 with index_bits scaled to round(4·2/3)=3, reported."""
    solver = GPTVQConfig(dim=3, index_bits=4, weights_per_codebook=1024, block_cols=48)
    res = compress(tiny_llama(), CompressConfig(solver=solver), calib, progress=False)
    assert {(q.layout.d, q.layout.K) for q in res.layers.values()} == {(2, 8)}
    assert res.report["notes"]["model.layers.0.self_attn.q_proj"] == (
        "in_features=64 is not a multiple of dim=3: dim=2, index_bits=3")


def test_resume_from_a_corrupted_checkpoint(calib, tmp_path):
    compress(tiny_llama(), _config(), calib, checkpoint_dir=tmp_path / "k", progress=False)
    f = tmp_path / "k" / "block_0000.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="block_0000.safetensors is corrupted or truncated"):
        compress(tiny_llama(), _config(), calib, checkpoint_dir=tmp_path / "k", resume=True, progress=False)
