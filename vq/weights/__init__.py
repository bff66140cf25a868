"""vq.weights — LLM weight compression: Hessian-guided solvers (RTN, GPTQ, GPTVQ), the block-by-block
pipeline with checkpoints, the compressed-model format and the transformers glue.

``from vq.weights import compress, load, GPTVQConfig`` — submodules load lazily so that
``import vq.weights`` stays cheap (transformers is imported only when a model is loaded).
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "compress",
    "load",
    "save",
    "CompressConfig",
    "CompressedModel",
    "GPTVQConfig",
    "GPTQConfig",
    "RTNConfig",
    "method_config",
    "QuantizedWeight",
]

_WHERE = {
    "compress": "vq.weights.pipeline",
    "CompressConfig": "vq.weights.pipeline",
    "CompressedModel": "vq.weights.pipeline",
    "method_config": "vq.weights.pipeline",
    "load": "vq.weights.format",
    "save": "vq.weights.format",
    "QuantizedWeight": "vq.weights.format",
    "GPTVQConfig": "vq.weights.gptvq",
    "GPTQConfig": "vq.weights.gptq",
    "RTNConfig": "vq.weights.rtn",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vq.weights' has no attribute {name!r}")
