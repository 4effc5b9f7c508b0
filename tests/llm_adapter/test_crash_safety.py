"""kill -9 at several points of compress and sweep, then a rerun that succeeds and leaves
nothing behind.

The killed run is a real process that sends itself SIGKILL at a named point
(``LLM_ADAPTER_CRASH_AT``, see :func:`llm_adapter.files.crash_point`): no
cleanup code of its own runs.  The rerun happens in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from llm_adapter import read_manifest
from llm_adapter.atomic import clean_leftovers
from llm_adapter.cli import main
from llm_adapter.experiment import sweep as sw


def _compress(tiny: dict[str, Path], out: Path, method: str, *extra: str) -> list[str]:
    return [
        "compress", str(tiny["model"]), "--method", method, "--calib-text", str(tiny["text"]),
        "--calib-samples", "4", "--calib-seq-len", "16", "--device", "cpu", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _killed(argv: list[str], point: str, **env: str) -> None:
    """Run ``llm-adapter argv`` in a child that kills itself with SIGKILL at ``point``."""
    full_env = {**os.environ, "LLM_ADAPTER_CRASH_AT": point, **env}
    proc = subprocess.run(
        [sys.executable, "-m", "llm_adapter.cli", *argv],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_killed_while_writing_a_new_checkpoint(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ck"
    _killed(_compress(tiny, out, "svd"), "save-partial")
    left = _names(tmp_path)
    assert not out.exists() and len(left) == 1 and left[0].startswith(".ck.tmp-")
    assert main(_compress(tiny, out, "svd")) == 0
    assert _names(tmp_path) == ["ck"]  # the dead run's partial checkpoint is gone
    assert read_manifest(out)["method"] == "svd"


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_killed_while_replacing_a_checkpoint(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """A kill inside the swap leaves the old or the new checkpoint; the rerun finishes."""
    out = tmp_path / "ck"
    assert main(_compress(tiny, out, "svd")) == 0
    env = {} if exchange else {"LLM_ADAPTER_NO_EXCHANGE": "1"}
    _killed(_compress(tiny, out, "svd-llm", "--overwrite"), "save-swap", **env)
    left = _names(tmp_path)
    if exchange:  # the exchange is done: the new checkpoint is in place, the old one aside
        assert read_manifest(out)["method"] == "svd-llm"
        assert left[0].startswith(".ck.tmp-") and left[1:] == ["ck"]
    else:  # between the two renames: the next write to ck puts the old one back
        assert [n[:8] for n in left] == [".ck.old-", ".ck.tmp-"]
        done = clean_leftovers(out)
        assert done[0].startswith("restored") and len(done) == 2
        assert read_manifest(out)["method"] == "svd" and _names(tmp_path) == ["ck"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(_compress(tiny, out, "bundle", "--tying", "3", "--overwrite")) == 0
    assert _names(tmp_path) == ["ck"]
    assert read_manifest(out)["method"] == "bundle"


def test_killed_after_the_swap(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ck"
    assert main(_compress(tiny, out, "svd")) == 0
    _killed(_compress(tiny, out, "svd-llm", "--overwrite"), "save-done")
    assert read_manifest(out)["method"] == "svd-llm" and _names(tmp_path) == ["ck"]


def _sweep_config(tiny: dict[str, Path], root: Path) -> Path:
    path = root / "sweep.toml"
    path.write_text(
        f'name = "crash"\nmodel = {json.dumps(str(tiny["model"]))}\n'
        f'out = {json.dumps(str(root / "r.jsonl"))}\ndevice = "cpu"\n'
        f"cache_dir = {json.dumps(str(root / 'cache'))}\n"
        f"checkpoints = {json.dumps(str(root / 'cks'))}\n"
        f"[calibration]\ntext = {json.dumps(str(tiny['text']))}\nsamples = 4\nseq_len = 16\n"
        f"[evaluation]\nwikitext = {json.dumps(str(tiny['text']))}\nseq_len = 16\n"
        "max_windows = 2\n"
        '[[points]]\nmethod = "svd"\n[[points]]\nmethod = "bundle"\ntying = [1, 3]\n'
    )
    return path


@pytest.mark.parametrize("point", ["sweep-row", "save-partial"])
def test_killed_sweep_reruns_to_completion(
    tiny: dict[str, Path], tmp_path: Path, point: str
) -> None:
    """Killed after its first row, or while saving a compressed model: the rerun
    computes only what is missing, the lock died with the process, no leftovers."""
    config_path = _sweep_config(tiny, tmp_path)
    _killed(["sweep", str(config_path), "--no-progress"], point)
    rows = sw.read_results(tmp_path / "r.jsonl")
    assert [r["label"] for r in rows] == ["dense"]  # both points: the first row is the baseline
    if point == "save-partial":
        assert any(n.startswith(".") for n in _names(tmp_path / "cks"))  # a partial checkpoint
    assert main(["sweep", str(config_path), "--no-progress"]) == 0
    rows = sw.read_results(tmp_path / "r.jsonl")
    labels = [r["label"] for r in rows]
    assert labels == ["dense", "svd", "bundle lam=0 k=1 weight", "bundle lam=0 k=3 weight"]
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 4  # every row once, in the file itself
    checkpoints = _names(tmp_path / "cks")
    assert len(checkpoints) == 3 and not any(n.startswith(".") for n in checkpoints)
    assert all(read_manifest(tmp_path / "cks" / n)["method"] for n in checkpoints)


def _export(source: Path, out: Path, *extra: str) -> list[str]:
    return ["export", str(source), "--out", str(out), "--no-progress", *extra]


def test_killed_export_leaves_nothing_after_the_next_one(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A killed export leaves its partial model hidden beside the target; the next export
    to the same place removes it."""
    ck = tmp_path / "ck"
    assert main(_compress(tiny, ck, "svd")) == 0
    out = tmp_path / "dense"
    _killed(_export(ck, out), "export-partial")
    left = _names(tmp_path)
    assert left[0].startswith(".dense.tmp-") and left[1:] == ["ck"]
    assert main(_export(ck, out)) == 0
    assert _names(tmp_path) == ["ck", "dense"]
    assert main(_export(ck, out, "--overwrite")) == 0  # an export replaces its own export
    assert _names(tmp_path) == ["ck", "dense"]


@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_a_checkpoint_set_aside_by_a_killed_replacement_is_found(
    tiny: dict[str, Path], tmp_path: Path, command: str
) -> None:
    """Without the atomic exchange, a kill between the two renames leaves the old checkpoint
    only as ``.ck.old-...``: reading ``ck`` puts it back first."""
    out = tmp_path / "ck"
    assert main(_compress(tiny, out, "svd")) == 0
    before = (out / "model.safetensors").read_bytes()
    _killed(
        _compress(tiny, out, "svd-llm", "--overwrite"), "save-swap", LLM_ADAPTER_NO_EXCHANGE="1"
    )
    assert not out.exists()
    argv = [command, str(out)]
    if command == "evaluate":
        argv += ["--wikitext", str(tiny["text"]), "--seq-len", "16", "--device", "cpu"]
    assert main(argv) == 0
    assert _names(tmp_path) == ["ck"]
    assert read_manifest(out)["method"] == "svd"
    assert (out / "model.safetensors").read_bytes() == before


def test_killed_cache_write_is_cleaned_by_the_next(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A compress killed while writing a calibration cache entry leaves a hidden temporary;
    the next write of that entry removes it and the entry is complete."""
    cache = tmp_path / "cache"
    argv = _compress(tiny, tmp_path / "ck", "svd-llm", "--cache-dir", str(cache))
    _killed(argv, "cache-partial")
    left = _names(cache)
    assert len(left) == 1 and left[0].startswith(".calib-") and ".npz.tmp-" in left[0]
    assert main(argv) == 0
    (entry,) = _names(cache)
    assert entry.startswith("calib-") and entry.endswith(".npz")
