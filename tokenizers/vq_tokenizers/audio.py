"""SEANet-style convolutional RVQ codec for 16 / 24 kHz speech (SoundStream / EnCodec family).

Strided 1-D conv encoder (residual units with dilations 1 and 3, then a stride-r conv per
ratio), a residual VQ bottleneck with quantizer dropout, a mirrored transposed-conv decoder.
Loss: multi-scale STFT (L1 on magnitude and log-magnitude) + L1 log-mel + L1 on the waveform
+ quantizer loss. The waveform term is what pins down phase: the spectral terms only see
magnitudes, so without it the decoder learns the right spectrogram with arbitrary phase and
the output is uncorrelated with the input (SI-SNR around -30 dB however long it trains).
Bitrate = frames/s x stages x log2(K); dropping stages at inference lowers it.

    codec = AudioCodec(AudioCodecConfig(sample_rate=16000))     # 50 frames/s
    out = codec(wave)                       # wave (B, 1, T), T a multiple of codec.hop
    codes = codec.encode(wave, n_stages=4)  # (B, frames, stages), unused stages = -1
    y = codec.decode(codes)                 # (B, 1, T)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq.codebook.checks import require_int
from vq_tokenizers.base import TokenizerModel
from vq_tokenizers.layers import QuantizerOutput, QuantizerSpec

__all__ = ["AudioCodecConfig", "AudioCodecOutput", "AudioCodec", "MelSpectrogram", "multiscale_stft_loss", "si_snr"]

_DEFAULT_RATIOS = {16000: (2, 4, 5, 8), 24000: (3, 4, 5, 8)}  # hop 320 / 480 -> 50 frames/s


@dataclass(frozen=True)
class AudioCodecConfig:
    sample_rate: int = 16000
    channels: int = 16  # width after the first conv, doubled at every downsampling
    ratios: tuple[int, ...] | None = None  # default from the sample rate
    dim: int = 64
    quantizer: QuantizerSpec = field(
        default_factory=lambda: QuantizerSpec("rvq", 1024, stages=8, quantizer_dropout=0.5)
    )
    stft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    n_mels: int = 64
    mel_weight: float = 1.0
    # L1 on samples; speech near -20 dBFS has mean |x| ~ 0.05, so 50 puts it on the scale of
    # the spectral terms (~1-3). 0 gives the magnitude-only loss (phase unconstrained).
    waveform_weight: float = 50.0

    def __post_init__(self) -> None:
        require_int("sample_rate", self.sample_rate, 1000)
        require_int("channels", self.channels, 1)
        require_int("dim", self.dim, 1)
        if self.ratios is None:
            if self.sample_rate not in _DEFAULT_RATIOS:
                raise ValueError(f"give ratios for sample_rate={self.sample_rate} (defaults: {_DEFAULT_RATIOS})")
            object.__setattr__(self, "ratios", _DEFAULT_RATIOS[self.sample_rate])
        object.__setattr__(self, "ratios", tuple(self.ratios))
        object.__setattr__(self, "stft_sizes", tuple(self.stft_sizes))
        for r in self.ratios:
            require_int("ratio", r, 1)
        for name in ("mel_weight", "waveform_weight"):
            w = getattr(self, name)
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if isinstance(self.quantizer, dict):
            object.__setattr__(self, "quantizer", QuantizerSpec.from_dict(self.quantizer))

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


class AudioCodecOutput(NamedTuple):
    reconstruction: Tensor  # (B, 1, T)
    loss: Tensor  # () spectral + mel + quantizer loss
    recon_loss: Tensor  # () spectral + mel + waveform
    quant: QuantizerOutput


class _ResUnit(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(), nn.Conv1d(ch, ch, 7, dilation=dilation, padding=3 * dilation), nn.ELU(), nn.Conv1d(ch, ch, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AudioCodec(TokenizerModel):
    def __init__(self, config: AudioCodecConfig | None = None):
        super().__init__()
        self.config = cfg = config or AudioCodecConfig()
        self.hop = cfg.hop
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv1d(1, ch, 7, padding=3)]
        for r in cfg.ratios:
            enc += [_ResUnit(ch, 1), _ResUnit(ch, 3), nn.ELU()]
            # kernel 2r, stride r, padding ceil(r/2): length L -> L / r exactly for L % r == 0
            enc.append(nn.Conv1d(ch, 2 * ch, 2 * r, stride=r, padding=(r + 1) // 2))
            ch *= 2
        enc += [nn.ELU(), nn.Conv1d(ch, cfg.dim, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = cfg.quantizer.build(cfg.dim)
        dec: list[nn.Module] = [nn.Conv1d(cfg.dim, ch, 7, padding=3)]
        for r in reversed(cfg.ratios):
            dec += [nn.ELU(), nn.ConvTranspose1d(ch, ch // 2, 2 * r, stride=r, padding=(r + 1) // 2, output_padding=r % 2)]
            ch //= 2
            dec += [_ResUnit(ch, 1), _ResUnit(ch, 3)]
        dec += [nn.ELU(), nn.Conv1d(ch, 1, 7, padding=3), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)
        self.mel = MelSpectrogram(cfg.sample_rate, 1024, cfg.n_mels)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"audio must be a (B, 1, T) tensor, got {getattr(x, 'shape', x)}")
        if x.shape[-1] % self.hop:
            raise ValueError(f"T={x.shape[-1]} must be a multiple of the hop {self.hop}")

    def _quantize(self, x: Tensor, **kw) -> QuantizerOutput:
        z = self.encoder(x).transpose(1, 2)  # (B, frames, dim) channel-last
        return self.quantizer(z, **kw)

    def _reconstruct(self, quantized: Tensor) -> Tensor:
        return self.decoder(quantized.transpose(1, 2))  # (B, 1, T)

    def forward(self, x: Tensor, **quantizer_kwargs) -> AudioCodecOutput:
        """x (B, 1, T) float in [-1, 1]; ``quantizer_kwargs`` e.g. ``n_stages=4``."""
        self._check(x)
        q = self._quantize(x, **quantizer_kwargs)
        y = self._reconstruct(q.quantized)
        rec = self.reconstruction_loss(y, x)
        return AudioCodecOutput(y, rec + q.loss, rec, q)

    def reconstruction_loss(self, y: Tensor, x: Tensor) -> Tensor:
        """() multi-scale STFT + mel_weight x log-mel L1 + waveform_weight x sample L1; y, x (B, 1, T)."""
        cfg = self.config
        rec = multiscale_stft_loss(y, x, cfg.stft_sizes) + cfg.mel_weight * self.mel.distance(y, x)
        return rec + cfg.waveform_weight * F.l1_loss(y, x)

    def bitrate(self, n_stages: int | None = None) -> float:
        """bits/s = frames/s x bits per frame (stages x log2 K for RVQ)."""
        return self.config.frame_rate * self.config.quantizer.bits_per_frame(n_stages)


def _stft_mag(x: Tensor, n_fft: int) -> Tensor:
    win = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length=n_fft // 4, window=win, return_complex=True)
    return spec.abs()  # (B, freq, frames)


def multiscale_stft_loss(y: Tensor, x: Tensor, sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> Tensor:
    """Mean over STFT sizes of L1(|Y|, |X|) + L1(log |Y|, log |X|)."""
    total = y.new_zeros(())
    for n in sizes:
        a, b = _stft_mag(y, n), _stft_mag(x, n)
        total = total + F.l1_loss(a, b) + F.l1_loss(torch.log(a + 1e-5), torch.log(b + 1e-5))
    return total / len(sizes)


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram with an HTK-scale triangular filterbank (no torchaudio needed)."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int):
        super().__init__()
        self.n_fft = n_fft

        def hz_to_mel(f):
            return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

        def mel_to_hz(m):
            return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

        freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
        edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
        lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1)
        fb = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        self.register_buffer("filters", torch.tensor(fb, dtype=torch.float32), persistent=False)  # (n_mels, freq)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> (B, n_mels, frames) log-mel."""
        return torch.log(self.filters @ _stft_mag(x, self.n_fft) ** 2 + 1e-5)

    def distance(self, y: Tensor, x: Tensor) -> Tensor:
        """Mean L1 distance between log-mel spectrograms."""
        return F.l1_loss(self(y), self(x))


def si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant SNR in dB, averaged over the batch; (B, 1, T) or (B, T)."""
    s = reference.reshape(reference.shape[0], -1).double()
    e = estimate.reshape(estimate.shape[0], -1).double()
    s = s - s.mean(1, keepdim=True)
    e = e - e.mean(1, keepdim=True)
    proj = (e * s).sum(1, keepdim=True) / (s.square().sum(1, keepdim=True) + eps) * s
    noise = e - proj
    return float((10 * torch.log10(proj.square().sum(1) / (noise.square().sum(1) + eps) + eps)).mean())
