"""The stored-format fixtures in tests/data/: tiny compressed models written by the format-1 code
(commit eeccebb, before ``QuantizedWeight`` / ``VQLayout`` / ``VQLinear`` shared one description)
and the values that code computed from them.

Run ``python tests/weights/format_v1.py`` (with the repository's PYTHONPATH) to rewrite them;
only do that on purpose, since test_stored_format.py checks today's code against them.

For each fixture ``NAME`` (one per solver / codebook storage) tests/data/ holds the three files of
a compressed model directory, flattened because only ``tests/data/*.safetensors`` escapes the
.gitignore: ``NAME.model.safetensors`` (``model.safetensors``), ``NAME.vq_config.json``
(``vq_config.json``), ``NAME.config.json`` (the transformers ``config.json``); and
``NAME.expected.safetensors``: ``input_ids`` (2, 12), the ``logits`` the loaded model gave for
them, and ``dense.<layer>`` the (out, in) float32 weight two of its layers decoded to.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1] / "data"
#: the stored files of one fixture (``tests/data/NAME.<file>`` is ``<file>`` of the model directory)
FILES = ("model.safetensors", "vq_config.json", "config.json")
#: the layers whose decoded weights are kept (one square, one with in_features = 2 * hidden)
DENSE_LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def solvers() -> dict:
    """Fixture name -> solver config; small tiles so every layer has several codebook tiles."""
    from vq.weights.gptq import GPTQConfig
    from vq.weights.gptvq import GPTVQConfig
    from vq.weights.rtn import RTNConfig

    # GPTVQConfig(dim, index_bits, weights per codebook, ...): the third field is passed by
    # position because its name changed after format 1
    return {
        "v1_rtn": RTNConfig(bits=3, group_size=16),
        "v1_gptq": GPTQConfig(bits=2, group_size=24),  # 24 does not divide 32 / 64: short last groups
        "v1_gptvq8": GPTVQConfig(2, 4, 256, block_cols=16, em_iters=3, update_iters=3),  # 8-bit codebooks
        "v1_gptvq16": GPTVQConfig(2, 5, 512, block_cols=32, em_iters=3, update_iters=3, codebook_bits=None),
    }


def tiny_model():
    """A one-block random Llama, small enough that a compressed copy is a few KB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, eos_token_id=47,
        pad_token_id=47, bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def calibration() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 48, (4, 32))


def input_ids() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randint(0, 48, (2, 12))


def compress_fixture(name: str):
    """The CompressedModel of fixture ``name`` (what its stored files were written from)."""
    from vq.weights.pipeline import CompressConfig, compress

    return compress(tiny_model(), CompressConfig(solver=solvers()[name], batch_size=2, seed=5), calibration(),
                    progress=False)


def fixture_dir(name: str, dst: Path) -> Path:
    """Assemble fixture ``name`` as a compressed model directory under ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(DATA / f"{name}.{f}", dst / f)
    return dst


def write(name: str) -> None:
    from vq.weights import format as F

    res = compress_fixture(name)
    tmp = DATA / f"{name}.tmp"
    F.save(tmp, res.model, res.layers, res.config.to_dict())
    for f in FILES:
        shutil.copyfile(tmp / f, DATA / f"{name}.{f}")
    shutil.rmtree(tmp)
    loaded = F.load(fixture_dir(name, DATA / f"{name}.check"))
    shutil.rmtree(DATA / f"{name}.check")
    ids = input_ids()
    expected = {"input_ids": ids, "logits": loaded(ids).logits}
    for layer in DENSE_LAYERS:
        expected[f"dense.{layer}"] = res.layers[layer].dense()
    F.write_tensors(DATA / f"{name}.expected.safetensors", expected)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for n in sys.argv[1:] or solvers():
        write(n)
