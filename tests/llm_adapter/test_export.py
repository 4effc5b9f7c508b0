"""Dense export: plain ``from_pretrained`` loads it, outputs match the compressed model,
tied embeddings stay tied, and ``info`` reports sizes before and after."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_adapter import (
    CompressionConfig,
    calibrate,
    compress_model,
    count_unique_parameters,
    load,
    save,
)
from llm_adapter.cli import main
from llm_adapter.export import (
    EXPORT_MANIFEST,
    checkpoint_summary,
    export_dense,
    merge_lowrank,
    safetensors_parameters,
)
from llm_adapter.lowrank import LowRankLinear
from llm_adapter.testing import random_neox
from torch import nn
from transformers import AutoModelForCausalLM

pytestmark = [
    pytest.mark.filterwarnings("ignore:rank d = .* no smaller than the dense maps:UserWarning"),
    pytest.mark.filterwarnings("ignore:basis sharing.*numerical rank:RuntimeWarning"),
]


def _compress(model: nn.Module, method: str = "svd-llm", **kw: object) -> object:
    vocab = int(model.config.vocab_size)  # type: ignore[union-attr]
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, size=(16, 64)))
    families = kw.pop("families", "all")
    stats = calibrate(model, None, families, token_windows=windows)  # type: ignore[arg-type]
    config = CompressionConfig(method=method, families=families, **kw)  # type: ignore[arg-type]
    return compress_model(model, config, stats)


def _ids(vocab: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(3).integers(0, vocab, size=(2, 40)))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def _file_keys(path: Path) -> list[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


def test_float32_export_loads_plainly_and_matches_compressed_model(tmp_path: Path) -> None:
    from llm_adapter.assets import TINY_MODEL

    model: nn.Module = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL)).eval()
    dense_params = count_unique_parameters(model)
    report = _compress(model, rank_ratio=0.25, families=("attention.dense", "mlp.dense_4h_to_h"))
    ck = save(model, None, report, tmp_path / "ck")
    out = export_dense(ck, tmp_path / "dense")
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and "quantization_config" not in config
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # no llm-adapter involved
    assert not any(isinstance(m, LowRankLinear) for m in exported.modules())
    assert count_unique_parameters(exported) == dense_params  # the original model's size
    assert exported.dtype == torch.float32
    compressed, _ = load(ck, device="cpu")
    ids = _ids(int(config["vocab_size"]))
    a, b = _logits(compressed, ids), _logits(exported, ids)
    # float32: L (R x) against (L R) x differ by rounding; measured ~1e-6 relative here
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    # and the export is not simply the original dense model
    original = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL)).eval()
    assert float((_logits(original, ids) - b).abs().max()) > 1e-2


def test_float64_export_is_the_product_of_the_factors(tmp_path: Path) -> None:
    model = random_neox(num_hidden_layers=4, seed=5, dtype=torch.float64)
    report = _compress(model, method="bundle", tying=2, lam=0.3, rank_ratio=0.25)
    ck = save(model, None, report, tmp_path / "ck")
    out = export_dense(ck, tmp_path / "dense")
    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64).eval()
    compressed, _ = load(ck, device="cpu")
    factors = {n: m for n, m in compressed.named_modules() if isinstance(m, LowRankLinear)}
    assert factors, "nothing was compressed"
    for name, lr in factors.items():
        dense = exported.get_submodule(name)
        assert isinstance(dense, nn.Linear)
        expected = lr.left.detach() @ lr.right.detach()
        torch.testing.assert_close(dense.weight.detach(), expected, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(dense.bias, lr.bias, rtol=0, atol=0)
    ids = _ids(128)
    a, b = _logits(compressed, ids), _logits(exported, ids)
    # float64: the two evaluation orders agree to ~1e-14 relative; 1e-10 leaves room
    assert float((a - b).abs().max()) <= 1e-10 * float(a.abs().max())


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    model = random_neox(num_hidden_layers=2, seed=1, tie_word_embeddings=True)
    report = _compress(model, rank_ratio=0.25, families=("attention.dense",))
    ck = save(model, None, report, tmp_path / "ck")
    out = export_dense(ck, tmp_path / "dense")
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    emb_in = exported.get_input_embeddings().weight
    emb_out = exported.get_output_embeddings().weight
    assert emb_in.data_ptr() == emb_out.data_ptr()
    keys = _file_keys(out / "model.safetensors")
    assert sum("embed" in k or "lm_head" in k for k in keys) == 1, keys
    compressed, _ = load(ck, device="cpu")
    a, b = _logits(compressed, _ids(128)), _logits(exported, _ids(128))
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


def test_dtype_cast_and_merge_count(tmp_path: Path) -> None:
    model = random_neox(num_hidden_layers=3, seed=2)
    report = _compress(model, rank_ratio=0.25)
    ck = save(model, None, report, tmp_path / "ck")
    out = export_dense(ck, tmp_path / "bf16", dtype="bfloat16")
    assert safetensors_parameters(out / "model.safetensors")[1] == {"BF16": 2}
    record = json.loads((out / EXPORT_MANIFEST).read_text())
    assert record["lowrank_modules_merged"] == 3 * 4
    reloaded, _ = load(ck, device="cpu")
    assert merge_lowrank(reloaded) == 12
    assert merge_lowrank(reloaded) == 0


def test_summary_sizes_before_and_after(tmp_path: Path) -> None:
    model = random_neox(num_hidden_layers=4, seed=2)
    before = count_unique_parameters(model)
    report = _compress(model, method="basis-sharing", group_size=2, rank_ratio=0.25)
    after = count_unique_parameters(model)
    ck = save(model, None, report, tmp_path / "ck")
    s = checkpoint_summary(ck)
    assert s["kind"] == "low-rank" and s["method"] == "basis-sharing"
    assert s["budget"] == {"rank_ratio": 0.25}
    assert set(s["ranks"]) == {
        "attention.query_key_value",
        "attention.dense",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    }
    dense_row, low_row = s["sizes"]
    assert dense_row["parameters"] == before and not dense_row["measured"]
    assert dense_row["bytes"] == 4 * before
    assert low_row["parameters"] == after < before
    assert low_row["bytes"] == (ck / "model.safetensors").stat().st_size
    out = export_dense(ck, tmp_path / "dense")
    e = checkpoint_summary(out)
    assert e["kind"] == "dense export" and e["method"] == "basis-sharing"
    assert e["ranks"] == s["ranks"]
    this, source = e["sizes"]
    assert this["parameters"] == before
    assert source["parameters"] == after and source["bytes"] == low_row["bytes"]
    p = checkpoint_summary(out)  # reading it again changes nothing
    assert p == e


def test_cli_export_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = random_neox(num_hidden_layers=2, seed=4)
    report = _compress(model, rank_ratio=0.25)
    ck = save(model, None, report, tmp_path / "ck")
    out = tmp_path / "dense"
    assert main(["export", str(ck), "--out", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "dense export" in text and "max |logit difference|" in text
    diff = float(text.rsplit(":", 1)[1])
    assert diff < 1e-3
    assert main(["info", str(ck)]) == 0
    text = capsys.readouterr().out
    assert "dense original" in text and "low-rank (this)" in text and "ranks:" in text
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dense export (this)" in text and "low-rank source" in text
    # an existing --out is refused before any work, in one line
    assert main(["export", str(ck), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-adapter: error:") and "--overwrite" in err and "\n" not in err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_llama_with_tied_embeddings_exports_tied(tmp_path: Path) -> None:
    """A Llama-layout model (SmolLM2's: GQA, SwiGLU, tied head) exports to plain Llama."""
    from llm_adapter.testing import random_model

    model = random_model("llama", num_hidden_layers=2, seed=3, tie_word_embeddings=True)
    report = _compress(model, rank_ratio=0.25)
    ck = save(model, None, report, tmp_path / "ck")
    out = export_dense(ck, tmp_path / "dense")
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(exported).__name__ == "LlamaForCausalLM"
    assert not any(isinstance(m, LowRankLinear) for m in exported.modules())
    w_in = exported.get_input_embeddings().weight
    assert w_in.data_ptr() == exported.get_output_embeddings().weight.data_ptr()
    keys = _file_keys(out / "model.safetensors")
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    compressed, _ = load(ck, device="cpu")
    a, b = _logits(compressed, _ids(128)), _logits(exported, _ids(128))
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
