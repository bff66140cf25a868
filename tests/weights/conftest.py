"""Fixtures for vq.weights tests: a tiny random Llama and a byte-level tokenizer, built in-process."""
from __future__ import annotations

import pytest
import torch

VOCAB = 260  # 256 byte symbols + <eos> (+ spare)
TEXT = (
    "The quick brown fox jumps over the lazy dog. Vector quantization maps each weight vector to the "
    "nearest entry of a small codebook; error feedback spreads the rounding error over later columns. "
) * 40  # ~7,600 bytes = ~7,600 tokens with the byte tokenizer


def tiny_config(layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=256, pad_token_id=256, bos_token_id=None,
    )


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers)).eval()
    model.requires_grad_(False)
    return model


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = 256
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A transformers folder (config + safetensors + tokenizer) holding the tiny Llama."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def calib():
    torch.manual_seed(0)
    return torch.randint(0, 256, (8, 64))


@pytest.fixture(autouse=True)
def _one_thread():
    """The solvers run many small ops; on the shared 2-core CI box one thread is several times
    faster than two fighting other processes. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama compressed with gptq 3-bit g32 and saved (one per test module: tests copy it
    before damaging it)."""
    from vq.weights import format as F
    from vq.weights.pipeline import CompressConfig, compress, method_config

    torch.manual_seed(0)
    calib = torch.randint(0, 256, (4, 64))
    res = compress(tiny_llama(), CompressConfig(solver=method_config("gptq", 3, group_size=32)), calib,
                   progress=False)
    return F.save(tmp_path_factory.mktemp("saved") / "m", res.model, res.layers, res.config.to_dict())
