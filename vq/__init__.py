"""vq — a vector/codebook quantization engine.

``vq.compress(model, GPTVQConfig(...), calib)`` and ``vq.load(path)`` are exported lazily from
:mod:`vq.weights` (``import vq`` imports neither torch-heavy solvers nor transformers).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compress", "load"]

_LAZY = {"compress": "vq.weights", "load": "vq.weights"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vq' has no attribute {name!r}")
