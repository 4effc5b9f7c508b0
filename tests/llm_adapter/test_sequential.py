"""Sequential (residual-aware) compression: statistics plumbing and optimality, checked
against statistics recaptured independently through whole-model hooks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter.lowrank import LowRankLinear
from llm_adapter.models import family_module_names, family_modules
from llm_adapter.sequential import compress_sequential
from llm_adapter.testing import random_model

O = "self_attn.o_proj"


def _model() -> Any:
    return random_model("llama", hidden_size=32, num_hidden_layers=3, vocab_size=96, seed=4)


def _windows() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 96, (12, 16), generator=g)


def _inputs(model: Any, name: str, windows: torch.Tensor) -> np.ndarray:
    """Every token's input to module ``name``, float64, via a hook on the whole model."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(name)
    h = module.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    h.remove()
    return torch.cat(seen).double().numpy()


def _dense(model: Any, name: str) -> np.ndarray:
    mod = model.get_submodule(name)
    w = mod.weight() if isinstance(mod, LowRankLinear) else mod.weight
    return w.detach().double().numpy()


def _svd_llm(W: np.ndarray, C: np.ndarray, d: int) -> np.ndarray:
    """SVD-LLM as its authors write it: Cholesky whitening, truncated SVD, un-whitening."""
    S = np.linalg.cholesky(C)
    U, s, Vt = np.linalg.svd(W @ S)
    return (U[:, :d] * s[:d]) @ Vt[:d] @ np.linalg.inv(S)


def test_first_block_is_svd_llm_and_later_blocks_are_optimal() -> None:
    base, windows, d = _model(), _windows(), 8
    model = _model()
    fits = compress_sequential(model, [O], {O: [d, d, d]}, windows, fit="residual", ridge=0.0)
    names = family_module_names(base, O)
    # block 0: nothing upstream is compressed, so the fit is SVD-LLM's truncation
    x0 = _inputs(base, names[0], windows)
    C0 = x0.T @ x0 / len(x0)
    ref = _svd_llm(_dense(base, names[0]), C0, d)
    got = _dense(model, names[0])
    assert np.linalg.norm(got - ref) <= 1e-6 * np.linalg.norm(ref)
    # blocks 1, 2: the fit minimises E||W x - W' x_hat||^2 over rank-d maps W'
    for i in (1, 2):
        x = _inputs(base, names[i], windows)
        xh = _inputs(model, names[i], windows)
        W = _dense(base, names[i])

        def objective(Wc: np.ndarray, W: np.ndarray = W, x: np.ndarray = x, xh=xh) -> float:
            r = x @ W.T - xh @ Wc.T
            return float(np.mean(np.sum(r * r, axis=1)))

        mine = objective(_dense(model, names[i]))
        assert mine == pytest.approx(fits[O].output_error[i], rel=1e-6)
        Ch = xh.T @ xh / len(xh)
        for other in (_svd_llm(W, Ch, d), _svd_llm(W, x.T @ x / len(x), d)):
            assert mine <= objective(other) * (1 + 1e-9)
        assert fits[O].ranks == [d, d, d]


def test_update_fit_solves_its_normal_equations() -> None:
    base, windows, d = _model(), _windows(), 6
    model = _model()
    compress_sequential(model, [O], {O: [d] * 3}, windows, fit="update", ridge=0.0)
    assert _update_residual(base, model, family_module_names(base, O)[2], windows) <= 1e-5


def _update_residual(base: Any, model: Any, name: str, windows: torch.Tensor) -> float:
    """The left factor of ``name`` is the least-squares fit of ``W x_hat`` on ``Z x_hat``
    when ``(W - A Z) C_hat Z^T = 0``: that residual, relative to ``||W C_hat Z^T||``, with
    ``x_hat`` recaptured through a whole-model hook."""
    xh = _inputs(model, name, windows)
    Ch = xh.T @ xh / len(xh)
    W = _dense(base, name)
    mod = model.get_submodule(name)
    A = mod.left.detach().double().numpy()
    Z = mod.right.detach().double().numpy()
    grad = (W - A @ Z) @ Ch @ Z.T
    return float(np.linalg.norm(grad) / np.linalg.norm(W @ Ch @ Z.T))


def test_left_refit_for_the_original_output_solves_its_normal_equations() -> None:
    """``--refit left`` (target ``W x``, ridge 0, no gate): ``(W C_x - A Z C_hat) Z^T = 0``.

    ``C_x = E[x x_hat^T]`` and ``C_hat`` recaptured through whole-model hooks
    on the original and the compressed model; tolerance as the update's.
    """
    base, windows, d = _model(), _windows(), 6
    model = _model()
    opts = {"factor": "left", "target": "output", "mix": 0.5, "ridge": 0.0, "gate": "off"}
    fits = compress_sequential(model, [O], {O: [d] * 3}, windows, fit="refit", refit=opts)
    assert fits[O].refit_kept == [True] * 3 and fits[O].refit_ridge == [0.0] * 3
    name = family_module_names(base, O)[2]
    x, xh = _inputs(base, name, windows), _inputs(model, name, windows)
    Ch, Cx = xh.T @ xh / len(xh), x.T @ xh / len(x)
    W = _dense(base, name)
    mod = model.get_submodule(name)
    A, Z = mod.left.detach().double().numpy(), mod.right.detach().double().numpy()
    grad = (W @ Cx - A @ Z @ Ch) @ Z.T
    assert np.linalg.norm(grad) <= 1e-5 * np.linalg.norm(W @ Cx @ Z.T)
    # not the update's equations (target W x_hat): the check above can fail
    other = (W - A @ Z) @ Ch @ Z.T
    assert np.linalg.norm(other) > 1e-3 * np.linalg.norm(W @ Ch @ Z.T)


def test_gated_refit_keeps_the_truncation_where_it_is_not_kept() -> None:
    """With the gate, a map that did not keep its refit is SVD-LLM's truncation ``P_U W``.

    ``U`` the top-``d`` eigenvectors of ``W C W^T`` (``eigh``), ``C`` from the
    original model's inputs on every window; the chosen ridges are on the grid.
    """
    from llm_adapter.sequential import AUTO_RIDGES

    base, windows, d = _model(), _windows(), 6
    model = _model()
    opts = {"factor": "both", "target": "output", "mix": 0.5, "ridge": "auto", "gate": "heldout"}
    fits = compress_sequential(model, [O], {O: [d] * 3}, windows, fit="refit", refit=opts)
    kept, ridges = fits[O].refit_kept, fits[O].refit_ridge
    assert kept is not None and ridges is not None
    assert len(kept) == 3 and set(ridges) <= set(AUTO_RIDGES)
    for i, name in enumerate(family_module_names(base, O)):
        x = _inputs(base, name, windows)
        W = _dense(base, name)
        _, V = np.linalg.eigh(W @ (x.T @ x / len(x)) @ W.T)
        U = V[:, ::-1][:, :d]
        dev = np.linalg.norm(_dense(model, name) - U @ (U.T @ W)) / np.linalg.norm(W)
        if not kept[i]:
            assert dev <= 1e-6, (i, dev)


def test_every_family_is_replaced_and_per_layer_ranks_are_kept() -> None:
    model, windows = _model(), _windows()
    fams = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", O,
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    ranks = {f: [4, 6, 8] for f in fams}
    fits = compress_sequential(model, fams, ranks, windows, fit="residual")
    for f in fams:
        mods = family_modules(model, f)
        assert [m.rank for m in mods] == [4, 6, 8]
        assert all(isinstance(m, LowRankLinear) for m in mods)
        assert all(np.isfinite(fits[f].output_error))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=windows[:2]).logits).all()


ALL = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", O,
       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip


def test_maps_sharing_an_input_each_solve_their_own_normal_equations() -> None:
    """q, k, v (and gate, up) read one tensor and share its statistics; each map's
    update must still be the least-squares fit of its own ``W x_hat`` (recaptured here
    through whole-model hooks, after the whole model is compressed)."""
    base, windows = _model(), _windows()
    model = _model()
    ranks = {f: [3, 5, 7] for f in ALL}
    compress_sequential(model, ALL, ranks, windows, fit="update", ridge=0.0)
    for f in ALL:
        for i in (1, 2):
            name = family_module_names(base, f)[i]
            assert _update_residual(base, model, name, windows) <= 1e-5, (f, i)


def test_capturing_an_early_map_does_not_run_the_rest_of_the_block() -> None:
    """Capturing q's compressed-stream input stops each block's pass at q: the MLP runs
    only for the original stream's pass and the compressed stream's advance."""
    model, windows = _model(), _windows()
    calls = [0]
    for mod in family_modules(model, "mlp.down_proj"):
        mod.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    batch = 4
    compress_sequential(
        model, ["self_attn.q_proj"], {"self_attn.q_proj": [4] * 3}, windows,
        fit="update", batch_size=batch,
    )  # fmt: skip
    batches = -(-windows.shape[0] // batch)
    # per block: one original pass and one advance of each batch (no capture pass)
    assert calls[0] == 3 * 2 * batches


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("residual", {}),
        ("svd-llm", {"update": True}),
        ("svd-llm", {"allocate": "sum"}),
        ("residual", {"allocate": "normalised"}),
        ("svd-llm", {"refit": "sigma", "target": "joint", "mix": 0.25}),
    ],
)
def test_new_methods_save_reload_and_spend_the_budget(
    method: str, options: dict[str, Any], tmp_path: Any
) -> None:
    from llm_adapter import CompressionConfig, calibrate, compress_model, load, rank_for, save

    model, windows = _model(), _windows()
    fams = ["self_attn.o_proj", "mlp.down_proj"]
    stats = calibrate(model, None, fams, token_windows=windows, batch_size=4)
    config = CompressionConfig(method=method, param_ratio=0.5, families=fams, **options)
    dense = {f: [m.weight.shape for m in family_modules(model, f)] for f in fams}
    report = compress_model(model, config, stats)
    uniform = CompressionConfig(method="svd-llm", param_ratio=0.5, families=fams)
    budget = 0
    for f in fams:
        L = len(dense[f])
        m, n = dense[f][0]
        budget += L * (m + n) * rank_for(uniform, m, n, L)
    kept = sum(r.params_kept for r in report.families.values())
    assert kept <= budget
    if "allocate" in options:
        ranks = [r.ranks or [r.rank] * r.layers for r in report.families.values()]
        assert any(len(set(rs)) > 1 for rs in ranks)  # not uniform on this model
        assert kept > 0.9 * budget  # and it spends the budget
    out = save(model, None, report, tmp_path / "ck")
    again, _ = load(out, device="cpu")
    with torch.no_grad():
        a = model(input_ids=windows[:2]).logits
        b = again(input_ids=windows[:2]).logits
    assert torch.equal(a, b)
    for f in fams:
        assert [m.rank for m in family_modules(again, f)] == [
            m.rank for m in family_modules(model, f)
        ]
