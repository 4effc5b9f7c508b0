"""What a check takes and returns: the solver under test and :class:`TheoremReport`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..bundle import BundleProblem, Section

__all__ = ["Solver", "TheoremReport", "fmt", "nanmax"]

#: A solver under test: ``solver(problem, lam, k) -> Section``.
Solver = Callable[[BundleProblem, float, int], Section]


@dataclass
class TheoremReport:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        The statement and its parameters, e.g. ``"theorem_a[k=2]"``.
    holds : bool
        Whether every assertion of the statement held within tolerance.
    figures : dict
        The measured numbers (floats, lists of floats, bools).
    tolerance : dict
        Each tolerance used, by name.
    why : str
        Why these tolerances.
    summary : str
        One line of the key figures, for the table of ``python -m grassbundle check``.
    failures : list of str
        The assertions that failed (empty when ``holds``).
    """

    name: str
    holds: bool
    figures: dict[str, Any]
    tolerance: dict[str, float]
    why: str
    summary: str = ""
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (numpy scalars and arrays converted)."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return v
    return x


def nanmax(xs: Sequence[float]) -> float:
    """Largest non-NaN value (NaN when there is none)."""
    arr = np.array(xs, dtype=np.float64)
    return float(np.nanmax(arr)) if np.any(~np.isnan(arr)) else math.nan


def fmt(x: float) -> str:
    """``x`` to three significant digits, ``n/a`` for NaN."""
    return "n/a" if math.isnan(x) else f"{x:.3g}"
