"""vq — a vector/codebook quantization engine.

``vq.compress(model, GPTVQConfig(...), calib)`` and ``vq.load(path)`` are exported lazily from
:mod:`vq.weights` (``import vq`` imports neither torch-heavy solvers nor transformers).

Importing vq also makes ``transformers.AutoModelForCausalLM.from_pretrained`` read vq-compressed
directories: the ``"vq"`` quantizer (:mod:`vq.weights.hf_quantizer`) is registered with
transformers as soon as transformers' quantizer registry is imported (at once if it already is).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compress", "load"]

_LAZY = {"compress": "vq.weights", "load": "vq.weights"}

_HF_REGISTRY = "transformers.quantizers.auto"
_HF_INTEGRATION = "vq.weights.hf_quantizer"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vq' has no attribute {name!r}")


def _register_hf_quantizer() -> None:
    try:
        importlib.import_module(_HF_INTEGRATION)  # registers "vq" on import
    except Exception as e:  # noqa: BLE001 — a failure here must not break importing transformers
        import logging

        logging.getLogger(__name__).warning("vq: could not register the transformers quantizer: %s", e)


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``transformers.quantizers.auto`` like the path finder would, and registers vq's
    quantizer right after that module has run (transformers' public registration API lives there).
    Removes itself from ``sys.meta_path`` on first use."""

    def __init__(self) -> None:
        self._loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _HF_REGISTRY:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register_hf_quantizer()


def _install_hf_hook() -> None:
    if _HF_REGISTRY in sys.modules:
        _register_hf_quantizer()
    elif importlib.util.find_spec("transformers") is not None and not any(
        isinstance(f, _RegisterAfterImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _RegisterAfterImport())


_install_hf_hook()
