"""Calibration windows disjoint across seeds (``windows="disjoint"``), and the default unchanged.

Positions are checked on ``token_ids = arange(n)``: each window's first token is
then its offset, so overlaps are counted from the windows themselves, not from
the function's own bookkeeping.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter.calibrate import _windows_key, calibrate
from llm_adapter.data import WINDOW_MODES, check_disjoint, sample_windows
from llm_adapter.errors import ConfigurationError, DataError
from llm_adapter.experiment import sweep as sw
from llm_adapter.testing import random_neox

REPO = Path(__file__).resolve().parents[2]


def _positions(windows: torch.Tensor) -> np.ndarray:
    """The token positions a seed's windows cover (windows of ``arange(n)``), each once per
    window that covers it."""
    return windows.numpy().reshape(-1)


@pytest.mark.parametrize(("n", "samples", "seq_len"), [(10_000, 20, 128), (10_000, 3, 333)])
def test_seeds_get_pairwise_disjoint_non_overlapping_windows(
    n: int, samples: int, seq_len: int
) -> None:
    ids = np.arange(n, dtype=np.int64)
    per_seed = [sample_windows(ids, samples, seq_len, s, mode="disjoint") for s in range(3)]
    covered: list[set[int]] = []
    for w in per_seed:
        assert tuple(w.shape) == (samples, seq_len)
        starts = w[:, 0].numpy()
        # each window is the exact slice of the stream at its offset, on a slot boundary
        for row, start in zip(w.numpy(), starts, strict=True):
            assert np.array_equal(row, ids[start : start + seq_len])
        assert np.all(starts % seq_len == 0)
        pos = _positions(w)
        assert len(set(pos.tolist())) == pos.size  # no overlap within the seed
        covered.append(set(pos.tolist()))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not covered[a] & covered[b], (a, b)
    # the order of the rule: one shuffle of the slots by default_rng(0), blocks in order
    perm = np.random.default_rng(0).permutation(n // seq_len)
    for s, w in enumerate(per_seed):
        assert np.array_equal(w[:, 0].numpy(), perm[s * samples : (s + 1) * samples] * seq_len)


def test_windows_are_slices_of_the_stream() -> None:
    ids = np.random.default_rng(5).integers(0, 50_000, size=4_000)
    w = sample_windows(ids, 6, 100, 1, mode="disjoint")
    text = ids.tolist()
    for row in w.tolist():
        starts = [i for i in range(len(text) - 99) if text[i : i + 100] == row]
        assert starts and all(i % 100 == 0 for i in starts)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_mode_is_unchanged(seed: int) -> None:
    ids = np.arange(5_000, dtype=np.int64)
    offsets = np.random.default_rng(seed).integers(0, 5_000 - 64 + 1, size=32)
    expected = np.stack([ids[o : o + 64] for o in offsets])
    for w in (sample_windows(ids, 32, 64, seed), sample_windows(ids, 32, 64, seed, "random")):
        assert w.dtype == torch.int64
        assert np.array_equal(w.numpy(), expected)
    assert WINDOW_MODES[0] == "random"


def test_too_many_windows_is_one_line_naming_the_values_and_fixes() -> None:
    ids = np.arange(1_000)  # 10 slots of 100
    sample_windows(ids, 5, 100, 1, mode="disjoint")  # seeds 0 and 1 use all ten
    with pytest.raises(DataError) as info:
        sample_windows(ids, 5, 100, 2, mode="disjoint")
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("windows='disjoint'", "1000-token text", "10 non-overlapping windows",
                 "seq_len=100", "seed=2", "samples=5", "needs 15", "seed <= 1",
                 "a longer text", "windows='random'"):  # fmt: skip
        assert part in msg, part
    assert info.value.key == "windows"
    with pytest.raises(DataError, match="seed <= 1"):  # the check alone, before sampling
        check_disjoint(1_000, 5, 100, 2)
    with pytest.raises(DataError, match="needs 11 of them") as info:  # no seed has 11
        check_disjoint(1_000, 11, 100, 0)
    assert "seed <=" not in str(info.value)
    with pytest.raises(DataError, match="numbers its seeds from 0; got seed=-1"):
        sample_windows(ids, 1, 100, -1, mode="disjoint")
    with pytest.raises(ConfigurationError, match="windows='overlapping' is not one of"):
        sample_windows(ids, 1, 100, 0, mode="overlapping")


# ----------------------------------------------------------------------- calibrate


def _text_and_tokenizer(tmp_path: Path) -> tuple[Path, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.txt"
    path.write_text(
        "\n".join(" ".join(f"w{i}" for i in rng.integers(0, 127, 40)) for _ in range(40))
    )
    return path, PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.mark.filterwarnings("ignore:.*calibration tokens are fewer:UserWarning")
def test_calibrate_records_the_rule_and_the_cache_keeps_the_modes_apart(tmp_path: Path) -> None:
    path, tokenizer = _text_and_tokenizer(tmp_path)  # 1,600 tokens: 40 slots of 40
    model = random_neox()
    kw: dict[str, Any] = {"text_path": path, "samples": 4, "seq_len": 40, "seed": 0}
    cache = {"cache_dir": tmp_path / "cache"}
    plain = calibrate(model, tokenizer, "attention.dense", **kw, **cache)
    assert "window_rule" not in plain.protocol  # the default records what it always did
    assert calibrate(model, tokenizer, "attention.dense", windows="random", **kw, **cache).cached
    disjoint = calibrate(model, tokenizer, "attention.dense", windows="disjoint", **kw, **cache)
    assert not disjoint.cached and disjoint.protocol["window_rule"] == "disjoint"
    assert disjoint.protocol["seed"] == 0 and disjoint.protocol["windows"] == 4
    assert calibrate(model, tokenizer, "attention.dense", windows="disjoint", **kw, **cache).cached
    assert len(list((tmp_path / "cache").glob("calib-*.npz"))) == 2
    # the token windows of seeds 0..2 share no position of the text
    ids = [int(i) for i in tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]]
    starts = []
    for seed in range(3):
        st = calibrate(
            model, tokenizer, "attention.dense", windows="disjoint", **{**kw, "seed": seed}
        )
        assert st.windows is not None
        for row in st.windows.tolist():
            (start,) = [i for i in range(0, len(ids), 40) if ids[i : i + 40] == row]
            starts.append(start)
    assert len(set(starts)) == 12
    with pytest.raises(DataError, match="seed=10 with samples=4 needs 44 of them"):
        calibrate(model, tokenizer, "attention.dense", windows="disjoint", **{**kw, "seed": 10})
    with pytest.raises(ConfigurationError, match="windows='spread' is not one of random, dis"):
        calibrate(model, tokenizer, "attention.dense", windows="spread", **kw)
    with pytest.raises(ConfigurationError, match="token_windows are used as given"):
        calibrate(model, None, "attention.dense", token_windows=np.zeros((2, 8), dtype=np.int64),
                  windows="disjoint")  # fmt: skip


def test_default_cache_key_is_the_one_computed_before_the_rule_existed() -> None:
    """Keys of random windows stay as they were (the value computed by the code before
    ``windows`` existed), so existing cache entries are found."""
    identity = json.dumps({"model": "m", "sum": 1.5}, sort_keys=True)
    windows = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    before = "c0114806bc7913d7b798e24f886654ae"
    assert _windows_key(identity, windows, "attention.dense") == before
    assert _windows_key(identity, windows, "attention.dense", None, "float64", "random") == before
    assert _windows_key(identity, windows, "attention.dense", None, "float64", "disjoint") != before


# ----------------------------------------------------------------------- command line


@pytest.mark.usefixtures("one_thread")
def test_compress_cli_disjoint_windows(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_adapter.cli import main
    from llm_adapter.manifest import read_manifest

    base = [
        "compress", "--model", str(tiny["model"]), "--calib-text", str(tiny["text"]),
        "--calib-samples", "4", "--calib-seq-len", "64", "--device", "cpu",
        "--method", "svd-llm", "--json", "--no-progress",
    ]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    default = json.loads(capsys.readouterr().out)["calibration"]
    assert "window_rule" not in default
    assert "window_rule" not in read_manifest(tmp_path / "a")["calibration"]
    assert main([*base, "--out", str(tmp_path / "b"), "--calib-windows", "disjoint"]) == 0
    disjoint = json.loads(capsys.readouterr().out)["calibration"]
    assert disjoint["window_rule"] == "disjoint"
    assert read_manifest(tmp_path / "b")["calibration"]["window_rule"] == "disjoint"
    assert disjoint["windows_sha256"] != default["windows_sha256"]
    # 1,200 tokens: 18 windows of 64; seed 4 needs 20
    bad = [*base, "--out", str(tmp_path / "c"), "--calib-windows", "disjoint", "--seed", "4"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("llm-adapter: error: ")
    parts = (
        "--calib-windows disjoint",
        "--calib-seq-len 64",
        "--seed 4 with --calib-samples 4 needs 20",
        "--seed <= 3",
        "--calib-windows random",
    )
    for part in parts:
        assert part in err, part
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):  # argparse: the choices
        main([*base, "--out", str(tmp_path / "d"), "--calib-windows", "spread"])
    assert "invalid choice: 'spread'" in capsys.readouterr().err


def test_request_checks_the_rule_before_loading(tmp_path: Path) -> None:
    from llm_adapter.compress import CompressionConfig
    from llm_adapter.jobs import CompressRequest, check_compress

    request = CompressRequest(
        model=str(tmp_path / "absent"), out=tmp_path / "o", config=CompressionConfig("svd"),
        calib_windows="sometimes",
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="calib_windows='sometimes' is not one of"):
        check_compress(request)


# ----------------------------------------------------------------------- sweeps

#: a row of ``experiments/results/smollm2_loss_aware.jsonl`` (seed 1, SVD-LLM at 20%),
#: keyed before ``windows`` existed
SHIPPED_KEY = "6cdd2c1dd0faa780"


def test_default_sweep_keys_are_the_shipped_ones() -> None:
    rows = sw.read_results(REPO / "experiments/results/smollm2_loss_aware.jsonl")
    (row,) = [r for r in rows if r["key"] == SHIPPED_KEY]
    config = sw.load_config(REPO / "experiments/smollm2_loss_aware_seed1.toml")
    (point,) = [
        p for p in sw.expand_points(config) if sw.point_key(p, row["protocol"]) == SHIPPED_KEY
    ]
    assert "windows" not in row["protocol"]["calibration"]
    assert "window_rule" not in row["calibration"]
    for raw in ({}, {"windows": "random"}):
        section = {**row["protocol"]["calibration"], **raw}
        protocol = {
            **row["protocol"],
            "calibration": sw._keyed_text_section(section, "calibration"),
        }
        assert sw.point_key(point, protocol) == SHIPPED_KEY
    section = {**row["protocol"]["calibration"], "windows": "disjoint"}
    keyed = sw._keyed_text_section(section, "calibration")
    assert keyed["windows"] == "disjoint"
    assert sw.point_key(point, {**row["protocol"], "calibration": keyed}) != SHIPPED_KEY
    with pytest.raises(AdapterError, match=r"\[calibration\] windows = 'spread' is not valid"):
        sw._keyed_text_section({**section, "windows": "spread"}, "calibration")
    held = {"text": "test.txt", "samples": 8, "seed": 1}
    assert sw._keyed_text_section({**held, "windows": "random"}, "heldout") == held
    assert (
        sw._keyed_text_section({**held, "windows": "disjoint"}, "heldout")["windows"] == "disjoint"
    )
    with pytest.raises(AdapterError, match=r"\[heldout\] windows = 1 is not valid"):
        sw._keyed_text_section({**held, "windows": 1}, "heldout")


def test_sweep_flag_overrides_the_rule() -> None:
    import argparse

    from llm_adapter.cli import build_parser
    from llm_adapter.cli import sweep as sweep_cli

    parser = build_parser("sweep")
    args = parser.parse_args(["sweep", "--calib-windows", "disjoint"])
    assert isinstance(args, argparse.Namespace)
    log = io.StringIO()
    config = sweep_cli.apply_overrides({"calibration": {"seed": 1}}, args, log)
    assert config["calibration"] == {"seed": 1, "windows": "disjoint"}
    assert "--calib-windows disjoint overrides calibration.windows" in log.getvalue()
    sw.check_config(config)


def _sweep_config(tmp_path: Path, **calibration: Any) -> dict[str, Any]:
    from llm_adapter.assets import TINY_MODEL

    text = tmp_path / "text.txt"
    rng = np.random.default_rng(1)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "to", "old", "mill", "river"]
    text.write_text("\n".join(" ".join(rng.choice(words, 30)) for _ in range(60)))
    return {
        "name": "tiny",
        "model": str(TINY_MODEL),
        "out": str(tmp_path / "r.jsonl"),
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "baseline": False,
        "families": ["attention.dense"],
        "calibration": {"text": str(text), "samples": 4, "seq_len": 32, **calibration},
        "evaluation": {"wikitext": str(text), "seq_len": 32, "max_windows": 2},
        "points": [{"method": "svd-llm"}],
    }


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sweep_rows_record_disjoint_windows_and_key_them_apart(tmp_path: Path) -> None:
    (plain,) = sw.run_sweep(_sweep_config(tmp_path), progress=False, log=io.StringIO())
    assert "windows" not in plain["protocol"]["calibration"]
    assert "window_rule" not in plain["calibration"]
    rows = []
    for seed in (0, 1):
        config = _sweep_config(tmp_path, windows="disjoint", seed=seed)
        (row,) = sw.run_sweep(config, progress=False, log=io.StringIO())
        assert row["protocol"]["calibration"]["windows"] == "disjoint"
        assert row["calibration"]["window_rule"] == "disjoint"
        assert row["calibration"]["seed"] == seed
        rows.append(row)
    assert len({plain["key"], *(r["key"] for r in rows)}) == 3
    assert rows[0]["calibration"]["windows_sha256"] != rows[1]["calibration"]["windows_sha256"]
    # too many windows for the text: named as the configuration spells it, before any point
    n = rows[0]["calibration"]["n_tokens"]
    seed = n // 32 // 4  # the first seed without its 4 windows
    config = _sweep_config(tmp_path, windows="disjoint", seed=seed)
    with pytest.raises(DataError) as info:
        sw.run_sweep(config, progress=False, log=io.StringIO())
    msg = str(info.value)
    assert "calibration.windows = 'disjoint'" in msg
    assert f"calibration.seed = {seed} with calibration.samples = 4" in msg
    assert f"calibration.seed <= {seed - 1}" in msg
    assert len(sw.read_results(config["out"])) == 3
