"""Command line: ``python -m grassbundle check [--json] [--problem FILE.npz]``.

``check`` runs every check of :mod:`grassbundle.theorems` and
:mod:`grassbundle.theorems_fits` (the statements of ``docs/theory``: the
bundle's theorems, rank allocation, the refits, the factorisations, the
distances and means, soft coupling) on seeded random problems, or on a user's problem
stored as ``.npz`` with ``W`` (L x m x n), optionally ``C`` (L x n x n) and
``rank`` (default ``min(m, n) // 4``, at least 1).  It prints a table, or
with ``--json`` a JSON list of reports (``name``, ``holds``, ``figures``,
...), and exits 0 only if every check holds (1 if one fails, 2 on bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bundle import BundleProblem
from .theorems import TheoremReport, run_all_checks


class ProblemFileError(ValueError):
    """A problem file that cannot be used; the message is one line."""


def load_problem(path: str | Path) -> BundleProblem:
    """Read a problem from ``.npz``: ``W`` (L x m x n), optional ``C`` and ``rank``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    BundleProblem

    Raises
    ------
    ProblemFileError
        When the file is missing, unreadable or its arrays are invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ProblemFileError(f"problem file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # numpy raises several kinds for a bad archive
        raise ProblemFileError(
            f"cannot read {p} as .npz ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    if "W" not in data:
        raise ProblemFileError(f"{p} has no array 'W' (found {sorted(data)}); W must be L x m x n")
    W = data["W"]
    if W.ndim != 3:
        raise ProblemFileError(f"W in {p} must have shape (L, m, n); got shape {W.shape}")
    if "rank" in data:
        r = data["rank"]
        if r.shape != () or not np.issubdtype(r.dtype, np.integer):
            raise ProblemFileError(f"rank in {p} must be an integer scalar; got {r!r}")
        rank = int(r)
    else:
        rank = max(1, min(W.shape[1], W.shape[2]) // 4)
    try:
        return BundleProblem(W, data.get("C"), rank=rank)
    except ValueError as exc:
        raise ProblemFileError(f"invalid problem in {p}: {exc}".splitlines()[0]) from None


def format_table(reports: Sequence[TheoremReport]) -> str:
    """The reports as a fixed-width text table (one row per report, then a total line)."""
    w = max(len(r.name) for r in reports)
    lines = [f"{'check':<{w}}  holds  figures", f"{'-' * w}  -----  {'-' * 40}"]
    for r in reports:
        lines.append(f"{r.name:<{w}}  {'yes' if r.holds else 'NO':<5}  {r.summary}")
        for f in r.failures:
            lines.append(f"{'':<{w}}         ! {f}")
    ok = sum(r.holds for r in reports)
    lines.append(f"{ok}/{len(reports)} checks hold")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m grassbundle`` and the ``grassbundle`` console script."""
    parser = argparse.ArgumentParser(prog="grassbundle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="run the theorem checks and exit 0 only if all hold")
    chk.add_argument("--json", action="store_true", help="print a JSON list of reports")
    chk.add_argument("--problem", metavar="FILE.npz", help="W (L x m x n), optional C, rank")
    chk.add_argument("--seed", type=int, default=0, help="seed of the random problems and frames")
    args = parser.parse_args(argv)
    problem = None
    if args.problem is not None:
        try:
            problem = load_problem(args.problem)
        except ProblemFileError as exc:
            print(f"grassbundle check: error: {exc}", file=sys.stderr)
            return 2
    reports = run_all_checks(problem, seed=args.seed)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=1))
    else:
        print(format_table(reports))
    return 0 if all(r.holds for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
