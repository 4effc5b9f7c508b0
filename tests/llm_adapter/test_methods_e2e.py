"""End to end on the shared trained GPT-NeoX (neox-mini): the sequential and allocated methods.

``residual`` (residual-aware sequential refit), ``svd-llm --update`` (SVD-LLM's
second step) and ``svd-llm``/``residual`` with ``--allocate sum|normalised``
(per-layer ranks under the uniform ranks' parameter budget).

Each method is compressed once, in float64, on the same calibration windows
and the same cached Grams: four through ``llm-adapter compress --json`` (the
in-memory model is kept by wrapping ``checkpoint.save``), three through the
Python API (``calibrate``, ``CompressionConfig``, ``compress_model``, ``save``).
For each: the report's fields (allocated ranks within the uniform ranks'
parameter budget), ``info`` on the checkpoint, ``load`` bit-identical to the
in-memory model, and a sane perplexity. The only orderings asserted are
theorems: SVD-LLM's truncation has the least activation error of any
rank-``d`` map, and an exact rank allocation is no worse than the uniform
ranks, which it could have chosen.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import llm_adapter as la
import llm_adapter.checkpoint as ckpt
import numpy as np
import pytest
import torch
from llm_adapter.cli import main
from llm_adapter.evaluate import perplexity, tokenize_for_eval

pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]

FAMILY = "attention.dense"
L, M, N = 6, 192, 192  # neox-mini: 6 layers, attention.dense is 192 x 192
D = 48  # --rank-ratio 0.25
UNIFORM_PARAMS = L * D * (M + N)
CAP = (M * N - 1) // (M + N)  # allocated ranks stay below the break-even rank m n / (m + n)
SAMPLES, CALIB_LEN = 4, 128
PPL_LEN, PPL_WINDOWS = 128, 4
PPL_FACTOR = 3.0  # a sane compressed perplexity: below 3x the dense model's

#: method id -> CompressionConfig keywords (and the compress flags, see _flags)
METHODS: dict[str, dict[str, Any]] = {
    "svd-llm": {"method": "svd-llm"},  # the uniform baseline
    "residual": {"method": "residual"},
    "svd-llm-update": {"method": "svd-llm", "update": True},
    "svd-llm-sum": {"method": "svd-llm", "allocate": "sum"},
    "svd-llm-normalised": {"method": "svd-llm", "allocate": "normalised"},
    "residual-sum": {"method": "residual", "allocate": "sum"},
    "residual-normalised": {"method": "residual", "allocate": "normalised"},
}
#: compressed through ``llm-adapter compress``; the others through the Python API
CLI = ("residual", "svd-llm-update", "svd-llm-sum", "residual-normalised")
#: the uniform method whose parameter budget an allocated one shares
UNIFORM = {k: "residual" if k.startswith("residual") else "svd-llm" for k in METHODS}


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _flags(kw: dict[str, Any]) -> list[str]:
    out = ["--method", kw["method"]]
    if kw.get("update"):
        out.append("--update")
    if "allocate" in kw:
        out += ["--allocate", kw["allocate"]]
    return out


@pytest.fixture(scope="module")
def calib(shared_data: Path) -> Path:
    return shared_data / "wikitext-2" / "wiki.valid.tokens"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One calibration-statistics cache: every run after the first reads the same Grams."""
    return tmp_path_factory.mktemp("calib-cache")


@pytest.fixture(scope="module")
def dense(shared_model: Path, shared_data: Path) -> dict[str, Any]:
    """The dense float64 model, its tokenizer, a few test windows and its perplexity."""
    model, tok = la.load(shared_model, device="cpu", dtype="float64")
    text = (shared_data / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")
    ids = tokenize_for_eval(tok, text[:30_000])[: PPL_WINDOWS * PPL_LEN]
    assert ids.numel() == PPL_WINDOWS * PPL_LEN
    ppl = perplexity(model, input_ids=ids, seq_len=PPL_LEN, progress=False).perplexity
    assert math.isfinite(ppl)
    batch = torch.as_tensor(
        tok(["The game began in 1998 , when the team"], return_tensors="pt")["input_ids"]
    )
    return {"model": model, "tok": tok, "ids": ids, "ppl": ppl, "batch": batch}


@pytest.fixture(scope="module")
def runs(
    shared_model: Path,
    calib: Path,
    cache: Path,
    dense: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, Any]]:
    """Every method once: checkpoint directory, report (as JSON), in-memory model.

    ``llm-adapter compress --json`` for the methods of :data:`CLI` (the model is
    kept by wrapping ``checkpoint.save``); the Python API for the others, with
    the same windows and the same cached Grams.
    """
    root = tmp_path_factory.mktemp("runs")
    real_save = ckpt.save
    out: dict[str, dict[str, Any]] = {}
    stats = None
    for key, kw in METHODS.items():
        if key not in CLI:
            if stats is None:
                stats = la.calibrate(
                    dense["model"], dense["tok"], FAMILY, text_path=calib, samples=SAMPLES,
                    seq_len=CALIB_LEN, seed=0, cache_dir=cache,
                )  # fmt: skip
            model = copy.deepcopy(dense["model"])
            config = la.CompressionConfig(families=(FAMILY,), rank_ratio=0.25, **kw)
            report = la.compress_model(model, config, stats)
            la.save(model, dense["tok"], report, root / key)
            out[key] = {"dir": root / key, "report": _json(report.to_dict()), "model": model}
            continue
        kept: list[torch.nn.Module] = []

        def save(
            model: torch.nn.Module, *args: Any, kept: list[torch.nn.Module] = kept, **kwargs: Any
        ) -> Path:
            kept.append(model)
            return real_save(model, *args, **kwargs)

        argv = [
            "compress", str(shared_model), *_flags(kw), "--families", FAMILY,
            "--rank-ratio", "0.25", "--calib-text", str(calib),
            "--calib-samples", str(SAMPLES), "--calib-seq-len", str(CALIB_LEN),
            "--cache-dir", str(cache), "--device", "cpu", "--dtype", "float64",
            "--out", str(root / key), "--json", "--no-progress",
        ]  # fmt: skip
        buf = io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
            mp.setattr(ckpt, "save", save)
            rc = main(argv)
        assert rc == 0, key
        assert len(kept) == 1
        out[key] = {"dir": root / key, "report": json.loads(buf.getvalue()), "model": kept[0]}
    return out


ERRORS = ("frobenius_error", "frobenius_fraction", "activation_error", "activation_fraction")


def _ranks(fam: dict[str, Any]) -> list[int]:
    """Per-layer ranks; the manifest leaves ``ranks`` out where they are all equal."""
    ranks = fam.get("ranks")
    return [fam["rank"]] * fam["layers"] if ranks is None else list(ranks)


def _fam(runs: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    fam: dict[str, Any] = runs[key]["report"]["families"][FAMILY]
    return fam


def _route(key: str) -> str:
    return f"{key}-{'cli' if key in CLI else 'api'}"


@pytest.mark.parametrize("key", list(METHODS), ids=_route)
def test_report(runs: dict[str, dict[str, Any]], key: str) -> None:
    kw = METHODS[key]
    report = runs[key]["report"]
    assert report["method"] == kw["method"] and report["config"]["method"] == kw["method"]
    assert report["config"]["families"] == [FAMILY]
    assert report["config"].get("update", False) is kw.get("update", False)
    assert report["config"].get("allocate", "none") == kw.get("allocate", "none")
    assert report["calibration"]["samples"] == SAMPLES
    assert report["calibration"]["seq_len"] == CALIB_LEN
    manifest = la.read_manifest(runs[key]["dir"])
    assert manifest["families"] == report["families"] and manifest["config"] == report["config"]
    fam = report["families"][FAMILY]
    assert (fam["layers"], fam["m"], fam["n"], fam["D"]) == (L, M, N, M)
    assert fam["params_dense"] == L * M * N
    assert fam["groups"] == list(range(L)) and fam["shared"] == "left"
    assert len(fam["modules"]) == L
    ranks = _ranks(fam)
    assert len(ranks) == L and fam["rank"] == max(ranks)
    assert fam["params_kept"] == sum(ranks) * (M + N)
    assert fam["param_ratio"] == pytest.approx(fam["params_kept"] / fam["params_dense"])
    for name in ERRORS:
        values = np.asarray(fam[name], dtype=float)
        assert values.shape == (L,) and np.all(np.isfinite(values)) and np.all(values >= 0), name
    if "allocate" in kw:
        assert all(1 <= r <= CAP for r in ranks), ranks
        uniform = _fam(runs, UNIFORM[key])["params_kept"]
        assert uniform == UNIFORM_PARAMS
        # the uniform ranks' budget, spent up to what whole ranks allow
        assert 0.9 * uniform < fam["params_kept"] <= uniform
    else:
        assert "ranks" not in fam and ranks == [D] * L
        assert fam["params_kept"] == UNIFORM_PARAMS
    if key in ("svd-llm", "svd-llm-sum", "svd-llm-normalised"):
        # truncations of W C W^T's spectrum: tail sums over the trace
        assert np.all(np.asarray(fam["activation_fraction"]) <= 1.0)


@pytest.mark.parametrize("key", list(METHODS), ids=_route)
def test_checkpoint(
    runs: dict[str, dict[str, Any]],
    dense: dict[str, Any],
    key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``info`` exits 0; the reload is bit-identical to the in-memory model; sane perplexity."""
    out, report, model = runs[key]["dir"], runs[key]["report"], runs[key]["model"]
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert FAMILY in text and f"method {report['method']}" in text
    reloaded, _ = la.load(out, device="cpu")
    with torch.no_grad():
        a = model(input_ids=dense["batch"]).logits
        b = reloaded(input_ids=dense["batch"]).logits
    assert a.dtype == torch.float64 and bool(torch.all(torch.isfinite(a)))
    assert torch.equal(a, b)
    n = la.count_unique_parameters(reloaded)
    assert n == la.count_unique_parameters(model)
    fam = report["families"][FAMILY]
    removed = la.count_unique_parameters(dense["model"]) - n
    assert removed == fam["params_dense"] - fam["params_kept"]
    ppl = perplexity(reloaded, input_ids=dense["ids"], seq_len=PPL_LEN, progress=False).perplexity
    assert math.isfinite(ppl) and ppl < PPL_FACTOR * dense["ppl"], (ppl, dense["ppl"])


@pytest.mark.parametrize("key", ["residual", "svd-llm-update"])
def test_svd_llm_has_the_least_activation_error(runs: dict[str, dict[str, Any]], key: str) -> None:
    """SVD-LLM's whitened truncation minimises tr((W - W') C (W - W')^T) over rank-d W'.

    Eckart-Young in the space whitened by ``C_l^{1/2}``: per layer, no rank-``d``
    map (the residual refit, the updated left factor) has a smaller activation
    error under the same ``C_l`` (the original model's inputs on the same
    calibration windows, float64 throughout). So plain SVD-LLM's fraction is at
    most the other's; the tolerance (1e-9 relative) covers only float64
    roundoff, where the two coincide (block 0, whose inputs nothing upstream
    has changed).
    """
    base = np.asarray(_fam(runs, "svd-llm")["activation_fraction"])
    other = np.asarray(_fam(runs, key)["activation_fraction"])
    assert np.all(base <= other * (1 + 1e-9) + 1e-12), (base, other)


@pytest.mark.parametrize(
    ("key", "field"),
    [("svd-llm-sum", "activation_error"), ("svd-llm-normalised", "activation_fraction")],
)
def test_allocation_no_worse_than_uniform(
    runs: dict[str, dict[str, Any]], key: str, field: str
) -> None:
    """SVD-LLM's summed (``sum``) or summed relative (``normalised``) truncation energy.

    One family, so every rank costs the same ``m + n``: the greedy allocation is
    exact, and the uniform ranks are within its budget; so its total is at most
    the uniform ranks'. Tolerance: float64 roundoff only (1e-9 relative).
    """
    a = float(np.sum(_fam(runs, key)[field]))
    u = float(np.sum(_fam(runs, "svd-llm")[field]))
    assert a <= u * (1 + 1e-9), (a, u)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--method", "bundle", "--allocate", "sum"], "--allocate"),
        (["--method", "residual", "--update"], "--update"),
    ],
    ids=["bundle-allocate", "residual-update"],
)
def test_bad_combination_exits_2_before_loading(
    shared_model: Path,
    calib: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    named: str,
) -> None:
    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(ckpt, "load", no_load)
    out = tmp_path / "ck"
    argv = [
        "compress", str(shared_model), *flags, "--calib-text", str(calib),
        "--calib-samples", "2", "--calib-seq-len", "16", "--device", "cpu",
        "--out", str(out), "--json", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-adapter: error: "), captured.err
    assert named in lines[0]
    assert not out.exists()
