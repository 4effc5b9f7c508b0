"""``python -m grassbundle check`` and the ``grassbundle`` console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import grassbundle.__main__ as cli
import numpy as np
import pytest
from grassbundle.bundle import group_index
from grassbundle.theorems import random_problem


def test_check_table_exit_zero(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    # 2 problems x (2 solver routes x 17 bundle checks + 12 checks of theorems_fits)
    assert "96/96 checks hold" in out
    assert "theorem_a[k=1]" in out and "NO" not in out
    # a tying degree with a shorter last group (L = 6, k = 4; L = 4, k = 3), and
    # every check again through phase_diagram
    assert "theorem_a[k=4] (weight L=6" in out and "theorem_b[k=3] (activation L=4" in out
    assert out.count("; via phase_diagram)") == 34


def test_check_json(capsys):
    assert cli.main(["check", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert isinstance(reports, list) and len(reports) == 96
    for r in reports:
        assert {"name", "holds", "figures", "tolerance", "why"} <= set(r)
        assert r["holds"] is True


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_check_user_problem(tmp_path, capsys):
    p = random_problem(3, 10, 9, 2, rng=np.random.default_rng(1))
    f = _save(tmp_path / "p.npz", W=p.W, C=p.C, rank=np.array(2))
    assert cli.main(["check", "--problem", str(f)]) == 0
    out = capsys.readouterr().out
    # L = 3: k in {1, 2, 3} (k = 2 leaves a shorter last group), two solver routes,
    # and the 14 checks of theorems_fits once
    assert "40/40 checks hold" in out
    for name in ("allocation_theorem_1", "residual_fit_theorem_4", "factorise", "means"):
        assert f"\n{name}" in out
    # without C and rank: default rank min(m, n) // 4 and synthetic covariances
    f2 = _save(tmp_path / "q.npz", W=p.W)
    assert cli.main(["check", "--json", "--problem", str(f2)]) == 0


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.ones((2, 3, 3))}, "no array 'W'"),
        ({"W": np.ones((3, 3))}, "shape"),
        ({"W": np.ones((2, 4, 4)), "rank": np.array(9)}, "rank"),
        ({"W": np.ones((2, 4, 4)), "rank": np.array([1, 2])}, "rank"),
        ({"W": np.ones((2, 4, 4)), "C": np.ones((2, 3, 3))}, "C must have shape"),
    ],
)
def test_check_bad_problem_file_one_line_error(tmp_path, capsys, arrays, match):
    f = _save(tmp_path / "bad.npz", **arrays)
    assert cli.main(["check", "--problem", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_check_unreadable_or_missing_file(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert cli.main(["check", "--problem", str(junk)]) == 2
    assert cli.main(["check", "--problem", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("grassbundle check: error:") for line in err)


def test_check_exits_one_when_a_check_fails(monkeypatch, capsys):
    import grassbundle as gb

    def misassigned(p, lam, k):
        sec = gb.solve(p, lam, k)
        return gb.evaluate_section(p, sec.bases, np.roll(group_index(p.L, k), 1), lam)

    monkeypatch.setattr(cli, "run_all_checks", partial(cli.run_all_checks, solver=misassigned))
    assert cli.main(["check"]) == 1
    assert "NO" in capsys.readouterr().out


@pytest.mark.slow
def test_check_module_and_console_script():
    r = subprocess.run(
        [sys.executable, "-m", "grassbundle", "check"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "checks hold" in r.stdout
    exe = shutil.which("grassbundle", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("console script not installed in this environment")
    r2 = subprocess.run([exe, "check", "--json"], capture_output=True, text=True, check=False)
    assert r2.returncode == 0 and json.loads(r2.stdout)
