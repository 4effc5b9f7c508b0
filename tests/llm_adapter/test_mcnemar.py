"""The exact McNemar test of HellaSwag items, and the report's tables of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_adapter.errors import AdapterError
from llm_adapter.experiment import report as rp
from llm_adapter.experiment.budgets import mcnemar_cells
from llm_adapter.experiment.paired import mcnemar


def _hits(wins: int, losses: int, both: int = 3, n: int = 0) -> tuple[list[int], list[int]]:
    """Per-item hits of a reference ``a`` and a point ``b`` with the given disagreements
    (``both`` items right for both, the rest up to ``n`` items wrong for both)."""
    neither = max(n - wins - losses - both, 2)
    a = [0] * wins + [1] * losses + [1] * both + [0] * neither
    b = [1] * wins + [0] * losses + [1] * both + [0] * neither
    return a, b


def test_counts_and_p_values_by_hand() -> None:
    a, b = _hits(0, 5)
    t = mcnemar({"hellaswag_correct_norm": a}, {"hellaswag_correct_norm": b})
    assert (t.wins, t.losses, t.n) == (0, 5, 10)
    # 2 * P(X <= 0), X ~ Binomial(5, 1/2) = 2 / 32
    assert t.p_value == pytest.approx(0.0625, abs=1e-15)
    assert not t.significant  # 0.0625 >= 0.05
    a, b = _hits(6, 0)
    t = mcnemar({"hellaswag_correct": a}, {"hellaswag_correct": b}, norm=False)
    assert (t.metric, t.wins, t.losses) == ("hellaswag_acc", 6, 0)
    assert t.p_value == pytest.approx(2 / 64, abs=1e-15) and t.significant
    # 3 against 2: 2 * (1 + 5 + 10) / 32 = 1 -> capped at 1; no disagreement: 1
    a, b = _hits(3, 2)
    assert mcnemar({"hellaswag_correct_norm": a}, {"hellaswag_correct_norm": b}).p_value == 1.0
    a, b = _hits(0, 0)
    assert mcnemar({"hellaswag_correct_norm": a}, {"hellaswag_correct_norm": b}).p_value == 1.0


@pytest.mark.parametrize("wins, losses", [(57, 24), (121, 83), (51, 63), (0, 40), (300, 260)])
def test_p_values_match_scipys_binomial_test(wins: int, losses: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    a, b = _hits(wins, losses)
    t = mcnemar({"hellaswag_correct_norm": a}, {"hellaswag_correct_norm": b})
    ref = stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
    # scipy sums the pmf in floating point: agreement to 1e-12 relative
    assert t.p_value == pytest.approx(ref, rel=1e-12, abs=1e-300)
    assert (t.wins, t.losses) == (wins, losses)


def test_swapping_the_models_swaps_wins_and_losses() -> None:
    a, b = _hits(7, 19)
    ab = mcnemar({"hellaswag_correct_norm": a}, {"hellaswag_correct_norm": b})
    ba = mcnemar({"hellaswag_correct_norm": b}, {"hellaswag_correct_norm": a})
    assert (ba.wins, ba.losses) == (ab.losses, ab.wins)
    assert ba.p_value == ab.p_value


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(AdapterError, match="hellaswag_correct_norm"):
        mcnemar({}, {"hellaswag_correct_norm": [1]})
    with pytest.raises(AdapterError, match="different items"):
        mcnemar({"hellaswag_correct_norm": [1, 0]}, {"hellaswag_correct_norm": [1]})
    with pytest.raises(AdapterError, match="0 or 1"):
        mcnemar({"hellaswag_correct_norm": [1, 2]}, {"hellaswag_correct_norm": [1, 0]})
    with pytest.raises(AdapterError, match="alpha"):
        mcnemar({"hellaswag_correct_norm": [1]}, {"hellaswag_correct_norm": [1]}, alpha=1.5)


def _row(method: str, hits: list[int], hits_norm: list[int], **kw: Any) -> dict[str, Any]:
    row = {
        "sweep": "s", "model": "m", "method": method, "label": kw.pop("label", method),
        "families": ["all"], "budget": "model ratio 0.2", "param_ratio": 0.745,
        "params_kept": 745, "params_dense": 1000, "model_ratio": 0.201,
        "hellaswag_acc_norm": sum(hits_norm) / len(hits_norm),
        "hellaswag_correct": hits, "hellaswag_correct_norm": hits_norm,
        "protocol": {"evaluation": {"hellaswag": "h", "limit": len(hits)}},
    }  # fmt: skip
    row.update(kw)
    return row


def test_the_report_writes_the_tests_against_each_reference(tmp_path: Path) -> None:
    # 20 items each; SVD-LLM right on items 0-10, the Fisher point only on 8-10
    ref, fisher = _hits(0, 8, n=20)
    # the update: right on items 0-1 and 8-10, and on items 11-12 that SVD-LLM misses
    update = ref[:2] + [0] * 6 + ref[8:11] + [1, 1] + [0] * 7
    rows = [
        _row("svd-llm", ref, ref),
        _row("svd-llm", update, update, label="svd-llm +update"),
        _row("svd-llm", fisher, fisher, label="svd-llm alloc=fisher"),
        _row("dense", ref, ref, budget="dense", model_ratio=0.0),
    ]
    head, body = mcnemar_cells(rows)
    assert head[6] == "acc_norm: wins / losses against svd-llm, p"
    assert [cells[0] for cells in body] == ["svd-llm +update", "svd-llm alloc=fisher"]
    fisher_cells = body[1]
    assert fisher_cells[4:6] == ["20.1%", "25.5%"]
    # 0 wins, 8 losses: p = 2 / 256 = 0.0078125 on both acc_norm and acc
    assert fisher_cells[6:] == ["0 / 8, p = 0.00781", "worse", "0 / 8, p = 0.00781", "worse"]
    # the update against SVD-LLM: wins items 11-12, loses items 2-7: 2 / 6, p = 2 * (1 + 8
    # + 28) / 256 = 0.2890625
    assert body[0][6:8] == ["2 / 6, p = 0.289", "tie"]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = rp.write_report(results, tmp_path / "out", against=["svd-llm +update"])
    text = written["mcnemar_csv"].read_text()
    assert written["mcnemar_csv"].name == "mcnemar.csv"
    assert "acc_norm: wins / losses against svd-llm, p" in text.splitlines()[0]
    against = written["mcnemar_svd_llm_update_csv"].read_text()
    assert written["mcnemar_svd_llm_update_csv"].name == "mcnemar_svd_llm_update.csv"
    line = next(x for x in against.splitlines() if x.startswith("svd-llm alloc=fisher,"))
    # the Fisher point against the update: wins none, loses items 0-1 and 11-12: p = 2 / 16
    assert '"0 / 4, p = 0.125",tie' in line
    assert not any(x.startswith("svd-llm +update,") for x in against.splitlines())
    assert "exact McNemar" in written["table"].read_text()
    # a point that keeps other parameters than its reference is marked, as in paired.csv
    rank = [{**r, "budget": "d/D=0.25"} for r in rows]
    rank[2]["param_ratio"] = 0.3
    _head, body = mcnemar_cells(rank)
    assert [cells[2] for cells in body] == ["d/D=0.25 (equal rank)"] * 2
    # rewriting the same folder is allowed: the tables are the report's own
    rp.write_report(results, tmp_path / "out", against=["svd-llm +update"])
