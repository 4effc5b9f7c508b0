"""Experiments that run anywhere: models and data named in a sweep configuration (hub ids,
dataset names), local copies in its ``[paths]`` table.

Nothing here touches the network: the hub is switched off (``HF_HUB_OFFLINE=1``) and,
where a hub id must load, a temporary hub cache holds the shipped GPT-NeoX under
``EleutherAI/pythia-70m``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter.assets import TINY_MODEL
from llm_adapter.experiment import sweep as sw

REPO = Path(__file__).resolve().parents[2]
#: what the shipped configurations' ``../shared`` is, run from the repository root
SHARED = REPO.parent / "shared"
TEXT = "The cat sat on the mat near the river, and the dog ran to the old mill. " * 40

CALIB = "wikitext:wikitext-2-v1:validation"
TEST = "wikitext:wikitext-2-raw-v1:test"


def _named(paths: dict[str, str] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": "example-org/example-model",
        "out": "r.jsonl",
        "calibration": {"dataset": CALIB, "samples": 4, "seed": 0},
        "heldout": {"dataset": TEST, "samples": 2},
        "evaluation": {"wikitext": TEST, "hellaswag": "Rowan/hellaswag", "limit": 3},
    }
    if paths is not None:
        config["paths"] = paths
    return config


@pytest.fixture
def offline(offline_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache (returned), the hub switched off, no datasets cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    return offline_hub


def test_paths_replace_names_by_their_local_files(tmp_path: Path) -> None:
    """Each name with an existing [paths] file becomes that file (a dataset a text), so
    the configuration runs, and is keyed, as one that names the files itself."""
    model, calib, test, hs = (tmp_path / n for n in ("model", "valid.txt", "test.txt", "hs.txt"))
    model.mkdir()
    for f in (calib, test, hs):
        f.write_text(TEXT)
    paths = {"example-org/example-model": str(model), CALIB: str(calib), TEST: str(test),
             "Rowan/hellaswag": str(hs)}  # fmt: skip
    log = io.StringIO()
    resolved, sources = sw.resolve_inputs(_named(paths), log)
    assert log.getvalue() == ""
    direct = {
        "model": str(model),
        "out": "r.jsonl",
        "calibration": {"text": str(calib), "samples": 4, "seed": 0},
        "heldout": {"text": str(test), "samples": 2},
        "evaluation": {"wikitext": str(test), "hellaswag": str(hs), "limit": 3},
    }
    assert resolved == direct  # no [paths] left, the same settings: the same point keys
    assert sw.resolve_inputs(direct)[0] == direct
    assert sources["model"] == {
        "name": "example-org/example-model", "source": "local", "path": str(model)
    }  # fmt: skip
    assert sources["calibration.text"] == {"name": CALIB, "source": "local", "path": str(calib)}
    assert sources["evaluation.hellaswag"]["source"] == "local"
    assert set(sources) == {"model", "calibration.text", "heldout.text", "evaluation.wikitext",
                            "evaluation.hellaswag"}  # fmt: skip


def test_without_paths_the_names_are_hub_names() -> None:
    config = _named()
    resolved, sources = sw.resolve_inputs(config)
    assert resolved == config
    assert {place: s["source"] for place, s in sources.items()} == {
        "model": "hub", "calibration.dataset": "hub", "heldout.dataset": "hub",
        "evaluation.wikitext": "hub", "evaluation.hellaswag": "hub",
    }  # fmt: skip
    assert sw.is_hub_data("wikitext", "hub") and sw.is_hub_data("hellaswag", "hub")
    assert not sw.is_hub_data("wikitext", "../shared/data/wikitext-2/wiki.test.tokens")
    assert not sw.is_hub_data("text", CALIB)  # a text setting is a file, whatever its name


def test_a_missing_paths_file_falls_back_to_the_hub_in_one_line(
    tmp_path: Path, offline: Path
) -> None:
    repo = offline / "models--example-org--example-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    (offline / "datasets--wikitext").mkdir()  # the dataset is cached too
    absent = str(tmp_path / "absent")
    log = io.StringIO()
    config = _named({"example-org/example-model": absent, CALIB: absent})
    resolved, sources = sw.resolve_inputs(config, log)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert "[paths] 'example-org/example-model'" in lines[0] and "does not exist" in lines[0]
    assert "model 'example-org/example-model' is read from the hub" in lines[0]
    assert f"calibration.dataset {CALIB!r} is read from the hub" in lines[1]
    assert resolved["model"] == "example-org/example-model"
    assert resolved["calibration"]["dataset"] == CALIB
    assert sources["model"] == {
        "name": "example-org/example-model", "source": "hub", "revision": "c0ffee"
    }  # fmt: skip


def test_missing_everywhere_is_one_line_naming_the_value_and_the_fix(
    tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from llm_adapter.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'model = "example-org/example-model"\n'
        f'out = "{tmp_path / "r.jsonl"}"\n'
        "[[points]]\n"
        'method = "svd-llm"\n'
        "[paths]\n"
        f'"example-org/example-model" = "{tmp_path / "absent"}"\n'
    )
    assert main(["sweep", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("llm-adapter: error: model = 'example-org/example-model': ")
    assert f"its [paths] file '{tmp_path / 'absent'}' does not exist" in err[0]
    assert "HF_HUB_OFFLINE is set" in err[0] and "correct [paths]" in err[0]
    assert "Traceback" not in err[0]
    with pytest.raises(AdapterError, match=r"calibration\.dataset = 'wikitext:wikitext-2-v1"):
        sw.resolve_inputs(_named({CALIB: str(tmp_path / "absent")}))


@pytest.mark.parametrize("paths", [{"x": 1}, {"x": ""}, ["x"]])
def test_paths_must_map_names_to_files(paths: Any) -> None:
    with pytest.raises(AdapterError, match=r"\[paths\] must be a table of names and local files"):
        sw.check_config({"paths": paths})


def test_calib_text_flag_replaces_the_named_dataset() -> None:
    import argparse

    from llm_adapter.cli import sweep as sweep_cli

    args = argparse.Namespace(calib_text="mine.txt", no_hellaswag=False, no_baseline=False)
    log = io.StringIO()
    new = sweep_cli.apply_overrides(_named(), args, log)
    assert new["calibration"] == {"text": "mine.txt", "samples": 4, "seed": 0}
    assert f"replaces calibration.dataset = {CALIB!r}" in log.getvalue()


# ----------------------------------------------------------------- the shipped configurations

SHIPPED = sorted(
    p for p in (REPO / "experiments").glob("*.toml") if p.name.startswith(("smollm2_", "neox_mini"))
)
#: the results files the shipped configurations write
RESULTS = sorted({tomllib.loads(p.read_text())["out"] for p in SHIPPED})


def _done(config: dict[str, Any]) -> set[str]:
    """The keys ``llm-adapter sweep --dry-run`` lists as done."""
    log = io.StringIO()
    assert sw.run_sweep(config, dry_run=True, log=log) == []
    assert "read from the hub" not in log.getvalue()
    return {line.split()[1] for line in log.getvalue().splitlines() if "[done]" in line}


@pytest.mark.data
@pytest.mark.parametrize("out", RESULTS)
def test_shipped_configurations_name_the_hub_and_keep_their_keys(
    out: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub names, with [paths] to ../shared: every row recorded in the results file is still
    done under the configurations that write it, so nothing reruns."""
    configs = [sw.load_config(p) for p in SHIPPED]
    configs = [c for c in configs if c["out"] == out]
    for config in configs:
        for section in ("calibration", "heldout"):
            assert "text" not in config.get(section, {})  # data named by their hub names
        if config["name"].startswith("SmolLM2"):
            assert config["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        missing = [f for f in config["paths"].values() if not (REPO / f).exists()]
        if missing:
            pytest.skip(f"{missing[0]} is absent: the configurations' [paths] point there")
    monkeypatch.chdir(REPO)  # the configurations' relative paths are the repository root's
    rows = sw.read_results(out)
    done: set[str] = set()
    for config in configs:
        if config.get("device") == "cuda" and not torch.cuda.is_available():
            # the GPU headline refuses to run without CUDA (its own test); the device is no
            # part of a key, so the CPU lists the same keys
            config = {**config, "device": "cpu"}
        done |= _done(config)
        # rows written with --calib-samples N (the calibration-size table of docs/experiment)
        calib = config["calibration"]
        for n in {r["protocol"]["calibration"].get("samples") for r in rows} - {calib["samples"]}:
            done |= _done({**config, "calibration": {**calib, "samples": n}})
    assert {r["key"] for r in rows} == done


# ------------------------------------------------------------------- runs, local and hub


def _tiny_config(tmp_path: Path, model: str, out: str) -> dict[str, Any]:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    return {
        "name": "tiny",
        "model": model,
        "out": str(tmp_path / out),
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "baseline": False,
        "families": ["attention.dense"],
        "calibration": {"dataset": CALIB, "samples": 4, "seq_len": 32},
        "evaluation": {"wikitext": TEST, "seq_len": 32, "max_windows": 2},
        "paths": {CALIB: str(text), TEST: str(text)},
        "points": [{"method": "svd-llm"}],
    }


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_rows_record_where_model_and_data_came_from(
    tmp_path: Path, pythia_hub: Path, pythia_env: dict[str, str]
) -> None:
    """The same sweep from [paths] (in process) and from the hub id in a populated hub
    cache with the network off (a subprocess): each row says which, and the keys differ."""
    local = _tiny_config(tmp_path, "EleutherAI/pythia-70m", "local.jsonl")
    local["paths"]["EleutherAI/pythia-70m"] = str(TINY_MODEL)
    (row,) = sw.run_sweep(local, progress=False, log=io.StringIO())
    assert row["model"] == str(TINY_MODEL) and row["model_source"] == "local"
    assert row["sources"]["model"] == {
        "name": "EleutherAI/pythia-70m", "source": "local", "path": str(TINY_MODEL)
    }  # fmt: skip
    assert row["sources"]["calibration.text"]["name"] == CALIB
    assert row["protocol"]["calibration"]["text"] == str(tmp_path / "text.txt")
    # the configuration naming the files itself has the same keys: its point is done
    direct = {**local, "model": str(TINY_MODEL), "paths": {}}
    direct["calibration"] = {"text": str(tmp_path / "text.txt"), "samples": 4, "seq_len": 32}
    direct["evaluation"] = {**local["evaluation"], "wikitext": str(tmp_path / "text.txt")}
    log = io.StringIO()
    sw.run_sweep(direct, dry_run=True, log=log)
    assert "1 points, 1 done" in log.getvalue()

    hub = _tiny_config(tmp_path, "EleutherAI/pythia-70m", "hub.jsonl")
    cfg = tmp_path / "hub.json"
    cfg.write_text(json.dumps(hub))
    code = (
        "import json, sys\n"
        "from llm_adapter.experiment.sweep import run_sweep\n"
        "run_sweep(json.load(open(sys.argv[1])), progress=False)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], env={**pythia_env, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (hrow,) = sw.read_results(tmp_path / "hub.jsonl")
    commit = (pythia_hub / "models--EleutherAI--pythia-70m" / "refs" / "main").read_text()
    assert hrow["model"] == "EleutherAI/pythia-70m" and hrow["model_source"] == "hub"
    assert hrow["sources"]["model"] == {
        "name": "EleutherAI/pythia-70m", "source": "hub", "revision": commit
    }  # fmt: skip
    assert hrow["key"] != row["key"]  # the protocol names what was read
    # the same weights and text: the same figures
    assert hrow["frobenius_fraction"] == pytest.approx(row["frobenius_fraction"], rel=1e-6)
    assert hrow["ppl"] == pytest.approx(row["ppl"], rel=1e-5)
