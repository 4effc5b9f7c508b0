"""Calibration: hooked Grams against layer inputs computed independently, protocol, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter.calibrate import calibrate
from llm_adapter.data import sample_windows, tokenize_text
from llm_adapter.testing import random_model, random_neox

FEW_TOKENS = "ignore:.*calibration tokens are fewer:UserWarning"


def _windows(n: int, T: int, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, vocab, size=(n, T)))


def _layer_inputs(model: torch.nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of every block, from output_hidden_states (no hooks)."""
    with torch.no_grad():
        out = model(input_ids=windows, output_hidden_states=True, use_cache=False)
    return list(out.hidden_states[:-1])


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_grams_equal_independent_layer_inputs() -> None:
    model = random_neox(num_hidden_layers=3, dtype=torch.float64)
    windows = _windows(4, 16)
    stats = calibrate(
        model,
        None,
        ["attention.query_key_value", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
        token_windows=windows,
        batch_size=3,
    )
    assert stats.tokens == 64
    hidden = _layer_inputs(model, windows)
    for l, layer in enumerate(model.gpt_neox.layers):
        h = hidden[l].reshape(-1, 32)
        with torch.no_grad():
            x_qkv = layer.input_layernorm(h)
            x_mlp = layer.post_attention_layernorm(
                h
            )  # parallel residual: MLP reads the block input
            x_4h = layer.mlp.act(layer.mlp.dense_h_to_4h(x_mlp))
        for family, x in (
            ("attention.query_key_value", x_qkv),
            ("mlp.dense_h_to_4h", x_mlp),
            ("mlp.dense_4h_to_h", x_4h),
        ):
            ref = (x.T @ x / x.shape[0]).numpy()
            # float64 forward passes in two batchings: roundoff ~1e-15 relative
            np.testing.assert_allclose(stats.covariance(family)[l], ref, rtol=1e-10, atol=1e-13)


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_attention_dense_gram_from_its_inputs() -> None:
    model = random_neox(dtype=torch.float64)
    windows = _windows(2, 8, seed=1)
    seen: list[torch.Tensor] = []
    mod = model.gpt_neox.layers[1].attention.dense
    handle = mod.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    handle.remove()
    x = seen[0]
    stats = calibrate(model, None, "attention.dense", token_windows=windows)
    np.testing.assert_allclose(
        stats.covariance("attention.dense")[1], (x.T @ x / 16).numpy(), rtol=1e-12
    )


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_half_precision_model_gives_float64_psd() -> None:
    model = random_neox(dtype=torch.bfloat16)
    stats = calibrate(model, None, "all", token_windows=_windows(2, 32))
    for C in stats.covariances.values():
        assert C.dtype == np.float64
        np.testing.assert_array_equal(C, np.swapaxes(C, -1, -2))
        # PSD up to float64 roundoff of the accumulation
        assert np.linalg.eigvalsh(C).min() >= -1e-12 * np.linalg.eigvalsh(C).max()


def test_sampling_protocol_is_seeded() -> None:
    ids = np.arange(1000)
    a = sample_windows(ids, 5, 16, seed=3)
    b = sample_windows(ids, 5, 16, seed=3)
    c = sample_windows(ids, 5, 16, seed=4)
    assert a.shape == (5, 16)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # windows are runs of consecutive tokens starting at the drawn offsets
    offsets = np.random.default_rng(3).integers(0, 1000 - 16 + 1, size=5)
    np.testing.assert_array_equal(a[:, 0].numpy(), offsets)
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)
    with pytest.raises(AdapterError, match="fewer than seq_len=2000"):
        sample_windows(ids, 1, 2000, seed=0)


def test_text_file_protocol_and_cache(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(f"w{i}" for i in rng.integers(0, 127, 20)) for _ in range(30))
    path = tmp_path / "calib.txt"
    path.write_text(text)
    ids = tokenize_text(text, tokenizer)
    assert ids.size == 600

    model = random_neox()
    cache = tmp_path / "cache"
    kw = {"text_path": path, "samples": 3, "seq_len": 40, "seed": 1, "cache_dir": cache}
    first = calibrate(model, tokenizer, "attention.dense", **kw)  # type: ignore[arg-type]
    assert not first.cached and first.tokens == 120
    assert first.protocol["samples"] == 3 and first.protocol["seed"] == 1
    assert first.protocol["windows_sha256"]
    again = calibrate(model, tokenizer, "attention.dense", **kw)  # type: ignore[arg-type]
    assert again.cached
    np.testing.assert_array_equal(
        again.covariance("attention.dense"), first.covariance("attention.dense")
    )
    # the same windows given directly hit the same cache entry
    windows = sample_windows(ids, 3, 40, seed=1)
    direct = calibrate(model, None, "attention.dense", token_windows=windows, cache_dir=cache)
    assert direct.cached
    # another seed is another entry
    other = calibrate(model, tokenizer, "attention.dense", **{**kw, "seed": 2})  # type: ignore[arg-type]
    assert not other.cached
    # another model (different weights) is another entry
    model2 = random_neox(seed=9)
    assert not calibrate(model2, tokenizer, "attention.dense", **kw).cached  # type: ignore[arg-type]


def test_fewer_tokens_than_dimension_warns() -> None:
    model = random_neox()
    with pytest.warns(
        UserWarning, match="16 calibration tokens are fewer than the input dimension 32"
    ):
        calibrate(model, None, "attention.dense", token_windows=_windows(2, 8))


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_bad_calibration_input(tmp_path: Path) -> None:
    model = random_neox()
    with pytest.raises(AdapterError, match=r"calibration file '.*missing.txt' does not exist"):
        calibrate(model, None, "attention.dense", text_path=tmp_path / "missing.txt")
    with pytest.raises(AdapterError, match="out of the model's vocabulary"):
        calibrate(model, None, "attention.dense", token_windows=_windows(1, 4, vocab=1000))
    with pytest.raises(AdapterError, match="no calibration data"):
        calibrate(model, None, "attention.dense")
    with pytest.raises(AdapterError, match="unknown family 'mlp'"):
        calibrate(model, None, "mlp", token_windows=_windows(1, 4))
    stats = calibrate(model, None, "attention.dense", token_windows=_windows(2, 32))
    with pytest.raises(
        AdapterError, match=r"no calibration statistics for family 'mlp.dense_4h_to_h'"
    ):
        stats.covariance("mlp.dense_4h_to_h")


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_layerwise_equals_full_forward() -> None:
    model = random_neox(num_hidden_layers=3, dtype=torch.float64)
    windows = _windows(5, 16, seed=2)
    full = calibrate(model, None, "all", token_windows=windows, batch_size=2)
    lw = calibrate(model, None, "all", token_windows=windows, batch_size=2, layerwise=True)
    for f in full.families:
        # same float64 arithmetic block by block: equal to roundoff
        np.testing.assert_allclose(lw.covariance(f), full.covariance(f), rtol=1e-12, atol=1e-15)
    # the model is left as it was: every block back on its device, no catcher left
    assert type(model.gpt_neox.layers[0]).__name__ == "GPTNeoXLayer"


LLAMA_ALL = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _llama_inputs(model: torch.nn.Module, windows: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Every map's input, recomputed from the blocks' hidden states without hooks."""
    hidden = _layer_inputs(model, windows)
    out: dict[str, list[torch.Tensor]] = {f: [] for f in LLAMA_ALL}
    for l, layer in enumerate(model.model.layers):
        h = hidden[l]
        with torch.no_grad():
            x_attn = layer.input_layernorm(h)
            rope = model.model.rotary_emb(h, _positions(h))
            # the MLP reads the post-attention norm of the residual after attention
            # (causal attention: sdpa without a mask, as in the model's own forward)
            attn = layer.self_attn(x_attn, position_embeddings=rope, attention_mask=None)[0]
            x_mlp = layer.post_attention_layernorm(h + attn)
            x_down = layer.mlp.act_fn(layer.mlp.gate_proj(x_mlp)) * layer.mlp.up_proj(x_mlp)
        n = h.shape[-1]
        for f in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            out[f].append(x_attn.reshape(-1, n))
        for f in ("mlp.gate_proj", "mlp.up_proj"):
            out[f].append(x_mlp.reshape(-1, n))
        out["mlp.down_proj"].append(x_down.reshape(-1, x_down.shape[-1]))
    return out


def _positions(h: torch.Tensor) -> torch.Tensor:
    return torch.arange(h.shape[1]).unsqueeze(0).expand(h.shape[0], -1)


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_maps_sharing_an_input_share_one_gram() -> None:
    from llm_adapter.calibrate import _accumulate

    model = random_model("llama", num_hidden_layers=3, dtype=torch.float64)
    windows = _windows(3, 16)
    grams, n_shared = _accumulate(model, LLAMA_ALL, windows, batch_size=2, progress=False)
    # k and v read q's input, up reads gate's: three of seven Grams per layer are shared
    assert n_shared == 3 * 3
    for l in range(3):
        assert grams["self_attn.k_proj"][l] is grams["self_attn.q_proj"][l]
        assert grams["self_attn.v_proj"][l] is grams["self_attn.q_proj"][l]
        assert grams["mlp.up_proj"][l] is grams["mlp.gate_proj"][l]
        assert grams["self_attn.o_proj"][l] is not grams["self_attn.q_proj"][l]
    stats = calibrate(model, None, "all", token_windows=windows, batch_size=2)
    inputs = _llama_inputs(model, windows)
    for f in LLAMA_ALL:
        if f == "self_attn.o_proj":
            continue  # the attention core's output: checked through the NeoX test's route
        for l in range(3):
            x = inputs[f][l]
            ref = (x.T @ x / x.shape[0]).numpy()
            # float64 forwards in two batchings: roundoff ~1e-15 relative
            np.testing.assert_allclose(stats.covariance(f)[l], ref, rtol=1e-10, atol=1e-13)


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_parallel_block_shares_attention_input_with_the_mlp() -> None:
    from llm_adapter.calibrate import _accumulate

    # Cohere's block feeds one normed input to q, k, v and to the MLP's gate and up
    model = random_model("cohere", num_hidden_layers=2)
    grams, n_shared = _accumulate(model, LLAMA_ALL, _windows(2, 8), batch_size=2, progress=False)
    assert n_shared == 4 * 2
    for l in range(2):
        assert grams["mlp.up_proj"][l] is grams["self_attn.q_proj"][l]
    # GPT-NeoX's attention and MLP read two different norms: nothing is shared
    neox = random_neox(num_hidden_layers=2)
    fams = (
        "attention.query_key_value",
        "attention.dense",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    )
    _, n_neox = _accumulate(neox, fams, _windows(2, 8), batch_size=2, progress=False)
    assert n_neox == 0


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_calibration_skips_the_output_head() -> None:
    model = random_model("llama", num_hidden_layers=2)
    calls: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        calibrate(model, None, "mlp.down_proj", token_windows=_windows(4, 8), batch_size=2)
        assert calls == []
        with torch.no_grad():
            model(input_ids=_windows(1, 4))
        assert calls == [1]  # the hook works; the model is left as it was
    finally:
        handle.remove()


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_layerwise_shares_inputs_and_matches_full_forward_on_llama() -> None:
    model = random_model("llama", num_hidden_layers=3, dtype=torch.float64)
    windows = _windows(4, 12)
    full = calibrate(model, None, "all", token_windows=windows, batch_size=2)
    lw = calibrate(model, None, "all", token_windows=windows, batch_size=2, layerwise=True)
    for f in LLAMA_ALL:
        # the same float64 arithmetic on the same batches, block by block: roundoff only
        np.testing.assert_allclose(lw.covariance(f), full.covariance(f), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [5, 1100, 1536])  # one, two and three column blocks
def test_block_triangular_gram_updates_equal_the_full_product(n: int) -> None:
    from llm_adapter.calibrate import _add_gram, _block_edges, _mirror

    assert len(_block_edges(n)) - 1 == max(1, n // 512)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(3, 40, n, dtype=torch.float64, generator=gen)
    g = torch.zeros(n, n, dtype=torch.float64)
    for part in x:  # three updates, as three batches
        _add_gram(g, part, "float64")
    _mirror(g)
    x2 = x.reshape(-1, n)
    ref = x2.T @ x2
    # the same float64 dot products, in the same order within a block: roundoff only
    torch.testing.assert_close(g, ref, rtol=1e-13, atol=1e-12)
    # mixed: float32 products of float32 inputs (exact in float32), summed in float64;
    # each inner sum has 40 terms, so the error is a few float32 ulps of sum |x_i x_j|
    x32 = x.float()
    gm = torch.zeros(n, n, dtype=torch.float64)
    for part in x32:
        _add_gram(gm, part, "mixed")
    _mirror(gm)
    ref32 = x32.double().reshape(-1, n).T @ x32.double().reshape(-1, n)
    bound = 40 * 6e-8 * (x32.double().abs().reshape(-1, n).T @ x32.double().abs().reshape(-1, n))
    assert bool(((gm - ref32).abs() <= bound).all())


@pytest.mark.parametrize("n", [5, 1100, 1536])
def test_symmetrising_the_diagonal_blocks_equals_the_whole_matrix_expression(n: int) -> None:
    """The finishing step touches only the diagonal blocks; bit-equal to (C + C^T) / 2."""
    from llm_adapter.calibrate import _add_gram, _mirror, _symmetrised

    gen = torch.Generator().manual_seed(n + 1)
    g = torch.zeros(n, n, dtype=torch.float64)
    for part in torch.randn(2, 30, n, dtype=torch.float64, generator=gen):
        _add_gram(g, part, "float64")
    _mirror(g)
    ref = g / 60
    ref = (ref + ref.T) * 0.5  # the whole-matrix expression, written out
    got = _symmetrised(g.clone().div_(60))
    assert torch.equal(got, ref)  # exact: off-diagonal entries are mirrored copies
    assert torch.equal(got, got.T)
    # a matrix not mirrored off the diagonal is not what it handles: the check can fail
    bad = g.clone()
    bad[0, -1] += 1.0
    if n > 512:
        assert not torch.equal(_symmetrised(bad.clone()), (bad + bad.T) * 0.5)


def test_maps_reading_a_shared_input_allocate_no_gram() -> None:
    from llm_adapter.calibrate import _SharedInputs

    shared = _SharedInputs()
    ids = [shared.add(name, 4, torch.device("cpu")) for name in ("q", "k", "o")]
    x, y = torch.ones(2, 4), torch.full((2, 4), 2.0)
    shared.hook(ids[0])(None, (x,))
    shared.hook(ids[1])(None, (x,))  # same tensor: an alias of q's Gram
    shared.hook(ids[2])(None, (y,))
    assert shared.grams[ids[1]] is None
    assert shared.resolved(ids[1]) is shared.resolved(ids[0])
    torch.testing.assert_close(
        shared.resolved(ids[2]), torch.full((4, 4), 8.0, dtype=torch.float64)
    )
    never = shared.add("never called", 3, torch.device("cpu"))
    assert torch.equal(shared.resolved(never), torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_mixed_accumulation_agrees_with_float64() -> None:
    model = random_model("llama", num_hidden_layers=2)
    windows = _windows(4, 64)
    exact = calibrate(model, None, "all", token_windows=windows, batch_size=2)
    mixed = calibrate(model, None, "all", token_windows=windows, batch_size=2, accumulate="mixed")
    for f, C in exact.covariances.items():
        Cm = mixed.covariance(f)
        np.testing.assert_array_equal(Cm, np.swapaxes(Cm, -1, -2))
        err = np.linalg.norm(Cm - C, axis=(1, 2)) / np.linalg.norm(C, axis=(1, 2))
        assert err.max() < 1e-6, (f, err)
    with pytest.raises(AdapterError, match="accumulate must be one of float64, mixed"):
        calibrate(model, None, "all", token_windows=windows, accumulate="float32")


@pytest.mark.filterwarnings(FEW_TOKENS)
def test_cache_keeps_mixed_and_float64_apart(tmp_path: Path) -> None:
    """A mixed-precision cache entry is never read back for a float64 request."""
    model = random_model("llama", num_hidden_layers=2)
    windows = _windows(4, 64)
    kw = {"token_windows": windows, "batch_size": 2, "cache_dir": tmp_path}
    mixed = calibrate(model, None, "all", accumulate="mixed", **kw)
    exact = calibrate(model, None, "all", **kw)
    plain = calibrate(model, None, "all", token_windows=windows, batch_size=2)
    for f, C in plain.covariances.items():
        np.testing.assert_array_equal(exact.covariance(f), C)
        assert not np.array_equal(mixed.covariance(f), C)
