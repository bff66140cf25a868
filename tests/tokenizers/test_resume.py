"""Tokenizer training resume: a run killed after a checkpoint and resumed equals an uninterrupted
run tensor for tensor; a damaged newest checkpoint falls back to the previous good one."""
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import vq_tokenizers.train as train_mod
from vq_tokenizers.data import write_wav
from vq_tokenizers.train import TrainConfig, train_tokenizer

# a small codebook, re-seeding every step and a 2-batch k-means init: every piece of layer state
# (init buffer, ring buffer, sampling generator) is in play within a few steps
TINY_IMAGE = {"hidden": 8, "dim": 8, "res_blocks": 0,
              "quantizer": {"kind": "vq", "codebook_size": 32, "options": {"init_max_batches": 2, "reseed_every": 1}}}
TINY_AUDIO = {"channels": 4, "dim": 8, "stft_sizes": [256, 512], "quantizer": {"codebook_size": 16, "stages": 3}}  # dropout: global RNG


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    t = np.arange(8000) / 16000
    for i, f0 in enumerate((180.0, 240.0)):
        write_wav(d / f"s{i}.wav", 0.3 * np.sin(2 * np.pi * (f0 * t + 300 * t**2)), 16000)
    return d


def _cfg(kind, data, out, **kw):
    base = dict(steps=6, checkpoint_every=3, log_every=1, eval_batches=1, batch_size=4)
    if kind == "image":
        base.update(model=TINY_IMAGE, crop=32)
    else:
        base.update(model=TINY_AUDIO, segment=0.2, batch_size=2)
    return TrainConfig(kind=kind, data=str(data), out=str(out), **{**base, **kw})


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"]), {k: f.get_tensor(k) for k in f.keys()}


class _Killed(Exception):
    pass


def _train_killed_after(cfg, step, monkeypatch):
    """Run ``cfg`` and die right after the checkpoint of ``step`` is written (no final report)."""
    real = train_mod._save_checkpoint

    def save_then_die(path, *args, **kw):
        real(path, *args, **kw)
        if path.name == f"ckpt-{step:08d}.safetensors":
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(train_mod, "_save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            train_tokenizer(cfg)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_killed_and_resumed_run_equals_uninterrupted(kind, image_dir, audio_dir, tmp_path, monkeypatch):
    data = image_dir if kind == "image" else audio_dir
    train_tokenizer(_cfg(kind, data, tmp_path / "straight"))
    _train_killed_after(_cfg(kind, data, tmp_path / "resumed"), 3, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("ckpt-*")) == ["ckpt-00000003.safetensors"]
    torch.rand(1000)  # the process's global RNG moved on: the resume must not depend on it
    train_tokenizer(_cfg(kind, data, tmp_path / "resumed"))
    meta_a, a = _read(tmp_path / "straight" / "ckpt-00000006.safetensors")
    meta_b, b = _read(tmp_path / "resumed" / "ckpt-00000006.safetensors")
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    assert {"rng.torch", "rng.data.0"} <= set(a)  # the RNG states travel in the checkpoint

    def drop_rate(h):  # wall-clock throughput is the one thing that may differ
        return [{k: v for k, v in e.items() if k != "samples_per_s"} for e in h]
    assert drop_rate(meta_a["history"]) == drop_rate(meta_b["history"])
    assert [e["step"] for e in meta_b["history"]] == [1, 2, 3, 4, 5, 6]


def _flip_last_bytes(raw: bytes) -> bytes:
    """The same file with its last 8 data bytes inverted: still a readable safetensors file."""
    return raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:])


@pytest.mark.parametrize("damage", ["truncated", "header", "flipped"])
def test_damaged_newest_checkpoint_falls_back_to_previous(damage, image_dir, tmp_path, caplog):
    cfg = _cfg("image", image_dir, tmp_path, steps=4, checkpoint_every=2)
    train_tokenizer(cfg)
    newest = tmp_path / "ckpt-00000004.safetensors"
    raw = newest.read_bytes()
    damaged = {"truncated": raw[: len(raw) // 2], "header": b"\xff" * 16 + raw[16:], "flipped": _flip_last_bytes(raw)}
    newest.write_bytes(damaged[damage])
    with caplog.at_level(logging.INFO, logger="vq_tokenizers.train"):
        more = train_tokenizer(_cfg("image", image_dir, tmp_path, steps=6, checkpoint_every=2))
    assert "ckpt-00000004.safetensors is damaged" in caplog.text
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert [h["step"] for h in more["history"]] == [1, 2, 3, 4, 5, 6]
    _read(newest)  # rewritten when the resumed run passed step 4 again


def test_all_checkpoints_damaged_is_an_error_naming_them(image_dir, tmp_path):
    train_tokenizer(_cfg("image", image_dir, tmp_path, steps=2, checkpoint_every=2))
    (tmp_path / "ckpt-00000002.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*ckpt-00000002\.safetensors"):
        train_tokenizer(_cfg("image", image_dir, tmp_path, steps=4, checkpoint_every=2))


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_resume_equals_uninterrupted(image_dir, tmp_path):
    """Each rank's data generator is gathered into rank 0's checkpoint and restored per rank."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tokenizers")]), OMP_NUM_THREADS="1")

    def run(out, steps):
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "vq.cli", "train-tokenizer", "image", "--data", str(image_dir), "--out", str(out),
               "--steps", str(steps), "--batch-size", "2", "--crop", "32", "--checkpoint-every", "2",
               "--model-json", json.dumps(TINY_IMAGE)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, timeout=240, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    _, a = _read(tmp_path / "straight" / "ckpt-00000004.safetensors")
    _, b = _read(tmp_path / "resumed" / "ckpt-00000004.safetensors")
    assert {"rng.data.0", "rng.data.1"} <= set(a) and not torch.equal(a["rng.data.0"], a["rng.data.1"])
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
