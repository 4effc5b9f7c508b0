"""Paired bootstrap comparisons: exact cases, the analytic width, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from llm_adapter.errors import AdapterError
from llm_adapter.experiment.paired import paired_accuracy, paired_perplexity


def _row(nll, tokens, correct=None):
    row = {"ppl_window_nll": list(nll), "ppl_window_tokens": list(tokens)}
    if correct is not None:
        row["hellaswag_correct_norm"] = list(correct)
        row["hellaswag_correct"] = list(correct)
    return row


def test_identical_rows_are_no_difference():
    rng = np.random.default_rng(0)
    tokens = np.full(50, 511)
    nll = rng.uniform(1.0, 4.0, 50) * tokens
    res = paired_perplexity(_row(nll, tokens), _row(nll, tokens))
    assert res.estimate == pytest.approx(1.0, abs=1e-12)
    assert res.low == pytest.approx(1.0, abs=1e-12) and res.high == pytest.approx(1.0, abs=1e-12)
    assert not res.significant


def test_a_constant_per_token_shift_gives_its_exact_ratio():
    # every token of b costs delta nats more: every resample has ratio exp(delta)
    rng = np.random.default_rng(1)
    tokens = rng.integers(100, 512, 40)
    nll = rng.uniform(1.0, 4.0, 40) * tokens
    delta = 0.05
    res = paired_perplexity(_row(nll, tokens), _row(nll + delta * tokens, tokens))
    assert res.estimate == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.low == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.high == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.significant


def test_pairing_removes_the_shared_window_difficulty():
    # windows differ a lot in difficulty (shared by both models); the models differ by a
    # small, noisy amount: the paired interval must reflect only the small noise
    rng = np.random.default_rng(2)
    n = 400
    tokens = np.full(n, 511)
    per_token_a = rng.uniform(1.0, 5.0, n)
    per_token_b = per_token_a + 0.02 + 0.01 * rng.standard_normal(n)
    res = paired_perplexity(_row(per_token_a * tokens, tokens), _row(per_token_b * tokens, tokens))
    # log ratio ~ mean of (b - a) per token: sd 0.01/sqrt(n) = 5e-4, so the 95% interval of
    # the ratio spans about exp(0.02 +- 0.001); the window difficulty (sd ~1.15) would give
    # +-0.11 if the windows were not paired
    assert res.significant
    assert res.high - res.low < 0.004
    assert res.low < math.exp(0.02) < res.high


def test_accuracy_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    n = 3000
    a = rng.integers(0, 2, n)
    flip = rng.random(n) < 0.2
    b = np.where(flip, 1 - a, a)
    res = paired_accuracy(_row([1, 1], [1, 1], a), _row([1, 1], [1, 1], b))
    diff = b - a
    assert res.estimate == pytest.approx(diff.mean(), abs=1e-15)
    half = 1.959964 * diff.std(ddof=0) / math.sqrt(n)
    # percentile interval of a mean of 3000 draws: within 10% of the normal one
    assert (res.high - res.low) / 2 == pytest.approx(half, rel=0.1)


def test_accuracy_difference_is_found_when_large():
    n = 500
    a = np.zeros(n, dtype=int)
    b = np.zeros(n, dtype=int)
    b[:100] = 1  # b right on 20% more items
    res = paired_accuracy(_row([1, 1], [1, 1], a), _row([1, 1], [1, 1], b), norm=False)
    assert res.estimate == pytest.approx(0.2)
    assert res.significant and res.low > 0.1


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (_row([1.0, 2.0], [5, 5]), _row([1.0, 2.0, 3.0], [5, 5, 5]), "different windows"),
        (_row([1.0, 2.0], [5, 5]), _row([1.0, 2.0], [5, 6]), "different windows"),
        (_row([1.0], [5]), _row([1.0], [5]), "at least 2 windows"),
        ({"ppl": 3.0}, _row([1.0, 2.0], [5, 5]), "per_item=True"),
    ],
)
def test_bad_pairs_are_refused(a, b, message):
    with pytest.raises(AdapterError, match=message):
        paired_perplexity(a, b)


def test_bad_level_is_refused():
    row = _row([1.0, 2.0], [5, 5])
    with pytest.raises(AdapterError, match="level"):
        paired_perplexity(row, row, level=95)
