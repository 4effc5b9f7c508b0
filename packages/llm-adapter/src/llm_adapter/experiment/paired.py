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

The calibration draw is a second source of variation: the same two methods
calibrated on other windows of the text compare differently.
:func:`paired_perplexity_seeds` takes rows of both methods under several
calibration seeds and bootstraps hierarchically: each resample draws the
seeds with replacement, then, within each drawn seed, that seed's windows
with replacement (the same windows for both methods: paired), and takes the
ratio of perplexities ``exp(mean NLL_b - mean NLL_a)`` over every drawn
(seed, window) pair's tokens.  The verdict is "better" or "worse" only when
the 95% percentile interval excludes 1; an interval containing 1 is a "tie"
when the estimate is within 1% of 1, and "inconclusive" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AdapterError

__all__ = [
    "McNemar",
    "PairedDifference",
    "SeedPairedDifference",
    "calibration_seed",
    "mcnemar",
    "paired_accuracy",
    "paired_perplexity",
    "paired_perplexity_seeds",
]

#: bootstrap resamples; the Monte Carlo error of a 95% percentile bound is well
#: under a tenth of the interval's width at this size
N_BOOT = 2000
#: a ratio within this fraction of 1 whose interval contains 1 is a tie
TIE = 0.01


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


def _item_hits(
    a: Mapping[str, Any], b: Mapping[str, Any], norm: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both rows' per-item HellaSwag hits (``acc_norm`` or ``acc``), checked to pair."""
    key = "hellaswag_correct_norm" if norm else "hellaswag_correct"
    ca = _field(a, key, "the first row")
    cb = _field(b, key, "the second row")
    if ca.shape != cb.shape:
        raise AdapterError(
            f"the rows were scored on different items ({ca.size} vs {cb.size}): "
            "compare rows of one evaluation protocol"
        )
    return ca, cb


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
    ca, cb = _item_hits(a, b, norm)
    n = int(ca.size)
    if n < 2:
        raise AdapterError(f"{n} item(s) cannot give an interval; score at least 2 items")
    diff = cb - ca
    idx = _indices(n, n_boot, seed)
    metric = "hellaswag_acc_norm_diff" if norm else "hellaswag_acc_diff"
    return _interval(
        metric, float(diff.mean()), diff[idx].mean(axis=1), 0.0, n, level, n_boot, seed
    )


@dataclass(frozen=True)
class McNemar:
    """An exact McNemar test of ``b`` against ``a`` on the items where they disagree.

    Attributes
    ----------
    metric : str
        ``"hellaswag_acc_norm"`` or ``"hellaswag_acc"``.
    wins : int
        Items that ``b`` gets right and ``a`` wrong.
    losses : int
        Items that ``a`` gets right and ``b`` wrong.
    n : int
        Items paired.
    p_value : float
        Two-sided: ``min(1, 2 P(X <= min(wins, losses)))`` for ``X ~ Binomial(wins +
        losses, 1/2)``, the null being that a disagreement falls either way with
        equal chance; 1 when the two never disagree.
    alpha : float
        The test's size.
    significant : bool
        ``p_value < alpha``.
    """

    metric: str
    wins: int
    losses: int
    n: int
    p_value: float
    alpha: float
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _binomial_two_sided(wins: int, losses: int) -> float:
    """``min(1, 2 P(X <= min(wins, losses)))``, ``X ~ Binomial(wins + losses, 1/2)``,
    in exact integer arithmetic (one rounding, at the final division)."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**m)


def mcnemar(
    a: Mapping[str, Any], b: Mapping[str, Any], *, norm: bool = True, alpha: float = 0.05
) -> McNemar:
    """Exact McNemar test of HellaSwag accuracy, ``b`` against ``a``, paired on items.

    Only the items where the two models disagree carry information about which
    is better: under the null each of them falls to either model with
    probability 1/2, so the number ``b`` wins is binomial. The test is exact
    (no normal approximation, no continuity correction), which matters at the
    few dozen disagreements of a 1,000-item comparison.

    Parameters
    ----------
    a, b : mapping
        Rows with ``hellaswag_correct_norm`` (``norm=True``) or
        ``hellaswag_correct``: 0/1 per item, on the same items.
    norm : bool
        Test ``acc_norm`` (default) or ``acc``.
    alpha : float
        Size of the test.

    Returns
    -------
    McNemar
    """
    if not 0.0 < alpha < 1.0:
        raise AdapterError(f"alpha={alpha} must be in (0, 1), e.g. 0.05")
    ca, cb = _item_hits(a, b, norm)
    if not (np.isin(ca, (0.0, 1.0)).all() and np.isin(cb, (0.0, 1.0)).all()):
        key = "hellaswag_correct_norm" if norm else "hellaswag_correct"
        raise AdapterError(f"{key!r} must hold 0 or 1 per item; give rows written by a sweep")
    wins = int(np.count_nonzero((cb == 1.0) & (ca == 0.0)))
    losses = int(np.count_nonzero((ca == 1.0) & (cb == 0.0)))
    p = _binomial_two_sided(wins, losses)
    return McNemar(
        metric="hellaswag_acc_norm" if norm else "hellaswag_acc",
        wins=wins,
        losses=losses,
        n=int(ca.size),
        p_value=p,
        alpha=alpha,
        significant=p < alpha,
    )


def calibration_seed(row: Mapping[str, Any]) -> int | None:
    """The calibration seed of a sweep row; None for a row without calibration.

    Read from the row's ``calibration`` record (rows written since it exists),
    else from its configuration's ``protocol.calibration`` section (whose seed
    defaults to 0 in sweeps).

    Parameters
    ----------
    row : mapping
        A sweep row.

    Returns
    -------
    int or None
    """
    record = row.get("calibration")
    if isinstance(record, Mapping) and record.get("seed") is not None:
        return int(record["seed"])
    section = (row.get("protocol") or {}).get("calibration")
    if isinstance(section, Mapping) and section:
        return int(section.get("seed", 0))
    return None


@dataclass(frozen=True)
class SeedPairedDifference:
    """A paired perplexity comparison ``b`` against ``a`` over calibration seeds and windows.

    Attributes
    ----------
    estimate : float
        ``exp(mean NLL_b - mean NLL_a)`` over every seed's windows (token-weighted).
    low, high : float
        The hierarchical bootstrap's percentile interval at ``level``.
    verdict : str
        ``"better"`` (b's perplexity lower: ``high < 1``), ``"worse"`` (``low >
        1``), ``"tie"`` (the interval contains 1 and ``|estimate - 1| < tie``) or
        ``"inconclusive"`` (the interval contains 1, the estimate does not lie
        within ``tie`` of it).
    seeds : tuple of int or None
        The calibration seeds, in the order given.
    windows : tuple of int
        Windows paired under each seed.
    per_seed : tuple of float
        The ratio under each seed alone.
    level, n_boot, seed, tie
        The interval's coverage, the resamples, the resampling seed and the
        tie threshold.
    """

    estimate: float
    low: float
    high: float
    verdict: str
    seeds: tuple[int | None, ...]
    windows: tuple[int, ...]
    per_seed: tuple[float, ...]
    level: float
    n_boot: int
    seed: int
    tie: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 1."""
        return self.verdict in ("better", "worse")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _by_seed(rows: Sequence[Mapping[str, Any]], who: str) -> dict[int | None, Mapping[str, Any]]:
    out: dict[int | None, Mapping[str, Any]] = {}
    for row in rows:
        s = calibration_seed(row)
        if s in out:
            raise AdapterError(
                f"{who} has two rows with calibration seed {s}: give one row per seed"
            )
        out[s] = row
    return out


def paired_perplexity_seeds(
    a_rows: Sequence[Mapping[str, Any]],
    b_rows: Sequence[Mapping[str, Any]],
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
    tie: float = TIE,
) -> SeedPairedDifference:
    """Perplexity ratio ``ppl(b) / ppl(a)`` with a bootstrap over calibration seeds and windows.

    Rows are paired by calibration seed (:func:`calibration_seed`): under each
    seed the two methods were calibrated on the same windows and scored on the
    same evaluation windows.  Each of ``n_boot`` resamples draws ``S`` seeds
    with replacement from the ``S`` seeds (``numpy.random.default_rng(seed)
    .integers(0, S, size=(n_boot, S))``), then, for each draw, that seed's
    ``n_s`` windows with replacement (one ``integers(0, n_s, ...)`` call per
    drawn position and seed, in that order), and computes ``exp(sum of
    (NLL_b - NLL_a) / sum of tokens)`` over every drawn window: the ratio of
    the two perplexities on that resample.  The interval is the percentile
    interval at ``level``.

    Parameters
    ----------
    a_rows, b_rows : sequence of mapping
        One row per calibration seed for each method, with ``ppl_window_nll``
        and ``ppl_window_tokens``; the same seeds for both.
    level : float
        Coverage of the interval.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.
    tie : float
        An interval that contains 1 with an estimate within ``tie`` of 1 is a tie.

    Returns
    -------
    SeedPairedDifference
    """
    _check(level, n_boot)
    if not 0.0 <= tie < 1.0:
        raise AdapterError(f"tie={tie} must be in [0, 1), e.g. 0.01 for 1%")
    a_by, b_by = _by_seed(a_rows, "the first method"), _by_seed(b_rows, "the second method")
    if set(a_by) != set(b_by) or not a_by:
        raise AdapterError(
            f"the methods were calibrated with different seeds ({sorted(a_by, key=str)} vs "
            f"{sorted(b_by, key=str)}): give both methods' rows for the same seeds"
        )
    seeds = list(a_by)
    diffs, tokens = [], []
    for s in seeds:
        nll_a = _field(a_by[s], "ppl_window_nll", f"the first method's row of seed {s}")
        nll_b = _field(b_by[s], "ppl_window_nll", f"the second method's row of seed {s}")
        tok_a = _field(a_by[s], "ppl_window_tokens", f"the first method's row of seed {s}")
        tok_b = _field(b_by[s], "ppl_window_tokens", f"the second method's row of seed {s}")
        starts_a, starts_b = a_by[s].get("ppl_window_starts"), b_by[s].get("ppl_window_starts")
        if (
            nll_a.shape != nll_b.shape
            or not np.array_equal(tok_a, tok_b)
            or (starts_a is not None and starts_b is not None and starts_a != starts_b)
        ):
            raise AdapterError(
                f"under calibration seed {s} the rows were scored on different windows: "
                "compare rows of one evaluation protocol"
            )
        if nll_a.size < 2:
            raise AdapterError(
                f"{nll_a.size} window(s) under seed {s} cannot give an interval; score at "
                "least 2 windows"
            )
        diffs.append(nll_b - nll_a)
        tokens.append(tok_a)
    n_seeds = len(seeds)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    diff_sum = np.zeros(n_boot)
    token_sum = np.zeros(n_boot)
    for j in range(n_seeds):
        for k in range(n_seeds):
            hit = np.flatnonzero(drawn[:, j] == k)
            n = diffs[k].size
            idx = rng.integers(0, n, size=(hit.size, n))
            diff_sum[hit] += diffs[k][idx].sum(axis=1)
            token_sum[hit] += tokens[k][idx].sum(axis=1)
    samples = np.exp(diff_sum / token_sum)
    alpha = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(samples, [alpha, 1.0 - alpha]))
    total_diff = float(sum(d.sum() for d in diffs))
    total_tokens = float(sum(t.sum() for t in tokens))
    estimate = math.exp(total_diff / total_tokens)
    if high < 1.0:
        verdict = "better"
    elif low > 1.0:
        verdict = "worse"
    else:
        verdict = "tie" if abs(estimate - 1.0) < tie else "inconclusive"
    return SeedPairedDifference(
        estimate=estimate,
        low=low,
        high=high,
        verdict=verdict,
        seeds=tuple(seeds),
        windows=tuple(int(d.size) for d in diffs),
        per_seed=tuple(
            math.exp(float(d.sum()) / float(t.sum())) for d, t in zip(diffs, tokens, strict=True)
        ),
        level=level,
        n_boot=n_boot,
        seed=seed,
        tie=tie,
    )
