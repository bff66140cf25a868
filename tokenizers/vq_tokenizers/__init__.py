"""vq_tokenizers — quantizer layers and VQ tokenizer models built on vq.codebook."""
from vq_tokenizers.layers import (
    FSQ,
    GroupedResidualVQ,
    QuantizerOutput,
    QuantizerSpec,
    QuantizerStats,
    ResidualVQ,
    SimVQ,
    VectorQuantizer,
    VQConfig,
)

__all__ = [
    "FSQ",
    "GroupedResidualVQ",
    "QuantizerOutput",
    "QuantizerSpec",
    "QuantizerStats",
    "ResidualVQ",
    "SimVQ",
    "VQConfig",
    "VectorQuantizer",
]
