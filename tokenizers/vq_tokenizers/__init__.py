"""vq_tokenizers — quantizer layers and VQ tokenizer models built on vq.codebook."""
__all__: list[str] = []
