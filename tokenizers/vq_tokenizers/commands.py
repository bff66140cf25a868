"""``vq train-tokenizer image|audio --data DIR ...`` (registered by :mod:`vq.cli`)."""
from __future__ import annotations

import argparse
import json
import logging

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train a VQ-VAE image tokenizer or an RVQ audio codec (torchrun for several processes)",
        description="Train a tokenizer on a folder of PNG/JPEG images or WAV/FLAC files. "
        "Resumes from the newest checkpoint in --out.",
    )
    p.add_argument("kind", choices=["image", "audio"])
    p.add_argument("--data", required=True, help="training folder")
    p.add_argument("--heldout", help="held-out folder for the final metrics")
    p.add_argument("--out", required=True, help="run directory (checkpoints, report.json, plots): new, empty, or an earlier run "
                   "of this command, which is resumed")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--crop", type=int, default=64, help="image crop size")
    p.add_argument("--segment", type=float, default=0.5, help="audio segment in seconds")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--time-budget", type=float, help="stop after this many seconds")
    p.add_argument("--quantizer", choices=["vq", "simvq", "fsq", "rvq", "grvq"], help="bottleneck kind")
    p.add_argument("--codebook-size", type=int)
    p.add_argument("--stages", type=int, help="RVQ / GRVQ stages (codebooks in sequence)")
    # the name before issue #12; still accepted, with a warning
    p.add_argument("--levels", dest="deprecated_levels", type=int, help=argparse.SUPPRESS)
    p.add_argument("--downsample", type=int, choices=[4, 8], help="image downsampling factor")
    p.add_argument("--sample-rate", type=int, help="audio sample rate (16000 or 24000)")
    p.add_argument("--model-json", default="{}", help="extra model config fields as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vq_tokenizers.train import TrainConfig, train_tokenizer

    try:
        model = json.loads(args.model_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-json is not valid JSON ({e}): {args.model_json!r}") from None
    if not isinstance(model, dict):
        raise ValueError(f"--model-json must be a JSON object, got {args.model_json!r}")
    quant = dict(model.get("quantizer", {}))
    stages = args.stages
    if args.deprecated_levels is not None:
        log.warning("--levels is deprecated: use --stages (the number of RVQ stages)")
        if stages is not None and stages != args.deprecated_levels:
            raise ValueError(f"--stages {stages} and the deprecated --levels {args.deprecated_levels} disagree")
        stages = args.deprecated_levels
    for key, value in (("kind", args.quantizer), ("codebook_size", args.codebook_size), ("stages", stages)):
        if value is not None:
            quant[key] = value
    if quant:
        model["quantizer"] = quant
    if args.downsample is not None:
        model["downsample"] = args.downsample
    if args.sample_rate is not None:
        model["sample_rate"] = args.sample_rate
    cfg = TrainConfig(
        kind=args.kind, data=args.data, out=args.out, heldout=args.heldout, model=model, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, crop=args.crop, segment=args.segment,
        checkpoint_every=args.checkpoint_every, time_budget_s=args.time_budget, seed=args.seed,
    )  # fmt: skip
    report = train_tokenizer(cfg)
    metrics = report.get("heldout") or report.get("train_eval")
    if metrics is not None:
        log.info("final metrics: %s", json.dumps(metrics))
    return 0
