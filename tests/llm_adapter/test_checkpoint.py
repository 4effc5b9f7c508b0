"""Save and reload: logits, real sharing on disk, file size, atomic writes, plain checkpoints."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import llm_adapter
import numpy as np
import pytest
import torch
from llm_adapter import (
    AdapterError,
    CompressionConfig,
    calibrate,
    compress_model,
    count_unique_parameters,
    family_modules,
    load,
    read_manifest,
    save,
)
from llm_adapter.checkpoint import main_file_tensor_bytes
from llm_adapter.models import random_neox

IDS = torch.from_numpy(np.random.default_rng(7).integers(0, 128, size=(2, 24)))


def _compressed(method: str = "bundle", **kw: object):  # type: ignore[no-untyped-def]
    model = random_neox(num_hidden_layers=4, seed=2)
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(8, 32)))
    families = kw.get("families", ("attention.dense",))
    stats = calibrate(model, None, families, token_windows=windows)  # type: ignore[arg-type]
    config = CompressionConfig(method=method, **kw)  # type: ignore[arg-type]
    report = compress_model(model, config, stats)
    return model, report


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.filterwarnings("ignore:basis sharing.*numerical rank:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:rank d = .* no smaller than the dense maps:UserWarning")
@pytest.mark.parametrize(
    "kw",
    [
        {"method": "bundle", "tying": 2, "lam": 0.3},
        {"method": "basis-sharing", "group_size": 3, "families": "all"},
        {"method": "svd-llm", "families": ("attention.dense", "mlp.dense_4h_to_h")},
    ],
)
def test_round_trip_logits_sharing_and_size(tmp_path: Path, kw: dict[str, object]) -> None:
    model, report = _compressed(**kw)  # type: ignore[arg-type]
    out = save(model, None, report, tmp_path / "ck")
    loaded, tok = load(out, device="cpu")
    assert tok is None
    # same tensors, same modules, same arithmetic: bit-identical logits
    assert torch.equal(_logits(loaded), _logits(model))
    for family, fam in report.families.items():
        mods = family_modules(loaded, family)
        side = fam.shared
        for l, g in enumerate(fam.groups):
            first = fam.groups.index(g)
            assert getattr(mods[l], side) is getattr(mods[first], side)
    n_params = count_unique_parameters(model)
    assert count_unique_parameters(loaded) == n_params
    manifest = read_manifest(out)
    assert manifest["checkpoint"]["parameters"] == n_params
    # the file's data section holds every unique float32 parameter exactly once
    assert main_file_tensor_bytes(out / "model.safetensors") == 4 * n_params


def test_file_shrinks_as_reported(tmp_path: Path) -> None:
    dense = random_neox(num_hidden_layers=4, seed=2)
    save(dense, None, None, tmp_path / "dense")
    model, report = _compressed(method="bundle", tying=4, lam=0.0)
    save(model, None, report, tmp_path / "small")
    fam = report.families["attention.dense"]
    saved = main_file_tensor_bytes(
        tmp_path / "dense" / "model.safetensors"
    ) - main_file_tensor_bytes(tmp_path / "small" / "model.safetensors")
    assert saved == 4 * (fam.params_dense - fam.params_kept)
    assert (
        len(read_manifest(tmp_path / "small")["checkpoint"]["aliases"]) == 3
    )  # 4 tied -> 1 stored


def test_manifest_contents(tmp_path: Path) -> None:
    model, report = _compressed(method="bundle", tying=2, lam=0.3, metric="activation")
    save(model, None, report, tmp_path / "ck")
    m = json.loads((tmp_path / "ck" / "compression.json").read_text())
    assert m["method"] == "bundle"
    assert m["config"]["tying"] == 2 and m["config"]["metric"] == "activation"
    fam = m["families"]["attention.dense"]
    assert fam["rank"] == 8 and fam["rank_ratio"] == 0.25 and len(fam["frobenius_fraction"]) == 4
    assert len(fam["activation_fraction"]) == 4
    assert m["calibration"]["tokens"] == 256
    assert {"torch", "transformers", "grassbundle", "llm_adapter"} <= set(m["versions"])
    assert {"calibration", "factorisation", "write_back"} <= set(m["timings"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "embed_out.weight" in keys and "lm_head.weight" not in keys  # the hub's name


def test_existing_dir_needs_overwrite_and_is_untouched(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model, report = _compressed(method="svd")
    with pytest.raises(AdapterError, match="exists; pass overwrite=True"):
        save(model, None, report, out)
    assert (out / "keep.txt").read_text() == "mine"
    save(model, None, report, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "compression.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, report = _compressed(method="svd")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(type(model.config), "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save(model, None, report, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_plain_and_tied_embeddings_round_trip(tmp_path: Path) -> None:
    model = random_neox(tie_word_embeddings=True, seed=5)
    save(model, None, None, tmp_path / "plain")
    loaded, _ = load(tmp_path / "plain", device="cpu")
    assert loaded.lm_head.weight is loaded.gpt_neox.embed_in.weight
    assert torch.equal(_logits(loaded), _logits(model))
    assert read_manifest(tmp_path / "plain")["method"] is None


def test_plain_huggingface_dir_loads(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = random_neox(seed=6)
    model.save_pretrained(tmp_path)
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    loaded, tokenizer = load(tmp_path, device="cpu")
    assert torch.equal(_logits(loaded), _logits(model))
    assert len(tokenizer) == 3


def test_load_model_delegates_for_compressed_dirs(tmp_path: Path) -> None:
    model, report = _compressed(method="svd")
    save(model, None, report, tmp_path / "ck")
    loaded, _ = llm_adapter.load_model(tmp_path / "ck", device="cpu")
    assert torch.equal(_logits(loaded), _logits(model))


def test_load_in_other_dtype(tmp_path: Path) -> None:
    model, report = _compressed(method="bundle", tying=2)
    save(model, None, report, tmp_path / "ck")
    loaded, _ = load(tmp_path / "ck", device="cpu", dtype="bf16")
    mods = family_modules(loaded, "attention.dense")
    assert mods[0].left.dtype == torch.bfloat16 and mods[0].left is mods[1].left


def test_missing_or_foreign_dirs(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        load(tmp_path / "nothing")
    with pytest.raises(AdapterError, match=r"has no compression.json"):
        read_manifest(tmp_path)


def test_header_parser_reads_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.float16)}, str(tmp_path / "x")
    )
    assert main_file_tensor_bytes(tmp_path / "x") == 3 * 5 * 4 + 7 * 2
    raw = (tmp_path / "x").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + header_len + 3 * 5 * 4 + 7 * 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compress_save_reload(tmp_path: Path) -> None:
    model = random_neox(num_hidden_layers=4, seed=2).to("cuda")
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(8, 32)))
    stats = calibrate(model, None, "attention.dense", token_windows=windows)
    report = compress_model(model, CompressionConfig(method="bundle", tying=2, lam=0.3), stats)
    mods = family_modules(model, "attention.dense")
    assert mods[0].left.device.type == "cuda" and mods[0].left is mods[1].left
    save(model, None, report, tmp_path / "ck")
    loaded, _ = load(tmp_path / "ck", device="cuda")
    ids = IDS.to("cuda")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # layer-wise calibration of a CPU-resident model on the GPU gives the same Grams
    cpu_model = random_neox(num_hidden_layers=4, seed=2)
    lw = calibrate(
        cpu_model, None, "attention.dense", token_windows=windows, layerwise=True, device="cuda"
    )
    assert next(cpu_model.parameters()).device.type == "cpu"
    # float32 forward passes on two devices: ~1e-6 relative
    np.testing.assert_allclose(
        lw.covariance("attention.dense"), stats.covariance("attention.dense"), rtol=1e-4, atol=1e-8
    )
