"""What a sweep's protocol settings do to its points' keys and rows.

Settings added after results were recorded enter the keys only where they change
what a point computes, so the shipped configurations keep the keys of their rows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from llm_adapter import AdapterError
from llm_adapter.experiment import sweep as sw

TOKENIZED = " = T = \n" + " w1 <unk> w2 @-@ w3 , w4 . \n" * 60
RAW = " = T = \n" + " w1 w5 w2 @-@ w3 , w4 . \n" * 60


def test_detokenize_enters_the_key_only_when_it_detokenizes(tmp_path: Path) -> None:
    tokenized, raw = tmp_path / "tok.txt", tmp_path / "raw.txt"
    tokenized.write_text(TOKENIZED)
    raw.write_text(RAW)
    base = {"text": str(tokenized), "samples": 4, "seed": 0}
    keyed = sw._keyed_text_section
    assert keyed(base, "calibration") == base
    assert keyed({**base, "detokenize": False}, "calibration") == base
    assert keyed({**base, "detokenize": True}, "calibration") == {**base, "detokenize": True}
    assert keyed({**base, "detokenize": "auto"}, "calibration") == {**base, "detokenize": True}
    raw_base = {**base, "text": str(raw)}
    assert keyed({**raw_base, "detokenize": "auto"}, "heldout") == raw_base
    assert keyed({}, "heldout") == {}
    with pytest.raises(AdapterError, match=r"\[calibration\] detokenize = 'yes' is not valid"):
        keyed({**base, "detokenize": "yes"}, "calibration")
    with pytest.raises(AdapterError, match="with a hub dataset write detokenize = true or false"):
        keyed({"dataset": "wikitext:wikitext-2-v1:train", "detokenize": "auto"}, "calibration")


def test_shipped_configuration_keys_do_not_move_with_detokenize_false() -> None:
    path = Path(__file__).resolve().parents[2] / "experiments" / "neox_mini.toml"
    config = sw.load_config(path)
    points = sw.expand_points(config)

    def keys(cfg: dict[str, Any]) -> list[str]:
        protocol = {
            "model": cfg["model"],
            "calibration": sw._keyed_text_section(cfg["calibration"], "calibration"),
            "heldout": sw._keyed_text_section(cfg["heldout"], "heldout"),
            "evaluation": cfg["evaluation"],
        }
        return [sw.point_key(p, protocol) for p in points]

    explicit = {**config, "calibration": {**config["calibration"], "detokenize": False}}
    assert keys(explicit) == keys(config)
    forced = {**config, "calibration": {**config["calibration"], "detokenize": True}}
    assert not set(keys(forced)) & set(keys(config))


@pytest.mark.filterwarnings("ignore:.*calibration tokens are fewer:UserWarning")
def test_rows_record_the_calibration_and_its_text_variant(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(TOKENIZED)

    def run(out: str, **calibration: Any) -> dict[str, Any]:
        config = {
            "name": "t", "model": str(tiny["model"]), "out": str(tmp_path / out),
            "device": "cpu", "cache_dir": str(tmp_path / "cache"), "baseline": False,
            "families": ["attention.dense"], "rank_ratios": [0.25],
            "calibration": {"text": str(text), "samples": 3, "seq_len": 16, "seed": 2,
                            **calibration},
            "evaluation": {"wikitext": str(text), "seq_len": 16, "max_windows": 2},
            "points": [{"method": "svd-llm"}],
        }  # fmt: skip
        (row,) = sw.run_sweep(config, progress=False, log=io.StringIO())
        return row

    as_is = run("a.jsonl")
    auto = run("b.jsonl", detokenize="auto")
    assert as_is["calibration"]["text_variant"] == "tokenized"
    assert auto["calibration"]["text_variant"] == "detokenized"
    for row in (as_is, auto):
        cal = row["calibration"]
        assert (cal["windows"], cal["seq_len"], cal["tokens"], cal["seed"]) == (3, 16, 48, 2)
    assert "detokenize" not in as_is["protocol"]["calibration"]
    assert auto["protocol"]["calibration"]["detokenize"] is True
    assert auto["key"] != as_is["key"]


def test_spread_windows_enter_the_key_first_does_not() -> None:
    base = {"wikitext": "t.txt", "seq_len": 128, "max_windows": 64}
    keyed = sw._keyed_evaluation
    assert keyed(base) == base
    assert keyed({**base, "windows": "first", "window_seed": 5}) == base
    spread = {**base, "windows": "spread", "window_seed": 0}
    assert keyed({**base, "windows": "spread"}) == spread
    assert keyed({**base, "windows": "spread", "window_seed": 2}) == {**spread, "window_seed": 2}
    with pytest.raises(AdapterError, match=r"\[evaluation\] windows = 'all' is not valid"):
        keyed({**base, "windows": "all"})
    with pytest.raises(AdapterError, match=r"\[evaluation\] window_seed = -1 is not valid"):
        keyed({**base, "windows": "spread", "window_seed": -1})
    with pytest.raises(AdapterError, match="drop stride or the windows setting"):
        keyed({**base, "windows": "spread", "stride": 64})


@pytest.mark.filterwarnings("ignore:.*calibration tokens are fewer:UserWarning")
def test_spread_rows_share_their_windows(tiny: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    config = {
        "name": "t", "model": str(tiny["model"]), "out": str(tmp_path / "r.jsonl"),
        "device": "cpu", "cache_dir": str(tmp_path / "cache"),
        "families": ["attention.dense"], "rank_ratios": [0.25],
        "calibration": {"text": str(tiny["text"]), "samples": 2, "seq_len": 16},
        "evaluation": {"wikitext": str(tiny["text"]), "seq_len": 16, "max_windows": 5,
                       "windows": "spread", "window_seed": 1},
        "points": [{"method": "svd"}],
    }  # fmt: skip
    rows = sw.run_sweep(config, progress=False, log=io.StringIO())
    assert [r["label"] for r in rows] == ["dense", "svd"]
    # the fixture's text: 40 lines of 30 words, 1,200 tokens, 75 windows of 16
    chosen = np.sort(np.random.default_rng(1).choice(75, size=5, replace=False))
    for row in rows:
        assert row["ppl_window_starts"] == [int(i) * 16 for i in chosen]
        assert len(row["ppl_window_nll"]) == 5
        assert row["protocol"]["evaluation"]["windows"] == "spread"
