"""Sweep rows record the code that wrote them: the packages' versions and, from a git
checkout of this repository, its commit; the report counts the rows per commit."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from llm_adapter import provenance
from llm_adapter.experiment import sweep as sw
from llm_adapter.experiment.report import revision_lines, write_report
from llm_adapter.provenance import source_revision

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(provenance.__file__).resolve().parent


def _git_head() -> str:
    """HEAD of the checkout holding the package, asked of git directly (not via the code)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(
        ["git", "-C", str(SRC), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip("the package does not run from a git checkout")
    return done.stdout.strip()


def test_the_revision_is_the_checkouts_head() -> None:
    head = _git_head()
    rev = source_revision()
    assert rev is not None
    assert rev["commit"] == head
    assert isinstance(rev["modified"], bool)


def test_a_copy_outside_this_repository_has_no_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed copy inside some other git repository does not take that one's commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    other = tmp_path / "other"
    (other / "site").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run(
        ["git", "-C", str(other), "-c", "user.name=t", "-c", "user.email=t@t",
         "commit", "-q", "--allow-empty", "-m", "other"],
        check=True,
    )  # fmt: skip
    monkeypatch.setattr(provenance, "__file__", str(other / "site" / "provenance.py"))
    assert source_revision() is None


def _config(tiny: dict[str, Path], root: Path, ratios: list[float]) -> dict[str, Any]:
    """Plain SVD of the tiny model's attention at ``ratios``, on 2 windows of 16 tokens."""
    text = str(tiny["text"])
    return {
        "name": "revision",
        "model": str(tiny["model"]),
        "out": str(root / "revision.jsonl"),
        "device": "cpu",
        "cache_dir": str(root / "cache"),
        "baseline": False,
        "families": ["attention.dense"],
        "rank_ratios": ratios,
        "calibration": {"text": text, "samples": 4, "seq_len": 16, "seed": 0},
        "evaluation": {"wikitext": text, "seq_len": 16, "max_windows": 2},
        "points": [{"method": "svd"}],
    }


def test_rows_record_their_revision_and_the_report_counts_them(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    head = _git_head()
    config = _config(tiny, tmp_path, [0.25])
    rows = sw.run_sweep(copy.deepcopy(config), progress=False, log=io.StringIO())
    (row,) = rows
    assert row["code"]["revision"]["commit"] == head
    assert row["code"]["llm_adapter"] and row["code"]["grassbundle"]
    write_report(config["out"], tmp_path / "report")
    md = (tmp_path / "report" / "results.md").read_text()
    assert f"- {head[:12]}" in md and ": 1 row" in md


def test_the_revision_is_read_once_when_the_run_starts(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout moved during a run does not relabel the rows of the code it loaded."""
    calls: list[int] = []

    def moving() -> dict[str, Any]:
        calls.append(1)
        return {"commit": f"{len(calls):040d}", "modified": False}

    monkeypatch.setattr(sw, "source_revision", moving)
    config = _config(tiny, tmp_path, [0.125, 0.25])
    rows = sw.run_sweep(copy.deepcopy(config), progress=False, log=io.StringIO())
    assert len(rows) == 2
    assert [r["code"]["revision"]["commit"] for r in rows] == [f"{1:040d}"] * 2
    assert len(calls) == 1


def test_revision_lines_count_rows_per_commit_and_the_unrecorded_apart() -> None:
    a = {"code": {"revision": {"commit": "a" * 40, "modified": False}}}
    b = {"code": {"revision": {"commit": "b" * 40, "modified": True}}}
    rows = [a, a, b, {"code": {"revision": None}}, {}]
    assert revision_lines(rows) == [
        f"- {'a' * 12}: 2 rows",
        f"- {'b' * 12} (with local changes): 1 row",
        "- not recorded: 2 rows",
    ]
    assert revision_lines([{}, {}]) == []
