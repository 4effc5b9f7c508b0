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
from llm_adapter.safetensors_file import main_file_tensor_bytes
from llm_adapter.testing import random_neox

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
    model, report = _compressed(method="svd")
    save(model, None, report, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(AdapterError, match="exists; pass overwrite=True"):
        save(model, None, report, out)
    assert sorted(p.name for p in out.iterdir()) == before
    save(model, None, report, out, overwrite=True)  # a checkpoint llm-adapter wrote: replaced
    assert sorted(p.name for p in out.iterdir()) == before
    assert read_manifest(out)["checkpoint"]["files"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left


def test_overwrite_never_deletes_what_llm_adapter_did_not_write(tmp_path: Path) -> None:
    model, report = _compressed(method="svd")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(AdapterError, match=r"has no compression\.json: it was not written by"):
        save(model, None, report, foreign, overwrite=True)
    out = save(model, None, report, tmp_path / "ck")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AdapterError, match=r"holds files llm-adapter did not write \(notes.txt\)"):
        save(model, None, report, out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "compression.json").write_text('{"method": null}')
    with pytest.raises(AdapterError, match="not a manifest of llm-adapter checkpoint format"):
        save(model, None, report, out, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "mine"]


def test_overwrite_never_replaces_the_source_model(tmp_path: Path) -> None:
    src = save(random_neox(seed=1), None, None, tmp_path / "parent" / "src")
    model, _ = load(src, device="cpu")
    for target in (src, tmp_path / "parent"):
        with pytest.raises(AdapterError, match="the input model"):
            save(model, None, None, target, overwrite=True)
    assert (src / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["src"]


def test_impossible_output_paths(tmp_path: Path) -> None:
    model = random_neox(seed=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match="is not a directory"):
        save(model, None, None, tmp_path / "file", overwrite=True)
    with pytest.raises(AdapterError, match=r"cannot be created: .*file' is not a directory"):
        save(model, None, None, tmp_path / "file" / "sub" / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_leftovers_of_a_dead_write_are_cleaned_and_others_kept(tmp_path: Path) -> None:
    import os

    from llm_adapter.atomic import clean_leftovers
    from llm_adapter.files import host_tag

    host, dead = host_tag(), _dead_pid()
    made = {
        "dead_tmp": f".ck.tmp-{host}-{dead}-0123abcd",
        "live_tmp": f".ck.tmp-{host}-{os.getpid()}-0123abcd",  # a live writer's
        "other_host": f".ck.tmp-ffffffff-{dead}-0123abcd" if host != "ffffffff" else ".ck.x",
        "legacy": ".ck.tmp-k2j4h5g6",  # an older version's: not identifiable, kept
        "other_name": f".ckb.tmp-{host}-{dead}-0123abcd",  # another target's
    }
    for name in made.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("partial")
    model, report = _compressed(method="svd")
    save(model, None, report, tmp_path / "ck")
    left = {p.name for p in tmp_path.iterdir()}
    assert made["dead_tmp"] not in left
    assert {made[k] for k in ("live_tmp", "other_host", "legacy", "other_name")} <= left
    # a replacement that died between its two renames: the old checkpoint is put back
    os.rename(tmp_path / "ck", tmp_path / f".ck.old-{host}-{dead}-0123abcd")
    assert clean_leftovers(tmp_path / "ck")[0].startswith("restored")
    assert (tmp_path / "ck" / "compression.json").is_file()


@pytest.mark.parametrize("exchange", [True, False])
def test_replacement_with_and_without_atomic_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setenv("LLM_ADAPTER_NO_EXCHANGE", "1")
    model, report = _compressed(method="svd")
    out = save(model, None, report, tmp_path / "ck")
    model2, report2 = _compressed(method="bundle", tying=2)
    save(model2, None, report2, out, overwrite=True)
    assert read_manifest(out)["method"] == "bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


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


def test_load_reads_compressed_dirs(tmp_path: Path) -> None:
    model, report = _compressed(method="svd")
    save(model, None, report, tmp_path / "ck")
    loaded, _ = llm_adapter.load(tmp_path / "ck", device="cpu")
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


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle checkpoint (tied factors: 2 aliases) with tied word embeddings."""
    model = random_neox(num_hidden_layers=4, seed=2, tie_word_embeddings=True)
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(8, 32)))
    stats = calibrate(model, None, "attention.dense", token_windows=windows)
    report = compress_model(model, CompressionConfig(method="bundle", tying=2, lam=0.3), stats)
    return save(model, None, report, tmp_path_factory.mktemp("saved") / "ck")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_manifest(root: Path, edit: object) -> None:
    m = json.loads((root / "compression.json").read_text())
    edit(m["checkpoint"])  # type: ignore[operator]
    (root / "compression.json").write_text(json.dumps(m))


def test_the_fixture_checkpoint_loads(saved: Path) -> None:
    aliases = read_manifest(saved)["checkpoint"]["aliases"]
    # two tied groups of 2 layers, and the tied embeddings
    assert len(aliases) == 3 and "embed_out.weight" in aliases
    model, _ = load(saved, device="cpu")
    assert model.lm_head.weight is model.gpt_neox.embed_in.weight


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # an extra alias over a stored tensor of the same shape
        (lambda ck: ck["aliases"].update({"gpt_neox.layers.1.attention.dense.right":
                                          "gpt_neox.layers.0.attention.dense.right"}),
         "names a tensor that is stored"),
        # an alias between tensors of different shapes
        (lambda ck: ck["aliases"].update({"gpt_neox.layers.1.attention.dense.left":
                                          "gpt_neox.layers.0.attention.query_key_value.weight"}),
         "has shape"),
        # equal shapes, but the format never shares them
        (lambda ck: ck["aliases"].update({"gpt_neox.layers.1.attention.dense.left":
                                          "gpt_neox.layers.3.attention.dense.left"}),
         "which is not stored"),
        (lambda ck: ck["aliases"].update({"gpt_neox.layers.1.attention.dense.left":
                                          "gpt_neox.layers.0.mlp.dense_4h_to_h.bias"}),
         "has shape"),
        (lambda ck: ck.update(weights="/etc/passwd"), "is not a file name inside"),
        (lambda ck: ck.update(weights="../ck/model.safetensors"), "is not a file name inside"),
        (lambda ck: ck["lowrank_modules"]["gpt_neox.layers.0.attention.dense"].update(
            rank=10**9), "above min"),
        (lambda ck: ck["lowrank_modules"]["gpt_neox.layers.0.attention.dense"].update(
            out_features=64, rank=8), "the config makes it 32x32"),
        (lambda ck: ck["lowrank_modules"].update({"gpt_neox.layers.9.attention.dense": {
            "out_features": 32, "in_features": 32, "rank": 8, "bias": True, "shared": "left"}}),
         "is not a linear map of this model"),
        (lambda ck: ck["lowrank_modules"]["gpt_neox.layers.0.attention.dense"].update(
            rank="8"), "malformed entry"),
        (lambda ck: ck.update(format_version=2), "this llm-adapter reads 1"),
        (lambda ck: ck.update(aliases=[]), "must be objects"),
    ],
)  # fmt: skip
def test_manifest_is_checked_before_anything_is_built(
    saved: Path, tmp_path: Path, edit: object, message: str
) -> None:
    root = _copy(saved, tmp_path / "ck")
    _edit_manifest(root, edit)
    with pytest.raises(AdapterError, match=message):
        load(root, device="cpu")


def test_an_alias_between_unshared_equal_shapes_is_rejected(saved: Path, tmp_path: Path) -> None:
    root = _copy(saved, tmp_path / "ck")
    from safetensors.torch import load_file, save_file

    stored = load_file(str(root / "model.safetensors"))
    del stored["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]  # now "shared" with the embeddings'
    save_file(stored, str(root / "model.safetensors"), metadata={"format": "pt"})
    _edit_manifest(root, lambda ck: ck["aliases"].update(
        {"gpt_neox.layers.1.mlp.dense_4h_to_h.bias": "gpt_neox.layers.0.mlp.dense_4h_to_h.bias"}
    ))  # fmt: skip
    with pytest.raises(AdapterError, match="which the format never shares with it"):
        load(root, device="cpu")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "compression.json").write_text('{"method": "bun'),
         "is not valid JSON"),
        (lambda root: (root / "compression.json").write_text("[1, 2]"),
         "holds a list, not an object"),
        (lambda root: _truncate(root / "model.safetensors", 100), "holds .* bytes of tensor data"),
        (lambda root: _truncate(root / "model.safetensors", 5), "no safetensors header"),
        (lambda root: (root / "model.safetensors").write_bytes(b"\xff" * 64), "announces a"),
        (lambda root: _nan(root, "gpt_neox.layers.2.mlp.dense_h_to_4h.weight"),
         "tensor gpt_neox.layers.2.mlp.dense_h_to_4h.weight of .* holds 1 NaN"),
        (lambda root: _huge_shape(root), "malformed entry"),
    ],
)  # fmt: skip
def test_damaged_files_are_one_line_errors(
    saved: Path, tmp_path: Path, damage: object, message: str
) -> None:
    root = _copy(saved, tmp_path / "ck")
    damage(root)  # type: ignore[operator]
    with pytest.raises(AdapterError, match=message) as info:
        load(root, device="cpu")
    assert "\n" not in str(info.value)


def _truncate(path: Path, cut: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut] if cut > 8 else data[:cut])


def _nan(root: Path, key: str) -> None:
    from safetensors.torch import load_file, save_file

    stored = load_file(str(root / "model.safetensors"))
    stored[key][0, 0] = float("nan")
    save_file(stored, str(root / "model.safetensors"), metadata={"format": "pt"})
    # as a checkpoint written before manifests recorded a hash: the NaN check is what finds it
    _edit_manifest(root, lambda ck: ck.pop("weights_sha256"))


def _huge_shape(root: Path) -> None:
    raw = (root / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")  # room for the longer shape
    header["gpt_neox.final_layer_norm.bias"]["shape"] = [10**12, 10**12]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n  # the edited header fits in place (padding)
    (root / "model.safetensors").write_bytes(raw[:8] + text + raw[8 + n :])


def test_nan_weights_are_never_written(tmp_path: Path) -> None:
    model = random_neox(seed=1)
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight[3, 4] = float("inf")
    with pytest.raises(
        AdapterError,
        match=r"tensor gpt_neox.layers.1.mlp.dense_4h_to_h.weight "
        r"of the model to save holds 1 NaN or infinite",
    ):
        save(model, None, None, tmp_path / "ck")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_records_the_weights_hash(saved: Path) -> None:
    import hashlib

    digest = read_manifest(saved)["checkpoint"]["weights_sha256"]
    assert digest == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()


def test_a_changed_weights_file_is_refused(saved: Path, tmp_path: Path) -> None:
    """One factor zeroed, shapes and header intact: only the hash tells."""
    from safetensors.torch import load_file, save_file

    root = _copy(saved, tmp_path / "ck")
    stored = load_file(str(root / "model.safetensors"))
    key = next(k for k in stored if k.endswith(".left"))
    stored[key].zero_()
    save_file(stored, str(root / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="does not match the sha256 its manifest records"):
        load(root, device="cpu")
    from llm_adapter.manifest import verify

    with pytest.raises(AdapterError, match="does not match the sha256 its manifest records"):
        verify(root)


def test_a_checkpoint_without_a_hash_still_loads(saved: Path, tmp_path: Path) -> None:
    """Checkpoints written before manifests recorded the hash load as before."""
    root = _copy(saved, tmp_path / "ck")
    _edit_manifest(root, lambda ck: ck.pop("weights_sha256"))
    model, _ = load(root, device="cpu")
    reference, _ = load(saved, device="cpu")
    for (k, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_a_malformed_hash_is_a_damaged_manifest(saved: Path, tmp_path: Path) -> None:
    root = _copy(saved, tmp_path / "ck")
    _edit_manifest(root, lambda ck: ck.update(weights_sha256=12))
    with pytest.raises(AdapterError, match="weights_sha256 = 12 is not a sha256 digest"):
        load(root, device="cpu")
