"""Bad input on the command line: exit status 2, one line naming the value and the fix,
nothing written or deleted, and (where the input alone shows the problem) no model loaded.

Every case runs in-process on tiny random models, in well under a second each.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter.cli import main
from llm_adapter.testing import random_neox


def _tokenizer(model_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(model_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model and damaged variants of it, a calibration text, damaged data files."""
    root = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"root": root}
    f["model"] = root / "models" / "model"
    random_neox(num_hidden_layers=3, seed=3).save_pretrained(f["model"])
    _tokenizer(f["model"])

    f["nan"] = root / "models" / "nan"
    nan_model = random_neox(num_hidden_layers=3, seed=3)
    with torch.no_grad():  # a family that is not compressed
        nan_model.gpt_neox.layers[2].mlp.dense_h_to_4h.weight[5, 7] = float("nan")
    nan_model.save_pretrained(f["nan"])
    _tokenizer(f["nan"])

    f["truncated"] = root / "models" / "truncated"
    shutil.copytree(f["model"], f["truncated"])
    data = (f["truncated"] / "model.safetensors").read_bytes()
    (f["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])

    f["pickle"] = root / "models" / "pickle"
    shutil.copytree(f["model"], f["pickle"])
    (f["pickle"] / "model.safetensors").unlink()
    state = random_neox(num_hidden_layers=3, seed=3).state_dict()
    state["extra"] = np.zeros(3)  # not loadable with weights_only=True
    torch.save(state, f["pickle"] / "pytorch_model.bin")

    rng = np.random.default_rng(0)
    f["text"] = root / "calib.txt"
    f["text"].write_text(
        "\n".join(" ".join(f"w{i}" for i in rng.integers(0, 127, 30)) for _ in range(40))
    )
    good = "\n".join(["A man: he sits.", "0", "a.", "b.", "c.", "d."]) + "\n"
    f["hs_cut"] = root / "hs_cut.txt.bz2"
    f["hs_cut"].write_bytes(bz2.compress(good.encode() * 50)[:-40])
    f["hs_junk"] = root / "hs_junk.txt.bz2"
    f["hs_junk"].write_bytes(b"this is not bzip2 data at all" * 10)

    f["foreign"] = root / "foreign"
    f["foreign"].mkdir()
    (f["foreign"] / "notes.txt").write_text("mine")
    f["file"] = root / "a_file"
    f["file"].write_text("x")

    f["ck"] = root / "ck"
    assert main(_compress(f, f["ck"], "--method", "svd", "--no-progress")) == 0
    f["ck_cut"] = root / "ck_cut"
    shutil.copytree(f["ck"], f["ck_cut"])
    text = (f["ck_cut"] / "compression.json").read_text()
    (f["ck_cut"] / "compression.json").write_text(text[: len(text) // 2])
    f["ck_list"] = root / "ck_list"
    shutil.copytree(f["ck"], f["ck_list"])
    (f["ck_list"] / "compression.json").write_text("[1, 2, 3]")

    # a folder holding a checkpoint and a user's file; a user's notes; binary data
    f["holder"] = root / "holder"
    assert main(_compress(f, f["holder"] / "ck", "--method", "svd", "--no-progress")) == 0
    (f["holder"] / "mine.txt").write_text("mine")
    f["notes"] = root / "notes.txt"
    f["notes"].write_text("my notes, one line without a newline")
    f["binary"] = root / "random.bin"
    f["binary"].write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
    f["latin1"] = root / "latin1.txt"
    f["latin1"].write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1"))
    f["no_method"] = root / "no_method.jsonl"
    f["no_method"].write_text('{"key": "a", "ppl": 3.0}\n')
    f["report_dir"] = root / "report"
    f["report_dir"].mkdir()
    (f["report_dir"] / "results.md").write_text("# my own results, written by hand\n")
    f["rows"] = root / "rows.jsonl"
    f["rows"].write_text(
        json.dumps({"key": "d", "method": "dense", "label": "dense", "families": []}) + "\n"
    )
    # a checkpoint with one flipped bit in its tensor data (its header intact)
    f["ck_flip"] = root / "ck_flip"
    shutil.copytree(f["ck"], f["ck_flip"])
    _flip_a_bit(f["ck_flip"] / "model.safetensors")
    # a sweep whose point checkpoint is then edited on disk (shapes intact)
    f["sweep_cks"] = root / "sweep_cks.toml"
    f["sweep_cks"].write_text(
        f'model = "{f["model"]}"\nout = "{root / "swept.jsonl"}"\ndevice = "cpu"\n'
        f'checkpoints = "{root / "cks"}"\ncache_dir = "{root / "cache"}"\nbaseline = false\n'
        f'[calibration]\ntext = "{f["text"]}"\nsamples = 4\nseq_len = 16\n'
        f'[evaluation]\nwikitext = "{f["text"]}"\nseq_len = 16\nmax_windows = 2\n'
        '[[points]]\nmethod = "svd"\n'
    )
    assert main(["sweep", str(f["sweep_cks"]), "--no-progress"]) == 0
    (point_ck,) = (root / "cks").iterdir()
    _flip_a_bit(point_ck / "model.safetensors")
    f["swept"] = root / "swept.jsonl"

    def sweep_file(name: str, text: str) -> None:
        f[name] = root / f"{name}.toml"
        f[name].write_text(
            f'model = "{f["model"]}"\nout = "{root / "never.jsonl"}"\n'
            f'[calibration]\ntext = "{f["text"]}"\n{text}'
        )

    f["sweep_points_ints"] = root / "sweep_points_ints.toml"
    f["sweep_points_ints"].write_text(
        f'model = "{f["model"]}"\nout = "{root / "never.jsonl"}"\npoints = [1, 2]\n'
    )
    sweep_file("sweep_samples_word", 'samples = "four"\n[[points]]\nmethod = "svd"\n')
    sweep_file("sweep_seq_len_0", '[evaluation]\nseq_len = 0\n[[points]]\nmethod = "svd"\n')
    sweep_file("sweep_batch_0", '[evaluation]\nbatch_size = 0\n[[points]]\nmethod = "svd"\n')
    sweep_file("sweep_seed_neg", 'seed = -1\n[[points]]\nmethod = "svd"\n')

    f["sweep_bad_tying"] = root / "tying.toml"
    f["sweep_bad_tying"].write_text(
        'model = "m"\nout = "never.jsonl"\n[[points]]\nmethod = "bundle"\ntying = [1, 2.7]\n'
    )
    f["sweep_late_error"] = root / "late.toml"
    f["sweep_late_error"].write_text(
        f'model = "{f["model"]}"\nout = "{root / "never.jsonl"}"\n'
        f'[calibration]\ntext = "{f["text"]}"\n'
        '[[points]]\nmethod = "svd"\n[[points]]\nmethod = "bundle"\nlam = [0.0, -1.0]\n'
    )
    return f


def _compress(f: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "compress", "--model", str(f["model"]), "--calib-text", str(f["text"]),
        "--calib-samples", "4", "--calib-seq-len", "16", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _flip_a_bit(weights: Path) -> None:
    """Flip the lowest bit of the last byte of tensor data (the header stays valid)."""
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root`` with its size, modification time and sha256 (byte for
    byte); directories by name."""
    out: dict[str, tuple[int, int, str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
        else:
            out[str(p.relative_to(root))] = (0, 0, "")
    return out


def _sweep(f: dict[str, Path], *extra: str) -> list[str]:
    return [
        "sweep", "--model", str(f["model"]), "--results", str(f["root"] / "never.jsonl"),
        "--calib-text", str(f["text"]), "--no-progress", *extra,
    ]  # fmt: skip


Case = tuple[Callable[[dict[str, Path]], list[str]], str, bool]
# (argv, a fragment of the message, whether the model must not even be loaded)
CASES: dict[str, Case] = {
    "svd with bundle parameters": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd", "--tying", "3", "--lam", "5"),
        "--lam applies to --method bundle only; got --method svd",
        True,
    ),
    "svd with a group size": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd", "--group-size", "3"),
        "--group-size applies to --method basis-sharing only",
        True,
    ),
    "rank ratio out of range": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd", "--rank-ratio", "1.5"),
        "rank ratio must be in (0, 1); got --rank-ratio 1.5",
        True,
    ),
    "out is the input model": (
        lambda f: _compress(f, f["model"], "--method", "svd", "--overwrite"),
        "is the input model",
        True,
    ),
    "out contains the input model": (
        lambda f: _compress(f, f["root"] / "models", "--method", "svd", "--overwrite"),
        "contains the input model",
        True,
    ),
    "out holds someone's files": (
        lambda f: _compress(f, f["foreign"], "--method", "svd", "--overwrite"),
        "has no compression.json: it was not written by llm-adapter",
        True,
    ),
    "out exists": (
        lambda f: _compress(f, f["ck"], "--method", "svd"),
        "exists; pass --overwrite",
        True,
    ),
    "out is a file": (
        lambda f: _compress(f, f["file"], "--method", "svd", "--overwrite"),
        "exists and is not a directory",
        True,
    ),
    "out cannot be created": (
        lambda f: _compress(f, f["file"] / "sub" / "ck", "--method", "svd"),
        "cannot be created",
        True,
    ),
    "calibration window too short": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd-llm", "--calib-seq-len", "1"),
        "--calib-seq-len must be >= 2",
        True,
    ),
    "unknown dtype": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd", "--dtype", "int4"),
        "unknown dtype 'int4'",
        True,
    ),
    "model given twice": (
        lambda f: [*_compress(f, f["root"] / "o", "--method", "svd"), str(f["nan"])],
        "the model is given twice",
        True,
    ),
    "truncated weights": (
        lambda f: [
            *_compress(f, f["root"] / "o", "--method", "svd"),
            "--model",
            str(f["truncated"]),
        ],
        "bytes of tensor data, its header describes",
        True,
    ),
    "hub model offline": (
        lambda f: [
            *_compress(f, f["root"] / "o", "--method", "svd"),
            "--model",
            "EleutherAI/pythia-70m",
        ],
        "is a hub id, but HF_HUB_OFFLINE is set and it is not in the local cache",
        True,
    ),
    "hub calibration data offline": (
        lambda f: [
            "compress",
            str(f["model"]),
            "--method",
            "svd-llm",
            "--out",
            str(f["root"] / "o"),
            "--calib-dataset",
            "wikitext:wikitext-2-raw-v1:train",
        ],
        "pass a local file with --calib-text PATH",
        True,
    ),
    "NaN in an uncompressed family": (
        lambda f: [*_compress(f, f["root"] / "o", "--method", "svd"), "--model", str(f["nan"])],
        "tensor gpt_neox.layers.2.mlp.dense_h_to_4h.weight of the model",
        False,
    ),
    "pickle checkpoint transformers refuses": (
        lambda f: [*_compress(f, f["root"] / "o", "--method", "svd"), "--model", str(f["pickle"])],
        "a pickle-based checkpoint (pytorch_model.bin) cannot be loaded safely",
        False,
    ),
    "cut-off HellaSwag .bz2": (
        lambda f: ["evaluate", str(f["model"]), "--hellaswag", str(f["hs_cut"])],
        "cannot be read as bz2-compressed UTF-8 text",
        True,
    ),
    "garbage HellaSwag .bz2": (
        lambda f: ["evaluate", "--model", str(f["model"]), "--hellaswag", str(f["hs_junk"])],
        "cannot be read as bz2-compressed UTF-8 text",
        True,
    ),
    "evaluation window too short": (
        lambda f: ["evaluate", str(f["model"]), "--wikitext", str(f["text"]), "--seq-len", "1"],
        "--seq-len must be >= 2",
        True,
    ),
    "hub evaluation data offline": (
        lambda f: ["evaluate", str(f["model"])],
        "pass a local file with --wikitext PATH",
        True,
    ),
    "evaluate a NaN model": (
        lambda f: ["evaluate", str(f["nan"]), "--wikitext", str(f["text"]), "--seq-len", "8"],
        "tensor gpt_neox.layers.2.mlp.dense_h_to_4h.weight of the model",
        False,
    ),
    "cut-off compression.json": (
        lambda f: ["info", str(f["ck_cut"])],
        "compression.json' is not valid JSON",
        True,
    ),
    "non-object compression.json": (
        lambda f: ["info", "--model", str(f["ck_list"])],
        "holds a list, not an object",
        True,
    ),
    "evaluate a cut-off checkpoint": (
        lambda f: ["evaluate", str(f["ck_cut"]), "--wikitext", str(f["text"])],
        "compression.json' is not valid JSON",
        False,  # the checkpoint loader is the one that reads it
    ),
    "sweep --tying x": (
        lambda f: _sweep(f, "--method", "bundle", "--tying", "x"),
        "--tying 'x' is not valid",
        True,
    ),
    "sweep --rank-ratios 0.2,abc": (
        lambda f: _sweep(f, "--method", "svd", "--rank-ratios", "0.2,abc"),
        "--rank-ratio '0.2,abc' is not valid",
        True,
    ),
    "sweep point with tying 2.7": (
        lambda f: ["sweep", str(f["sweep_bad_tying"])],
        "points[0].tying = 2.7 is not an integer",
        True,
    ),
    "sweep point with tying 2.7, dry run": (
        lambda f: ["sweep", str(f["sweep_bad_tying"]), "--dry-run"],
        "points[0].tying = 2.7 is not an integer",
        True,
    ),
    "sweep error after valid points": (
        lambda f: ["sweep", str(f["sweep_late_error"]), "--no-progress"],
        "points[1] (bundle lam=-1 k=1 weight): anchor strength must be >= 0",
        True,
    ),
    "sweep error after valid points, dry run": (
        lambda f: ["sweep", str(f["sweep_late_error"]), "--dry-run"],
        "points[1] (bundle lam=-1 k=1 weight): anchor strength must be >= 0",
        True,
    ),
    "sweep results file is a directory": (
        lambda f: [*_sweep(f, "--method", "svd"), "--results", str(f["foreign"])],
        "cannot be opened for writing (Is a directory)",
        True,
    ),
    "compress --seed -1": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd-llm", "--seed", "-1"),
        "--seed must be >= 0; got --seed -1",
        True,
    ),
    "compress calibration text of random bytes": (
        lambda f: [
            *_compress(f, f["root"] / "o", "--method", "svd-llm"),
            "--calib-text",
            str(f["binary"]),
        ],
        "is not UTF-8 text",
        True,
    ),
    "compress Latin-1 calibration text": (
        lambda f: [
            *_compress(f, f["root"] / "o", "--method", "svd-llm"),
            "--calib-text",
            str(f["latin1"]),
        ],
        "is not UTF-8 text (byte 3 is not UTF-8)",
        True,
    ),
    "svd with the default group size given": (
        lambda f: _compress(f, f["root"] / "o", "--method", "svd", "--group-size", "2"),
        "--group-size applies to --method basis-sharing only; got --method svd",
        True,
    ),
    "compress --cache-dir is a file": (
        lambda f: _compress(
            f, f["root"] / "o", "--method", "svd-llm", "--cache-dir", str(f["file"])
        ),
        "exists and is not a directory; give a directory",
        True,
    ),
    "sweep --checkpoints is a file": (
        lambda f: _sweep(f, "--method", "svd", "--checkpoints", str(f["file"])),
        "checkpoints '",
        True,
    ),
    "sweep binary perplexity text, dry run": (
        lambda f: _sweep(f, "--method", "svd", "--wikitext", str(f["binary"]), "--dry-run"),
        "cannot be read as UTF-8 text",
        True,
    ),
    "report where nothing can be written": (
        lambda f: ["report", str(f["rows"]), "--out", "/proc/llm-adapter-x"],
        "--out '/proc/llm-adapter-x' cannot be written",
        True,
    ),
    "export into the folder holding the checkpoint": (
        lambda f: ["export", str(f["holder"] / "ck"), "--out", str(f["holder"]), "--overwrite"],
        "contains the input model",
        True,
    ),
    "export onto a folder llm-adapter did not write": (
        lambda f: ["export", str(f["ck"]), "--out", str(f["foreign"]), "--overwrite"],
        "has no compression.json: it was not written by llm-adapter; llm-adapter never "
        "overwrites or deletes what it did not write",
        True,
    ),
    "export onto the checkpoint itself": (
        lambda f: ["export", str(f["ck"]), "--out", str(f["ck"]), "--overwrite"],
        "is the input model",
        True,
    ),
    "export onto an existing folder": (
        lambda f: ["export", str(f["ck"]), "--out", str(f["ck_cut"])],
        "exists; pass --overwrite",
        True,
    ),
    "export where nothing can be written": (
        lambda f: ["export", str(f["ck"]), "--out", "/proc/llm-adapter-x"],
        "cannot be written",
        True,
    ),
    "export a checkpoint with a flipped bit": (
        lambda f: ["export", str(f["ck_flip"]), "--out", str(f["root"] / "o")],
        "does not match the sha256 its manifest records",
        False,  # the loader is the one that checks
    ),
    "evaluate a checkpoint with a flipped bit": (
        lambda f: ["evaluate", str(f["ck_flip"]), "--wikitext", str(f["text"]), "--seq-len", "8"],
        "does not match the sha256 its manifest records",
        False,
    ),
    "sweep into a user's text file": (
        lambda f: [*_sweep(f, "--method", "svd"), "--results", str(f["notes"])],
        "is not a sweep results file (line 1 is not a row); llm-adapter never overwrites",
        True,
    ),
    "sweep into a binary file": (
        lambda f: [*_sweep(f, "--method", "svd"), "--results", str(f["binary"])],
        "is not a sweep results file",
        True,
    ),
    "sweep into a user's text file, dry run": (
        lambda f: [*_sweep(f, "--method", "svd", "--dry-run"), "--results", str(f["notes"])],
        "is not a sweep results file",
        True,
    ),
    "sweep --only an unknown method": (
        lambda f: _sweep(f, "--method", "svd", "--only", "bogus"),
        "--only bogus: unknown method(s)",
        True,
    ),
    "sweep --only a method without points": (
        lambda f: _sweep(f, "--method", "svd", "--only", "bundle"),
        "--only bundle: no point of the sweep has that method",
        True,
    ),
    "sweep --families ''": (
        lambda f: _sweep(f, "--method", "svd", "--families", ""),
        "families = [] names no family",
        True,
    ),
    "sweep --group-size for svd": (
        lambda f: _sweep(f, "--method", "svd", "--group-size", "2"),
        "--group-size applies to --method basis-sharing only; got --method svd",
        True,
    ),
    "sweep --calib-samples -1, dry run": (
        lambda f: _sweep(f, "--method", "svd", "--calib-samples", "-1", "--dry-run"),
        "[calibration] samples = -1 is not valid; give an integer >= 1",
        True,
    ),
    "sweep --max-windows -3, dry run": (
        lambda f: _sweep(f, "--method", "svd", "--max-windows", "-3", "--dry-run"),
        "[evaluation] max_windows = -3 is not valid",
        True,
    ),
    "sweep --max-windows -3": (
        lambda f: _sweep(f, "--method", "svd", "--max-windows", "-3"),
        "[evaluation] max_windows = -3 is not valid",
        True,
    ),
    "sweep --device bogus, dry run": (
        lambda f: _sweep(f, "--method", "svd", "--device", "bogus", "--dry-run"),
        "unknown device 'bogus'",
        True,
    ),
    "sweep Latin-1 calibration text, dry run": (
        lambda f: [*_sweep(f, "--method", "svd", "--dry-run"), "--calib-text", str(f["latin1"])],
        "[calibration] text",
        True,
    ),
    "sweep samples = 'four', dry run": (
        lambda f: ["sweep", str(f["sweep_samples_word"]), "--dry-run"],
        "[calibration] samples = 'four' is not valid",
        True,
    ),
    "sweep [evaluation] seq_len = 0": (
        lambda f: ["sweep", str(f["sweep_seq_len_0"])],
        "[evaluation] seq_len = 0 is not valid; give an integer >= 2",
        True,
    ),
    "sweep [evaluation] batch_size = 0": (
        lambda f: ["sweep", str(f["sweep_batch_0"])],
        "[evaluation] batch_size = 0 is not valid",
        True,
    ),
    "sweep [calibration] seed = -1": (
        lambda f: ["sweep", str(f["sweep_seed_neg"])],
        "[calibration] seed = -1 is not valid; give an integer >= 0",
        True,
    ),
    "sweep points = [1, 2]": (
        lambda f: ["sweep", str(f["sweep_points_ints"])],
        "points must be a list of tables",
        True,
    ),
    "sweep reusing an edited point checkpoint": (
        lambda f: ["sweep", str(f["sweep_cks"]), "--results", str(f["root"] / "never.jsonl")],
        "cannot be reused",
        True,
    ),
    "report of a binary file": (
        lambda f: ["report", str(f["binary"]), "--out", str(f["root"] / "rep")],
        "line 1 is not JSON",
        True,
    ),
    "report of rows without a method": (
        lambda f: ["report", str(f["no_method"]), "--out", str(f["root"] / "rep")],
        "row 1 has no method",
        True,
    ),
    "report over a hand-written results.md": (
        lambda f: ["report", str(f["rows"]), "--out", str(f["report_dir"])],
        "results.md' was not written by llm-adapter report",
        True,
    ),
    "report into a file": (
        lambda f: ["report", str(f["root"] / "none.jsonl"), "--out", str(f["file"])],
        "exists and is not a directory",
        True,
    ),
    "report of nothing": (
        lambda f: ["report", str(f["root"] / "none.jsonl"), "--out", str(f["root"] / "rep")],
        "does not exist; run llm-adapter sweep",
        True,
    ),
}


class _Loaded(Exception):
    pass


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(
    name: str,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    argv, message, before_load = CASES[name]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    if before_load:
        import llm_adapter.checkpoint
        import llm_adapter.export

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise _Loaded("the model was loaded")

        # the one loader, and export's reference to it
        monkeypatch.setattr(llm_adapter.checkpoint, "load", refuse)
        monkeypatch.setattr(llm_adapter.export, "load", refuse)
    before = _tree(files["root"])
    capsys.readouterr()
    rc = main(argv(files))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1]
    assert last.startswith("llm-adapter: error: ") and message in last, last
    if before_load:  # nothing ran: the message is all there is (with a sweep's override notes)
        assert [line for line in lines if not line.startswith("sweep: ")] == [last], err
    assert "dtype" not in last or "unknown dtype" in last  # never a dtype hint for bad weights
    assert _tree(files["root"]) == before  # nothing written, nothing deleted


def test_an_argparse_error_also_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compress", "--method", "pca"])
    assert info.value.code == 2
    assert "invalid choice: 'pca'" in capsys.readouterr().err


def test_a_locked_results_file_stops_a_second_sweep(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one sweep holds the results file, another stops at once with one line."""
    import fcntl

    from llm_adapter.experiment import sweep as sw

    results = tmp_path / "r.jsonl"
    config = {
        "model": str(files["model"]),
        "out": str(results),
        "calibration": {"text": str(files["text"])},
        "points": [{"method": "svd"}],
    }
    with open(results, "a") as held:  # what a running sweep holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(sw.AdapterError, match="another sweep is writing"):
            sw.run_sweep(config, progress=False)
    assert results.read_text() == ""


def test_duplicated_rows_are_counted_once(tmp_path: Path) -> None:
    """Rows that two sweeps both wrote (before the lock) are read once each."""
    from llm_adapter.experiment import sweep as sw

    path = tmp_path / "r.jsonl"
    for key, ppl in [("a", 1.0), ("b", 2.0), ("a", 1.5), ("b", 2.5), ("c", 3.0)]:
        sw.append_row(path, {"key": key, "ppl": ppl})
    rows = sw.read_results(path)
    assert [(r["key"], r["ppl"]) for r in rows] == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_zero_covariance_is_an_error_not_nan() -> None:
    import llm_adapter as la

    model = random_neox(num_hidden_layers=3, seed=1)
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(4, 16)))
    stats = la.calibrate(model, None, "attention.dense", token_windows=windows)
    stats.covariances["attention.dense"][1] = 0.0
    for config in (la.CompressionConfig(method="bundle", lam=float("inf")),
                   la.CompressionConfig(method="svd-llm")):  # fmt: skip
        with pytest.raises(la.AdapterError, match=r"zero activation energy .* in layers \[1\]"):
            la.compress_model(model, config, stats)


def test_help_is_fast_and_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-adapter --help` imports neither torch nor transformers; every option of every
    subcommand says its default (flags aside)."""
    import argparse
    import subprocess
    import sys

    code = (
        "import sys; from llm_adapter.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "compress" in proc.stdout and "evaluate" in proc.stdout

    from llm_adapter.cli import build_parser

    missing = []
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags (store_true, --help), required options
            if action.help is argparse.SUPPRESS or "either form" in str(action.help):
                continue  # deprecated aliases; --model beside a positional MODEL
            if "default" not in str(action.help):
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, f"options whose help does not say the default: {missing}"


def test_deprecated_spelling_still_works_and_says_so(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _compress(files, tmp_path / "ck", "--method", "svd-llm", "--no-progress", "--json")
    argv[argv.index("--calib-seq-len")] = "--seq-len"
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "--seq-len is deprecated in 'llm-adapter compress'; use --calib-seq-len" in err
    assert json.loads(out)["calibration"]["seq_len"] == 16  # stdout: the JSON alone


def test_nan_weights_in_calibration_name_the_tensor_not_a_dtype() -> None:
    import llm_adapter as la

    model = random_neox(num_hidden_layers=2, seed=1)
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight[:, 0] = float("nan")
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(2, 8)))
    with pytest.raises(la.AdapterError) as info:
        la.calibrate(model, None, "attention.dense", token_windows=windows)
    assert "tensor gpt_neox.layers.0.mlp.dense_4h_to_h.weight" in str(info.value)
    assert "dtype" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_calibration_cache_entry_is_computed_again(tmp_path: Path, damage: str) -> None:
    """A cache entry is used only when it is whole and its arrays match the sha256 it records;
    otherwise it is computed again (with a warning) and written anew."""
    import llm_adapter as la
    from llm_adapter.files import load_arrays

    model = random_neox(num_hidden_layers=2, seed=1)
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 128, size=(4, 16)))
    first = la.calibrate(model, None, "attention.dense", token_windows=windows, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:300])
    else:  # one value changed, the recorded hash kept
        with np.load(entry) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
        arrays["covariance"][0, 0, 0] += 1.0
        with open(entry, "wb") as fh:
            np.savez(fh, **arrays)
    with pytest.warns(UserWarning, match="is damaged .* computing it again"):
        again = la.calibrate(
            model, None, "attention.dense", token_windows=windows, cache_dir=tmp_path
        )
    assert not again.cached
    np.testing.assert_allclose(
        again.covariance("attention.dense"), first.covariance("attention.dense"), rtol=1e-12
    )
    assert load_arrays(entry, ("covariance",)) is not None  # written anew, whole
    third = la.calibrate(model, None, "attention.dense", token_windows=windows, cache_dir=tmp_path)
    assert third.cached


def test_a_closed_pipe_ends_the_command_quietly(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``info --json | head -3``: the reader closes the pipe; no traceback, status 141."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["info", "--json", str(files["ck"])]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_no_progress_silences_the_loading_bars(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --no-progress no bar reaches stderr, transformers' loading and writing bars
    included; the bars come back afterwards."""
    from transformers.utils import logging as hf_logging

    argv = ["export", str(files["ck"]), "--out", str(tmp_path / "dense"), "--no-progress"]
    assert main(argv) == 0
    assert "it/s" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


def test_report_rewrites_its_own_files(files: dict[str, Path], tmp_path: Path) -> None:
    """A report replaces what a report wrote (also one older than the record), and nothing
    else."""
    out = tmp_path / "rep"
    assert main(["report", str(files["rows"]), "--out", str(out)]) == 0
    assert main(["report", str(files["rows"]), "--out", str(out)]) == 0
    (out / ".llm-adapter-report.json").unlink()  # as a report written before the record
    assert main(["report", str(files["rows"]), "--out", str(out)]) == 0
    (out / "results.csv").write_text("mine\n")
    assert main(["report", str(files["rows"]), "--out", str(out)]) == 2
    assert (out / "results.csv").read_text() == "mine\n"
