"""Paired comparisons of two evaluated models: a bootstrap over windows and items.

Two rows of a sweep are scored on the same WikiText windows and the same
HellaSwag items, so their difference is measured far more precisely than
either value alone: the hard windows are hard for both models. The paired
bootstrap resamples the *shared* windows (items) with replacement, recomputes
both models' statistic on each resample, and reads the spread of the
difference. A difference is called real only when its interval excludes
"no difference" (a perplexity ratio of 1, an accuracy difference of 0).

Each row needs the per-window and per-item fields that
:func:`llm_adapter.evaluate.evaluate_model` returns with ``per_item=True``
(sweeps store them): ``ppl_window_nll``, ``ppl_window_tokens``,
``hellaswag_correct`` and ``hellaswag_correct_norm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AdapterError

__all__ = ["PairedDifference", "paired_accuracy", "paired_perplexity"]

#: bootstrap resamples; the Monte Carlo error of a 95% percentile bound is well
#: under a tenth of the interval's width at this size
N_BOOT = 2000


@dataclass(frozen=True)
class PairedDifference:
    """One paired comparison ``b`` against ``a``.

    Attributes
    ----------
    metric : str
        ``"ppl_ratio"`` (perplexity of b over perplexity of a) or an accuracy
        difference (``"hellaswag_acc_diff"``, ``"hellaswag_acc_norm_diff"``: b minus a).
    estimate : float
        The statistic on the full set of windows (items).
    low, high : float
        The percentile bootstrap interval at ``level``.
    null : float
        The value meaning "no difference" (1 for a ratio, 0 for a difference).
    significant : bool
        Whether ``[low, high]`` excludes ``null``.
    n : int
        Windows (items) paired.
    level : float
    n_boot : int
    seed : int
    """

    metric: str
    estimate: float
    low: float
    high: float
    null: float
    significant: bool
    n: int
    level: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _indices(n: int, n_boot: int, seed: int) -> NDArray[np.intp]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _interval(
    metric: str,
    estimate: float,
    samples: NDArray[np.float64],
    null: float,
    n: int,
    level: float,
    n_boot: int,
    seed: int,
) -> PairedDifference:
    alpha = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(samples, [alpha, 1.0 - alpha]))
    return PairedDifference(
        metric=metric,
        estimate=float(estimate),
        low=low,
        high=high,
        null=null,
        significant=bool(low > null or high < null),
        n=n,
        level=level,
        n_boot=n_boot,
        seed=seed,
    )


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise AdapterError(f"level={level} must be in (0, 1), e.g. 0.95")
    if n_boot < 100:
        raise AdapterError(f"n_boot={n_boot} is too few resamples; use 1000 or more")


def _field(row: Mapping[str, Any], key: str, who: str) -> NDArray[np.float64]:
    value = row.get(key)
    if value is None:
        raise AdapterError(
            f"{who} has no {key!r}: evaluate with per_item=True (sweeps store it) to compare pairs"
        )
    return np.asarray(value, dtype=np.float64)


def paired_perplexity(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> PairedDifference:
    """Perplexity ratio ``ppl(b) / ppl(a)`` with a paired bootstrap over windows.

    Parameters
    ----------
    a, b : mapping
        Rows with ``ppl_window_nll`` (summed NLL per window, nats) and
        ``ppl_window_tokens`` (tokens scored per window), measured on the same
        windows.
    level : float
        Coverage of the interval.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling (the same seed pairs every comparison of a table
        with the same resamples).

    Returns
    -------
    PairedDifference
        ``metric = "ppl_ratio"``; significant when the interval excludes 1.
    """
    _check(level, n_boot)
    nll_a = _field(a, "ppl_window_nll", "the first row")
    nll_b = _field(b, "ppl_window_nll", "the second row")
    tok_a = _field(a, "ppl_window_tokens", "the first row")
    tok_b = _field(b, "ppl_window_tokens", "the second row")
    if nll_a.shape != nll_b.shape or not np.array_equal(tok_a, tok_b):
        raise AdapterError(
            f"the rows were scored on different windows ({nll_a.size} vs {nll_b.size} windows, "
            "or other token counts): compare rows of one evaluation protocol"
        )
    n = int(nll_a.size)
    if n < 2:
        raise AdapterError(f"{n} window(s) cannot give an interval; score at least 2 windows")
    idx = _indices(n, n_boot, seed)
    tokens = tok_a[idx].sum(axis=1)
    log_ratio = (nll_b[idx].sum(axis=1) - nll_a[idx].sum(axis=1)) / tokens
    estimate = float(np.exp((nll_b.sum() - nll_a.sum()) / tok_a.sum()))
    return _interval("ppl_ratio", estimate, np.exp(log_ratio), 1.0, n, level, n_boot, seed)


def paired_accuracy(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    norm: bool = True,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> PairedDifference:
    """HellaSwag accuracy difference ``acc(b) - acc(a)`` with a paired bootstrap over items.

    Parameters
    ----------
    a, b : mapping
        Rows with ``hellaswag_correct_norm`` (``norm=True``) or
        ``hellaswag_correct``: 0/1 per item, on the same items.
    norm : bool
        Compare ``acc_norm`` (default) or ``acc``.
    level, n_boot, seed
        See :func:`paired_perplexity`.

    Returns
    -------
    PairedDifference
        Significant when the interval excludes 0.
    """
    _check(level, n_boot)
    key = "hellaswag_correct_norm" if norm else "hellaswag_correct"
    ca = _field(a, key, "the first row")
    cb = _field(b, key, "the second row")
    if ca.shape != cb.shape:
        raise AdapterError(
            f"the rows were scored on different items ({ca.size} vs {cb.size}): "
            "compare rows of one evaluation protocol"
        )
    n = int(ca.size)
    if n < 2:
        raise AdapterError(f"{n} item(s) cannot give an interval; score at least 2 items")
    diff = cb - ca
    idx = _indices(n, n_boot, seed)
    metric = "hellaswag_acc_norm_diff" if norm else "hellaswag_acc_diff"
    return _interval(
        metric, float(diff.mean()), diff[idx].mean(axis=1), 0.0, n, level, n_boot, seed
    )
