"""End to end on the shared trained GPT-NeoX (neox-mini): the refit variants of ``svd-llm``.

``--refit`` (left, right, both, sigma) with ``--target``, ``--mix``, ``--ridge``
and ``--gate``, in float64 on four calibration windows of 128 tokens (three
fitted, one held out) and ``attention.dense`` at rank ratio 0.25:

* a refit keeps the budget (every layer at the uniform rank, the parameters of
  plain SVD-LLM), records the ridge and the gate per layer in the manifest,
  counts the maps that kept it in the summary, and reloads bit-identically;
* ``ridge -> inf`` with the gate off returns SVD-LLM's truncation (the ridge
  theorem, through the adapter);
* bad combinations are one-line errors before the model is loaded, and a
  held-out split needs two windows.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import llm_adapter as la
import llm_adapter.checkpoint as ckpt
import pytest
import torch
from llm_adapter.cli import main
from llm_adapter.models import family_modules
from llm_adapter.sequential import AUTO_RIDGES

pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]

FAMILY = "attention.dense"
L, M, N = 6, 192, 192  # neox-mini: 6 layers, attention.dense is 192 x 192
D = 48  # --rank-ratio 0.25
SAMPLES, CALIB_LEN = 4, 128


@pytest.fixture(scope="module")
def calib(shared_data: Path) -> Path:
    return shared_data / "wikitext-2" / "wiki.valid.tokens"


@pytest.fixture(scope="module")
def dense(shared_model: Path, calib: Path) -> dict[str, Any]:
    model, tok = la.load(shared_model, device="cpu", dtype="float64")
    stats = la.calibrate(
        model, tok, FAMILY, text_path=calib, samples=SAMPLES, seq_len=CALIB_LEN, seed=0
    )
    batch = torch.as_tensor(
        tok(["The game began in 1998 , when the"], return_tensors="pt")["input_ids"]
    )
    return {"model": model, "tok": tok, "stats": stats, "batch": batch}


def _compress(dense: dict[str, Any], **kw: Any) -> tuple[torch.nn.Module, la.CompressionReport]:
    model = copy.deepcopy(dense["model"])
    config = la.CompressionConfig(method="svd-llm", families=(FAMILY,), rank_ratio=0.25, **kw)
    return model, la.compress_model(model, config, dense["stats"])


def test_refit_keeps_the_budget_records_the_gate_and_reloads(
    dense: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, report = _compress(dense, refit="left", target="joint", mix=0.25)
    fam = report.families[FAMILY]
    assert fam.rank == D and fam.ranks is None and fam.params_kept == L * D * (M + N)
    assert fam.refit_ridge is not None and fam.refit_kept is not None
    assert len(fam.refit_ridge) == L and set(fam.refit_ridge) <= set(AUTO_RIDGES)
    assert len(fam.refit_kept) == L
    assert f"refit kept by {sum(fam.refit_kept)} of {L} factored maps" in report.summary_table()
    config = report.to_dict()["config"]
    assert (config["refit"], config["target"], config["mix"]) == ("left", "joint", 0.25)
    assert "ridge" not in config and "gate" not in config  # defaults of optional parameters
    out = la.save(model, dense["tok"], report, tmp_path / "ck")
    manifest = la.read_manifest(out)
    assert manifest["families"][FAMILY]["refit_kept"] == fam.refit_kept
    assert manifest["families"][FAMILY]["refit_ridge"] == fam.refit_ridge
    again = la.CompressionReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.families[FAMILY] == fam
    reloaded, _ = la.load(out, device="cpu")
    with torch.no_grad():
        a = model(input_ids=dense["batch"]).logits
        b = reloaded(input_ids=dense["batch"]).logits
    assert bool(torch.all(torch.isfinite(a))) and torch.equal(a, b)
    assert la.count_unique_parameters(reloaded) == la.count_unique_parameters(model)


@pytest.fixture(scope="module")
def plain(dense: dict[str, Any]) -> tuple[torch.nn.Module, la.CompressionReport]:
    """Unrefit SVD-LLM on the same windows and statistics."""
    return _compress(dense)


def test_plain_svd_llm_manifest_has_no_refit_fields(plain: Any) -> None:
    _, report = plain
    fam = report.to_dict()["families"][FAMILY]
    assert "refit_ridge" not in fam and "refit_kept" not in fam
    assert "refit" not in report.to_dict()["config"]
    assert "refit kept" not in report.summary_table()


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [(m.left @ m.right).detach() for m in family_modules(model, FAMILY)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b)) / float(torch.linalg.norm(a))


@pytest.mark.parametrize("factor", ["sigma", "both"])
def test_refit_at_an_infinite_ridge_is_the_truncation(
    dense: dict[str, Any], plain: Any, factor: str
) -> None:
    """``ridge -> inf`` returns the unrefit factors (distance ``O(1 / ridge)``).

    At ``ridge = 1e9`` every map is within ``1e-6`` (relative) of SVD-LLM's
    truncation of the same layer on the same windows: the distance is about
    ``1e-9`` times the refit's pull, the two truncations differ by float64
    roundoff in the Grams (about ``1e-15``) over the eigengap at rank 48.
    """
    far_model, far = _compress(dense, refit=factor, ridge=1e9, gate="off")
    assert far.families[FAMILY].refit_kept == [True] * L
    assert far.families[FAMILY].refit_ridge == [1e9] * L
    for l, (wp, wq) in enumerate(zip(_weights(plain[0]), _weights(far_model), strict=True)):
        assert _rel(wp, wq) <= 1e-6, l


def test_refit_at_no_ridge_moves_the_last_layer(dense: dict[str, Any], plain: Any) -> None:
    """The check above can fail: unregularised, the last layer's refit is far from the truncation.

    Its inputs differ from the original model's (five compressed blocks
    upstream), so the best rank-48 map for the original output on them is
    not the truncation; ``1e-6`` is far below the distance.
    """
    near, _ = _compress(dense, refit="both", ridge=0.0, gate="off")
    assert _rel(_weights(plain[0])[-1], _weights(near)[-1]) > 1e-6


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--method", "svd-llm", "--ridge", "0.1"], "--ridge"),
        (["--method", "svd-llm", "--refit", "left", "--update"], "--update"),
        (["--method", "svd-llm", "--refit", "left", "--mix", "0.3"], "--mix"),
        (["--method", "svd-llm", "--refit", "both", "--target", "joint", "--mix", "2"], "--mix 2"),
        (["--method", "svd-llm", "--refit", "left", "--allocate", "fisher", "--select",
          "components"], "--select components"),
        (["--method", "svd-llm", "--refit", "left", "--ridge", "big"], "--ridge big"),
        (["--method", "svd-llm", "--refit", "left", "--ridge", "-1"], "--ridge -1"),
        (["--method", "residual", "--refit", "left"], "--refit"),
    ],
    ids=["ridge-no-refit", "refit-update", "mix-no-joint", "mix-2", "fisher", "ridge-word",
         "ridge-negative", "residual-refit"],
)  # fmt: skip
def test_bad_refit_combination_exits_2_before_loading(
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
    argv = [
        "compress", str(shared_model), *flags, "--calib-text", str(calib),
        "--calib-samples", "2", "--calib-seq-len", "16", "--device", "cpu",
        "--out", str(tmp_path / "ck"), "--json", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines


def test_held_out_refit_needs_two_windows(dense: dict[str, Any]) -> None:
    one = dense["stats"].windows[:1]
    model = copy.deepcopy(dense["model"])
    config = la.CompressionConfig(
        method="svd-llm", families=(FAMILY,), rank_ratio=0.25, refit="left"
    )
    with pytest.raises(la.AdapterError, match="got 1 window: use calib_samples >= 2"):
        la.compress_model(model, config, dense["stats"], windows=one)


def test_the_summary_counts_maps_kept_dense_apart(dense: dict[str, Any]) -> None:
    """A map the allocation left dense (ridge None) is not a refit the gate dropped."""
    _, report = _compress(dense, refit="left", ridge=0.0, gate="off")
    fam = report.families[FAMILY]
    assert fam.refit_ridge is not None and fam.refit_kept is not None
    fam.refit_ridge[0], fam.refit_kept[0] = None, False
    assert (
        f"refit kept by {sum(fam.refit_kept)} of {L - 1} factored maps (lower held-out output "
        "error); 1 kept dense, nothing to refit"
    ) in report.summary_table()
