"""Audio codec loss and metric: properties a magnitude-only loss or a wrong SI-SNR would fail."""
import numpy as np
import pytest
import torch

from vq_tokenizers.audio import AudioCodec, AudioCodecConfig, si_snr

TINY = dict(channels=4, dim=8, stft_sizes=(256, 512), quantizer={"codebook_size": 16, "stages": 2})


def _speechlike(seed: int, b: int = 2, t: int = 3200) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(t, dtype=torch.float32) / 16000
    f = 100 + 200 * torch.rand(b, 1, 1, generator=g)
    x = sum(torch.sin(2 * np.pi * k * f * n + 6 * torch.rand(b, 1, 1, generator=g)) / k for k in range(1, 6))
    return 0.1 * x + 0.01 * torch.randn(b, 1, t, generator=g)  # (b, 1, t)


def _si_snr_ref(e: np.ndarray, s: np.ndarray) -> float:
    out = []
    for ei, si in zip(e.reshape(len(e), -1).astype(np.float64), s.reshape(len(s), -1).astype(np.float64)):
        ei, si = ei - ei.mean(), si - si.mean()
        target = (ei @ si) / (si @ si) * si
        out.append(10 * np.log10((target @ target) / ((ei - target) @ (ei - target))))
    return float(np.mean(out))


def test_si_snr_matches_float64_reference_and_is_scale_invariant():
    x = _speechlike(0)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert si_snr(noisy, x) == pytest.approx(_si_snr_ref(noisy.numpy(), x.numpy()), abs=1e-6)
    assert si_snr(3.0 * noisy, x) == pytest.approx(si_snr(noisy, x), abs=1e-6)
    assert si_snr(0.5 * x, x) > 60  # a scaled copy is perfect
    other = _speechlike(7)
    assert si_snr(other, x) < -10  # an unrelated signal is far below 0 dB


def test_reconstruction_loss_sees_phase():
    """Negated or shifted copies have (nearly) the same magnitude spectra: a loss that cannot
    tell them from the input cannot teach the decoder phase (the bug behind SI-SNR ~ -34 dB)."""
    codec = AudioCodec(AudioCodecConfig(**TINY))
    x = _speechlike(2)
    exact = float(codec.reconstruction_loss(x, x))
    assert float(codec.reconstruction_loss(-x, x)) > exact + 1.0
    assert float(codec.reconstruction_loss(torch.roll(x, 40, -1), x)) > exact + 1.0
    magnitude_only = AudioCodec(AudioCodecConfig(**TINY, waveform_weight=0.0))
    assert float(magnitude_only.reconstruction_loss(-x, x)) == pytest.approx(float(magnitude_only.reconstruction_loss(x, x)), abs=1e-4)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1"])
def test_waveform_weight_is_validated(bad):
    with pytest.raises(ValueError, match="waveform_weight"):
        AudioCodecConfig(waveform_weight=bad)
