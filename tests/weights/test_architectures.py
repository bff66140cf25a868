"""Tiny random models of several transformers architectures: the decoder blocks and their
Linear-like layers are found by structure (Conv1D included), routers/gates stay dense, a width
the preset cannot take falls back per layer, bf16 models compress; every compressed model saves,
reloads with ``vq.load`` to the very same logits, and its bits/weight are the bytes on disk."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vq.weights import format as F
from vq.weights.gptvq import GPTVQConfig
from vq.weights.hf import block_linears, decoder_blocks
from vq.weights.pipeline import CompressConfig, compress, method_config

from .conftest import VOCAB

GPTVQ_TINY = GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=1024, block_cols=32, em_iters=2, update_iters=2)
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=256, eos_token_id=256,
              pad_token_id=256, bos_token_id=None)
ATTN = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)


def _configs():
    from transformers import (GemmaConfig, GPT2Config, Gemma2Config, GPTNeoXConfig, LlamaConfig, MistralConfig,
                              MixtralConfig, OPTConfig, PhiConfig, Phi3Config, Qwen2Config, Qwen2MoeConfig, Qwen3Config)

    return {
        "llama": LlamaConfig(**COMMON, **ATTN),
        "mistral": MistralConfig(**COMMON, **ATTN),
        "qwen2": Qwen2Config(**COMMON, **ATTN),
        "gemma2": Gemma2Config(**COMMON, **ATTN, head_dim=16),
        "gemma": GemmaConfig(**COMMON, **ATTN, head_dim=16),
        "qwen3": Qwen3Config(**COMMON, **ATTN, head_dim=16),
        "phi": PhiConfig(**COMMON, **ATTN),
        "gpt_neox": GPTNeoXConfig(**COMMON, **ATTN),
        "mixtral": MixtralConfig(**COMMON, **ATTN, num_local_experts=4, num_experts_per_tok=2),
        "phi3": Phi3Config(**COMMON, **ATTN),  # fused qkv_proj, gate_up_proj
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                           eos_token_id=256, bos_token_id=256),  # Conv1D
        "opt": OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, word_embed_proj_dim=64, pad_token_id=256,
                         eos_token_id=256, bos_token_id=256),
        # 1-output shared_expert_gate and an 4-expert router: skipped
        "qwen2_moe": Qwen2MoeConfig(**COMMON, **ATTN, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                    num_experts=4, num_experts_per_tok=2),
        # hidden 66: 66 % 4 != 0 -> d=3 for the layers reading the hidden state
        "llama_w66": LlamaConfig(**COMMON, hidden_size=66, intermediate_size=96, num_attention_heads=3,
                                 num_key_value_heads=3),
    }


def _model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(_configs()[name], dtype=dtype).eval()
    m.requires_grad_(False)
    return m


@pytest.fixture
def calib_small():
    torch.manual_seed(0)
    return torch.randint(0, 256, (4, 32))


def _disk_bits(out) -> tuple[int, int]:
    """(bits of the quantized layers' tensors, bytes of everything else) in model.safetensors."""
    cfg = json.loads((out / F.CONFIG_FILE).read_text())
    qbits, dense = 0, 0
    with safe_open(str(out / F.MODEL_FILE), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if any(key.startswith(n + ".") and key[len(n) + 1 :] != "bias" for n in cfg["layers"]):
                qbits += t.numel() * t.element_size() * 8
            else:
                dense += t.numel() * t.element_size()
    return qbits, dense


def _round_trip(res, tmp_path):
    out = F.save(tmp_path / "m", res.model, res.layers, res.config.to_dict())
    loaded = F.load(out)
    x = torch.randint(0, 256, (2, 24))
    assert torch.equal(res.model(x).logits, loaded(x).logits)
    qbits, dense = _disk_bits(out)
    cfg = json.loads((out / F.CONFIG_FILE).read_text())
    assert cfg["bits"]["nbits"] == qbits == res.report["nbits"]
    assert cfg["bits"]["bits_per_weight"] == pytest.approx(qbits / res.report["weights"], rel=1e-12)
    with open(out / F.MODEL_FILE, "rb") as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")
    assert (out / F.MODEL_FILE).stat().st_size == header + qbits // 8 + dense
    return loaded


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt_neox", "opt", "mixtral",
         "qwen2_moe", "llama_w66", "gpt2"]


@pytest.mark.parametrize("method", ["rtn", "gptvq"])
@pytest.mark.parametrize("arch", ARCHS)
def test_compress_save_load_gives_the_same_logits(arch, method, calib_small, tmp_path):
    model = _model(arch)
    n_linears = sum(len(block_linears(b)) for b in decoder_blocks(model))
    solver = GPTVQ_TINY if method == "gptvq" else method_config("rtn", 3, group_size=32)
    if arch == "llama_w66" and method == "gptvq":
        solver = GPTVQConfig(dim=4, index_bits=8, weights_per_codebook=4096, block_cols=48, em_iters=2, update_iters=2)
    res = compress(model, CompressConfig(solver=solver, batch_size=4), calib_small, progress=False)
    dense = [n for n, why in res.report["notes"].items() if why.startswith("dense")]
    assert len(res.layers) + len(dense) == n_linears
    _round_trip(res, tmp_path)


def test_gpt2_conv1d_is_compressed_as_the_linear_it_is(calib_small):
    """Conv1D stores W as (in, out): the VQLinear must compute x·Wᵀ with W (out, in) — the
    compressed model equals a dense GPT-2 whose Conv1D weights are the decoded weights, transposed."""
    res = compress(_model("gpt2"), method_config("rtn", 3, group_size=32), calib_small, progress=False)
    assert len(res.layers) == 8 and all(type(m).__name__ != "Conv1D" for m in res.model.modules())
    ref = _model("gpt2")
    for name, qw in res.layers.items():
        ref.get_submodule(name).weight.copy_(qw.dense().T)
    for p in ref.parameters():  # the compressed model's dense tensors are fp16-rounded
        p.copy_(p.half().float())
    x = torch.randint(0, 256, (2, 24))
    torch.testing.assert_close(res.model(x).logits, ref(x).logits, rtol=1e-3, atol=1e-3)  # summation order only


def test_gates_and_routers_stay_dense_and_are_reported(calib_small, tmp_path):
    res = compress(_model("qwen2_moe"), CompressConfig(solver=GPTVQ_TINY, batch_size=4), calib_small,
                   progress=False)
    gate = "model.layers.0.mlp.shared_expert_gate"
    assert gate not in res.layers and isinstance(res.model.get_submodule(gate), nn.Linear)
    assert res.report["notes"][gate] == "dense: skip pattern '*_gate'"
    assert "model.layers.0.mlp.experts.down_proj" in res.report["dense_matrices"]  # 3-D experts: dense
    # without the patterns the 1-output gate is still too small to quantize
    res = compress(_model("qwen2_moe"), CompressConfig(solver=GPTVQ_TINY, batch_size=4, skip=()), calib_small,
                   progress=False)
    assert res.report["notes"][gate] == "dense: 1 outputs < min_out_features=16"


def test_skip_pattern_keeps_a_layer_dense_and_the_others_keep_their_codes(calib_small, tmp_path):
    base = compress(_model("llama"), CompressConfig(solver=GPTVQ_TINY, batch_size=4), calib_small, progress=False)
    cfg = CompressConfig(solver=GPTVQ_TINY, batch_size=4, skip=("mlp.down_proj",))
    res = compress(_model("llama"), cfg, calib_small, progress=False)
    assert sorted(set(base.layers) - set(res.layers)) == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]
    q = "model.layers.0.self_attn.q_proj"  # block 0 before down_proj: same inputs, same seed
    assert all(torch.equal(base.layers[q].tensors[k], res.layers[q].tensors[k]) for k in base.layers[q].tensors)
    assert CompressConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    _round_trip(res, tmp_path)


def test_width_not_divisible_by_dim_falls_back_per_layer(calib_small):
    solver = GPTVQConfig(dim=4, index_bits=8, weights_per_codebook=4096, block_cols=48, em_iters=2, update_iters=2)
    res = compress(_model("llama_w66"), CompressConfig(solver=solver, batch_size=4), calib_small, progress=False)
    by_d = {n: (q.layout.d, q.layout.K) for n, q in res.layers.items()}
    assert by_d["model.layers.0.self_attn.q_proj"] == (3, 64)  # in 66: d=3, 8·3/4 = 6 index bits
    assert by_d["model.layers.0.mlp.down_proj"] == (4, 256)  # in 96: the preset
    assert res.report["notes"]["model.layers.0.self_attn.q_proj"] == (
        "in_features=66 is not a multiple of dim=4: dim=3, index_bits=6")
    assert "model.layers.0.mlp.down_proj" not in res.report["notes"]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(8, 8))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Module()
        self.body.blocks = nn.ModuleList([_Block(), _Block()])


def test_unknown_block_structure_names_the_block(calib_small):
    with pytest.raises(ValueError, match=r"no nn.Linear layers in its decoder blocks.*block 0 is _Block"):
        compress(_Custom(), CompressConfig(solver=GPTVQ_TINY), calib_small, progress=False)


def test_block_stack_is_found_by_structure():
    for arch, path in [("qwen2_moe", "model.layers"), ("opt", "model.decoder.layers"), ("gpt2", "transformer.h")]:
        m = _model(arch)
        assert decoder_blocks(m) is m.get_submodule(path)
    # Llama's layers in the order the per-layer seeds follow (unchanged)
    assert list(block_linears(_model("llama").model.layers[0])) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_cli_skip_keeps_the_matching_layers_dense(tiny_model_dir, text_file, tmp_path):
    from vq.cli import main

    out = tmp_path / "q"
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--text", str(text_file), "--threads", "1",
                 "--method", "rtn", "--calib-windows", "2", "--skip", "mlp.down_proj", "--skip", "*.k_proj"]) == 0
    cfg = json.loads((out / F.CONFIG_FILE).read_text())
    assert cfg["compress"]["skip"] == ["*.gate", "*_gate", "mlp.down_proj", "*.k_proj"]
    assert not [n for n in cfg["layers"] if n.endswith(("down_proj", "k_proj"))]
    assert len(cfg["layers"]) == 2 * 5
    assert "model.layers.1.mlp.down_proj.weight" in cfg["dense"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_compresses_without_upcasting(dtype, calib_small, tmp_path):
    """The blocks run in the model's dtype (Hessians and solvers in float32/64, one layer's weight
    upcast at a time): the model stays in its dtype, rtn codes equal those of the float32 copy."""
    half = compress(_model("llama", dtype), method_config("rtn", 3, group_size=32), calib_small, progress=False)
    assert {p.dtype for p in half.model.parameters()} == {dtype}
    full = compress(_model("llama", dtype).float(), method_config("rtn", 3, group_size=32), calib_small,
                    progress=False)
    assert all(torch.equal(half.layers[n].tensors[k], full.layers[n].tensors[k])
               for n in full.layers for k in full.layers[n].tensors)
    cfg = CompressConfig(solver=GPTVQ_TINY, batch_size=4, dense_dtype=str(dtype).removeprefix("torch."))
    res = compress(_model("llama", dtype), cfg, calib_small, progress=False)
    x = torch.randint(0, 256, (2, 24))
    a = res.model(x).logits
    assert a.dtype == dtype and bool(torch.isfinite(a).all())
    out = F.save(tmp_path / "m", res.model, res.layers, res.config.to_dict(), dense_dtype=dtype)
    b = F.load(out)(x).logits  # vq.load builds float32: the same weights, computed in float32
    assert float((a.float() - b).norm() / b.norm()) < 0.02
    assert _disk_bits(out)[0] == res.report["nbits"]


def test_vision_language_model_compresses_its_text_stack(calib_small):
    """LLaVA with a vision tower deeper (3 blocks) than its language model (2): the stack is the
    language model's (``get_decoder()``), the vision tower stays dense. (vq.load rebuilds with
    AutoModelForCausalLM, which has no LLaVA class: the round trip is not tested here.)"""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(0)
    m = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=LlamaConfig(**COMMON, **ATTN),
                                                  image_token_index=257)).eval()
    m.requires_grad_(False)
    assert decoder_blocks(m) is m.model.language_model.layers
    res = compress(m, method_config("rtn", 3, group_size=32), calib_small, progress=False)
    assert len(res.layers) == 14 and all(n.startswith("model.language_model.layers.") for n in res.layers)
    assert not any(type(x).__name__ == "VQLinear" for x in m.model.vision_tower.modules())
