"""Training loop: checkpoints, resume, report + plots, CLI, torchrun with two gloo ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vq.cli import main as vq_main
from vq_tokenizers.data import builtin_images, write_wav
from vq_tokenizers.train import TrainConfig, train_tokenizer

TINY_IMAGE = {"hidden": 8, "dim": 8, "res_blocks": 0, "quantizer": {"kind": "vq", "codebook_size": 32}}
TINY_AUDIO = {"channels": 4, "dim": 8, "stft_sizes": [256, 512], "quantizer": {"codebook_size": 16, "levels": 3}}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for name, im in builtin_images(("camera", "coffee", "chelsea")).items():
        Image.fromarray((im[:96, :96] * 255).astype(np.uint8)).save(d / f"{name}.png")
    return d


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    t = np.arange(8000) / 16000
    for i, f0 in enumerate((180.0, 240.0)):
        chirp = 0.3 * np.sin(2 * np.pi * (f0 * t + 300 * t**2)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        write_wav(d / f"s{i}.wav", chirp, 16000)
    write_wav(d / "s8k.wav", 0.2 * np.sin(2 * np.pi * 200 * np.arange(4000) / 8000), 8000)  # resampled
    return d


def test_image_training_checkpoints_resume_and_report(image_dir, tmp_path):
    cfg = TrainConfig(kind="image", data=str(image_dir), out=str(tmp_path), model=TINY_IMAGE, steps=4,
                      batch_size=4, crop=32, checkpoint_every=2, log_every=1, eval_batches=2)  # fmt: skip
    report = train_tokenizer(cfg)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"]
    assert [h["step"] for h in report["history"]] == [1, 2, 3, 4]
    for png in ("loss.png", "utilization.png", "reconstructions.png"):
        assert (tmp_path / png).stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["train_eval"][0]["psnr_db"] > 0
    # resume: a longer run on the same directory continues from step 4
    more = train_tokenizer(TrainConfig(**{**cfg.__dict__, "steps": 6}))
    assert [h["step"] for h in more["history"]] == [1, 2, 3, 4, 5, 6]


def test_audio_training_reports_each_bitrate(audio_dir, tmp_path):
    cfg = TrainConfig(kind="audio", data=str(audio_dir), out=str(tmp_path), model=TINY_AUDIO, steps=3,
                      batch_size=2, segment=0.2, checkpoint_every=10, log_every=1, eval_batches=1)  # fmt: skip
    report = train_tokenizer(cfg)
    rows = report["train_eval"]
    assert [r["bitrate_bps"] for r in rows] == [50 * 4 * m for m in (1, 2, 3)]
    assert all(len(r["used_fraction_per_level"]) == 3 and np.isfinite(r["si_snr_db"]) for r in rows)
    assert (tmp_path / "spectrograms.png").exists()


def test_bad_configs_fail_early(image_dir, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(kind="video", data=str(image_dir), out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown image model fields"):
        TrainConfig(kind="image", data=str(image_dir), out=str(tmp_path), model={"depth": 3})
    with pytest.raises(FileNotFoundError):
        train_tokenizer(TrainConfig(kind="image", data=str(tmp_path / "missing"), out=str(tmp_path)))


def test_cli_train_tokenizer(image_dir, tmp_path):
    rc = vq_main(["train-tokenizer", "image", "--data", str(image_dir), "--out", str(tmp_path), "--steps", "2",
                  "--batch-size", "2", "--crop", "32", "--quantizer", "fsq",
                  "--model-json", json.dumps({"hidden": 8, "dim": 8, "res_blocks": 0})])  # fmt: skip
    assert rc == 0 and (tmp_path / "report.json").exists()


def test_torchrun_two_gloo_ranks(image_dir, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tokenizers")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "vq.cli", "train-tokenizer", "image", "--data", str(image_dir), "--out", str(tmp_path),
           "--steps", "4", "--batch-size", "2", "--crop", "32", "--checkpoint-every", "2",
           "--model-json", json.dumps({**TINY_IMAGE, "quantizer": {"kind": "vq", "codebook_size": 32,
                                                                    "options": {"init_max_batches": 2}}})]  # fmt: skip
    proc = subprocess.run(cmd, env=env, timeout=240, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps_done"] == 4
