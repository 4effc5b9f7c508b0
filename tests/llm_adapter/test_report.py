"""Reports: the Markdown table's derived columns and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_adapter import AdapterError
from llm_adapter.cli import main
from llm_adapter.experiment import report as rp

PNG = b"\x89PNG\r\n\x1a\n"


def _row(label: str, method: str, frob: float | None, ppl: float, **kw: Any) -> dict[str, Any]:
    row = {
        "key": label,
        "sweep": "s",
        "model": "m",
        "label": label,
        "method": method,
        "families": [] if method == "dense" else ["attention.dense"],
        "rank_ratio": 1.0 if method == "dense" else 0.25,
        "frobenius_fraction": frob,
        "activation_fraction": None if frob is None else frob / 2,
        "activation_fraction_heldout": None if frob is None else frob / 3,
        "ppl": ppl,
        "hellaswag_acc": 0.3,
        "hellaswag_acc_norm": 0.31,
        "params_kept": 10,
        "params_dense": 0 if method == "dense" else 40,
        "param_ratio": 0.25,
        "per_layer": {}
        if frob is None
        else {
            "attention.dense": {
                "frobenius_fraction": [frob, frob * 1.1],
                "activation_fraction": [frob / 2] * 2,
                "activation_fraction_heldout": [frob / 3] * 2,
            }
        },
        "protocol": {"evaluation": {"wikitext": "w", "seq_len": 128, "limit": 5}},
    }
    row.update(kw)
    return row


ROWS = [
    _row("dense", "dense", None, 40.0),
    _row("svd-llm", "svd-llm", 0.20, 50.0),
    _row("bundle lam=0 k=1 weight", "bundle", 0.10, 150.0, lam=0.0, tying=1, metric="weight"),
    _row("bundle lam=inf k=6 weight", "bundle", 0.25, 60.0, lam="inf", tying=6, metric="weight"),
    _row("bundle lam=0 k=6 weight", "bundle", 0.30, 75.0, lam=0.0, tying=6, metric="weight"),
]


def test_reduction_and_ratio_are_against_svd_llm() -> None:
    rows = {r["label"]: r for r in rp.frobenius_reduction_rows(ROWS)}
    # hand-computed: 1 - 0.10 / 0.20 = 0.5 and 150 / 50 = 3; 1 - 0.30 / 0.20 = -0.5
    assert rows["bundle lam=0 k=1 weight"]["frobenius_reduction"] == pytest.approx(0.5)
    assert rows["bundle lam=0 k=1 weight"]["ppl_ratio"] == pytest.approx(3.0)
    assert rows["bundle lam=0 k=6 weight"]["frobenius_reduction"] == pytest.approx(-0.5)
    assert rows["svd-llm"]["frobenius_reduction"] == 0.0
    assert rows["dense"]["frobenius_reduction"] is None
    assert rows["dense"]["ppl_ratio"] == pytest.approx(0.8)


def test_markdown_table_rows() -> None:
    lines = rp.markdown_table(ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    k1 = next(line for line in lines if line.startswith("| bundle lam=0 k=1"))
    cells = [c.strip() for c in k1.strip("|").split("|")]
    assert cells[6:12] == ["0.1000", "+50.0%", "0.0500", "0.0333", "150.000", "3.000"]
    assert lines[2].startswith("| dense | (none) | 1 | - |")


def test_write_report_files(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    written = rp.write_report(results, tmp_path / "out")
    assert set(written) == {
        "table",
        "csv",
        "phase_diagram",
        "frobenius_vs_perplexity",
        "per_layer_errors",
    }
    for name, path in written.items():
        if name not in ("table", "csv"):
            assert path.read_bytes()[:8] == PNG
    md = written["table"].read_text()
    assert "![phase_diagram](phase_diagram.png)" in md and "+50.0%" in md
    # by hand: ppl ranks (svd-llm, k=1, inf, k=6) = 1, 4, 2, 3; Frob ranks = 2, 1, 3, 4;
    # squared rank differences sum to 12, rho = 1 - 6 * 12 / (4 * 15) = -0.2
    assert "perplexity vs Frobenius error: Spearman rho = -0.200" in md
    csv_lines = written["csv"].read_text().splitlines()
    assert len(csv_lines) == 1 + len(ROWS) and csv_lines[0].startswith("point,families,d/D")


def test_report_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))  # no bundle grid
    assert main(["report", str(results), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "phase_diagram" not in out and "results.md" in out
    with pytest.raises(AdapterError, match="does not exist"):
        rp.write_report(tmp_path / "none.jsonl", tmp_path / "o")
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["report", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no rows" in capsys.readouterr().err


def test_refit_lines_count_dense_maps_apart() -> None:
    """Maps an allocation kept dense (ridge None) have no refit to keep or drop."""
    row = {
        "label": "svd-llm alloc=fisher refit=both",
        "budget": "model ratio 0.4",
        "per_layer": {
            "q": {"refit_kept": [True, False, False], "refit_ridge": [0.0, 1.0, None]},
            "k": {"refit_kept": [False, True], "refit_ridge": [None, 0.1]},
        },
    }
    old = {"label": "old", "budget": "b", "per_layer": {"q": {"refit_kept": [True, False]}}}
    assert rp.refit_lines([row, old, {"label": "plain", "per_layer": {"q": {}}}]) == [
        "- svd-llm alloc=fisher refit=both, model ratio 0.4: kept by 2 of 3 factored maps "
        "(2 kept dense, nothing to refit)",
        "- old, b: kept by 1 of 2 factored maps",
    ]
