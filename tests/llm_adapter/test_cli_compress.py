"""The ``compress`` and ``info`` subcommands on a tiny model directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_adapter import load
from llm_adapter.cli import SUBCOMMAND_MODULES, main


def _args(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "compress", "--model", str(tiny["model"]), "--calib-text", str(tiny["text"]),
        "--calib-samples", "4", "--calib-seq-len", "64", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_subcommands_registered() -> None:
    assert {"compress", "checkpoint"} <= set(SUBCOMMAND_MODULES)


def test_compress_json_then_info(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    rc = main(_args(tiny, out, "--method", "bundle", "--tying", "3", "--lam", "0.5", "--json"))
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    fam = report["families"]["attention.dense"]
    assert fam["rank"] == 8 and fam["groups"] == [0, 0, 0]
    assert report["calibration"]["samples"] == 4 and report["calibration"]["seq_len"] == 64
    model, tok = load(out, device="cpu")
    mods = [layer.attention.dense for layer in model.gpt_neox.layers]
    assert mods[0].left is mods[2].left
    assert tok("w3 w4")["input_ids"] == [3, 4]
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "attention.dense" in text and "method bundle" in text and "model.safetensors" in text


def test_layerwise_cli_matches_in_memory(tiny: dict[str, Path], tmp_path: Path) -> None:
    import llm_adapter as la

    out = tmp_path / "ck"
    assert main(_args(tiny, out, "--method", "svd-llm", "--layerwise", "--json")) == 0
    manifest = json.loads((out / "compression.json").read_text())
    model, tok = la.load(tiny["model"], device="cpu")
    stats = la.calibrate(
        model, tok, "attention.dense", text_path=tiny["text"], samples=4, seq_len=64
    )
    report = la.compress_model(model, la.CompressionConfig(method="svd-llm"), stats)
    # float32 forward passes batched differently: Grams agree to ~1e-7 relative,
    # and the sections' errors to a few 1e-6
    np.testing.assert_allclose(
        manifest["families"]["attention.dense"]["activation_fraction"],
        report.families["attention.dense"].activation_fraction,
        rtol=1e-4,
    )


def test_compress_table_and_param_ratio(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        _args(tiny, tmp_path / "ck", "--method", "svd-llm", "--param-ratio", "0.5",
              "--families", "attention.dense,mlp.dense_4h_to_h", "--cache-dir", str(tmp_path / "c"))
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "attention.dense" in out and "mlp.dense_4h_to_h" in out and "d/D" in out
    manifest = json.loads((tmp_path / "ck" / "compression.json").read_text())
    # SVD-LLM's formula: floor(0.5 * 32 * 32 / 64) = 8 and floor(0.5 * 32 * 128 / 160) = 12
    assert manifest["families"]["attention.dense"]["rank"] == 8
    assert manifest["families"]["mlp.dense_4h_to_h"]["rank"] == 12
    assert list((tmp_path / "c").glob("calib-*.npz"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "svd", "--families", "attn"], "unknown family 'attn'"),
        (["--method", "svd", "--rank-ratio", "0.001"], "rank d = 0"),
        (
            ["--method", "bundle", "--tying", "9"],
            "tying degree 9 exceeds the number of layers L = 3",
        ),
        (["--method", "svd", "--dtype", "int4"], "unknown dtype 'int4'"),
    ],
)
def test_bad_input_is_one_line(
    tiny: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    rc = main(_args(tiny, tmp_path / "ck", *extra))
    err = capsys.readouterr().err
    assert rc == 2
    last = err.rstrip("\n").split("\n")[-1]  # earlier lines: loading progress bars
    assert last.startswith("llm-adapter: error: ") and message in last
    assert not (tmp_path / "ck").exists()


def test_missing_calibration_file(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(tiny, tmp_path / "ck", "--method", "svd-llm")
    args[args.index("--calib-text") + 1] = str(tmp_path / "none.txt")
    assert main(args) == 2
    assert (
        "calibration file" in capsys.readouterr().err
        and "none.txt" in args[args.index("--calib-text") + 1]
    )


def test_existing_out_without_overwrite(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    out.mkdir()
    assert main(_args(tiny, out, "--method", "svd")) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(_args(tiny, out, "--method", "svd", "--overwrite")) == 0
    assert (out / "compression.json").is_file()


def test_unknown_method_is_rejected(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(_args(tiny, tmp_path / "ck", "--method", "pca"))
    assert info.value.code == 2


def test_info_on_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_logits_of_saved_model_match_in_memory(tiny: dict[str, Path], tmp_path: Path) -> None:
    import llm_adapter as la

    out = tmp_path / "ck"
    assert main(_args(tiny, out, "--method", "basis-sharing", "--group-size", "2")) == 0
    model, tok = la.load(tiny["model"], device="cpu")
    stats = la.calibrate(
        model, tok, "attention.dense", text_path=tiny["text"], samples=4, seq_len=64
    )
    la.compress_model(model, la.CompressionConfig(method="basis-sharing", group_size=2), stats)
    reloaded, _ = la.load(out, device="cpu")
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_info_json_and_plain_dir(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tiny["model"])]) == 0
    out = capsys.readouterr().out
    assert "plain Hugging Face checkpoint" in out and "model_type: gpt_neox, layers: 3" in out
    ck = tmp_path / "ck"
    assert main(_args(tiny, ck, "--method", "svd")) == 0
    capsys.readouterr()
    assert main(["info", str(ck), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["method"] == "svd" and manifest["checkpoint"]["format_version"] == 1
