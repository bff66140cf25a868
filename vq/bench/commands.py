"""CLI of the benchmarking area: ``vq bench utilization``.

Registered by ``vq.cli`` through :func:`register`. The summary goes to stdout; progress bars and
diagnostics to stderr. Output safety (:mod:`vq.outputs`, checked before the data loads): ``--out``
must be new or empty; an existing non-empty directory is replaced only with ``--overwrite`` AND
when it holds vq's marker (:data:`MARKER`) of a bench report, and then only the files this command
writes go (the report is staged beside it and swapped in; other files are kept).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vq.outputs import MARKER, OutputKind, check_out_dir, staged_dir

__all__ = ["MARKER", "OUTPUT", "OUTPUT_FILES", "register"]

log = logging.getLogger(__name__)

OUTPUT_FILES = ("results.json", "report.html", "summary.txt")
#: the marker kind of a report directory (vq.outputs)
OUTPUT = OutputKind(kind="bench-utilization", command="vq bench", files=(*OUTPUT_FILES, "*.png"))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench utilization`` to the ``vq`` parser."""
    from vq.bench.quantizers import OURS, PEERS

    bench = sub.add_parser("bench", help="benchmarks: codebook utilization")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    p = bsub.add_parser("utilization", help="codebook usage, error and cost of quantizers x sizes; report with plots")
    p.add_argument("--data", required=True,
                   help="FILE.npy, FILE.safetensors[:KEY], or a built-in set: gaussian, image-patches, llm-weights")
    p.add_argument("--quantizers", default=",".join(OURS),
                   help=f"comma-separated: {', '.join(OURS)} (rvq:S / aq:M / pq:G set the codebook count; default all)")
    p.add_argument("--sizes", default="256,1024,8192", help="codebook sizes K, comma-separated (default 256,1024,8192)")
    p.add_argument("--peers", default="auto",
                   help=f"'auto' (every installed peer), 'none', or comma-separated from: {', '.join(PEERS)}")
    p.add_argument("--peer-steps", type=int, default=300, help="training steps of the vector-quantize-pytorch peers")
    p.add_argument("--peer-batch", type=int, default=1024, help="vectors per training step of those peers")
    p.add_argument("--out", required=True, help="output directory (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out that an earlier `vq bench` run created (replaces only its files)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-vectors", type=int, default=None, help="cap on the vectors of each split, fit and held-out (seeded subsample)")
    p.add_argument("--dim", type=int, default=None,
                   help="vector length (gaussian 8, image-patches 16 = 4x4 patches, llm-weights 8; files: cut rows)")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="record quantizer/size pairs that cannot run as skipped instead of refusing the run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_utilization)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what} is empty")
    return items


def _sizes(text: str) -> tuple[int, ...]:
    out = []
    for t in _csv(text, "sizes"):
        if not t.isdigit() or int(t) < 1:
            raise ValueError(f"--sizes: {t!r} is not a positive integer")
        out.append(int(t))
    return tuple(out)


def _command(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this run (every option spelled out)."""
    cmd = ["vq", "bench", "utilization", "--data", args.data, "--quantizers", args.quantizers, "--sizes", args.sizes,
           "--peers", args.peers, "--peer-steps", str(args.peer_steps), "--peer-batch", str(args.peer_batch), "--seed", str(args.seed), "--out", args.out]
    for flag, v in (("--max-vectors", args.max_vectors), ("--dim", args.dim), ("--threads", args.threads)):
        if v is not None:
            cmd += [flag, str(v)]
    return cmd + [f for f, on in (("--skip-unsupported", args.skip_unsupported), ("--overwrite", args.overwrite)) if on]


def cmd_utilization(args: argparse.Namespace) -> int:
    import torch

    from vq.bench.data import load_data
    from vq.bench.report import write_report
    from vq.bench.utilization import UtilizationConfig, bench_utilization, plan_runs

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.peer_steps < 1:
        raise ValueError(f"--peer-steps must be >= 1, got {args.peer_steps}")
    peers: tuple[str, ...] = ("auto",) if args.peers == "auto" else (() if args.peers == "none" else tuple(_csv(args.peers, "peers")))
    config = UtilizationConfig(quantizers=tuple(_csv(args.quantizers, "quantizers")), sizes=_sizes(args.sizes),
                               peers=peers, seed=args.seed, peer_steps=args.peer_steps, peer_batch=args.peer_batch,
                               skip_unsupported=args.skip_unsupported)
    out = Path(args.out)
    check_out_dir(out, OUTPUT, overwrite=args.overwrite)  # before the data loads
    data = load_data(args.data, dim=args.dim, seed=args.seed, max_vectors=args.max_vectors)
    plan_runs(config, data.dim, data.fit.shape[0])  # every size error before anything is fitted
    results = bench_utilization(data, config, progress=True, command=_command(args))
    with staged_dir(out, OUTPUT, overwrite=args.overwrite) as tmp:
        written = write_report(results, tmp)
    for line in written["summary"]:
        sys.stdout.write(line + "\n")
    sys.stdout.write(f"report: {out / written['html'].name}\n")
    return 0
