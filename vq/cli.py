"""The ``vq`` command line. Each area registers its own subcommands:

- ``vq.weights.commands.register`` — compress / eval / generate / demo (LLM weight compression)
- ``vq_tokenizers.commands.register`` — train-tokenizer
- ``vq.bench.commands.register`` — bench utilization (codebook utilization reports)

Areas are imported lazily so a missing optional dependency only disables its own commands.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser"]

_AREAS = ("vq.weights.commands", "vq_tokenizers.commands", "vq.bench.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vq", description="vector/codebook quantization engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # area not present in this install
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"vq {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
