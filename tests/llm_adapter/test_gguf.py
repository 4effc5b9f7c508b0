"""GGUF files: dequantized once into a cache entry, reloaded from it, rebuilt when damaged.

The GGUF file is written here, with the ``gguf`` package's writer, from a tiny
random Llama model (float32 tensors, so the round trip is exact), laid out as
llama.cpp's converter lays it out (rotary rows of q/k permuted, tied output
head omitted, a byte-level BPE vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from llm_adapter import AdapterError, dequantize_gguf, gguf_cache, load
from llm_adapter.gguf_cache import CACHE_ENV, MARKER, cache_root, is_gguf_file

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 96
MERGES = ["Ġ t", "h e", "Ġt he"]
SPECIAL = "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


TOKENS = [*_bytes_to_unicode(), "Ġt", "he", "Ġthe", SPECIAL]


def tiny_llama(seed: int = 0) -> Any:
    """A random Llama with grouped-query attention and tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=len(TOKENS),
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=len(TOKENS) - 1,
        eos_token_id=len(TOKENS) - 1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # RMSNorm weights start at 1: make them random so a lost norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.data.uniform_(0.5, 1.5)
    return model.eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary reordering of q/k rows (transformers undoes it on load)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    model: Any, path: Path, *, arch: str = "llama", tokenizer_model: str = "gpt2"
) -> Path:
    """Write ``model`` as an F32 GGUF file in llama.cpp's layout."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (len(TOKENS) - 1) + [3])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(TOKENS) - 1)
    w.add_eos_token_id(len(TOKENS) - 1)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(LAYERS):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = _permute(t, HEADS)
            elif hf == "self_attn.k_proj":
                t = _permute(t, KV_HEADS)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def source() -> Any:
    return tiny_llama()


@pytest.fixture
def gguf_file(source: Any, tmp_path: Path) -> Path:
    return write_gguf(source, tmp_path / "tiny.gguf")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = gguf_cache._write_entry

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(gguf_cache, "_write_entry", counting)
    return calls


def test_cache_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llm-adapter"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "llm-adapter"


def test_gguf_loads_with_the_exact_weights_tokenizer_and_ties(
    source: Any, gguf_file: Path, cache: Path
) -> None:
    model, tokenizer = load(gguf_file, device="cpu")
    assert model.config.model_type == "llama"
    assert not hasattr(model.config, "quantization_config")
    assert model.config._name_or_path == str(gguf_file)
    # F32 tensors through GGUF and the cache: every weight bit-identical
    ref = source.state_dict()
    got = model.state_dict()
    assert set(got) == set(ref)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    # tied embeddings stay one tensor
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # the tokenizer is the file's: its merges make " the" one token
    ids = tokenizer(" the the", add_special_tokens=False)["input_ids"]
    assert ids == [TOKENS.index("Ġthe")] * 2
    assert tokenizer.eos_token == SPECIAL
    x = torch.tensor([[5, 17, 256, 258, 40, 3]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, source(x).logits)
    entries = list((cache / "gguf").iterdir())
    sha = gguf_cache._sha256_file(gguf_file)
    assert [e.name for e in entries] == [sha]  # no temporary directory left behind
    marker = json.loads((entries[0] / MARKER).read_text())
    assert marker["source_sha256"] == sha and "model.safetensors" in marker["files"]
    assert "quantization_config" not in json.loads((entries[0] / "config.json").read_text())


def test_second_load_uses_the_cache(
    gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_builds(monkeypatch)
    first = dequantize_gguf(gguf_file)
    assert len(calls) == 1
    # the key is the content: a copy under another name hits the same entry
    copy = gguf_file.with_name("renamed.gguf")
    copy.write_bytes(gguf_file.read_bytes())
    assert dequantize_gguf(copy) == first
    model, _ = load(copy, device="cpu")
    assert len(calls) == 1
    assert model.config._name_or_path == str(copy)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-marker", "bad-marker", "missing"])
def test_damaged_entry_is_rebuilt(
    damage: str, source: Any, gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_builds(monkeypatch)
    entry = dequantize_gguf(gguf_file)
    weights = entry / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte of tensor data changed
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "no-marker":  # as left by a write interrupted before the rename
        (entry / MARKER).unlink()
    elif damage == "bad-marker":
        (entry / MARKER).write_text("{not json")
    else:
        (entry / "tokenizer.json").unlink()
    assert dequantize_gguf(gguf_file) == entry
    assert len(calls) == 2
    model, _ = load(gguf_file, device="cpu")
    assert len(calls) == 2  # the rebuilt entry is sound and now used
    for key, ref in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], ref), key


def test_unsupported_architecture_fails_in_one_line_before_dequantizing(
    source: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_builds(monkeypatch)
    bad = write_gguf(source, tmp_path / "odd.gguf", arch="notanarch")
    with pytest.raises(AdapterError, match=r"cannot read the GGUF file .*odd\.gguf") as info:
        load(bad, device="cpu")
    assert "\n" not in str(info.value)
    assert calls == []


def test_not_a_gguf_file(tmp_path: Path, cache: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert not is_gguf_file(fake)
    with pytest.raises(AdapterError, match="not a GGUF file"):
        load(fake)
    with pytest.raises(AdapterError, match=r"model file .*missing\.gguf.* does not exist"):
        load(tmp_path / "missing.gguf")
    with pytest.raises(AdapterError, match="not a GGUF file"):
        dequantize_gguf(fake)


def test_unwritable_cache_is_a_one_line_error(
    gguf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker))  # a file where the cache directory should be
    with pytest.raises(AdapterError, match=f"cannot write the GGUF cache.*{CACHE_ENV}"):
        dequantize_gguf(gguf_file)


def test_missing_gguf_package_is_a_one_line_error(
    gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(AdapterError, match=r"needs the gguf package.*llm-adapter\[gguf\]"):
        load(gguf_file)


def test_load_and_info_accept_a_gguf_file(
    source: Any, gguf_file: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import llm_adapter
    from llm_adapter.cli import main

    model, tokenizer = llm_adapter.load(gguf_file, device="cpu")
    assert tokenizer is not None
    x = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, source(x).logits)
    assert main(["info", str(gguf_file)]) == 0
    out = capsys.readouterr().out
    sha = gguf_cache._sha256_file(gguf_file)
    assert f"GGUF file {gguf_file}" in out and sha in out
    assert "dequantized copy (cached)" in out  # load above built the entry
    assert "model_type: llama" in out


def test_unreadable_tokenizer_fails_in_one_line_before_the_weights(
    source: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_gguf(source, tmp_path / "odd-tok.gguf", tokenizer_model="nosuchtokenizer")
    loaded: list[int] = []
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        loaded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(AdapterError, match=r"cannot read the tokenizer of the GGUF file") as info:
        load(bad, device="cpu")
    assert "\n" not in str(info.value)
    assert loaded == []  # failed before any weight was dequantized
    assert not (cache / "gguf" / gguf_cache._sha256_file(bad)).exists()


def test_a_killed_build_is_cleaned_by_the_next(gguf_file: Path, cache: Path) -> None:
    """The temporaries of a build whose process died are removed when the entry is next
    built; a live process's are left alone."""
    import os
    import subprocess
    import sys

    from llm_adapter.files import host_tag

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    sha = gguf_cache._sha256_file(gguf_file)
    root = cache / "gguf"
    root.mkdir(parents=True)
    left = root / f".{sha[:16]}.tmp-{host_tag()}-{dead}-0123abcd"
    live = root / f".{sha[:16]}.tmp-{host_tag()}-{os.getpid()}-0123abcd"
    for d in (left, live):
        d.mkdir()
        (d / "config.json").write_text("{}")
    entry = dequantize_gguf(gguf_file)
    assert sorted(p.name for p in root.iterdir()) == sorted([entry.name, live.name])
