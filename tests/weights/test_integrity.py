"""Compressed model directories: per-tensor checksums (verified by vq.load and `vq verify`),
old directories without them still load, config.json sizes are checked before allocation, and
NaN / Inf codebooks never enter a VQLinear."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from vq.cli import main
from vq.codebook._integrity import CHECKSUM_KEY
from vq.weights import format as F
from vq.weights.nn import VQLinear


@pytest.fixture
def copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "m")


def _codes_key(d) -> str:
    layer = next(iter(F.read_json(d / F.CONFIG_FILE)["layers"]))
    return f"{layer}.weight"  # a quantized layer's packed codes


def _logits(model) -> torch.Tensor:
    return model(torch.arange(12)[None]).logits


def test_every_stored_tensor_has_a_checksum(saved):
    with safe_open(str(saved / F.MODEL_FILE), framework="pt") as f:
        assert set(json.loads(f.metadata()[CHECKSUM_KEY])) == set(f.keys())


def test_flipped_codes_are_detected_at_load_and_by_verify(copy, capsys, flip_bytes):
    key = _codes_key(copy)
    flip_bytes(copy / F.MODEL_FILE, key)
    with pytest.raises(ValueError, match=f"model.safetensors: checksum mismatch in tensor '{key}'"):
        F.load(copy)
    assert main(["verify", str(copy)]) == 3  # a corrupted input file: vq.cli EXIT_INPUT
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and key in err and "model.safetensors" in err


def test_verify_passes_a_good_directory(saved, capsys):
    assert main(["verify", str(saved)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {saved / F.MODEL_FILE}")


def test_directory_without_checksums_still_loads(saved, copy, caplog, capsys, strip_checksums):
    strip_checksums(copy / F.MODEL_FILE)
    with caplog.at_level(logging.DEBUG, logger="vq.codebook._integrity"):
        old = F.load(copy)
    assert "no checksums" in caplog.text
    assert torch.equal(_logits(old), _logits(F.load(saved)))
    assert main(["verify", str(copy)]) == 0
    assert capsys.readouterr().out.startswith("UNCHECKED")


def test_config_json_claiming_a_huge_model_is_refused_before_allocating(copy):
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 10_000_000}))  # ~15 GB of Linears
    code = textwrap.dedent(f"""
        import resource, torch, transformers.models.llama.modeling_llama
        from vq.weights import format as F
        def vm_peak_kb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmPeak")).split()[1])
        rss, vm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vm_peak_kb()
        try:
            F.load({str(copy)!r})
        except ValueError as e:
            print("REFUSED", e)
        print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) // 1024,
              (vm_peak_kb() - vm) // 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert "REFUSED" in out and "config.json makes" in out, out
    rss_mb, vm_mb = (int(v) for v in out.split("GROWTH_MB")[1].split()[:2])
    assert rss_mb < 100 and vm_mb < 1024, out  # resident and reserved (virtual) memory


def _layer_tensors():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (8, 8, 1), generator=g)  # (out, n_groups, M): in = 8 groups x d 2
    codebooks = torch.randn(1, 1, 1, 4, 2, generator=g)  # (R_t, C_t, M, K, d)
    return codes, codebooks, torch.ones(8)


@pytest.mark.parametrize("which", ["codebooks", "scales"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_from_codes_refuses_non_finite(which, bad):
    codes, codebooks, scales = _layer_tensors()
    (codebooks if which == "codebooks" else scales).view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{which} contain NaN or Inf"):
        VQLinear.from_codes(codes, codebooks, scales)


@pytest.mark.parametrize("which", ["codebooks", "scales"])
def test_load_state_dict_refuses_non_finite_and_keeps_the_layer(which):
    layer = VQLinear.from_codes(*_layer_tensors())
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {k: v.clone() for k, v in before.items()}
    state[which].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"{which} contain NaN or Inf"):
        layer.load_state_dict(state)
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in before.items())
