"""The ``llm-adapter`` command line.

Each subcommand lives in the module that implements it and registers itself
through a ``register(subparsers)`` function that adds its parser and sets
``func`` (called with the parsed namespace, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import AdapterError

__all__ = ["build_parser", "main"]

#: subcommand modules, in the order ``--help`` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "compress",
    "checkpoint",
    "evaluate",
    "sweep",
    "report",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="llm-adapter",
        description="Compress GPT-NeoX (Pythia) models with grassbundle, save, reload, evaluate.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"llm-adapter {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"llm_adapter.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the subcommand; bad input exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AdapterError as exc:
        print(f"llm-adapter: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"llm-adapter: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
