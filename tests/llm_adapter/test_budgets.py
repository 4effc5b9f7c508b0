"""Equal-budget tables: pairing within budget groups, verdicts, the Pareto figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from llm_adapter.experiment.budgets import budget_csv, budget_markdown, paired_rows, pareto_figure


def _row(method: str, budget: str, shift: float, kept: float, *, label: str = "") -> dict[str, Any]:
    rng = np.random.default_rng(7)  # the same windows and items for every row
    tokens = np.full(30, 127)
    base = rng.uniform(2.0, 4.0, 30)
    correct = (rng.random(200) < 0.4).astype(int)
    if shift > 0:  # a worse model: more NLL per token, and 30 fewer items right
        correct = correct.copy()
        correct[np.flatnonzero(correct)[:30]] = 0
    nll = (base + shift) * tokens
    return {
        "sweep": "s",
        "method": method,
        "label": label or method,
        "families": ["self_attn.o_proj"],
        "budget": budget,
        "param_ratio": kept,
        "model_ratio": 1.0 - kept,
        "ppl": math.exp(nll.sum() / tokens.sum()),
        "ppl_window_nll": nll.tolist(),
        "ppl_window_tokens": tokens.tolist(),
        "hellaswag_acc_norm": float(correct.mean()),
        "hellaswag_correct_norm": correct.tolist(),
        "hellaswag_correct": correct.tolist(),
    }


def test_rows_pair_with_the_reference_of_their_own_budget() -> None:
    rows = [
        {"sweep": "s", "method": "dense", "label": "dense", "ppl": 10.0, "model_ratio": 0.0},
        _row("svd-llm", "model ratio 0.1", 0.0, 0.9),
        _row("svd", "model ratio 0.1", 0.3, 0.9),
        _row("svd-llm", "model ratio 0.2", 0.5, 0.8),
        _row("bundle", "model ratio 0.2", 0.5, 0.8, label="bundle k=2"),
        _row("bundle", "model ratio 0.3", 0.0, 0.7),  # no reference at this budget
    ]
    pairs = paired_rows(rows)
    assert [p["label"] for p in pairs] == ["svd-llm", "svd", "svd-llm", "bundle k=2"]
    by = {(p["label"], p["budget"]): p for p in pairs}
    worse = by[("svd", "model ratio 0.1")]
    assert math.isclose(worse["ppl_ratio"], math.exp(0.3), rel_tol=1e-12)
    assert worse["ppl_significant"] and worse["acc_norm_significant"]
    assert worse["acc_norm_diff"] == -30 / 200
    same = by[("bundle k=2", "model ratio 0.2")]  # identical scores to its reference
    assert same["ppl_ratio"] == 1.0 and not same["ppl_significant"]
    table = budget_markdown(rows)
    assert "| svd | self_attn.o_proj | model ratio 0.1 |" in table
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    assert "| worse |" in lines["| svd"] and "| tie |" in lines["| bundle k=2"]
    csv_lines = budget_csv(rows).splitlines()
    assert len(csv_lines) == 1 + 4 and csv_lines[2].startswith("svd,self_attn.o_proj,")


def test_pareto_figure_draws_budget_rows_only(tmp_path: Path) -> None:
    rows = [_row("svd-llm", "model ratio 0.1", 0.0, 0.9), _row("svd", "model ratio 0.1", 0.3, 0.9)]
    assert pareto_figure(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rank_rows = [dict(r, budget="d/D=0.25") for r in rows]
    assert not pareto_figure(rank_rows, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_hellaswag_only_rows_pair_on_items() -> None:
    keep = ("sweep", "method", "label", "families", "budget", "param_ratio", "model_ratio")
    rows = [
        {k: v for k, v in _row(m, "d/D=0.25", s, 0.5).items() if k in keep or "hellaswag" in k}
        for m, s in (("svd-llm", 0.0), ("svd", 0.3))
    ]
    pairs = paired_rows(rows)
    assert "ppl_ratio" not in pairs[1] and pairs[1]["acc_norm_diff"] == -30 / 200
    assert budget_csv(rows).splitlines()[2].split(",")[6:9] == ["-", "-", "-"]
