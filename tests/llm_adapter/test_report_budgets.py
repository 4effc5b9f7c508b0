"""Budgets stated both ways, and tables that share a rank are not called equal-budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_adapter.experiment import report as rp
from llm_adapter.experiment.budgets import budget_cells, comparison_basis, group_spread


def _row(method: str, budget: str, kept: float, removed: float, **kw: Any) -> dict[str, Any]:
    row = {
        "sweep": "s", "model": "m", "method": method, "label": kw.pop("label", method),
        "families": ["self_attn.o_proj"], "budget": budget,
        "rank_ratio": 0.25 if budget.startswith("d/D") else None,
        "param_ratio": kept, "params_kept": int(1000 * kept), "params_dense": 1000,
        "model_ratio": removed, "ppl": 30.0,
        "ppl_window_nll": [3.0, 3.5, 2.5], "ppl_window_tokens": [1, 1, 1],
        "protocol": {"evaluation": {"wikitext": "w", "seq_len": 8, "max_windows": 3}},
    }  # fmt: skip
    row.update(kw)
    return row


RANK = [
    _row("svd-llm", "d/D=0.25", 0.5, 0.037),
    _row("bundle", "d/D=0.25", 0.258, 0.055, label="bundle k=30"),
]
BUDGET = [
    _row("svd-llm", "params kept 0.3", 0.2995, 0.052),
    _row("residual", "params kept 0.3", 0.2986, 0.0521),  # 0.30% apart: the same budget
]


def test_the_basis_of_a_comparison() -> None:
    # kept 0.5 against 0.258: 0.5 / 0.258 - 1 = 0.938 apart, an equal-rank group
    spread = group_spread(RANK)
    assert list(spread.values()) == [pytest.approx(0.5 / 0.258 - 1.0, rel=1e-12)]
    assert comparison_basis(RANK) == "equal rank"
    assert comparison_basis(BUDGET) == "the same budget"
    assert comparison_basis(BUDGET + RANK) == "equal rank"
    apart = [
        _row("svd-llm", "params kept 0.3", 0.30, 0.05),
        _row("svd", "params kept 0.3", 0.31, 0.05),
    ]
    assert comparison_basis(apart) == "the same requested budget"


def test_paired_cells_state_the_budget_both_ways() -> None:
    head, body = budget_cells(RANK)
    assert head[2:6] == ["budget", "params kept", "removed (model)", "removed (maps)"]
    bundle = next(cells for cells in body if cells[0] == "bundle k=30")
    # removed of the model 0.055 -> 5.5%; of the maps 1 - 0.258 = 74.2%
    assert bundle[2:6] == ["d/D=0.25 (equal rank)", "0.258", "5.5%", "74.2%"]
    head, body = budget_cells(BUDGET)
    assert body[1][2:6] == ["params kept 0.3", "0.299", "5.2%", "70.1%"]


def test_results_table_states_the_budget_both_ways() -> None:
    head, body = rp.table_cells([_row("svd-llm", "model ratio 0.2", 0.747, 0.2)])
    assert head[3:6] == ["params kept", "removed (model)", "removed (maps)"]
    assert body[0][3:6] == ["0.747", "20.0%", "25.3%"]


def _report(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    tmp_path.mkdir()
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rp.write_report(results, tmp_path / "out")["table"].read_text()


def test_report_headings_say_what_the_points_share(tmp_path: Path) -> None:
    rank = _report(tmp_path / "a", RANK)
    assert "at equal rank" in rank and "at the same budget" not in rank
    budget = _report(tmp_path / "b", BUDGET)
    assert "Paired comparison with SVD-LLM at the same budget" in budget
    assert "first 3 windows" in budget
    spread = [
        {**r, "protocol": {"evaluation": {"wikitext": "w", "seq_len": 8, "max_windows": 3,
                                          "windows": "spread", "window_seed": 4}}}
        for r in BUDGET
    ]  # fmt: skip
    assert "3 windows spread over the split (seed 4)" in _report(tmp_path / "c", spread)


def test_report_pairs_against_further_references(tmp_path: Path) -> None:
    """--against adds a table and paired_<slug>.csv per reference; the ratio is the
    perplexity of the row over the reference's, exp of the mean NLL difference: the
    residual row's NLLs are the update row's minus 0.1 per window (1 token each), so its
    ratio against the update is exp(-0.1) = 0.905, and against itself there is no row."""
    rows = [
        _row("svd-llm", "model ratio 0.2", 0.75, 0.2),
        _row("svd-llm", "model ratio 0.2", 0.75, 0.2, label="svd-llm +update",
             ppl_window_nll=[2.9, 3.4, 2.4]),
        _row("residual", "model ratio 0.2", 0.75, 0.2, ppl_window_nll=[2.8, 3.3, 2.3]),
    ]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = rp.write_report(tmp_path / "r.jsonl", tmp_path / "out", against=["svd-llm +update"])
    csv = written["paired_svd_llm_update_csv"]
    assert csv.name == "paired_svd_llm_update.csv"
    text = csv.read_text()
    assert "ppl / svd-llm +update" in text
    residual = next(line for line in text.splitlines() if line.startswith("residual,"))
    assert "0.9048" in residual  # exp(-0.1) = 0.904837
    assert "Paired comparison with `svd-llm +update`" in written["table"].read_text()
    # rewriting the same folder is allowed (the extra table is the report's own)
    rp.write_report(tmp_path / "r.jsonl", tmp_path / "out", against=["svd-llm +update"])
    with pytest.raises(Exception, match="names no method or label"):
        rp.write_report(tmp_path / "r.jsonl", tmp_path / "out2", against=["nope"])


def test_rows_of_another_sweep_with_the_same_protocol_are_paired() -> None:
    """A configuration that adds points to another's results file (another sweep name,
    the same model, calibration and evaluation) is compared with that file's reference;
    rows evaluated otherwise are not, and rows without a protocol keep their sweep."""
    import math

    from llm_adapter.experiment.budgets import paired_rows

    ref = _row("svd-llm", "model ratio 0.4", 0.49, 0.4)
    # mean NLL 1.5 against the reference's 3.0: a perplexity ratio of exp(-1.5)
    refit = _row("svd-llm", "model ratio 0.4", 0.49, 0.4, sweep="other", label="refit",
                 ppl_window_nll=[1.5, 1.75, 1.25])  # fmt: skip
    elsewhere = {"evaluation": {"wikitext": "w", "seq_len": 16}}
    evaluated_otherwise = _row("svd-llm", "model ratio 0.4", 0.49, 0.4, sweep="third",
                               label="elsewhere", ppl_window_nll=[1.5, 1.75, 1.25],
                               protocol=elsewhere)  # fmt: skip
    old = [{**r, "protocol": None} for r in (ref, refit)]
    pairs = paired_rows([ref, refit, evaluated_otherwise], reference="svd-llm")
    by_label = {p["label"]: p for p in pairs}
    assert by_label["refit"]["ppl_ratio"] == pytest.approx(math.exp(-1.5), rel=1e-12)
    # its own group, whose svd-llm row is itself
    assert by_label["elsewhere"]["ppl_ratio"] == pytest.approx(1.0, rel=1e-12)
    # without a protocol the sweeps stay apart: each row is its own group's reference
    assert [p["ppl_ratio"] for p in paired_rows(old, reference="svd-llm")] == [
        pytest.approx(1.0, rel=1e-12)
    ] * 2
