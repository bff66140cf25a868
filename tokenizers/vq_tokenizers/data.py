"""Data for tokenizer training: folders of images (PNG/JPEG) or audio (WAV, FLAC if soundfile is
installed), loaded into memory and served as random crops; plus the offline image sets of
scikit-image / scikit-learn used by the benchmarks.

    data = ImageFolder("imgs/", crop=64)        # .batch(16, gen) -> (16, 3, 64, 64) float32 in [0, 1]
    data = AudioFolder("wavs/", 16000, 8000)    # .batch(16, gen) -> (16, 1, 8000) float32 in [-1, 1]
"""
from __future__ import annotations

import logging
import struct
import wave
from pathlib import Path
from typing import Any

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


#: PIL modes of 8-bit colour that PIL's own conversion maps to RGB exactly
_RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
#: PIL modes with an alpha channel (``P`` too when its palette has a transparent entry)
_ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")  # premultiplied "La": PIL cannot convert it, refused
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _image_array(im: Any, path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] of an opened PIL image, by mode:

    - 8-bit colour (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ...): PIL's conversion to RGB, / 255;
    - alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour): composited on a black
      background, ``rgb * alpha`` (a transparent pixel's stored colour is often arbitrary);
    - 16-bit greyscale (``I;16*``) and 32-bit integer ``I`` holding 16-bit values: / 65535,
      repeated to 3 channels (``I`` values outside [0, 65535] are refused);
    - 32-bit float ``F``: taken as is when finite and in [0, 1], refused otherwise.
    """
    mode = im.mode
    if mode in _16BIT_MODES or mode == "I":
        a = np.asarray(im).astype(np.float64)  # (H, W)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{path}: 32-bit integer image with values in [{a.min():.0f}, {a.max():.0f}], "
                             "outside the 16-bit range [0, 65535] this loader scales")  # fmt: skip
        grey = (a / 65535.0).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if not np.isfinite(grey).all() or (grey.size and (grey.min() < 0 or grey.max() > 1)):
            raise ValueError(f"{path}: float image must hold finite values in [0, 1]")
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
        return rgba[:, :, :3] * rgba[:, :, 3:]  # on black
    if mode in _RGB_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    raise ValueError(f"{path}: unsupported image mode {mode!r}")


def load_image(path: str | Path) -> Tensor:
    """(3, H, W) float32 in [0, 1]; every PIL mode converted as :func:`_image_array` says or
    refused. Any decoding error (truncated or corrupt file) is a ``ValueError`` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not at the conversion
            arr = _image_array(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot decode image: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def load_audio(path: str | Path, sample_rate: int) -> Tensor:
    """Mono (T,) float32 in [-1, 1], resampled to ``sample_rate`` (polyphase) if needed.

    ``ValueError`` naming the file for a corrupt or truncated file, no samples, non-finite
    samples or silence (every sample zero: it would train on nothing)."""
    path = Path(path)
    if path.suffix.lower() == ".flac":
        try:
            import soundfile  # noqa: PLC0415 — optional
        except ImportError as e:
            raise ValueError(f"{path}: reading FLAC needs the soundfile package") from e
        try:
            data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as e:  # soundfile.LibsndfileError is a RuntimeError
            raise ValueError(f"{path}: cannot decode FLAC: {e}") from e
        x = data.mean(axis=1)
    else:
        x, sr = _read_wav(path)
    if x.size == 0:
        raise ValueError(f"{path}: audio file holds no samples")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: audio holds non-finite samples")
    if not np.any(x):
        raise ValueError(f"{path}: audio is silent (every sample is zero)")
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(T,) float32 mono samples and the sample rate of a PCM WAV; corrupt or truncated files
    (fewer frames than the header declares) are a ``ValueError`` naming the file."""
    try:
        with wave.open(str(path), "rb") as w:
            sr, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, struct.error) as e:
        raise ValueError(f"{path}: cannot decode WAV: {e or type(e).__name__}") from e
    if width not in (1, 2, 4):
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    if sr <= 0 or channels <= 0:
        raise ValueError(f"{path}: WAV header declares {sr} Hz and {channels} channels")
    if len(raw) != n * width * channels:
        raise ValueError(f"{path}: truncated WAV: header declares {n} frames, data holds "
                         f"{len(raw) / (width * channels):.1f}")  # fmt: skip
    dtype = {1: np.uint8, 2: np.dtype("<i2"), 4: np.dtype("<i4")}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    x = (x - 128.0) / 128.0 if width == 1 else x / float(2 ** (8 * width - 1))
    return x.reshape(-1, channels).mean(axis=1), sr  # (T,)


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
