"""Data for tokenizer training: folders of images (PNG/JPEG) or audio (WAV, FLAC if soundfile is
installed), loaded into memory and served as random crops; plus the offline image sets of
scikit-image / scikit-learn used by the benchmarks.

    data = ImageFolder("imgs/", crop=64)        # .batch(16, gen) -> (16, 3, 64, 64) float32 in [0, 1]
    data = AudioFolder("wavs/", 16000, 8000)    # .batch(16, gen) -> (16, 1, 8000) float32 in [-1, 1]
"""
from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vq.codebook.checks import require_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "AUDIO_EXTENSIONS",
    "NATURAL_IMAGES",
    "list_files",
    "load_image",
    "load_audio",
    "write_wav",
    "ImageFolder",
    "AudioFolder",
    "builtin_images",
    "image_patches",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav", ".flac")
#: natural photographs shipped with scikit-image (no download) and scikit-learn
NATURAL_IMAGES = (
    "astronaut", "camera", "coins", "moon", "page", "text", "coffee", "chelsea", "rocket",
    "immunohistochemistry", "brick", "grass", "gravel", "cell", "clock", "stereo_motorcycle",
    "sklearn_china", "sklearn_flower",
)  # fmt: skip


def list_files(root: str | Path, extensions: tuple[str, ...]) -> list[Path]:
    """Sorted files under ``root`` (recursive) whose suffix is in ``extensions``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not files:
        raise ValueError(f"no {'/'.join(extensions)} files under {root}")
    return files


def load_image(path: str | Path) -> Tensor:
    """(3, H, W) float32 in [0, 1] (grey and RGBA converted to RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_audio(path: str | Path, sample_rate: int) -> Tensor:
    """Mono (T,) float32 in [-1, 1], resampled to ``sample_rate`` (polyphase) if needed."""
    path = Path(path)
    if path.suffix.lower() == ".flac":
        try:
            import soundfile  # noqa: PLC0415 — optional
        except ImportError as e:
            raise ValueError(f"{path}: reading FLAC needs the soundfile package") from e
        data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        x = data.mean(axis=1)
    else:
        with wave.open(str(path), "rb") as w:
            sr, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
        if width not in (1, 2, 4):
            raise ValueError(f"{path}: unsupported sample width {width} bytes")
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        x = np.frombuffer(raw, dtype=dtype).astype(np.float32)
        x = (x - 128.0) / 128.0 if width == 1 else x / float(2 ** (8 * width - 1))
        x = x.reshape(-1, channels).mean(axis=1)  # (T,)
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def write_wav(path: str | Path, x: Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV."""
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    pcm = (np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


class ImageFolder:
    """All images of a folder in memory; ``batch`` draws random ``crop`` x ``crop`` crops."""

    def __init__(self, root: str | Path, crop: int):
        require_int("crop", crop, 1)
        self.files = list_files(root, IMAGE_EXTENSIONS)
        self.crop = crop
        self.images = [im for im in map(load_image, self.files) if min(im.shape[1:]) >= crop]
        if not self.images:
            raise ValueError(f"no image in {root} is at least {crop}x{crop} pixels")
        log.info("loaded %d images from %s", len(self.images), root)

    def batch(self, size: int, gen: torch.Generator) -> Tensor:
        """(size, 3, crop, crop) float32."""
        out = torch.empty(size, 3, self.crop, self.crop)
        picks = torch.randint(len(self.images), (size,), generator=gen)
        for i, j in enumerate(picks.tolist()):
            im = self.images[j]
            y = int(torch.randint(im.shape[1] - self.crop + 1, (1,), generator=gen))
            x = int(torch.randint(im.shape[2] - self.crop + 1, (1,), generator=gen))
            out[i] = im[:, y : y + self.crop, x : x + self.crop]
        return out


class AudioFolder:
    """All audio files of a folder in memory at ``sample_rate``; ``batch`` draws random segments
    of ``segment`` samples (files shorter than a segment are zero-padded)."""

    def __init__(self, root: str | Path, sample_rate: int, segment: int):
        require_int("segment (samples)", segment, 1)
        self.files = list_files(root, AUDIO_EXTENSIONS)
        self.sample_rate, self.segment = sample_rate, segment
        self.clips = [load_audio(f, sample_rate) for f in self.files]
        self.clips = [torch.nn.functional.pad(c, (0, max(0, segment - c.numel()))) for c in self.clips]
        weights = torch.tensor([float(c.numel()) for c in self.clips])
        self._weights = weights / weights.sum()  # pick files in proportion to their length
        log.info("loaded %d clips (%.1f s) from %s", len(self.clips), float(weights.sum()) / sample_rate, root)

    def batch(self, size: int, gen: torch.Generator) -> Tensor:
        """(size, 1, segment) float32."""
        picks = torch.multinomial(self._weights, size, replacement=True, generator=gen)
        out = torch.empty(size, 1, self.segment)
        for i, j in enumerate(picks.tolist()):
            c = self.clips[j]
            s = int(torch.randint(c.numel() - self.segment + 1, (1,), generator=gen))
            out[i, 0] = c[s : s + self.segment]
        return out


def builtin_images(names: tuple[str, ...] | list[str] = NATURAL_IMAGES) -> dict[str, np.ndarray]:
    """Offline natural images: name -> (H, W, 3) float32 in [0, 1]."""
    import skimage.data

    out = {}
    for name in names:
        if name.startswith("sklearn_"):
            from sklearn.datasets import load_sample_image

            im = load_sample_image({"sklearn_china": "china.jpg", "sklearn_flower": "flower.jpg"}[name])
        else:
            im = getattr(skimage.data, name)()
            if isinstance(im, tuple):  # stereo pairs
                im = im[0]
        im = np.asarray(im, dtype=np.float32) / 255.0
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out[name] = np.ascontiguousarray(im[:, :, :3])
    return out


def image_patches(images: list[np.ndarray], size: int, stride: int) -> Tensor:
    """Grey ``size`` x ``size`` patches of (H, W, 3) images: (n, size * size) float32 in [0, 1]."""
    parts = []
    for im in images:
        g = torch.from_numpy(im.mean(axis=2))[None, None]  # (1, 1, H, W)
        p = torch.nn.functional.unfold(g, size, stride=stride)  # (1, size*size, L)
        parts.append(p[0].T.contiguous())  # (L, size*size)
    return torch.cat(parts)
