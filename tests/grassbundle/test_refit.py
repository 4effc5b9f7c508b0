"""Closed-form refits (:mod:`grassbundle.refit`).

Statistics are built from explicit seeded samples: original inputs ``X``
(``N x n``) and "compressed-model" inputs ``X_hat = X P + noise`` (a shifted
distribution correlated with ``X``), so every expected error has an
independent empirical value: the mean squared error over the samples.

The theorem tests (``test_theorems_refit_*``, selected by ``pytest -k
theorems``) check, against references computed without the code under test:

* the residual fit equals the textbook reduced-rank regression on the samples
  (least squares, then the SVD of the fitted values) and no rank-``d`` map
  beats it; with ``x_hat = x`` it is SVD-LLM;
* the shared-basis fit of a group minimises the summed error over shared
  bases and its error is "constant + tail sum of the spectrum";
* SVD-LLM's update equals the authors' ``lstsq`` on the tokens, never
  increases the error it minimises, and does nothing when the update
  statistics equal the whitening statistics;
* the ridge changes the error by at most ``eps ||W - A B||_F^2``.

Tolerances: errors are differences of traces of size ``ref = E||W x||^2``;
float64 roundoff in them is about ``n eps ref``, so ``1e-9 * ref`` is safe
(conditioning of the sample covariances is at most about 1e3 here) and far
below the differences a wrong fit makes (>= 1e-3 ref in these problems).
"""

from __future__ import annotations

import grassbundle as gb
import numpy as np
import pytest
from grassbundle.bundle import BundleProblem, anchor_section, shared_output_basis
from grassbundle.refit import REFIT_FACTORS, REFIT_TARGETS
from hypothesis import given
from hypothesis import strategies as st


def samples(seed: int, m: int, n: int, N: int, shift: float = 0.3, k: int = 1):
    """Weights and stats from explicit samples: (W, X, Xh, C, C_hat, C_cross)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((k, m, n)) * (1.0 + np.arange(n)) ** -0.5
    X = rng.standard_normal((k, N, n)) @ rng.standard_normal((k, n, n))
    P = np.eye(n) + shift * rng.standard_normal((k, n, n)) / np.sqrt(n)
    Xh = X @ P + shift * rng.standard_normal((k, N, n))
    T = np.swapaxes
    C = T(X, 1, 2) @ X / N
    Ch = T(Xh, 1, 2) @ Xh / N
    Cx = T(X, 1, 2) @ Xh / N
    return W, X, Xh, C, Ch, Cx


def empirical(W, X, Xh, Wc) -> float:
    """mean ||W x - Wc x_hat||^2 over the samples."""
    return float(np.mean(np.sum((X @ W.T - Xh @ Wc.T) ** 2, axis=1)))


def rrr_on_samples(W, X, Xh, d) -> np.ndarray:
    """Textbook reduced-rank regression of Y = X W^T on X_hat (Izenman 1975).

    Least squares ``Gamma = argmin ||Y - X_hat Gamma||``, then project on the
    top-``d`` right singular vectors of the fitted values ``X_hat Gamma``.
    """
    Y = X @ W.T
    Gamma = np.linalg.lstsq(Xh, Y, rcond=None)[0]
    _, _, Vt = np.linalg.svd(Xh @ Gamma, full_matrices=False)
    Vd = Vt[:d].T
    return (Gamma @ Vd @ Vd.T).T  # the compressed map, m x n


shapes = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(3, 9),  # m
    st.integers(3, 9),  # n
    st.floats(0.0, 1.0),  # shift
)


@given(p=shapes, dfrac=st.floats(0.0, 1.0))
def test_theorems_refit_residual_fit_is_reduced_rank_regression(p, dfrac) -> None:
    seed, m, n, shift = p
    d = 1 + int(dfrac * (min(m, n) - 1))
    W, X, Xh, C, Ch, Cx = samples(seed, m, n, N=4 * n + 10, shift=shift)
    fit = gb.residual_fit(W[0], Ch[0], Cx[0], rank=d, C=C[0], ridge=0.0)
    ref = fit.reference[0]
    emp = empirical(W[0], X[0], Xh[0], fit.weight())
    assert abs(fit.error[0] - emp) <= 1e-9 * ref  # the reported error is the real one
    rrr = empirical(W[0], X[0], Xh[0], rrr_on_samples(W[0], X[0], Xh[0], d))
    assert abs(fit.error[0] - rrr) <= 1e-9 * ref  # and it is the optimum
    # a few other rank-d maps, all no better: SVD-LLM on the original
    # inputs, its update, the local fit (target W x_hat), random maps
    rng = np.random.default_rng(seed)
    others = [
        gb.svd_llm_update(W[0], C[0], rank=d, ridge=0.0),
        gb.svd_llm_update(W[0], C[0], rank=d, C_update=Ch[0], ridge=0.0),
    ]
    cands = [o.weight() for o in others]
    cands.append(gb.residual_fit(W[0], Ch[0], rank=d, ridge=0.0).weight())
    cands += [rng.standard_normal((m, d)) @ rng.standard_normal((d, n)) for _ in range(3)]
    for Wc in cands:
        assert fit.error[0] <= empirical(W[0], X[0], Xh[0], Wc) + 1e-9 * ref


@given(p=shapes, dfrac=st.floats(0.0, 1.0))
def test_theorems_refit_residual_fit_is_stationary(p, dfrac) -> None:
    """The gradients in A = U and B vanish (first-order optimality over both factors)."""
    seed, m, n, shift = p
    d = 1 + int(dfrac * (min(m, n) - 1))
    W, _, _, C, Ch, Cx = samples(seed, m, n, N=4 * n + 10, shift=shift)
    fit = gb.residual_fit(W[0], Ch[0], Cx[0], rank=d, C=C[0], ridge=0.0)
    U, B = fit.basis, fit.right[0]
    R = W[0] @ Cx[0] - U @ B @ Ch[0]  # -(1/2) d/d(UB) of the objective
    scale = np.linalg.norm(W[0]) * np.linalg.norm(Cx[0]) + 1e-300
    assert np.linalg.norm(R @ B.T) <= 1e-9 * scale * np.linalg.norm(B)  # d/dA
    assert np.linalg.norm(U.T @ R) <= 1e-9 * scale  # d/dB


def test_theorems_refit_residual_fit_reduces_to_svd_llm() -> None:
    W, _, _, C, _, _ = samples(7, 8, 10, N=60)
    d = 3
    fit = gb.residual_fit(W[0], C[0], C[0], rank=d, C=C[0], ridge=0.0)
    problem = BundleProblem(W, C, rank=d, metric="activation")
    anchor = anchor_section(problem)
    mu = np.linalg.eigvalsh(W[0] @ C[0] @ W[0].T)[::-1]
    assert mu[d - 1] - mu[d] > 1e-3 * mu[0]  # an eigengap: the subspace is unique
    # the same subspace (angles at roundoff amplified by mu_1 / gap), the same map P_U W
    assert np.max(gb.principal_angles(fit.basis, anchor.bases[0])) < 1e-8
    PW = anchor.bases[0] @ anchor.bases[0].T @ W[0]
    np.testing.assert_allclose(fit.weight(), PW, rtol=0, atol=1e-9 * np.abs(W).max())
    # and the error is SVD-LLM's tail sum, tr M - (mu_1 + ... + mu_d)
    np.testing.assert_allclose(fit.error[0], mu[d:].sum(), rtol=1e-9)
    # the target W x_hat with C_hat = C is the same problem
    local = gb.residual_fit(W[0], C[0], rank=d, ridge=0.0)
    np.testing.assert_allclose(local.weight(), PW, rtol=0, atol=1e-9 * np.abs(W).max())


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), shift=st.floats(0.0, 1.0))
def test_theorems_refit_shared_basis_is_optimal(seed, k, shift) -> None:
    m, n, d = 6, 5, 2
    W, X, Xh, C, Ch, Cx = samples(seed, m, n, N=40, shift=shift, k=k)
    omega = np.random.default_rng(seed).uniform(0.5, 2.0, size=k)
    fit = gb.residual_fit(W, Ch, Cx, rank=d, C=C, omega=omega, ridge=0.0)
    ref = float(np.dot(omega, fit.reference))
    for l in range(k):
        emp = empirical(W[l], X[l], Xh[l], fit.weight(l))
        assert abs(fit.error[l] - emp) <= 1e-9 * fit.reference[l]
    total = float(np.dot(omega, fit.error))
    # "constant + tail": sum_l omega_l (E||W_l x||^2 - tr K_l) + sum_{i > d} mu_i
    K = [fit.target[l] @ Ch[l] @ fit.target[l].T for l in range(k)]
    const = float(sum(omega[l] * (fit.reference[l] - np.trace(K[l])) for l in range(k)))
    assert abs(total - (const + fit.spectrum[d:].sum())) <= 1e-9 * ref
    np.testing.assert_allclose(
        fit.spectrum,
        np.linalg.eigvalsh(sum(omega[l] * K[l] for l in range(k)))[::-1],
        rtol=0,
        atol=1e-9 * fit.spectrum[0],
    )
    # no shared basis does better (each map with its own best right factor)
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        V = np.linalg.qr(rng.standard_normal((m, d)))[0]
        other = 0.0
        for l in range(k):
            B = np.linalg.lstsq(Xh[l], X[l] @ W[l].T @ V, rcond=None)[0].T
            other += omega[l] * empirical(W[l], X[l], Xh[l], V @ B)
        assert total <= other + 1e-9 * ref


def test_theorems_refit_tied_corner_is_the_shared_output_basis() -> None:
    """x_hat = x, omega = 1: the shared basis is the top-d eigenspace of sum_l M_l."""
    W, _, _, C, _, _ = samples(3, 7, 6, N=50, k=3)
    d = 2
    fit = gb.residual_fit(W, C, C, rank=d, C=C, ridge=0.0)
    core = shared_output_basis(BundleProblem(W, C, rank=d, metric="activation"), 3)
    mu = np.linalg.eigvalsh(sum(W[l] @ C[l] @ W[l].T for l in range(3)))[::-1]
    assert mu[d - 1] - mu[d] > 1e-3 * mu[0]
    assert np.max(gb.principal_angles(fit.basis, core.bases[0])) < 1e-8
    np.testing.assert_allclose(fit.error.sum(), mu[d:].sum(), rtol=1e-9)


def authors_update(W, C, Xh, d) -> np.ndarray:
    """SVD-LLM's ``whitening`` + ``local_update`` on tokens, transcribed to numpy.

    Cholesky whitening ``S``, truncated SVD of ``W S``, right factor
    ``Sigma V^T S^{-1}`` kept, left factor from ``lstsq`` of the layer's
    output ``X_hat W^T`` on ``X_hat V^T Sigma`` over the tokens.
    """
    S = np.linalg.cholesky(C)
    _, s, Vt = np.linalg.svd(W @ S, full_matrices=False)
    trunc_v = Vt[:d] @ np.linalg.inv(S)
    sigma = np.diag(s[:d])
    x = Xh @ trunc_v.T @ sigma
    updated_uT = np.linalg.lstsq(x, Xh @ W.T, rcond=None)[0]
    return updated_uT.T @ sigma @ trunc_v


@given(p=shapes, dfrac=st.floats(0.0, 1.0))
def test_theorems_refit_svd_llm_update_is_the_authors_update(p, dfrac) -> None:
    seed, m, n, shift = p
    d = 1 + int(dfrac * (min(m, n) - 1))
    W, _, Xh, C, Ch, _ = samples(seed, m, n, N=4 * n + 10, shift=shift)
    fit = gb.svd_llm_update(W[0], C[0], rank=d, C_update=Ch[0], ridge=0.0)
    ref = authors_update(W[0], C[0], Xh[0], d)
    # the same map; the two routes (Cholesky + inverse + lstsq on tokens, and
    # eigh + covariance solve) agree to roundoff times the conditioning of C
    # and of the d x d Gram (both below ~1e4 in these draws)
    Xn = np.linalg.norm(Xh[0] @ ref.T)
    assert np.linalg.norm(Xh[0] @ (fit.weight() - ref).T) <= 1e-7 * Xn
    # it minimises E||W x_hat - A Z x_hat||^2 over A: never worse than before
    assert fit.error <= fit.info["error_before"] + 1e-12 * fit.reference
    emp = float(np.mean(np.sum((Xh[0] @ (W[0] - fit.weight()).T) ** 2, axis=1)))
    assert abs(fit.error - emp) <= 1e-9 * fit.reference


def test_theorems_refit_svd_llm_update_without_shift_changes_nothing() -> None:
    W, _, _, C, _, _ = samples(5, 9, 7, N=40)
    fit = gb.svd_llm_update(W[0], C[0], rank=3, ridge=0.0)
    U = np.linalg.eigh(W[0] @ C[0] @ W[0].T)[1][:, ::-1][:, :3]
    np.testing.assert_allclose(fit.weight(), U @ U.T @ W[0], rtol=0, atol=1e-9 * np.abs(W).max())
    assert abs(fit.error - fit.info["error_before"]) <= 1e-10 * fit.reference


@pytest.mark.parametrize("ridge", [1e-6, 1e-3, 1e-1])
def test_theorems_refit_ridge_bound(ridge) -> None:
    """0 <= E(fit_eps) - E(fit_0) <= eps ||W - fit_0||_F^2 (optimality of each)."""
    W, _, _, C, Ch, Cx = samples(9, 8, 8, N=60, shift=0.5)
    f0 = gb.residual_fit(W[0], Ch[0], Cx[0], rank=3, C=C[0], ridge=0.0)
    fe = gb.residual_fit(W[0], Ch[0], Cx[0], rank=3, C=C[0], ridge=ridge)
    eps = fe.ridge[0]
    assert eps == pytest.approx(ridge * np.trace(Ch[0]) / 8, rel=1e-14)
    diff = fe.error[0] - f0.error[0]
    tol = 1e-9 * f0.reference[0]
    assert -tol <= diff <= eps * np.linalg.norm(W[0] - f0.weight()) ** 2 + tol


def test_theorems_refit_wrong_fit_is_caught() -> None:
    # the optimality check above can fail: the local fit (cross-covariance
    # ignored) is strictly worse for the target W x under a real shift
    W, X, Xh, C, Ch, Cx = samples(1, 8, 8, N=60, shift=0.8)
    good = gb.residual_fit(W[0], Ch[0], Cx[0], rank=3, C=C[0], ridge=0.0)
    local = gb.residual_fit(W[0], Ch[0], rank=3, ridge=0.0)
    assert empirical(W[0], X[0], Xh[0], local.weight()) > good.error[0] * (1 + 1e-3)


# -- behaviour --------------------------------------------------------------------------


def test_singular_input_covariance() -> None:
    """Fewer tokens than inputs: C_hat is singular; both ridge = 0 and ridge > 0 work."""
    W, X, Xh, C, Ch, Cx = samples(4, 6, 10, N=7, shift=0.4)
    assert np.linalg.matrix_rank(Ch[0]) == 7
    for ridge in (0.0, 1e-6):
        fit = gb.residual_fit(W[0], Ch[0], Cx[0], rank=2, C=C[0], ridge=ridge)
        assert np.all(np.isfinite(fit.weight()))
        emp = empirical(W[0], X[0], Xh[0], fit.weight())
        assert abs(fit.error[0] - emp) <= 1e-8 * fit.reference[0]
    # with ridge = 0 the fit is minimum-norm off the range of C_hat
    fit0 = gb.residual_fit(W[0], Ch[0], Cx[0], rank=2, C=C[0], ridge=0.0)
    null = np.linalg.svd(Xh[0])[2][7:].T  # directions no sample visits
    assert np.linalg.norm(fit0.weight() @ null) <= 1e-9 * np.linalg.norm(W[0])
    upd = gb.svd_llm_update(W[0], C[0], rank=2, C_update=Ch[0])
    assert np.all(np.isfinite(upd.weight())) and upd.error <= upd.info["error_before"] * 1.001


def test_error_fraction_and_shapes() -> None:
    W, _, _, C, Ch, Cx = samples(2, 5, 4, N=30, k=2)
    fit = gb.residual_fit(W, Ch, Cx, rank=2, C=C)
    assert fit.basis.shape == (5, 2) and fit.right.shape == (2, 2, 4)
    assert fit.spectrum.shape == (5,) and fit.ridge.shape == (2,)
    np.testing.assert_allclose(fit.error_fraction, fit.error / fit.reference)
    np.testing.assert_allclose(fit.basis.T @ fit.basis, np.eye(2), atol=1e-12)
    nofit = gb.residual_fit(W, Ch, Cx, rank=2)  # no C: no error to report
    assert nofit.error is None and nofit.error_fraction is None
    left = gb.refit_left(W[0], fit.right[0], Ch[0], Cx[0])
    assert left.shape == (5, 2)
    upd = gb.svd_llm_update(W[0], C[0], rank=2)
    assert 0 <= upd.error_fraction <= 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda W, C: gb.residual_fit(W, C, rank=0), "rank must satisfy"),
        (lambda W, C: gb.residual_fit(W, C, rank=5), "rank must satisfy"),
        (lambda W, C: gb.residual_fit(W, C, rank=True), "rank must be an integer"),
        (lambda W, C: gb.residual_fit(W, C[:3, :3], rank=2), "C_hat must have shape"),
        (lambda W, C: gb.residual_fit(W, -C, rank=2), "positive semi-definite"),
        (lambda W, C: gb.residual_fit(W, C + np.triu(C, 1), rank=2), "symmetric"),
        (lambda W, C: gb.residual_fit(W, 0 * C, rank=2), "zero trace"),
        (lambda W, C: gb.residual_fit(W, C, rank=2, ridge=-1), "ridge must be"),
        (lambda W, C: gb.residual_fit(W, C, rank=2, omega=[0.0]), "omega must be"),
        (lambda W, C: gb.residual_fit(W * np.nan, C, rank=2), "finite"),
        (lambda W, C: gb.svd_llm_update(W, C, rank=2, C_update=C[:2]), "C_update must have"),
        (lambda W, C: gb.refit_left(W, np.ones((2, 3)), C), "right must have shape"),
    ],
)
def test_bad_input_is_one_line_error(call, match) -> None:
    W, _, _, C, _, _ = samples(0, 6, 4, N=20)
    with pytest.raises(ValueError, match=match):
        call(W[0], C[0])


@pytest.mark.parametrize("ridge", [0.0, 1e-2, 1.0])
def test_refit_left_solves_its_regularised_normal_equations(ridge) -> None:
    """d/dA [E||W x - A Z x_hat||^2 + eps ||W - A Z||_F^2] = 0 at the returned A."""
    W, _, _, _, Ch, Cx = samples(6, 7, 6, N=40, shift=0.5)
    Z = np.random.default_rng(0).standard_normal((3, 6))
    A = gb.refit_left(W[0], Z, Ch[0], Cx[0], ridge=ridge)
    eps = ridge * np.trace(Ch[0]) / 6
    grad = (A @ Z - W[0]) @ Ch[0] @ Z.T + (W[0] @ (Ch[0] - Cx[0])) @ Z.T
    grad += eps * (A @ Z - W[0]) @ Z.T
    scale = np.linalg.norm(W[0]) * np.linalg.norm(Ch[0]) * np.linalg.norm(Z)
    assert np.linalg.norm(grad) <= 1e-10 * scale


@given(p=shapes, dfrac=st.floats(0.0, 1.0))
def test_theorems_refit_local_fit_dominates_the_authors_update(p, dfrac) -> None:
    """Towards W x_hat, the best rank-d map beats the best left factor for Z fixed."""
    seed, m, n, shift = p
    d = 1 + int(dfrac * (min(m, n) - 1))
    W, _, _, C, Ch, _ = samples(seed, m, n, N=4 * n + 10, shift=shift)
    upd = gb.svd_llm_update(W[0], C[0], rank=d, C_update=Ch[0], ridge=0.0)
    local = gb.residual_fit(W[0], Ch[0], rank=d, ridge=0.0)
    assert local.error[0] <= upd.error + 1e-9 * upd.reference


def test_svd_llm_update_on_a_singular_whitening_covariance() -> None:
    """C of rank 3 (three dead inputs): every rank works, with no jitter."""
    rng = np.random.default_rng(8)
    W = rng.standard_normal((6, 6))
    X = np.concatenate([rng.standard_normal((40, 3)), np.zeros((40, 3))], axis=1)
    C = X.T @ X / 40
    for d in (2, 3, 4, 5):
        fit = gb.svd_llm_update(W, C, rank=d, ridge=0.0)
        assert fit.left.shape == (6, d) and np.all(np.isfinite(fit.weight()))
        # the activation error is SVD-LLM's optimum: the tail of the spectrum of M
        mu = np.linalg.eigvalsh(W @ C @ W.T)[::-1]
        err = np.trace((W - fit.weight()) @ C @ (W - fit.weight()).T)
        assert abs(err - mu[d:].sum()) <= 1e-10 * mu[0]
    # beyond the rank of C the extra direction is the top one of the rest of W
    # (plain SVD), and with a positive ridge the update keeps W along it (the
    # ridge pulls towards W where the data says nothing; ridge = 0 would give
    # the minimum-norm left factor, zero there)
    fit = gb.svd_llm_update(W, C, rank=4, ridge=1e-6)
    U3 = np.linalg.eigh(W @ C @ W.T)[1][:, ::-1][:, :3]
    u = np.linalg.svd(W - U3 @ U3.T @ W)[0][:, :1]
    assert np.linalg.norm(u.T @ (W - fit.weight())) <= 1e-8 * np.linalg.norm(W)


# -- constrained_refit: bad input is one line naming the value ------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"factor": "middle"}, "factor must be one of left, right, both, sigma; got 'middle'"),
        ({"target": "teacher"}, "target must be one of output, local, joint; got 'teacher'"),
        ({"mix": 1.5}, r"mix must be a number in \[0, 1\]; got mix = 1.5"),
        ({"ridge": -1.0}, "ridge"),
        ({"left": np.eye(5, 2)}, "give both left and right"),
        ({"rank": None}, "give rank"),
    ],
)
def test_constrained_refit_rejects_bad_options(kw, match) -> None:
    rng = np.random.default_rng(5)
    W = rng.standard_normal((5, 4))
    X = rng.standard_normal((4, 20))
    C = X @ X.T / 20
    args = {"rank": 2, **kw}
    with pytest.raises(ValueError, match=match):
        gb.constrained_refit(W, C, C, C, **args)


def test_constrained_refit_sigma_is_a_d_by_d_solve_on_the_kept_singular_values() -> None:
    """With ``x_hat = x`` and the local target the truncation is already optimal: g = 1.

    ``P_U W`` minimises ``E||W x - M x||^2`` over rank-``d`` maps, so over the
    gains of its own components too; the gains are 1 to the solve's roundoff
    (condition of the ``d x d`` system times eps, below 1e-8 here).
    """
    rng = np.random.default_rng(6)
    W = rng.standard_normal((7, 6))
    X = rng.standard_normal((6, 40))
    C = X @ X.T / 40
    fit = gb.constrained_refit(W, C, C, C, rank=3, factor="sigma", target="local")
    assert fit.info["gains"].shape == (3,)
    assert np.max(np.abs(fit.info["gains"] - 1.0)) < 1e-8


# -- constrained_refit_path: the same fits as one call per ridge ------------------------


@pytest.mark.parametrize("factor", REFIT_FACTORS)
@pytest.mark.parametrize("target", REFIT_TARGETS)
def test_constrained_refit_path_equals_one_call_per_ridge(factor, target) -> None:
    """Each fit of the path equals :func:`constrained_refit` at that ridge, given the
    path's unrefit factors (the sequential refit's grid relies on it).  The same
    floating-point operations run in both, so the tolerance (1e-12 relative) only
    allows for a BLAS that does not repeat itself bit for bit."""
    W, _, _, C, Ch, Cx = samples(11, 6, 9, 60)
    ridges = (0.0, 1e-2, 1.0, 100.0)
    path = gb.constrained_refit_path(
        W[0], C[0], Ch[0], Cx[0], ridges=ridges, rank=3, factor=factor, target=target
    )
    assert len(path) == len(ridges)
    A0, B0 = path[0].info["left_before"], path[0].info["right_before"]
    first = gb.constrained_refit(W[0], C[0], Ch[0], Cx[0], rank=3, factor=factor,
                                 target=target, ridge=0.0)  # fmt: skip
    np.testing.assert_allclose(A0 @ B0, first.info["left_before"] @ first.info["right_before"],
                               rtol=1e-12, atol=1e-12 * np.abs(W).max())  # fmt: skip
    for rho, fit in zip(ridges, path, strict=True):
        one = gb.constrained_refit(W[0], C[0], Ch[0], Cx[0], left=A0, right=B0,
                                   factor=factor, target=target, ridge=rho)  # fmt: skip
        scale = np.linalg.norm(one.weight())
        assert np.linalg.norm(fit.weight() - one.weight()) <= 1e-12 * scale, rho
        assert fit.error == pytest.approx(one.error, rel=1e-12, abs=1e-12 * one.reference)
        assert fit.info["ridge"] == pytest.approx(one.info["ridge"], rel=1e-12)
    # the ridges differ, so the fits do (a path that reused one fit would fail here);
    # except where the unrefit factors are already the optimum at every ridge: with the
    # local target and orthonormal A0, B = A0^T W is optimal for A0 (right), and so are
    # its own gains g = 1 (sigma)
    if not (target == "local" and factor in ("right", "sigma")):
        gap = np.linalg.norm(path[0].weight() - path[-1].weight())
        assert gap > 1e-6 * np.linalg.norm(W[0])


@pytest.mark.parametrize(
    ("ridges", "match"),
    [((), "ridges must be a sequence of at least one number"), ((0.1, -1.0), "ridge")],
)
def test_constrained_refit_path_rejects_bad_ridges(ridges, match) -> None:
    W, _, _, C, Ch, Cx = samples(12, 4, 5, 30)
    with pytest.raises(ValueError, match=match):
        gb.constrained_refit_path(W[0], C[0], Ch[0], Cx[0], ridges=ridges, rank=2)
