"""Model access: the accessor table, weights extraction, loading and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llm_adapter import AdapterError, family_modules, family_weights, load
from llm_adapter.models import (
    ARCHITECTURES,
    check_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_families,
)
from llm_adapter.testing import random_neox

FAMILIES = (
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
)


def word_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    """A tiny word-level fast tokenizer (ids w0..w{V-2} plus [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)}
    vocab["[UNK]"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_table_lists_the_four_families() -> None:
    assert tuple(ARCHITECTURES["gpt_neox"].families) == FAMILIES


@pytest.mark.parametrize(
    ("family", "shape"),
    [
        ("attention.query_key_value", (3, 96, 32)),
        ("attention.dense", (3, 32, 32)),
        ("mlp.dense_h_to_4h", (3, 128, 32)),
        ("mlp.dense_4h_to_h", (3, 32, 128)),
    ],
)
def test_family_weights_shapes_and_values(family: str, shape: tuple[int, int, int]) -> None:
    model = random_neox(hidden_size=32, num_hidden_layers=3)
    W = family_weights(model, family)
    assert W.shape == shape and W.dtype == np.float64
    mods = family_modules(model, family)
    for l, mod in enumerate(mods):
        np.testing.assert_array_equal(W[l], mod.weight.detach().double().numpy())
    assert mods[1] is model.get_submodule(f"gpt_neox.layers.1.{family}")


def test_half_precision_weights_come_out_float64() -> None:
    model = random_neox(dtype=torch.bfloat16)
    W = family_weights(model, "attention.dense")
    assert W.dtype == np.float64
    # bf16 -> float64 is exact
    ref = model.gpt_neox.layers[0].attention.dense.weight.detach().double().numpy()
    np.testing.assert_array_equal(W[0], ref)


def test_resolve_families() -> None:
    model = random_neox()
    assert resolve_families(model, "all") == FAMILIES
    assert resolve_families(model, "mlp.dense_4h_to_h,attention.dense") == (
        "attention.dense",
        "mlp.dense_4h_to_h",
    )
    with pytest.raises(AdapterError, match=r"unknown family 'attention\.out'.*attention\.dense"):
        resolve_families(model, ["attention.out"])


def test_unsupported_architecture_lists_supported() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    )
    with pytest.raises(
        AdapterError, match=r"unsupported architecture 'gpt2'; supported: .*gpt_neox, .*llama"
    ):
        family_weights(model, "attention.dense")


def test_non_finite_weights_named() -> None:
    model = random_neox()
    with torch.no_grad():
        model.gpt_neox.layers[2].attention.dense.weight[0, 0] = float("nan")
    with pytest.raises(
        AdapterError, match=r"non-finite weights .* attention\.dense of layers \[2\]"
    ):
        family_weights(model, "attention.dense")


def test_dtype_and_device_names() -> None:
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype(None) is None and resolve_dtype("auto") is None
    with pytest.raises(AdapterError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(AdapterError, match=r"unknown device 'tpu'|unsupported device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(AdapterError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_load_local_dir(tmp_path: Path, dtype: str) -> None:
    model = random_neox(seed=4)
    model.save_pretrained(tmp_path)
    word_tokenizer(128).save_pretrained(tmp_path)
    loaded, tok = load(tmp_path, device="cpu", dtype=dtype)
    assert loaded.gpt_neox.layers[0].attention.dense.weight.dtype == resolve_dtype(dtype)
    assert not loaded.training
    ref = model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.to(resolve_dtype(dtype))
    torch.testing.assert_close(
        loaded.gpt_neox.layers[1].mlp.dense_4h_to_h.weight, ref, rtol=0, atol=0
    )
    assert tok("w1 w2")["input_ids"] == [1, 2]


def test_missing_local_dir() -> None:
    with pytest.raises(AdapterError, match=r"model directory './nowhere/model' does not exist"):
        load("./nowhere/model")


def test_empty_tokenizer_fails_loudly() -> None:
    class Empty:
        def __len__(self) -> int:
            return 0

        def __call__(self, text: str) -> dict[str, list[int]]:
            return {"input_ids": []}

    with pytest.raises(AdapterError, match="is empty"):
        check_tokenizer(Empty(), "'EleutherAI/pythia-70m'")
    check_tokenizer(word_tokenizer(10), "ok")


def test_unreachable_hub_id_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # offline mode: the hub is not contacted, as on a machine without internet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError) as info:
        load("no-such-org-xyz/no-such-model", device="cpu")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'no-such-org-xyz/no-such-model'" in msg and "hub" in msg
