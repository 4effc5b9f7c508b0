"""The Llama layout: every architecture of the table on a tiny random config.

Each architecture is compressed with every method on every family, saved,
and reloaded: the reloaded logits must equal the in-memory ones bit for bit
(same tensors, same modules, same arithmetic on the same machine), tied
embeddings must stay one tensor, and shared bases must be stored once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter import (
    AdapterError,
    CompressionConfig,
    compress_model,
    count_unique_parameters,
    family_modules,
    family_weights,
    load,
    save,
)
from llm_adapter.calibrate import calibrate
from llm_adapter.lowrank import LowRankLinear
from llm_adapter.methods import METHOD_TABLE
from llm_adapter.models import (
    ARCHITECTURES,
    LLAMA_LAYOUT,
    NEUTRAL_FAMILIES,
    resolve_families,
)
from llm_adapter.testing import random_model

LLAMA_FAMILIES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
VOCAB = 128
IDS = torch.from_numpy(np.random.default_rng(7).integers(0, VOCAB, size=(2, 20)))
WINDOWS = np.random.default_rng(0).integers(0, VOCAB, size=(6, 24))
#: the parameters a method runs at here (its defaults otherwise): tied groups of 2
SETTINGS: dict[str, dict[str, Any]] = {
    "basis-sharing": {"group_size": 2},
    "bundle": {"tying": 2, "lam": 0.5, "metric": "activation"},
}
#: every registered method
METHODS = [{"method": name, **SETTINGS.get(name, {})} for name in METHOD_TABLE]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_llama_table_entry() -> None:
    spec = ARCHITECTURES["llama"]
    assert spec.layers == "model.layers"
    assert tuple(spec.families) == LLAMA_FAMILIES
    assert set(spec.aliases) <= set(NEUTRAL_FAMILIES)
    for model_type in LLAMA_LAYOUT:
        assert ARCHITECTURES[model_type] == spec


def test_gqa_shapes_and_tied_embeddings() -> None:
    # SmolLM2's proportions at a tiny size: 9 query heads of 64 -> 3 kv heads
    model = random_model(
        "llama",
        hidden_size=72,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=192,
        num_hidden_layers=2,
    )
    assert family_weights(model, "self_attn.q_proj").shape == (2, 72, 72)
    assert family_weights(model, "self_attn.k_proj").shape == (2, 24, 72)
    assert family_weights(model, "self_attn.v_proj").shape == (2, 24, 72)
    assert family_weights(model, "mlp.gate_proj").shape == (2, 192, 72)
    assert family_weights(model, "mlp.down_proj").shape == (2, 72, 192)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_neutral_names_map_to_each_architecture() -> None:
    neox = random_model("gpt_neox", num_hidden_layers=2)
    llama = random_model("llama", num_hidden_layers=2)
    assert resolve_families(neox, "attn.out,mlp.out") == ("attention.dense", "mlp.dense_4h_to_h")
    assert resolve_families(llama, "attn.out,mlp.out") == ("self_attn.o_proj", "mlp.down_proj")
    # mixed neutral and own names, duplicates dropped, table order kept
    assert resolve_families(llama, ["mlp.down_proj", "attn.q", "mlp.out"]) == (
        "self_attn.q_proj",
        "mlp.down_proj",
    )
    assert family_modules(llama, "attn.out")[1] is llama.model.layers[1].self_attn.o_proj
    np.testing.assert_array_equal(
        family_weights(neox, "mlp.up"), family_weights(neox, "mlp.dense_h_to_4h")
    )
    with pytest.raises(AdapterError, match=r"family 'attn\.q' \(the query map\) does not exist"):
        resolve_families(neox, "attn.q")
    with pytest.raises(AdapterError, match=r"unknown family 'attention\.dense'.*self_attn\.o_proj"):
        resolve_families(llama, "attention.dense")
    # the config accepts the neutral names before any model is loaded
    assert CompressionConfig(families="attn.out,mlp.out").families == ("attn.out", "mlp.out")


def test_neutral_names_compress_the_same_maps() -> None:
    def run(families: str) -> list[np.ndarray]:
        model = random_model("llama", num_hidden_layers=2, seed=3)
        stats = calibrate(model, None, families, token_windows=WINDOWS)
        report = compress_model(model, CompressionConfig("svd-llm", families=families), stats)
        assert list(report.families) == ["self_attn.o_proj", "mlp.down_proj"]
        return [p.detach().numpy() for p in model.parameters()]

    for a, b in zip(run("attn.out,mlp.out"), run("self_attn.o_proj,mlp.down_proj"), strict=True):
        np.testing.assert_array_equal(a, b)  # same code path, same inputs: identical


@pytest.mark.filterwarnings("ignore:basis sharing.*numerical rank:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:rank d = .* no smaller than the dense maps:UserWarning")
@pytest.mark.parametrize("model_type", LLAMA_LAYOUT)
def test_every_method_round_trips(model_type: str, tmp_path: Path) -> None:
    base = random_model(model_type, num_hidden_layers=2, seed=1)
    stats = calibrate(base, None, "all", token_windows=WINDOWS)
    assert set(stats.covariances) == set(LLAMA_FAMILIES)
    dense_logits = _logits(base)
    tied = bool(base.config.tie_word_embeddings)
    for kw in METHODS:
        model = random_model(model_type, num_hidden_layers=2, seed=1)
        config = CompressionConfig(rank_ratio=0.25, families="all", **kw)  # type: ignore[arg-type]
        report = compress_model(model, config, stats)
        assert list(report.families) == list(LLAMA_FAMILIES)
        for f in LLAMA_FAMILIES:
            assert all(isinstance(m, LowRankLinear) for m in family_modules(model, f))
        logits = _logits(model)
        assert torch.isfinite(logits).all()
        assert not torch.equal(logits, dense_logits)  # compression changed the model
        out = save(model, None, report, tmp_path / kw["method"])
        loaded, _ = load(out, device="cpu")
        assert torch.equal(_logits(loaded), logits), (model_type, kw["method"])
        assert count_unique_parameters(loaded) == count_unique_parameters(model)
        if tied:
            assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        group = METHOD_TABLE[kw["method"]].group
        if group is not None and config.params[group] == 2:  # tied groups share one basis
            for f in LLAMA_FAMILIES:
                a, b = family_modules(loaded, f)
                side = a.shared
                assert side in ("left", "right") and b.shared == side
                assert getattr(a, side) is getattr(b, side), (model_type, f)
