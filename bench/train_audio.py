"""Train the RVQ speech codec for a fixed CPU budget; SI-SNR and mel distance per bitrate on a
held-out voice.

Speech comes from Debian's espeak-ng (``apt-get install -y espeak-ng``): the same texts spoken
by several voices for training, one more voice held out. Stages are dropped at evaluation to
scale the bitrate (frames/s x stages x log2 K).

    python bench/train_audio.py --budget-s 600

Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vq_tokenizers.train import TrainConfig, train_tokenizer

from _report import print_result

log = logging.getLogger("bench.train_audio")

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer turns a waveform into a short sequence of integers.",
    "Residual quantization refines the error of the previous stage.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
    "The rainbow is a division of white light into many beautiful colors.",
    "When the sunlight strikes raindrops in the air, they act as a prism.",
    "Numbers like seventeen, forty two and one thousand nine hundred are easy to say.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
)
TRAIN_VOICES = ("en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f4", "en-gb-scotland+m2", "en-029+f3")
HELDOUT_VOICE = "en-gb-x-rp+f5"


@dataclass(frozen=True)
class Experiment:
    budget_s: float = 600.0
    sample_rate: int = 16000
    codebook_size: int = 1024
    stages: int = 8
    batch_size: int = 4
    segment: float = 0.64
    lr: float = 1e-3
    channels: int = 8
    waveform_weight: float = 50.0  # L1 on samples (AudioCodecConfig.waveform_weight); 0 = magnitude-only loss
    seed: int = 0


def synthesize(out: Path, voices: tuple[str, ...], texts: tuple[str, ...]) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: apt-get install -y espeak-ng")
    out.mkdir(parents=True, exist_ok=True)
    for v in voices:
        for i, t in enumerate(texts):
            subprocess.run([exe, "-v", v, "-s", "160", "-w", str(out / f"{v.replace('+', '_')}_{i:02d}.wav"), t],
                           check=True, capture_output=True, timeout=60)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=Experiment.budget_s)
    ap.add_argument("--sample-rate", type=int, default=Experiment.sample_rate, choices=[16000, 24000])
    ap.add_argument("--stages", type=int, default=Experiment.stages, help="RVQ stages")
    ap.add_argument("--codebook-size", type=int, default=Experiment.codebook_size)
    ap.add_argument("--waveform-weight", type=float, default=Experiment.waveform_weight)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    exp = Experiment(budget_s=args.budget_s, sample_rate=args.sample_rate, stages=args.stages,
                     codebook_size=args.codebook_size, waveform_weight=args.waveform_weight)  # fmt: skip
    work = Path(args.work or tempfile.mkdtemp(prefix="vq_audio_"))
    synthesize(work / "train", TRAIN_VOICES, TEXTS)
    synthesize(work / "heldout", (HELDOUT_VOICE,), TEXTS)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    cfg = TrainConfig(
        kind="audio", data=str(work / "train"), heldout=str(work / "heldout"), out=str(run),
        model={"sample_rate": exp.sample_rate, "channels": exp.channels, "waveform_weight": exp.waveform_weight,
               "quantizer": {"kind": "rvq", "codebook_size": exp.codebook_size, "stages": exp.stages,
                             "quantizer_dropout": 0.5}},
        steps=10**9, batch_size=exp.batch_size, lr=exp.lr, segment=exp.segment, checkpoint_every=10**9,
        log_every=10, eval_batches=8, time_budget_s=exp.budget_s, seed=exp.seed,
    )  # fmt: skip
    report = train_tokenizer(cfg)
    print(f"steps {report['steps_done']} in {report['train_seconds']:.0f} s; held-out voice {HELDOUT_VOICE}")
    print(f"{'stages':>6} {'kbps':>6} {'SI-SNR dB':>9} {'mel L1':>7}  used fraction per stage")
    for r in report["heldout"]:
        used = " ".join(f"{u:.2f}" for u in r["used_fraction_per_stage"])
        print(f"{r['stages']:>6} {r['bitrate_bps'] / 1000:>6.2f} {r['si_snr_db']:>9.2f} {r['mel_distance']:>7.3f}  {used}")
    print_result({"experiment": asdict(exp), "steps_done": report["steps_done"], "train_seconds": report["train_seconds"],
                  "heldout_voice": HELDOUT_VOICE, "train_voices": TRAIN_VOICES, "heldout": report["heldout"],
                  "run_dir": str(run)})  # fmt: skip


if __name__ == "__main__":
    main()
