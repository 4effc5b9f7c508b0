"""End to end on the shared trained GPT-NeoX (neox-mini): every method, save, reload.

The model is loaded in float64 so that the written-back weights can be compared
with independent float64 computations at tight tolerances.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import grassbundle.bundle as gbb
import llm_adapter as la
import numpy as np
import pytest
import torch
from llm_adapter.methods import METHOD_TABLE
from llm_adapter.safetensors_file import main_file_tensor_bytes

pytestmark = [pytest.mark.slow, pytest.mark.data]

FAMILY = "attention.dense"
#: the parameters a method runs at here (its defaults otherwise)
SETTINGS: dict[str, dict[str, Any]] = {
    "basis-sharing": {"group_size": 2},
    "bundle": {"lam": 0.0, "tying": 1},
}
#: every registered method, and the bundle once more inside the phase diagram
METHODS: list[dict[str, Any]] = [
    *({"method": name, **SETTINGS.get(name, {})} for name in METHOD_TABLE),
    {"method": "bundle", "lam": 1.0, "tying": 3, "metric": "activation"},
]


@pytest.fixture(scope="module")
def setup(shared_model: Path, shared_data: Path) -> dict[str, Any]:
    model, tok = la.load(shared_model, device="cpu", dtype="float64")
    stats = la.calibrate(
        model,
        tok,
        FAMILY,
        text_path=shared_data / "wikitext-2" / "wiki.valid.tokens",
        samples=8,
        seq_len=128,
        seed=0,
    )
    W = la.family_weights(model, FAMILY)
    ids = torch.as_tensor(
        tok("The game began in 1998 , when the team", return_tensors="pt")["input_ids"]
    )
    return {"model": model, "tok": tok, "stats": stats, "W": W, "ids": ids}


def _compress(
    setup: dict[str, Any], **kw: Any
) -> tuple[torch.nn.Module, Any, la.CompressionReport]:
    model, tok = copy.deepcopy(setup["model"]), setup["tok"]
    report = la.compress_model(
        model, la.CompressionConfig(families=(FAMILY,), rank_ratio=0.25, **kw), setup["stats"]
    )
    return model, tok, report


def _dense(model: torch.nn.Module) -> list[np.ndarray]:
    return [(m.left @ m.right).detach().numpy() for m in la.family_modules(model, FAMILY)]


@pytest.mark.parametrize("kw", METHODS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_method_save_reload(setup: dict[str, Any], tmp_path: Path, kw: dict[str, Any]) -> None:
    model, tok, report = _compress(setup, **kw)
    fam = report.families[FAMILY]
    assert fam.rank == 48 and fam.rank_ratio == 0.25  # D = 192
    dense_params = la.count_unique_parameters(setup["model"])
    assert dense_params - la.count_unique_parameters(model) == fam.params_dense - fam.params_kept
    out = la.save(model, tok, report, tmp_path / "ck")
    reloaded, tok2 = la.load(out, device="cpu")
    with torch.no_grad():
        a = model(input_ids=setup["ids"]).logits
        b = reloaded(input_ids=setup["ids"]).logits
    assert torch.equal(a, b)
    n = la.count_unique_parameters(reloaded)
    assert n == la.count_unique_parameters(model)
    assert main_file_tensor_bytes(out / "model.safetensors") == 8 * n  # float64, each tensor once
    assert tok2("hello world")["input_ids"] == tok("hello world")["input_ids"]
    # reported errors are those of the weights actually written back
    for l, Wc in enumerate(_dense(model)):
        E = setup["W"][l] - Wc
        np.testing.assert_allclose(fam.frobenius_error[l], np.sum(E * E), rtol=1e-8)


@pytest.mark.parametrize(
    ("kw", "solver"),
    [
        ({"method": "svd"}, lambda p: gbb.solve(p, 0.0, 1)),
        ({"method": "svd-llm"}, gbb.anchor_section),
        ({"method": "bundle", "lam": 0.0, "tying": 2}, lambda p: gbb.solve(p, 0.0, 2)),
    ],
)
def test_report_equals_grassbundle_energies(
    setup: dict[str, Any], kw: dict[str, Any], solver: Any
) -> None:
    _, _, report = _compress(setup, **kw)
    fam = report.families[FAMILY]
    problem = gbb.BundleProblem(setup["W"], setup["stats"].covariance(FAMILY), rank=48)
    section = solver(problem)
    energies = problem.layer_energies(section.layer_bases)
    np.testing.assert_allclose(fam.frobenius_error, energies["frobenius"], rtol=1e-12)
    np.testing.assert_allclose(fam.activation_error, energies["activation"], rtol=1e-12)
    np.testing.assert_allclose(fam.frobenius_fraction, section.frobenius_error, rtol=1e-12)


def test_bundle_lambda0_beats_svd_llm_in_frobenius(setup: dict[str, Any]) -> None:
    """Theorem B untied, on trained weights: strictly lower Frobenius error on every layer."""
    b = np.array(
        _compress(setup, method="bundle", lam=0.0, tying=1)[2].families[FAMILY].frobenius_error
    )
    s = np.array(_compress(setup, method="svd-llm")[2].families[FAMILY].frobenius_error)
    assert np.all(b < s), (b, s)


def test_svd_llm_equals_reference_implementation(setup: dict[str, Any]) -> None:
    """SVD-LLM as published: S = chol(C), W S = U Sigma V^T, W' = U_d Sigma_d V_d^T S^{-1}."""
    model, _, _ = _compress(setup, method="svd-llm")
    C = setup["stats"].covariance(FAMILY)
    for l, Wc in enumerate(_dense(model)):
        W = setup["W"][l]
        S = np.linalg.cholesky(C[l])
        U, sig, Vt = np.linalg.svd(W @ S)
        ref = np.linalg.solve(S.T, ((U[:, :48] * sig[:48]) @ Vt[:48]).T).T  # (.) S^{-1}
        # float64 throughout; the S^{-1} route loses a factor cond(S) ~ 1e2..1e4
        rel = np.linalg.norm(Wc - ref) / np.linalg.norm(ref)
        assert rel < 1e-8, (l, rel)
