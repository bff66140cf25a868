"""Training loop: checkpoints, resume, report + plots, CLI, torchrun with two gloo ranks."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from vq.cli import main as vq_main
from vq_tokenizers.audio import AudioCodecConfig
from vq_tokenizers.data import write_wav
from vq_tokenizers.image import ImageTokenizerConfig
from vq_tokenizers.train import TrainConfig, build_model, load_checkpoint, train_tokenizer

TINY_IMAGE = {"hidden": 8, "dim": 8, "res_blocks": 0, "quantizer": {"kind": "vq", "codebook_size": 32}}
TINY_AUDIO = {"channels": 4, "dim": 8, "stft_sizes": [256, 512], "quantizer": {"codebook_size": 16, "stages": 3}}


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
    assert all(len(r["used_fraction_per_stage"]) == 3 and np.isfinite(r["si_snr_db"]) for r in rows)
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


def _free_port() -> int:
    """A port no one listens on now (a fixed one collided when two suites ran at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_ranks(image_dir, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tokenizers")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "vq.cli", "train-tokenizer", "image", "--data", str(image_dir), "--out", str(tmp_path),
           "--steps", "4", "--batch-size", "2", "--crop", "32", "--checkpoint-every", "2",
           "--model-json", json.dumps({**TINY_IMAGE, "quantizer": {"kind": "vq", "codebook_size": 32,
                                                                    "options": {"init_max_batches": 2}}})]  # fmt: skip
    proc = subprocess.run(cmd, env=env, timeout=240, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps_done"] == 4


def test_configs_saved_before_the_stages_rename_load(image_dir, tmp_path):
    """Before issue #12 an RVQ spec's stage count was the JSON key "levels"."""
    old_q = {"codebook_size": 16, "levels": 3}
    cfg = TrainConfig(kind="audio", data=str(image_dir), out=str(tmp_path), model={**TINY_AUDIO, "quantizer": old_q})
    spec = cfg.model_config().quantizer  # partial spec over AudioCodecConfig's default rvq one
    assert (spec.kind, spec.codebook_size, spec.stages, spec.quantizer_dropout) == ("rvq", 16, 3, 0.5)
    # a checkpoint's "model_config" JSON, as written before the rename
    saved = json.loads(json.dumps(asdict(AudioCodecConfig(**{**TINY_AUDIO, "quantizer": {"kind": "rvq", "stages": 3}}))))
    saved["quantizer"]["levels"] = saved["quantizer"].pop("stages")
    assert AudioCodecConfig(**saved).quantizer.stages == 3
    assert ImageTokenizerConfig(quantizer={"kind": "rvq", "levels": 2}).quantizer.stages == 2
    with pytest.raises(ValueError, match="both 'levels'=3 .*'stages'=2"):
        TrainConfig(kind="audio", data=str(image_dir), out=str(tmp_path),
                    model={**TINY_AUDIO, "quantizer": {**old_q, "stages": 2}})  # fmt: skip
    with pytest.raises(ValueError, match="both 'levels'=2 .*'stages'=4"):
        ImageTokenizerConfig(quantizer={"kind": "rvq", "levels": 2, "stages": 4})


def test_checkpoint_saved_before_the_stages_rename_resumes(audio_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = TrainConfig(kind="audio", data=str(audio_dir), out=str(tmp_path), model=TINY_AUDIO, steps=2,
                      batch_size=2, segment=0.2, checkpoint_every=2, log_every=1, eval_batches=1)  # fmt: skip
    train_tokenizer(cfg)
    ckpt = tmp_path / "ckpt-00000002.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:  # rewrite it the way the old code wrote it
        meta = json.loads(f.metadata()["meta"])
        tensors = {k.replace("model.quantizer.vqs.", "model.quantizer.stages."): f.get_tensor(k) for k in f.keys()}
    assert any(k.startswith("model.quantizer.stages.2.") for k in tensors)
    meta["model_config"]["quantizer"]["levels"] = meta["model_config"]["quantizer"].pop("stages")
    save_file(tensors, str(ckpt), metadata={"meta": json.dumps(meta)})
    fresh = build_model(cfg)
    load_checkpoint(ckpt, fresh)  # strict load: every old tensor name is mapped
    assert torch.equal(fresh.quantizer.vqs[2].codebook, tensors["model.quantizer.stages.2.codebook"])
    assert AudioCodecConfig(**meta["model_config"]) == fresh.config
    more = train_tokenizer(TrainConfig(**{**cfg.__dict__, "steps": 3}))  # resume, optimizer state included
    assert [h["step"] for h in more["history"]] == [1, 2, 3]


def test_cli_stages_flag_and_deprecated_levels_alias(audio_dir, tmp_path, caplog, capsys):
    base = ["train-tokenizer", "audio", "--data", str(audio_dir), "--steps", "1", "--batch-size", "2",
            "--segment", "0.2", "--codebook-size", "16",
            "--model-json", json.dumps({k: v for k, v in TINY_AUDIO.items() if k != "quantizer"})]  # fmt: skip
    assert vq_main([*base, "--out", str(tmp_path / "new"), "--stages", "2"]) == 0
    rows = json.loads((tmp_path / "new" / "report.json").read_text())["train_eval"]
    assert [r["stages"] for r in rows] == [1, 2] and all(len(r["used_fraction_per_stage"]) == 2 for r in rows)
    assert "deprecated" not in caplog.text
    assert vq_main([*base, "--out", str(tmp_path / "old"), "--levels", "2"]) == 0
    assert "--levels is deprecated: use --stages" in caplog.text
    report = json.loads((tmp_path / "old" / "report.json").read_text())
    assert report["model_config"]["quantizer"]["stages"] == 2 and [r["stages"] for r in report["train_eval"]] == [1, 2]
    assert vq_main([*base, "--out", str(tmp_path / "both"), "--stages", "3", "--levels", "2"]) == 2
    assert "--stages 3 and the deprecated --levels 2 disagree" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


@pytest.mark.parametrize("kind", ["foreign", "file", "below-a-file"])
def test_cli_refuses_an_out_it_may_not_write_before_any_work(kind, image_dir, tmp_path, capsys, monkeypatch):
    """Found at the start, not at the first checkpoint: nothing is built, nothing is touched."""
    import vq_tokenizers.train as train

    def boom(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(train, "_dataset", boom)
    monkeypatch.setattr(train, "_setup_distributed", boom)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "report.json").write_text("{}")  # a name the run writes, in a folder it did not create
    (mine / "paper.pdf").write_bytes(b"%PDF\x00")
    f = tmp_path / "f.bin"
    f.write_bytes(b"data")
    out = {"foreign": mine, "file": f, "below-a-file": f / "run"}[kind]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc = vq_main(["train-tokenizer", "image", "--data", str(image_dir), "--out", str(out), "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--out {out}" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
