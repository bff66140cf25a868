"""What the image and audio tokenizers share: codes in, codes out."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vq_tokenizers.layers import QuantizerOutput

__all__ = ["TokenizerModel"]


class TokenizerModel(nn.Module):
    """Base of :class:`~vq_tokenizers.image.VQVAE` and :class:`~vq_tokenizers.audio.AudioCodec`.

    Subclasses hold ``quantizer`` and define ``_check(x)`` (raise on bad input),
    ``_quantize(x, **kw)`` (encoder + bottleneck, channel-last) and ``_reconstruct(quantized)``.
    """

    quantizer: nn.Module

    def _check(self, x: Tensor) -> None:
        raise NotImplementedError

    def _quantize(self, x: Tensor, **kw) -> QuantizerOutput:
        raise NotImplementedError

    def _reconstruct(self, quantized: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, x: Tensor, **quantizer_kwargs) -> Tensor:
        """Input -> integer codes (``quantizer_kwargs`` e.g. ``n_stages`` for RVQ)."""
        self._check(x)
        return self._quantize(x, **quantizer_kwargs).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes -> reconstruction, equal to the forward output for the same codes."""
        return self._reconstruct(self.quantizer.decode(codes))
