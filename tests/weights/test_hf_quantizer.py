"""The transformers integration: ``import vq; AutoModelForCausalLM.from_pretrained(DIR)`` on a
compressed directory equals ``vq.load(DIR)``, ``save_pretrained`` round-trips, loading without vq
raises, and no dense weight is materialised while loading."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

import vq
from vq.weights import format as F
from vq.weights.gptvq import GPTVQConfig
from vq.weights.hf_quantizer import CODES_KEY, VQHfQuantizer, VQQuantizationConfig
from vq.weights.nn import VQLinear
from vq.weights.pipeline import CompressConfig, compress, method_config

from .conftest import byte_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[2]
GPTVQ_TINY = GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=1024, block_cols=32, em_iters=2, update_iters=2)
SOLVERS = {"rtn": method_config("rtn", 3, group_size=32), "gptvq": GPTVQ_TINY}


def _compress_dir(path: Path, method: str) -> Path:
    torch.manual_seed(0)
    calib = torch.randint(0, 256, (8, 64))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from transformers import LlamaForCausalLM

        cfg = tiny_config()
        cfg.attention_bias = True  # q/k/v/o with a bias, so the bias path is exercised
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        model.requires_grad_(False)
        for block in model.model.layers:
            block.self_attn.q_proj.bias.normal_()
        res = compress(model, CompressConfig(solver=SOLVERS[method], batch_size=4, seed=1), calib, progress=False)
    finally:
        torch.set_num_threads(n)
    F.save(path, res.model, res.layers, res.config.to_dict(), tokenizer=byte_tokenizer())
    return path


@pytest.fixture(scope="module", params=sorted(SOLVERS))
def vq_dir(request, tmp_path_factory):
    return _compress_dir(tmp_path_factory.mktemp("hfq") / request.param, request.param)


@pytest.fixture(scope="module")
def rtn_dir(tmp_path_factory):
    return _compress_dir(tmp_path_factory.mktemp("hfq_rtn") / "rtn", "rtn")


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))


def _assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    x = _ids()
    assert torch.equal(a(x).logits, b(x).logits)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "kernels"), str(ROOT / "tokenizers")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


# -- what the directory says -------------------------------------------------------------------
def test_config_json_names_vq_and_every_layer(vq_dir):
    cfg = json.loads((vq_dir / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "vq" and cfg["dtype"] == "float32"
    layers = json.loads((vq_dir / F.CONFIG_FILE).read_text())["layers"]
    assert set(qc["layers"]) == set(layers)
    for name, entry in qc["layers"].items():
        assert entry["form"] == "stored"
        assert all(entry[k] == layers[name][k] for k in ("kind", "out_features", "in_features", "d", "K", "bits"))
    assert qc["layers"]["model.layers.0.self_attn.q_proj"]["bias"] is True
    assert qc["layers"]["model.layers.0.mlp.up_proj"]["bias"] is False
    keys = load_file(str(vq_dir / F.MODEL_FILE)).keys()
    assert all(f"{n}.{CODES_KEY}" in keys and f"{n}.codes" not in keys for n in layers)
    # the config class round-trips through its dict
    again = VQQuantizationConfig.from_dict(qc)
    assert again.to_dict() == qc


# -- from_pretrained after import vq -------------------------------------------------------------
def test_from_pretrained_equals_vq_load(vq_dir):
    ref = vq.load(vq_dir)
    model = AutoModelForCausalLM.from_pretrained(vq_dir)
    assert isinstance(model.hf_quantizer, VQHfQuantizer)
    names = [n for n, m in model.named_modules() if isinstance(m, VQLinear)]
    assert len(names) == 14  # 2 blocks × 7 Linears
    _assert_same_model(ref, model)


def test_save_pretrained_round_trip(vq_dir, tmp_path):
    first = AutoModelForCausalLM.from_pretrained(vq_dir)
    first.save_pretrained(tmp_path / "a")
    entries = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]["layers"]
    assert {e["form"] for e in entries.values()} == {"module"}
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    _assert_same_model(first, again)
    again.save_pretrained(tmp_path / "b")  # and once more: the module form reads back as itself
    _assert_same_model(first, AutoModelForCausalLM.from_pretrained(tmp_path / "b"))


def test_compressed_model_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_config()).eval()
    model.requires_grad_(False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = compress(model, CompressConfig(solver=SOLVERS["rtn"], batch_size=4, seed=1),
                       torch.randint(0, 256, (8, 64)), progress=False)
    finally:
        torch.set_num_threads(n)
    res.model.save_pretrained(tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    _assert_same_model(res.model, back)


def test_vq_load_then_save_pretrained_round_trip(vq_dir, tmp_path):
    ref = vq.load(vq_dir)
    ref.save_pretrained(tmp_path / "s")
    _assert_same_model(ref, AutoModelForCausalLM.from_pretrained(tmp_path / "s"))


def test_loading_creates_no_dense_weight(rtn_dir, monkeypatch):
    """While from_pretrained runs, no float tensor with the (out, in) shape of a compressed Linear
    is created off the meta device (the meta skeleton transformers builds first is free)."""
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")  # load in this thread: dispatch modes are per thread
    cfg = json.loads((rtn_dir / "config.json").read_text())["quantization_config"]["layers"]
    dense_shapes = {(e["out_features"], e["in_features"]) for e in cfg.values()}
    seen: list[tuple] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.is_floating_point():
                    seen.append((tuple(t.shape), str(func)))
            return out

    with Watch():
        model = AutoModelForCausalLM.from_pretrained(rtn_dir)
    # the watch observes the loading itself: the fp16 embedding is upcast to fp32 under it
    assert (260, 64) in {shape for shape, _ in seen}
    assert not [s for s in seen if s[0] in dense_shapes]
    for name, mod in model.named_modules():
        if isinstance(mod, VQLinear):
            assert not hasattr(mod, "weight") and mod.codes.dtype == torch.int32
            assert mod.codes.shape[1] < mod.in_features  # packed
    # the watch would have caught one: decoding a layer does create the dense shape
    seen.clear()
    with Watch():
        model.model.layers[0].self_attn.o_proj.to_dense()
    assert [s for s in seen if s[0] in dense_shapes]


def test_dtype_and_device_map(rtn_dir):
    ref = AutoModelForCausalLM.from_pretrained(rtn_dir)
    half = AutoModelForCausalLM.from_pretrained(rtn_dir, dtype=torch.bfloat16, device_map="cpu")
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.layers[0].mlp.up_proj.codebooks.dtype == torch.float32  # codebooks stay exact
    x = _ids()
    a, b = ref(x).logits, half(x).logits.float()
    assert b.dtype == torch.float32 and float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    auto = AutoModelForCausalLM.from_pretrained(rtn_dir, device_map="auto")
    assert torch.equal(ref(x).logits, auto(x).logits)


def test_text_generation_pipeline(rtn_dir):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(rtn_dir))
    assert isinstance(pipe.model.model.layers[1].mlp.down_proj, VQLinear)
    text = pipe("The quick brown", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ref = vq.load(rtn_dir)
    tok = byte_tokenizer()
    ids = tok("The quick brown", return_tensors="pt").input_ids
    out = ref.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=256)
    assert text == tok.decode(out[0], skip_special_tokens=True)


# -- without vq ----------------------------------------------------------------------------------
def test_without_vq_from_pretrained_raises(rtn_dir, tmp_path):
    AutoModelForCausalLM.from_pretrained(rtn_dir).save_pretrained(tmp_path / "rt")
    for path in (rtn_dir, tmp_path / "rt"):
        r = _run_python(
            "import sys\n"
            "from transformers import AutoModelForCausalLM\n"
            f"try:\n    AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
            "except RuntimeError as e:\n    print('RAISED', e)\n"
            "else:\n    print('LOADED')\n"
            "assert 'vq' not in sys.modules\n"
        )
        assert r.returncode == 0, r.stderr
        assert "RAISED" in r.stdout and "LOADED" not in r.stdout
        assert "Unknown quantization type, got vq" in r.stderr and "MISMATCH" in r.stderr


@pytest.mark.parametrize("order", ["vq first", "transformers first"])
def test_import_vq_registers_without_importing_transformers(order, rtn_dir):
    code = {
        "vq first": "import sys, vq\nassert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
                    "from transformers import AutoModelForCausalLM\n",
        "transformers first": "from transformers import AutoModelForCausalLM\n"
                              "import transformers.modeling_utils\nimport vq\n",
    }[order]
    r = _run_python(
        code + f"m = AutoModelForCausalLM.from_pretrained({str(rtn_dir)!r})\n"
        "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
        "print(type(m.model.layers[0].mlp.up_proj).__name__, AUTO_QUANTIZER_MAPPING['vq'].__name__)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["VQLinear", "VQHfQuantizer"]


# -- directories written before the integration ----------------------------------------------------
def _as_pre_integration(src: Path, dst: Path) -> Path:
    """``src`` rewritten as the old code wrote it: no quantization_config, codes under ``.codes``."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["quantization_config"]
    (dst / "config.json").write_text(json.dumps(cfg))
    layers = json.loads((dst / F.CONFIG_FILE).read_text())["layers"]
    tensors = load_file(str(dst / F.MODEL_FILE))
    for n in layers:
        tensors[f"{n}.codes"] = tensors.pop(f"{n}.{CODES_KEY}")
    save_file(tensors, str(dst / F.MODEL_FILE), {"format": "vq", "format_version": "1"})
    return dst


def test_pre_integration_directory_still_loads(rtn_dir, tmp_path):
    old = _as_pre_integration(rtn_dir, tmp_path / "old")
    ref = vq.load(rtn_dir)
    loaded = vq.load(old)
    _assert_same_model(ref, loaded)
    loaded.save_pretrained(tmp_path / "upgraded")  # vq.load + save_pretrained gives a loadable directory
    _assert_same_model(ref, AutoModelForCausalLM.from_pretrained(tmp_path / "upgraded"))


# -- bad directories -------------------------------------------------------------------------------
def _edit_quant_config(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg["quantization_config"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case,match", [
    ("unknown layer", "does not have"),
    ("wrong shape", "config/model mismatch"),
    ("bias flag", "bias"),
    ("bad form", "form must be one of"),
    ("wrong codebook size", "config/tensor mismatch"),
])
def test_bad_quantization_config_raises(case, match, rtn_dir, tmp_path):
    q = "model.layers.1.mlp.up_proj"

    def edit(qc):
        layers = qc["layers"]
        if case == "unknown layer":
            layers["model.layers.7.mlp.up_proj"] = layers[q]
        elif case == "wrong shape":
            layers[q]["out_features"] = 96
        elif case == "bias flag":
            layers["model.layers.1.self_attn.q_proj"]["bias"] = False
        elif case == "bad form":
            layers[q]["form"] = "dense"
        else:
            layers[q]["tile_groups"] = 16

    path = _edit_quant_config(rtn_dir, tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=match):
        AutoModelForCausalLM.from_pretrained(path)
