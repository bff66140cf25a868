"""Convolutional VQ-VAE image tokenizer (van den Oord et al. 2017), any quantizer as bottleneck.

    model = VQVAE(ImageTokenizerConfig(downsample=4, quantizer=QuantizerSpec("vq", 1024)))
    out = model(x)                  # x (B, 3, H, W) in [0, 1], H and W multiples of downsample
    out.loss.backward()             # reconstruction (L1 or L2) + quantizer loss
    codes = model.encode(x)         # (B, H/f, W/f) or (B, H/f, W/f, stages) int64
    y = model.decode(codes)         # (B, 3, H, W), equals out.reconstruction
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq.codebook.checks import require_choice, require_int
from vq_tokenizers.base import TokenizerModel
from vq_tokenizers.layers import QuantizerOutput, QuantizerSpec

__all__ = ["ImageTokenizerConfig", "ImageTokenizerOutput", "VQVAE", "psnr"]


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """channels: image channels; hidden: width of the first stage (doubled per downsampling, at
    most 4x); downsample: 4 or 8; res_blocks per stage; dim: latent channels fed to the
    quantizer; recon_loss: ``l1`` or ``l2``."""

    channels: int = 3
    hidden: int = 32
    downsample: int = 4
    res_blocks: int = 1
    dim: int = 32
    quantizer: QuantizerSpec = field(default_factory=QuantizerSpec)
    recon_loss: str = "l1"

    def __post_init__(self) -> None:
        require_int("channels", self.channels, 1)
        require_int("hidden", self.hidden, 1)
        require_int("res_blocks", self.res_blocks, 0)
        require_int("dim", self.dim, 1)
        require_choice("downsample", self.downsample, (4, 8))
        require_choice("recon_loss", self.recon_loss, ("l1", "l2"))
        if isinstance(self.quantizer, dict):
            object.__setattr__(self, "quantizer", QuantizerSpec.from_dict(self.quantizer))


class ImageTokenizerOutput(NamedTuple):
    reconstruction: Tensor  # (B, C, H, W)
    loss: Tensor  # () reconstruction + quantizer loss
    recon_loss: Tensor  # ()
    quant: QuantizerOutput


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8 if ch % 8 == 0 else 1, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8 if ch % 8 == 0 else 1, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VQVAE(TokenizerModel):
    def __init__(self, config: ImageTokenizerConfig | None = None):
        super().__init__()
        self.config = cfg = config or ImageTokenizerConfig()
        stages = int(math.log2(cfg.downsample))
        widths = [cfg.hidden * min(2**i, 4) for i in range(stages + 1)]  # e.g. 32, 64, 128
        enc: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 3, padding=1)]
        for i in range(stages):
            enc += [_ResBlock(widths[i]) for _ in range(cfg.res_blocks)]
            enc.append(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1))
        enc += [_ResBlock(widths[-1]) for _ in range(cfg.res_blocks)]
        enc += [nn.SiLU(), nn.Conv2d(widths[-1], cfg.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = cfg.quantizer.build(cfg.dim)
        dec: list[nn.Module] = [nn.Conv2d(cfg.dim, widths[-1], 3, padding=1)]
        dec += [_ResBlock(widths[-1]) for _ in range(cfg.res_blocks)]
        for i in reversed(range(stages)):
            dec.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1))
            dec += [_ResBlock(widths[i]) for _ in range(cfg.res_blocks)]
        dec += [nn.SiLU(), nn.Conv2d(widths[0], cfg.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: Tensor) -> None:
        f = self.config.downsample
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.config.channels:
            raise ValueError(f"images must be a (B, {self.config.channels}, H, W) tensor, got {getattr(x, 'shape', x)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"H and W must be multiples of the downsampling factor {f}, got {tuple(x.shape[2:])}")

    def _quantize(self, x: Tensor, **kw) -> QuantizerOutput:
        z = self.encoder(x * 2 - 1).permute(0, 2, 3, 1)  # (B, h, w, dim) channel-last
        return self.quantizer(z, **kw)

    def _reconstruct(self, quantized: Tensor) -> Tensor:
        return (self.decoder(quantized.permute(0, 3, 1, 2)) + 1) / 2  # (B, C, H, W)

    def forward(self, x: Tensor, **quantizer_kwargs) -> ImageTokenizerOutput:
        """x (B, C, H, W) float in [0, 1]; ``quantizer_kwargs`` e.g. ``n_stages`` for RVQ."""
        self._check(x)
        q = self._quantize(x, **quantizer_kwargs)
        y = self._reconstruct(q.quantized)
        rec = F.l1_loss(y, x) if self.config.recon_loss == "l1" else F.mse_loss(y, x)
        return ImageTokenizerOutput(y, rec + q.loss, rec, q)


def psnr(x: Tensor, y: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (y clamped)."""
    mse = float((x - y.clamp(0, 1)).double().square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
