"""Train VQ-VAE image tokenizers for a fixed CPU budget each; PSNR on held-out images per
bitrate (bits per pixel) and per-stage utilization.

Images: offline natural photographs from scikit-image / scikit-learn written as PNG; a few whole
images are held out. Bottlenecks: a single VectorQuantizer and a 4-stage ResidualVQ (stages
dropped at evaluation to scale the bitrate), both at 4x downsampling.

    python bench/train_image.py --budget-s 240      # seconds per model

Last line: one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vq_tokenizers.data import builtin_images
from vq_tokenizers.train import TrainConfig, train_tokenizer

from _report import print_result

log = logging.getLogger("bench.train_image")

HELDOUT = ("camera", "coffee", "sklearn_flower")
MODELS = {
    "vq1024": {"kind": "vq", "codebook_size": 1024},
    "rvq4x256": {"kind": "rvq", "codebook_size": 256, "stages": 4, "quantizer_dropout": 0.5},
}


@dataclass(frozen=True)
class Experiment:
    budget_s: float = 240.0
    downsample: int = 4
    crop: int = 32
    batch_size: int = 32
    lr: float = 1e-3
    hidden: int = 16
    seed: int = 0


def write_pngs(root: Path) -> None:
    for split in ("train", "heldout"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for name, im in builtin_images().items():
        split = "heldout" if name in HELDOUT else "train"
        Image.fromarray((im * 255).round().astype(np.uint8)).save(root / split / f"{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=Experiment.budget_s, help="seconds per model")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    exp = Experiment(budget_s=args.budget_s)
    work = Path(args.work or tempfile.mkdtemp(prefix="vq_image_"))
    write_pngs(work)
    results = {}
    for name in args.models:
        run = work / name
        shutil.rmtree(run, ignore_errors=True)
        cfg = TrainConfig(
            kind="image", data=str(work / "train"), heldout=str(work / "heldout"), out=str(run),
            model={"downsample": exp.downsample, "hidden": exp.hidden, "quantizer": MODELS[name]},
            steps=10**9, batch_size=exp.batch_size, lr=exp.lr, crop=exp.crop, checkpoint_every=10**9,
            log_every=10, eval_batches=8, time_budget_s=exp.budget_s, seed=exp.seed,
        )  # fmt: skip
        report = train_tokenizer(cfg)
        results[name] = {"steps_done": report["steps_done"], "train_seconds": report["train_seconds"],
                         "heldout": report["heldout"]}  # fmt: skip
    pixels_per_position = exp.downsample**2
    print(f"{'model':<10} {'steps':>6} {'stages':>6} {'bpp':>6} {'PSNR dB':>8}  used fraction per stage")
    for name, r in results.items():
        for row in r["heldout"]:
            row["bits_per_pixel"] = row["bits_per_position"] / pixels_per_position
            used = " ".join(f"{u:.2f}" for u in row["used_fraction_per_stage"])
            print(f"{name:<10} {r['steps_done']:>6} {row['stages']:>6} {row['bits_per_pixel']:>6.3f} {row['psnr_db']:>8.2f}  {used}")
    print_result({"experiment": asdict(exp), "heldout_images": HELDOUT, "results": results})


if __name__ == "__main__":
    main()
