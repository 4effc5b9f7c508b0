"""The shipped tiny GPT-NeoX checkpoint (``llm_adapter.assets.TINY_MODEL``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter.assets import CALIBRATION_TOKENS, TINY_MODEL
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM

#: the issue's cap on the shipped checkpoint: "at most about 10 MB"
SIZE_CAP_BYTES = 10_000_000


@pytest.fixture(scope="module")
def model() -> GPTNeoXForCausalLM:
    m = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    assert isinstance(m, GPTNeoXForCausalLM)
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(TINY_MODEL)


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    with safe_open(str(CALIBRATION_TOKENS), framework="pt") as f:
        return f.get_tensor("input_ids")


@pytest.fixture(scope="module")
def training() -> dict[str, Any]:
    return json.loads((TINY_MODEL / "TRAINING.json").read_text())


def test_asset_files_present() -> None:
    assert isinstance(TINY_MODEL, Path) and isinstance(CALIBRATION_TOKENS, Path)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "MODEL_CARD.md",
        "TRAINING.json",
        "calibration_tokens.safetensors",
    ):
        assert (TINY_MODEL / name).is_file(), name
    assert CALIBRATION_TOKENS.parent == TINY_MODEL


def test_size_cap() -> None:
    total = sum(f.stat().st_size for f in TINY_MODEL.rglob("*") if f.is_file())
    assert total <= SIZE_CAP_BYTES, f"{TINY_MODEL} holds {total} bytes"


def test_config_is_gpt_neox_with_pythia_features(model: GPTNeoXForCausalLM) -> None:
    raw = json.loads((TINY_MODEL / "config.json").read_text())
    assert raw["model_type"] == "gpt_neox"
    assert raw["architectures"] == ["GPTNeoXForCausalLM"]
    # transformers 5 writes rope_parameters; 4.x writes (and defaults) rotary_pct
    rotary = raw.get("rope_parameters", {}).get("partial_rotary_factor", raw.get("rotary_pct"))
    assert rotary == 0.25
    assert raw["use_parallel_residual"] is True
    assert raw["tie_word_embeddings"] is False
    cfg = model.config
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    assert cfg.intermediate_size == 4 * cfg.hidden_size
    # untied embeddings: two distinct tensors with different values
    # (the output head is `embed_out` in the file, `lm_head` in transformers 5)
    lm: Any = model
    emb_in = lm.get_input_embeddings().weight
    emb_out = lm.get_output_embeddings().weight
    assert emb_in.shape == emb_out.shape == (cfg.vocab_size, cfg.hidden_size)
    assert emb_in.data_ptr() != emb_out.data_ptr()
    assert not torch.equal(emb_in, emb_out)
    assert emb_in.dtype == torch.float32


def test_tokenizer_nonempty_and_round_trips(tokenizer: Any, model: GPTNeoXForCausalLM) -> None:
    assert len(tokenizer) == model.config.vocab_size == 4096
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    samples = [
        " = Homarus gammarus = \n",
        " The <unk> lobster , H. americanus , may grow to 60 cm ( 24 in ) .\n",
        "Zürich — naïve café, 東京 🦞\ttabs  and   spaces\n\n",
    ]
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert 0 < len(ids) < len(text.encode("utf-8")) + 1
        assert max(ids) < model.config.vocab_size
        assert tokenizer.decode(ids) == text
    # BPE merges were learned: common words are single tokens
    assert len(tokenizer(" the", add_special_tokens=False)["input_ids"]) == 1


def test_calibration_tokens(calib: torch.Tensor, model: GPTNeoXForCausalLM) -> None:
    assert calib.dtype == torch.int64
    assert tuple(calib.shape) == (64, 128)
    assert int(calib.min()) >= 0 and int(calib.max()) < model.config.vocab_size
    # distinct windows (seeded random offsets, not one window repeated)
    assert len({tuple(w.tolist()) for w in calib}) == 64


def test_model_learned(model: GPTNeoXForCausalLM, calib: torch.Tensor) -> None:
    """The model beats the best unigram model of the very tokens it is scored on.

    That unigram baseline (the empirical entropy of the scored tokens) is
    optimistic for the baseline, so this fails for an untrained or broken
    checkpoint; a random init scores about ln(4096) = 8.3 nats.
    """
    x = calib[:16]
    with torch.no_grad():
        nll = float(model(input_ids=x, labels=x).loss)
    targets = x[:, 1:].reshape(-1).numpy()
    p = np.bincount(targets) / targets.size
    p = p[p > 0]
    unigram_entropy = float(-(p * np.log(p)).sum())
    assert math.isfinite(nll)
    assert nll < unigram_entropy - 1.0, (nll, unigram_entropy)


def test_model_card_reports_training_numbers(training: dict[str, Any]) -> None:
    card = (TINY_MODEL / "MODEL_CARD.md").read_text()
    assert f"{training['test_ppl']:.2f}" in card
    assert f"{training['params']:,}" in card
    # "actually learned": well below (half) the unigram baseline on the same tokens
    assert training["test_ppl"] < training["unigram_test_ppl"] / 2
    recipe = training["recipe"]
    for key in ("seed", "steps", "lr", "batch", "seq", "vocab", "layers", "hidden", "heads"):
        assert key in recipe


@pytest.mark.slow
@pytest.mark.data
def test_reported_test_perplexity_reproduces(
    model: GPTNeoXForCausalLM,
    tokenizer: Any,
    training: dict[str, Any],
    shared_data: Path,
) -> None:
    """The card's WikiText-2 test perplexity, recomputed from the shipped files.

    Protocol as in the card: the test text tokenised line by line, the ids
    concatenated, non-overlapping 128-token windows (all complete ones), the
    mean of the model's per-window loss (mean NLL of 127 predicted tokens,
    every window has the same count).  Tolerance 1e-3 relative: float32
    logits summed in a different batch order.
    """
    with (shared_data / "wikitext-2" / "wiki.test.tokens").open(encoding="utf-8") as f:
        lines = f.readlines()
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    ids = [i for line_ids in encoded for i in line_ids]
    assert len(ids) == training["test_tokens"]
    seq = training["eval_seq"]
    n = len(ids) // seq
    windows = torch.tensor(ids[: n * seq]).reshape(n, seq)
    losses = []
    with torch.inference_mode():
        for chunk in windows.split(128):
            logits = model(input_ids=chunk).logits[:, :-1].double()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), chunk[:, 1:], reduction="none"
            )
            losses.append(nll.mean(dim=1))
    ppl = math.exp(float(torch.cat(losses).mean()))
    assert ppl == pytest.approx(training["test_ppl"], rel=1e-3)
