"""Models saved by the format-1 code (tests/data/, written at eeccebb by format_v1.py) still load
and compute what that code computed; today's solvers still write the very same tensors."""
from __future__ import annotations

import json

import pytest
import torch

from vq.weights import format as F

from .format_v1 import DATA, DENSE_LAYERS, compress_fixture, fixture_dir, solvers

FIXTURES = sorted(solvers())


@pytest.mark.parametrize("name", FIXTURES)
def test_format_1_model_loads_and_computes_what_it_did(name, tmp_path):
    model = F.load(fixture_dir(name, tmp_path / name))
    expected, _ = F.read_tensors(DATA / f"{name}.expected.safetensors")
    for layer in DENSE_LAYERS:
        mod = model.get_submodule(layer)
        assert type(mod).__name__ == "VQLinear"
        assert torch.equal(mod.to_dense(), expected[f"dense.{layer}"])  # decode is exact
    logits = model(expected["input_ids"]).logits
    # the same kernels on the same decoded weights; a tolerance only for the summation order
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FIXTURES)
def test_format_1_layers_reload_to_the_same_stored_tensors(name, tmp_path):
    """Reading a stored layer and writing it again gives the very same tensors and JSON entry."""
    cfg = F.read_json(DATA / f"{name}.vq_config.json")
    tensors, _ = F.read_tensors(DATA / f"{name}.model.safetensors")
    for layer, meta in cfg["layers"].items():
        own = {k[len(layer) + 1 :]: v for k, v in tensors.items() if k.startswith(layer + ".") and
               not k.endswith(".bias")}
        qw = F.QuantizedWeight.from_stored(meta, own, name=layer)
        assert qw.meta() == meta
        assert qw.tensors.keys() == own.keys() and all(torch.equal(qw.tensors[k], own[k]) for k in own)


@pytest.mark.parametrize("name", ["v1_rtn", "v1_gptq"])
def test_solvers_write_the_format_1_tensors_bit_for_bit(name):
    """rtn / gptq are deterministic: today's code must store exactly what format-1 code stored.
    (gptvq depends on k-means seeding, which may change; its fixtures are checked by loading.)"""
    res = compress_fixture(name)
    stored, _ = F.read_tensors(DATA / f"{name}.model.safetensors")
    cfg = json.loads((DATA / f"{name}.vq_config.json").read_text())
    for layer, qw in res.layers.items():
        assert qw.meta() == cfg["layers"][layer]
        for k, t in qw.tensors.items():
            assert t.dtype == stored[f"{layer}.{k}"].dtype and torch.equal(t, stored[f"{layer}.{k}"]), (layer, k)


def test_format_1_compress_config_reads_the_old_gptvq_key():
    """Format 1 stored gptvq's weights per codebook as ``group_size``; it reads back renamed."""
    from vq.weights.gptvq import GPTVQConfig
    from vq.weights.pipeline import CompressConfig

    for name in ("v1_gptvq8", "v1_gptvq16"):
        stored = F.read_json(DATA / f"{name}.vq_config.json")["compress"]
        assert "group_size" in stored["solver"]
        cfg = CompressConfig.from_dict(stored)
        assert cfg.solver == solvers()[name] and cfg.solver.weights_per_codebook == stored["solver"]["group_size"]
    new = GPTVQConfig(weights_per_codebook=4096).to_dict()
    assert "group_size" not in new and GPTVQConfig.from_dict(new) == GPTVQConfig(weights_per_codebook=4096)
    assert GPTVQConfig.from_dict({"group_size": 512, "weights_per_codebook": 512}).weights_per_codebook == 512
    with pytest.raises(ValueError, match="both group_size=512 .*weights_per_codebook=1024"):
        GPTVQConfig.from_dict({"group_size": 512, "weights_per_codebook": 1024})
