"""SVD-LLM as a section of the bundle, as a check.

SVD-LLM's whitened truncation equals ``P_U W`` with ``U`` the anchor (the
identification is on ``docs/theory/equivalences.rst``);
:func:`svd_llm_equivalence` computes SVD-LLM's truncation the authors' way
(Cholesky factor, SVD of the whitened weight) and compares.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bundle import BundleProblem, solve
from .references import EPS, OPT_RTOL, gram, layer_energy
from .report import Solver, TheoremReport, fmt

__all__ = ["svd_llm_equivalence"]

F64 = NDArray[np.float64]


def _svd_llm_truncation(W: F64, C: F64, d: int) -> tuple[F64, F64, F64]:
    """SVD-LLM's truncation ``U_d Sigma_d V_d^T S^{-1}`` with ``S S^T = C`` (Cholesky).

    Returns the truncated weight, ``U_d`` and the singular values of ``W S``.
    Raises ``numpy.linalg.LinAlgError`` when ``C`` is not positive definite.
    """
    S = np.linalg.cholesky(C)
    Uw, sig, Vt = np.linalg.svd(W @ S, full_matrices=False)
    Ud, Vd = Uw[:, :d], Vt[:d].T
    # V_d^T S^{-1} = (S^{-T} V_d)^T
    right = np.linalg.solve(S.T, Vd).T
    return (Ud * sig[:d]) @ right, Ud, sig


def svd_llm_equivalence(
    problem: BundleProblem,
    *,
    solver: Solver = solve,
    seed: int = 0,
) -> TheoremReport:
    """SVD-LLM is a section: its whitened truncation equals ``P_U W`` with ``U = A_l``.

    For every layer, with ``S S^T = C_l`` (Cholesky) and ``W_l S = U Sigma
    V^T``, SVD-LLM's ``U_d Sigma_d V_d^T S^{-1}`` must equal ``P_{U_l} W_l``
    where ``U_l`` is the solver's ``lam = 0``, ``k = 1`` frame under the
    activation metric, and also its ``lam = inf``, ``k = 1`` frame under the
    problem's own metric (the anchor).  Tolerance per layer: relative
    Frobenius difference ``<= 1e-10 + 100 eps mu_1 / (mu_d - mu_{d+1})``
    (``mu`` the eigenvalues of ``M_l``: the two routes compute the same
    eigenspace with error ``~eps mu_1 / gap``).

    Singular covariance: for a seeded rank-deficient ``C`` (rank ``max(d+1,
    n/2)`` < n), Cholesky fails, so SVD-LLM needs a jitter ``C + 1e-6
    tr(C)/n I``; the projection form needs none and attains the exact
    activation optimum ``tr M - (mu_1 + ... + mu_d)`` (checked to 1e-9 tr M).

    Problems without covariances use seeded random ones.

    Parameters
    ----------
    problem : BundleProblem
    solver : callable, default :func:`grassbundle.solve`
    seed : int, default 0

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed)
    L, n, d = problem.L, problem.n, problem.rank
    W = problem.W
    synthetic = problem.C is None
    if problem.C is None:
        X = rng.standard_normal((L, n, 2 * n))
        C = X @ np.swapaxes(X, -1, -2) / (2 * n)
    else:
        C = problem.C
    failures: list[str] = []
    act = BundleProblem(W, C, rank=d, metric="activation", omega=problem.omega)
    sec_act = solver(act, 0.0, 1)
    own = BundleProblem(W, C, rank=d, metric=problem.metric, omega=problem.omega)
    sec_inf = solver(own, math.inf, 1)
    rel_act: list[float] = []
    rel_inf: list[float] = []
    tols: list[float] = []
    chol_ok = True
    for l in range(L):
        try:
            Wt, _, sig = _svd_llm_truncation(W[l], C[l], d)
        except np.linalg.LinAlgError:
            chol_ok = False
            failures.append(f"layer {l}: C is not positive definite; SVD-LLM undefined here")
            continue
        mu = sig**2
        gap = float(mu[d - 1] - mu[d]) if len(mu) > d else float(mu[d - 1])
        tol = 1e-10 + 100 * EPS * float(mu[0]) / max(gap, EPS * float(mu[0]))
        tols.append(tol)
        nW = float(np.linalg.norm(W[l]))
        for sec, out in ((sec_act, rel_act), (sec_inf, rel_inf)):
            U = sec.basis(l)
            diff = float(np.linalg.norm(Wt - U @ (U.T @ W[l]))) / nW
            out.append(diff)
            if diff > tol:
                failures.append(f"layer {l}: SVD-LLM truncation differs from P_U W by {diff:.3e}")
    # singular covariance, on layer 0's weight
    r = max(d + 1, n // 2)
    sing: dict[str, Any] = {"rank_C": r}
    if r < n:
        Xs = rng.standard_normal((n, r))
        Cs = Xs @ Xs.T / r
        Cs = 0.5 * (Cs + Cs.T)
        try:
            np.linalg.cholesky(Cs)
            needs_jitter = False
        except np.linalg.LinAlgError:
            needs_jitter = True
        jitter = 1e-6 * float(np.trace(Cs)) / n
        Wj, _, _ = _svd_llm_truncation(W[0], Cs + jitter * np.eye(n), d)
        ps = BundleProblem(W[:1], Cs[None], rank=d, metric="activation")
        U = solver(ps, 0.0, 1).basis(0)
        # from the definitions: M = W C W^T, A(U) = tr((W - P_U W) C (W - P_U W)^T)
        M = gram(ps, 0, "M")
        trM = float(np.trace(M))
        mu_s = np.linalg.eigvalsh(M)[::-1]
        opt = trM - float(np.sum(mu_s[:d]))
        got = layer_energy(ps, 0, U, "M")
        Rj = W[0] - Wj
        jit_err = float(np.sum((Rj @ Cs) * Rj))
        sing.update(
            {
                "cholesky_fails_without_jitter": needs_jitter,
                "jitter": jitter,
                "projection_gap_to_optimum_relative": (got - opt) / trM,
                "svd_llm_jittered_excess_relative": (jit_err - opt) / trM,
            }
        )
        if got - opt > OPT_RTOL * trM:
            failures.append(
                "singular C: projection form misses the activation optimum by "
                f"{(got - opt) / trM:.3e}"
            )
        if not needs_jitter:
            failures.append("singular C: Cholesky unexpectedly succeeded")
    else:
        sing["skipped"] = f"rank {d} leaves no room for a rank-deficient C with rank > d (n = {n})"
    figures = {
        "synthetic_covariance": synthetic,
        "cholesky_ok": chol_ok,
        "max_relative_difference_lam0_activation": max(rel_act, default=math.nan),
        "max_relative_difference_lam_inf": max(rel_inf, default=math.nan),
        "max_tolerance": max(tols, default=math.nan),
        "singular": sing,
    }
    return TheoremReport(
        name="svd_llm_equivalence",
        holds=not failures,
        figures=figures,
        tolerance={"relative_base": 1e-10, "energy_rtol": OPT_RTOL},
        why=(
            "the whitened SVD and the eigensolver compute the same eigenspace of M with error "
            "~eps*mu_1/gap; 1e-10 plus 100 times that"
        ),
        summary=(
            f"max rel diff {fmt(max(rel_act + rel_inf, default=math.nan))}; singular C: "
            f"jitter needed {sing.get('cholesky_fails_without_jitter')}, projection gap "
            f"{fmt(sing.get('projection_gap_to_optimum_relative', math.nan))}"
        ),
        failures=failures,
    )
