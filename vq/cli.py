"""The ``vq`` command line. Each area registers its own subcommands:

- ``vq.weights.commands.register`` — compress / eval / generate / demo (LLM weight compression)
- ``vq_tokenizers.commands.register`` — train-tokenizer
- ``vq.bench.commands.register`` — bench utilization (codebook utilization reports)

Areas are imported lazily so a missing optional dependency only disables its own commands.

Errors are one line on stderr, ``vq COMMAND: error: ...``, with an exit code per class
(``--debug`` shows the traceback instead):

- 2 (``EXIT_USAGE``): the command line — an unknown or malformed flag, a bad flag value
  (argparse, :class:`UsageError`), a ``ValueError`` / ``TypeError`` from validating a parameter;
- 3 (``EXIT_INPUT``): an input file or its data — missing, unreadable, not JSON, damaged
  (``OSError``, ``json.JSONDecodeError``, ``UnicodeDecodeError``, :class:`vq.codebook.checks.InputError`);
- 4 (``EXIT_RUNTIME``): a failure while running (``RuntimeError``, ``MemoryError``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import NoReturn

from vq.codebook.checks import InputError

__all__ = ["main", "build_parser", "UsageError", "EXIT_USAGE", "EXIT_INPUT", "EXIT_RUNTIME"]

_AREAS = ("vq.weights.commands", "vq_tokenizers.commands", "vq.bench.commands")

EXIT_USAGE, EXIT_INPUT, EXIT_RUNTIME = 2, 3, 4


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit code ``EXIT_USAGE``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vq", description="vector/codebook quantization engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="debug logging, and a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # area not present in this install
            raise
        module.register(sub)
    return parser


def exit_code(e: BaseException) -> int:
    """The exit code of an error class (see the module docstring)."""
    if isinstance(e, (OSError, json.JSONDecodeError, UnicodeDecodeError, InputError)):
        return EXIT_INPUT
    if isinstance(e, (ValueError, TypeError)):
        return EXIT_USAGE
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if (args.verbose or args.debug) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in message:
            message = f"{e.filename}: {message}"
        print(f"vq {args.command}: error: {message}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
