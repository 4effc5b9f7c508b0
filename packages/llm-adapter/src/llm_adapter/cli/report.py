"""``llm-adapter report``: tables and figures from sweep results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from . import subcommand

__all__ = ["register", "run_cli"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``subparsers``."""
    p = subcommand(
        subparsers,
        "report",
        "Write results.md and the figures (phase diagram, Frobenius reduction vs "
        "perplexity ratio, per-layer errors) for one or more sweep JSONL files.",
    )
    p.add_argument("results", metavar="RESULTS", nargs="+", help="sweep JSONL file(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--title", default=None, help="heading of results.md (default: the sweep's name)"
    )
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="LABEL",
        help="also pair every row with this method or row label (e.g. 'svd-llm +update'); "
        "repeatable; each writes paired_<label>.csv and, with HellaSwag items, "
        "mcnemar_<label>.csv",
    )
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Run ``llm-adapter report``."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"--out {args.out!r} exists and is not a directory; give a directory")
    from ..experiment.report import write_report
    from ..files import check_writable_dir

    check_writable_dir(out, "--out")

    written = write_report(args.results, args.out, title=args.title, against=args.against)
    for name, path in written.items():
        print(f"{name:26s} {path}")
    return 0
