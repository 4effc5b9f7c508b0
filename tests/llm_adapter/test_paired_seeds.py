"""The hierarchical paired comparison over calibration seeds and windows: answers known
by construction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from llm_adapter.errors import AdapterError
from llm_adapter.experiment.paired import (
    calibration_seed,
    paired_perplexity,
    paired_perplexity_seeds,
)

N = 40  # windows per seed
TOKENS = np.full(N, 511)


def _row(seed: int, per_token: np.ndarray, **kw: Any) -> dict[str, Any]:
    return {
        "calibration": {"seed": seed},
        "ppl_window_nll": (per_token * TOKENS).tolist(),
        "ppl_window_tokens": TOKENS.tolist(),
        **kw,
    }


def _difficulty(seed: int) -> np.ndarray:
    """Per-token NLL of each window under one seed: hard and easy windows, shared by
    both methods."""
    return np.random.default_rng(100 + seed).uniform(1.0, 5.0, N)


def test_identical_rows_are_a_ratio_of_exactly_one() -> None:
    a = [_row(s, _difficulty(s)) for s in (0, 1, 2)]
    res = paired_perplexity_seeds(a, [dict(r) for r in a])
    assert res.estimate == 1.0 and res.low == 1.0 and res.high == 1.0
    assert res.verdict == "tie" and not res.significant
    assert res.seeds == (0, 1, 2) and res.windows == (N, N, N)


def test_a_constant_shift_gives_its_ratio_on_every_resample() -> None:
    delta = 0.02  # b costs 0.02 nats more per token, under every seed and window
    a = [_row(s, _difficulty(s)) for s in (0, 1, 2)]
    b = [_row(s, _difficulty(s) + delta) for s in (0, 1, 2)]
    res = paired_perplexity_seeds(a, b)
    assert res.estimate == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.low == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.high == pytest.approx(math.exp(delta), rel=1e-12)
    assert res.verdict == "worse"
    better = paired_perplexity_seeds(b, a)
    assert better.verdict == "better"
    assert better.estimate == pytest.approx(math.exp(-delta), rel=1e-12)


def test_seeds_that_disagree_are_a_tie() -> None:
    # under seed 0 b is 3% worse, under seed 1 3% better, under seed 2 the same: each seed
    # alone is a clear difference, the three together are not
    shifts = {0: 0.03, 1: -0.03, 2: 0.0}
    a = [_row(s, _difficulty(s)) for s in shifts]
    b = [_row(s, _difficulty(s) + d) for s, d in shifts.items()]
    alone = paired_perplexity(a[0], b[0])
    assert alone.significant and alone.estimate == pytest.approx(math.exp(0.03), rel=1e-12)
    res = paired_perplexity_seeds(a, b)
    assert res.estimate == pytest.approx(1.0, abs=1e-12)  # equal token counts: shifts cancel
    assert res.low < 1.0 < res.high
    assert res.verdict == "tie"
    assert res.per_seed == pytest.approx((math.exp(0.03), math.exp(-0.03), 1.0), rel=1e-12)


def test_a_large_difference_that_does_not_survive_is_inconclusive() -> None:
    # shifts +5%, -1%, +5%: estimate exp(0.03); a resample drawing seed 1 three times
    # (probability 1/27, more than the 2.5% tail) has ratio exp(-0.01) < 1
    shifts = {0: 0.05, 1: -0.01, 2: 0.05}
    a = [_row(s, _difficulty(s)) for s in shifts]
    b = [_row(s, _difficulty(s) + d) for s, d in shifts.items()]
    res = paired_perplexity_seeds(a, b)
    assert res.estimate == pytest.approx(math.exp(0.03), rel=1e-12)
    assert res.low == pytest.approx(math.exp(-0.01), rel=1e-12) and res.high > 1.0
    assert res.verdict == "inconclusive"


def test_window_noise_within_seeds_widens_the_interval() -> None:
    # b is 1% worse on average under every seed, with independent window noise: the
    # interval covers exp(0.01) and excludes 1 (sd of the mean over 120 windows: ~4.6e-4)
    rng = np.random.default_rng(5)
    a = [_row(s, _difficulty(s)) for s in (0, 1, 2)]
    b = [_row(s, _difficulty(s) + 0.01 + 0.005 * rng.standard_normal(N)) for s in (0, 1, 2)]
    res = paired_perplexity_seeds(a, b)
    assert res.low < res.estimate < res.high
    assert res.low > 1.0 and res.verdict == "worse"
    # noise of the mean about 5e-4 per token: an interval some 1e-3 wide, far narrower
    # than the windows' difficulty (1 to 5 nats) would give unpaired
    assert 0.0 < res.high - res.low < 0.01


def test_rows_are_paired_by_their_calibration_seed() -> None:
    # the order of the rows does not matter: seeds pair them
    a = [_row(s, _difficulty(s)) for s in (0, 1, 2)]
    b = [_row(s, _difficulty(s) + 0.01 * (s + 1)) for s in (2, 0, 1)]
    res = paired_perplexity_seeds(a, b)
    assert res.per_seed == pytest.approx(tuple(math.exp(0.01 * (s + 1)) for s in (0, 1, 2)))
    assert calibration_seed({"protocol": {"calibration": {"text": "t"}}}) == 0
    assert calibration_seed({"protocol": {"calibration": {"seed": 4}}}) == 4
    assert calibration_seed({"method": "dense", "protocol": {"calibration": {}}}) is None


def test_bad_input_names_the_problem() -> None:
    a = [_row(s, _difficulty(s)) for s in (0, 1)]
    with pytest.raises(AdapterError, match="different seeds"):
        paired_perplexity_seeds(a, [_row(0, _difficulty(0)), _row(5, _difficulty(5))])
    with pytest.raises(AdapterError, match="two rows with calibration seed 0"):
        paired_perplexity_seeds([a[0], a[0]], a)
    moved = [dict(r, ppl_window_starts=[0] * N) for r in a]
    with pytest.raises(AdapterError, match="under calibration seed 0 the rows were scored"):
        paired_perplexity_seeds(moved, [dict(r, ppl_window_starts=[1] * N) for r in a])
    with pytest.raises(AdapterError, match=r"tie=1\.5 must be in"):
        paired_perplexity_seeds(a, a, tie=1.5)


def _sweep_row(method: str, seed: int, shift: float) -> dict[str, Any]:
    row = _row(seed, _difficulty(seed) + shift)
    row.update(
        sweep=f"s{seed}", model="m", method=method, label=method, families=["self_attn.o_proj"],
        budget="params kept 0.5", param_ratio=0.5, model_ratio=0.04, rank_ratio=None,
        params_kept=50, params_dense=100, ppl=1.0,
        protocol={"calibration": {"text": "t", "seed": seed},
                  "evaluation": {"wikitext": "w", "seq_len": 512, "max_windows": N}},
    )  # fmt: skip
    return row


def test_the_report_pairs_within_seeds_and_over_them(tmp_path: Any) -> None:
    import json

    from llm_adapter.experiment import report as rp
    from llm_adapter.experiment.budgets import budget_cells, paired_rows

    shifts = {0: 0.03, 1: -0.03, 2: 0.0}
    rows = [_sweep_row("svd-llm", s, 0.0) for s in shifts]
    rows += [_sweep_row("residual", s, d) for s, d in shifts.items()]
    pairs = {(p["label"], p["seed"]): p for p in paired_rows(rows)}
    # each seed against SVD-LLM of the same seed: exactly that seed's shift
    for s, d in shifts.items():
        assert pairs[("residual", s)]["ppl_ratio"] == pytest.approx(math.exp(d), rel=1e-12)
    head, body = budget_cells(rows)
    assert head[:4] == ["point", "families", "budget", "seed"]
    by = {(c[0], c[3]): c for c in body}
    verdict = head.index("verdict")
    assert by[("residual", "0")][verdict] == "worse"
    assert by[("residual", "1")][verdict] == "better"
    assert by[("residual", "all 3")][verdict] == "tie"
    assert by[("svd-llm", "all 3")][verdict] == "tie"
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = rp.write_report(results, tmp_path / "out")["table"].read_text()
    assert "resample the N calibration seeds with replacement" in md
    assert "| residual | self_attn.o_proj | params kept 0.5 | all 3 |" in md


def test_seeds_scored_on_their_own_windows_pool_over_seeds(tmp_path: Any) -> None:
    """Each seed scored on windows chosen by that seed (window_seed = calibration
    seed) still pairs within the seed, and pools over seeds; so do seeds scored on
    one fixed set of windows; window seeds that vary otherwise keep rows of
    different seeds apart."""
    import json

    from llm_adapter.experiment import report as rp
    from llm_adapter.experiment.budgets import budget_cells

    shifts = {0: 0.03, 1: -0.03, 2: 0.0}

    def rows_with(window_seed: Any) -> list[dict[str, Any]]:
        out = []
        for method, shift in (("svd-llm", dict.fromkeys(shifts, 0.0)), ("residual", shifts)):
            for s in shifts:
                row = _sweep_row(method, s, shift[s])
                row["protocol"]["evaluation"].update(windows="spread", window_seed=window_seed(s))
                out.append(row)
        return out

    own = rows_with(lambda s: s)
    _, body = budget_cells(own)
    seeds = {c[3] for c in body if c[0] == "residual"}
    assert seeds == {"0", "1", "2", "all 3"}
    fixed = rows_with(lambda s: 0)  # every seed on the same windows, seed 0's among them
    _, body = budget_cells(fixed)
    assert {c[3] for c in body if c[0] == "residual"} == {"0", "1", "2", "all 3"}
    shifted = rows_with(lambda s: s + 1)  # chosen by a seed, but not the calibration one
    _, body = budget_cells(shifted)
    assert {c[3] for c in body if c[0] == "residual"} == {"0", "1", "2"}
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in own))
    md = rp.write_report(results, tmp_path / "own")["table"].read_text()
    assert "windows spread over the split (seed: each row's calibration seed)" in md
    results.write_text("".join(json.dumps(r) + "\n" for r in shifted))
    md = rp.write_report(results, tmp_path / "shifted")["table"].read_text()
    assert "windows spread over the split (seeds 1, 2, 3)" in md
