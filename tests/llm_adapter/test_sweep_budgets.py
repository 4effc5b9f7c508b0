"""Sweeps at equal parameter budgets: point expansion, the model-ratio conversion, paired rows."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from llm_adapter import AdapterError
from llm_adapter.experiment import sweep as sw
from llm_adapter.experiment.paired import paired_perplexity


def test_budget_lists_expand_and_rank_ratio_keys_are_unchanged() -> None:
    config = {
        "baseline": False,
        "rank_ratios": [0.25],
        "param_ratios": [0.5],
        "model_ratios": [0.1, 0.2],
        "points": [{"method": "svd"}],
    }
    points = sw.expand_points(config)
    assert [p.budget for p in points] == [
        "d/D=0.25",
        "params kept 0.5",
        "model ratio 0.1",
        "model ratio 0.2",
    ]
    # a rank-ratio point describes itself as before budgets existed (its key is unchanged)
    assert points[0].describe() == {"method": "svd", "families": ["attention.dense"],
                                    "rank_ratio": 0.25}  # fmt: skip
    assert points[1].describe()["param_ratio"] == 0.5 and points[1].rank_ratio is None
    assert points[2].describe()["model_ratio"] == 0.1
    proto: dict[str, Any] = {}
    assert len({sw.point_key(p, proto) for p in points}) == 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_ratios": [1.5]}, r"model_ratios = 1.5 must be in \(0, 1\)"),
        ({"param_ratios": ["half"]}, "param_ratios = 'half' is not a number"),
        (
            {"points": [{"method": "svd", "rank_ratio": 0.2, "model_ratio": 0.1}]},
            "points\\[0\\] gives rank_ratio and model_ratio: give one budget",
        ),
    ],
)
def test_bad_budgets_are_named(config: dict[str, Any], message: str) -> None:
    config = {"points": [{"method": "svd"}], **config}
    with pytest.raises(AdapterError, match=message):
        sw.expand_points(config)


@pytest.fixture(scope="module")
def budget_setup(tmp_path_factory: pytest.TempPathFactory, shared_model: Path) -> dict[str, Any]:
    """A random 3-layer GPT-NeoX (hidden 48) with the shared tokenizer, and a text file."""
    from llm_adapter.testing import random_neox
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("budgets")
    model = random_neox(hidden_size=48, num_hidden_layers=3, vocab_size=4096, seed=3)
    model.save_pretrained(str(root / "model"))
    AutoTokenizer.from_pretrained(str(shared_model)).save_pretrained(str(root / "model"))
    words = ["red", "green", "blue", "tall", "small", "round"] * 30
    text = " ".join(f"A {w} box stands by door {i} ." for i, w in enumerate(words))
    (root / "text.txt").write_text(text)
    return {"root": root, "model": model}


def _budget_config(root: Path, out: Path, ratio: float) -> dict[str, Any]:
    return {
        "name": "budgets",
        "model": str(root / "model"),
        "out": str(out),
        "device": "cpu",
        "cache_dir": str(root / "cache"),
        "baseline": False,
        # output maps: a tied rank may not exceed the input dimension n (BundleProblem)
        "families": ["attention.dense,mlp.dense_4h_to_h"],
        "model_ratios": [ratio],
        "calibration": {"text": str(root / "text.txt"), "samples": 8, "seq_len": 32, "seed": 0},
        "evaluation": {"wikitext": str(root / "text.txt"), "seq_len": 32, "max_windows": 6},
        "points": [
            {"method": "svd"},
            {"method": "svd-llm"},
            {"method": "basis-sharing", "group_size": 3},
            {"method": "bundle", "lam": 0.0, "tying": 3},
        ],
    }


@pytest.mark.data
def test_model_ratio_points_spend_the_same_budget(
    budget_setup: dict[str, Any], tmp_path: Path
) -> None:
    from llm_adapter.lowrank import count_unique_parameters
    from llm_adapter.models import family_weights, resolve_families

    ratio = 0.03  # the 4,096 x 48 embedding holds most of this model's parameters
    config = _budget_config(budget_setup["root"], tmp_path / "r.jsonl", ratio)
    rows = sw.run_sweep(config, progress=False, log=io.StringIO())
    assert len(rows) == 4
    model = budget_setup["model"]
    total = count_unique_parameters(model)
    # the rank is rounded down in every family, so the budget is met or exceeded by at most
    # one rank unit per layer (untied: m + n parameters; a tied group of k = L = 3 layers:
    # at most m + k n or n + k m per group, below L (m + n) here)
    slack = 0
    for f in resolve_families(model, "attention.dense,mlp.dense_4h_to_h"):
        L, m, n = family_weights(model, f).shape
        slack += L * (m + n)
    for row in rows:
        assert row["model_params_dense"] == total
        assert ratio <= row["model_ratio"] <= ratio + slack / total, row["label"]
        assert len(row["ppl_window_nll"]) == 6 and len(row["ppl_window_tokens"]) == 6
    # rows share their windows, so they pair
    res = paired_perplexity(rows[0], rows[1])
    assert res.n == 6 and res.low <= res.estimate <= res.high


@pytest.mark.data
def test_an_impossible_model_ratio_fails_before_any_point(
    budget_setup: dict[str, Any], tmp_path: Path
) -> None:
    config = _budget_config(budget_setup["root"], tmp_path / "r.jsonl", 0.2)
    config["model_ratios"] = [0.9]
    with pytest.raises(AdapterError, match=r"model_ratio = 0\.9 removes"):
        sw.run_sweep(config, progress=False, log=io.StringIO())
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.data
def test_basis_sharing_with_private_families(budget_setup: dict[str, Any], tmp_path: Path) -> None:
    config = _budget_config(budget_setup["root"], tmp_path / "r.jsonl", 0.03)
    config["checkpoints"] = str(tmp_path / "ck")
    config["points"] = [
        {"method": "basis-sharing", "group_size": 3, "private": "attention.dense"},
        {"method": "basis-sharing", "group_size": 3},
    ]
    rows = sw.run_sweep(config, progress=False, log=io.StringIO())
    assert [r["label"] for r in rows] == [
        "basis-sharing g=3 private attention.dense",
        "basis-sharing g=3",
    ]
    manifests = [
        json.loads((tmp_path / "ck" / r["checkpoint_key"] / "compression.json").read_text())
        for r in rows
    ]
    fams = manifests[0]["families"]
    assert fams["attention.dense"]["groups"] == [0, 1, 2]  # private: one layer per group
    assert fams["mlp.dense_4h_to_h"]["groups"] == [0, 0, 0]
    assert manifests[1]["families"]["attention.dense"]["groups"] == [0, 0, 0]
    # both spend the same budget up to the rounding of the rank
    assert abs(rows[0]["model_ratio"] - rows[1]["model_ratio"]) < 0.01


def test_private_applies_to_basis_sharing_only() -> None:
    with pytest.raises(AdapterError, match="private applies to basis-sharing only"):
        sw.expand_points({"points": [{"method": "svd", "private": "attention.dense"}]})


@pytest.mark.parametrize(
    "name",
    [
        "smollm2_paper.toml",
        "smollm2_hellaswag.toml",
        "smollm2_budgets_oproj.toml",
        "smollm2_budgets_all.toml",
    ],
)
def test_smollm2_configs_parse(name: str) -> None:
    """The shipped SmolLM2 configurations are valid, with distinct point keys."""
    path = Path(__file__).resolve().parents[2] / "experiments" / name
    config = sw.load_config(path)
    points = sw.expand_points(config)
    assert "svd-llm" in {p.method for p in points}  # the reference of every table
    keys = [sw.point_key(p, {"x": 1}) for p in points]
    assert len(set(keys)) == len(keys)
    budgets = {p.budget for p in points if p.method != "dense"}
    if "budgets" in name:  # equal-budget tables compare at two budgets or more
        assert len(budgets) >= 2
    else:
        assert len(budgets) == 1
