"""Decoded media: every PIL image mode converts to RGB in [0, 1] with the right values or is
refused; empty, silent and damaged audio is refused; every data error names the file."""
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from vq_tokenizers.data import AudioFolder, ImageFolder, load_audio, load_image, write_wav


def _save(tmp_path, im, name="x.png", **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_16bit_grey_png_scales_by_65535_not_clipped(tmp_path):
    a = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(a))
    assert Image.open(path).mode.startswith("I")  # PIL opens it as a 16-bit mode
    x = load_image(path)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    want = torch.from_numpy(a.astype(np.float32) / 65535.0)
    for ch in x:
        torch.testing.assert_close(ch, want, rtol=0, atol=1e-6)
    assert abs(float(x[0, 0, 1]) - 0.5) < 1e-4  # was 1.0 (clipped to 255)


def test_32bit_int_image_in_16bit_range_scales_and_outside_is_refused(tmp_path):
    ok = _save(tmp_path, Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I"), "i.tif")
    assert torch.allclose(load_image(ok)[:, 0], torch.tensor([[0.0, 1.0]] * 3))
    bad = _save(tmp_path, Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), mode="I"), "j.tif")
    with pytest.raises(ValueError, match=r"j\.tif.*outside the 16-bit range"):
        load_image(bad)


def test_float_image_in_unit_range_and_outside_refused(tmp_path):
    ok = _save(tmp_path, Image.fromarray(np.array([[0.25, 0.75]], dtype=np.float32), mode="F"), "f.tif")
    assert torch.allclose(load_image(ok)[:, 0], torch.tensor([[0.25, 0.75]] * 3))
    bad = _save(tmp_path, Image.fromarray(np.array([[0.5, 3.0]], dtype=np.float32), mode="F"), "g.tif")
    with pytest.raises(ValueError, match=r"g\.tif.*finite values in \[0, 1\]"):
        load_image(bad)


def test_palette_image_decodes_to_its_palette_colours(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    x = load_image(_save(tmp_path, im))
    assert torch.equal(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(x[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [255, 255, 255, 51]]], dtype=np.uint8)
    x = load_image(_save(tmp_path, Image.fromarray(rgba, mode="RGBA")))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    assert torch.equal(x[:, 0, 1], torch.zeros(3))  # fully transparent -> background
    torch.testing.assert_close(x[:, 0, 2], torch.full((3,), 0.2))
    la = np.array([[[100, 255], [100, 0]]], dtype=np.uint8)
    y = load_image(_save(tmp_path, Image.fromarray(la, mode="LA"), "la.png"))
    torch.testing.assert_close(y[:, 0, 0], torch.full((3,), 100 / 255.0))
    assert torch.equal(y[:, 0, 1], torch.zeros(3))


def test_palette_with_transparent_entry_is_composited(tmp_path):
    im = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    im.putpalette([255, 255, 255, 0, 255, 0] + [0] * 762)
    x = load_image(_save(tmp_path, im, transparency=0))
    assert torch.equal(x[:, 0, 0], torch.zeros(3)) and torch.equal(x[:, 0, 1], torch.tensor([0.0, 1.0, 0.0]))


def test_cmyk_jpeg_and_bilevel_images(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    x = load_image(_save(tmp_path, cmyk, "c.jpg", quality=100))
    assert x.shape == (3, 8, 8) and float(x[0].mean()) > 0.95 and float(x[1:].max()) < 0.05
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((0, 0), 1)
    assert torch.equal(load_image(_save(tmp_path, bw, "b.png"))[:, 0], torch.tensor([[1.0, 0.0]] * 3))


def test_8bit_grey_and_rgb_unchanged(tmp_path):
    g = np.array([[0, 128, 255]], dtype=np.uint8)
    assert torch.equal(load_image(_save(tmp_path, Image.fromarray(g)))[:, 0], torch.from_numpy(g / 255.0).float().expand(3, 3))
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = load_image(_save(tmp_path, Image.fromarray(rgb), "rgb.png"))
    assert torch.equal(x, torch.from_numpy(rgb / np.float32(255.0)).float().permute(2, 0, 1))


@pytest.mark.parametrize("name", ["t.png", "t.jpg"])
def test_truncated_or_corrupt_image_names_the_file(tmp_path, name):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(rgb), name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{name}: cannot decode image"):
        load_image(path)
    path.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=f"{name}: cannot decode image"):
        load_image(path)


def test_image_folder_error_names_the_bad_file(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"bad\.png"):
        ImageFolder(tmp_path, crop=32)


def test_audio_round_trip_values(tmp_path):
    x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000)
    write_wav(tmp_path / "a.wav", x, 8000)
    y = load_audio(tmp_path / "a.wav", 8000)
    assert y.shape == (800,) and float((y - torch.from_numpy(x).float()).abs().max()) < 2 / 32767  # truncation + 32767 vs 32768 scale


def test_zero_length_wav_is_refused_with_file_name(tmp_path):
    write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(ValueError, match=r"empty\.wav: audio file holds no samples"):
        load_audio(tmp_path / "empty.wav", 16000)
    with pytest.raises(ValueError, match=r"empty\.wav"):
        AudioFolder(tmp_path, 16000, 400)


def test_silent_wav_is_refused_with_file_name(tmp_path):
    write_wav(tmp_path / "quiet.wav", np.zeros(1600), 16000)
    with pytest.raises(ValueError, match=r"quiet\.wav: audio is silent"):
        load_audio(tmp_path / "quiet.wav", 16000)


def test_truncated_and_corrupt_wav_name_the_file(tmp_path):
    path = tmp_path / "cut.wav"
    write_wav(path, 0.3 * np.ones(1001), 16000)
    data = path.read_bytes()
    path.write_bytes(data[:-1001])  # header still declares 1001 frames; half a frame at the end
    with pytest.raises(ValueError, match=r"cut\.wav: truncated WAV: header declares 1001 frames"):
        load_audio(path, 16000)
    path.write_bytes(data[:20])  # header cut mid-way
    with pytest.raises(ValueError, match=r"cut\.wav: cannot decode WAV"):
        load_audio(path, 16000)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cut\.wav: cannot decode WAV"):
        load_audio(path, 16000)
    path.write_bytes(b"RIFF\x00\x00\x00\x00JUNKJUNKJUNK")
    with pytest.raises(ValueError, match=r"cut\.wav: cannot decode WAV"):
        load_audio(path, 16000)


def test_flac_errors_name_the_file(tmp_path):
    path = tmp_path / "x.flac"
    path.write_bytes(b"fLaC garbage")
    with pytest.raises(ValueError, match=r"x\.flac: "):
        load_audio(path, 16000)


def test_8bit_and_stereo_wav(tmp_path):
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as w:  # 8-bit unsigned stereo: L=255 (~+1), R=128 (0)
        w.setnchannels(2), w.setsampwidth(1), w.setframerate(8000)
        w.writeframes(bytes([255, 128] * 10))
    y = load_audio(path, 8000)
    assert torch.allclose(y, torch.full((10,), 127 / 128 / 2))
