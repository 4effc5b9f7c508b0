"""Both packages build (sdist and wheel), install into a clean venv outside the
workspace, import from there, and run their command lines.

The venv is made with ``python -m venv`` (no system site packages); pip
installs the two wheels and their dependencies as declared, with torch pinned
to the version the workspace runs (``torch==X.Y.Z``, what ``make`` installs:
the CPU wheel on CI).  Building takes a few seconds; installing takes about
a minute on CI's 2 cores (most of it unpacking torch), hence ``slow``: it
still runs in ``make test``, which deselects nothing.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"grassbundle": "grassbundle", "llm-adapter": "llm_adapter"}
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """``python -m build`` (sdist, then the wheel from the sdist) on a copy of each package."""
    pytest.importorskip("build", reason="the 'build' package is not installed (make installs it)")
    root = tmp_path_factory.mktemp("build")
    out: dict[str, dict[str, Path]] = {}
    for name in PACKAGES:
        src = root / "src" / name
        shutil.copytree(REPO / "packages" / name, src, ignore=IGNORE)
        dist = root / "dist" / name
        _run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
            cwd=root,
            env=_clean_env(),
            timeout=300,
        )
        wheels = sorted(dist.glob("*.whl"))
        sdists = sorted(dist.glob("*.tar.gz"))
        assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
        out[name] = {"wheel": wheels[0], "sdist": sdists[0]}
    return out


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def test_wheel_metadata_is_complete(dists: dict[str, dict[str, Path]]) -> None:
    for name, files in dists.items():
        meta = _metadata(files["wheel"])
        assert meta["Name"] == name
        assert meta["License-Expression"] == "BSD-3-Clause"
        assert meta["Requires-Python"] == ">=3.11"
        assert meta["Summary"] and meta["Author"]
        classifiers = meta.get_all("Classifier") or []
        assert "Typing :: Typed" in classifiers
        assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
        requires = meta.get_all("Requires-Dist") or []
        for req in requires:  # every runtime dependency has a lower and an upper bound
            if "extra ==" not in req and "==" not in req:
                assert ">=" in req and "<" in req, f"{name}: unbounded dependency {req!r}"
        with zipfile.ZipFile(files["wheel"]) as zf:
            names = zf.namelist()
        assert any(n.endswith("licenses/LICENSE") for n in names), names[-8:]
        assert f"{PACKAGES[name]}/py.typed" in names
    meta = _metadata(dists["llm-adapter"]["wheel"])
    assert "Llama" in meta["Summary"] and "GPT-NeoX" in meta["Summary"]
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"eval", "gguf", "hub", "report", "bigmodels", "all"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("lm-eval") and 'extra == "eval"' in r for r in requires)
    assert any(r.startswith("gguf") and 'extra == "gguf"' in r for r in requires)
    with zipfile.ZipFile(dists["llm-adapter"]["wheel"]) as zf:
        names = set(zf.namelist())
    for asset in ("config.json", "model.safetensors", "tokenizer.json"):
        assert f"llm_adapter/assets/neox-tiny/{asset}" in names


def test_clean_venv_install_imports_and_runs(
    dists: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import torch

    root = tmp_path_factory.mktemp("venv")
    assert REPO not in root.parents, "the venv must lie outside the workspace"
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = _clean_env()
    env["VIRTUAL_ENV"] = str(env_dir)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    torch_spec = "torch==" + torch.__version__.split("+")[0]
    start = time.perf_counter()
    _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            torch_spec,
            str(dists["grassbundle"]["wheel"]),
            str(dists["llm-adapter"]["wheel"]),
        ],
        cwd=root,
        env=env,
        timeout=1200,
    )
    seconds = time.perf_counter() - start
    print(f"clean-venv install of both wheels + dependencies ({torch_spec}): {seconds:.1f} s")
    where = _run(
        [
            str(py),
            "-c",
            "import sys, grassbundle, llm_adapter, torch; "
            "print(grassbundle.__file__); print(llm_adapter.__file__); print(sys.prefix)",
        ],
        cwd=root,
        env=env,
        timeout=120,
    ).split()
    for file in where[:2]:  # imported from the venv, not from the workspace
        assert Path(file).is_relative_to(env_dir), file
    check = _run([str(py), "-m", "grassbundle", "check"], cwd=root, env=env, timeout=300)
    assert "checks hold" in check
    helptext = _run(
        [str(env_dir / "bin" / "llm-adapter"), "--help"], cwd=root, env=env, timeout=120
    )
    assert helptext.startswith("usage: llm-adapter")
    # the shipped tiny model travels in the wheel and loads from the installed package
    info = _run(
        [
            str(py),
            "-c",
            "from llm_adapter.assets import TINY_MODEL; import llm_adapter; "
            "m, t = llm_adapter.load(TINY_MODEL, device='cpu'); "
            "print(llm_adapter.count_unique_parameters(m), len(t))",
        ],
        cwd=root,
        env=env,
        timeout=300,
    )
    n_params, vocab = (int(x) for x in info.split()[-2:])
    assert n_params > 0 and vocab > 1
