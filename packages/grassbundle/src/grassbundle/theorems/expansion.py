"""The exact principal-angle expansion of a group's energy around the tied corner, as a check.

The identity, its two-sided bound and the proof are on
``docs/theory/theorems.rst``; :func:`principal_angle_expansion` computes the
left side from traces and the right side from principal vectors, and with
them the exact gap of Theorem B.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ..angles import principal_angles
from ..bundle import BundleProblem, solve
from .references import (
    EPS,
    TYING_ATOL,
    corner_section,
    frame_energy,
    group_energy,
    layer_groups,
    perturbed,
    random_frames,
    shared_output_reference,
)
from .report import Solver, TheoremReport, fmt, nanmax

__all__ = ["principal_angle_expansion"]

F64 = NDArray[np.float64]


def _expansion_rhs(K: F64, Ustar: F64, U: F64) -> tuple[float, float]:
    """``sum_i sin^2(theta_i) (r_i^T K r_i - q_i^T K q_i)`` and ``||sin Theta||_F^2``.

    ``r_i`` (in ``U*``) and ``z_i = cos(theta_i) r_i + sin(theta_i) q_i`` (in
    ``U``) are the principal vectors; ``sin(theta_i) q_i = z_i - cos(theta_i)
    r_i`` is formed directly so that tiny angles lose no accuracy.
    """
    theta, R, Z = principal_angles(Ustar, U, vectors=True)
    s2 = np.sin(theta) ** 2
    Wv = Z - R * np.cos(theta)
    rKr = np.einsum("mi,mi->i", R, K @ R)
    wKw = np.einsum("mi,mi->i", Wv, K @ Wv)
    return float(np.sum(s2 * rKr - wKw)), float(np.sum(s2))


def principal_angle_expansion(
    problem: BundleProblem,
    k: int,
    *,
    solver: Solver = solve,
    n_random: int = 4,
    seed: int = 0,
) -> TheoremReport:
    """The exact principal-angle expansion, its two-sided bound, and the Theorem B gap.

    For each group, ``K = K_g = sum_{l in g} omega_l E_l`` (recomputed from
    ``W`` and ``C``), ``U* = solver(problem, 0, k)``'s frame and ``U`` in
    {the shared output basis ``B_g`` (top-``d`` of ``sum_{l in g} M_l``, recomputed),
    random frames, perturbations of ``U*``}, with ``E(U) = tr K - tr(U^T K
    U)``::

        E(U) - E(U*) = sum_i sin^2(theta_i) (r_i^T K r_i - q_i^T K q_i)
        (mu_d - mu_{d+1}) ||sin Theta||_F^2 <= E(U) - E(U*) <= (mu_1 - mu_m) ||sin Theta||_F^2

    Proof: the principal vectors of ``U`` are ``u_i = cos(theta_i) r_i +
    sin(theta_i) q_i`` with ``q_i`` orthonormal and orthogonal to ``U*``;
    ``r_i^T K q_j = 0`` because ``K`` maps ``U*`` into itself, so
    ``tr(U^T K U) = sum_i [cos^2 r_i^T K r_i + sin^2 q_i^T K q_i]``, while
    ``tr(U*^T K U*) = sum_i r_i^T K r_i`` (the ``r_i`` are an orthonormal basis
    of ``U*``); subtracting gives the expansion.  With ``U*`` the top-``d``
    eigenspace, ``r_i^T K r_i >= mu_d`` and ``q_i^T K q_i <= mu_{d+1}`` (and
    both lie in ``[mu_m, mu_1]``), which gives the bounds.

    The left side is computed from the traces, the right side from the
    principal vectors.  Relative errors are reported for the frames whose gap
    is above ``1e4`` times the absolute slack (below that the gap itself is
    roundoff).  Equality tolerance: ``|lhs - rhs| <= 1e-11 |lhs| +
    100 d eps ||K||_2`` (the traces carry absolute roundoff ~``d eps ||K||``;
    an eigenvector error ``e`` of ``U*`` adds ``O(e * sin theta * ||K||)``).
    The bound is checked with the same absolute slack.  The relative error
    for ``B_g`` is reported as the exact Theorem B gap.

    Parameters
    ----------
    problem : BundleProblem
    k : int
    solver : callable, default :func:`grassbundle.solve`
    n_random : int, default 4
    seed : int, default 0

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed)
    d, L = problem.rank, problem.L
    ref, sec, tying = corner_section(problem, k, solver)
    rel_errs: list[float] = []
    slack_used: list[float] = []
    bs_rel: list[float] = []
    bs_gap: list[float] = []
    lo_margin: list[float] = []
    hi_margin: list[float] = []
    failures: list[str] = []
    for gi, g in enumerate(layer_groups(L, k)):
        K = group_energy(problem, ref, g)
        trK = float(np.trace(K))
        mu = np.linalg.eigvalsh(K)[::-1]
        atol = 100 * d * EPS * float(mu[0])
        Us = sec.basis(g[0])
        frames = [shared_output_reference(problem, g)[0]]
        frames += random_frames(problem.m, d, n_random, rng)
        frames += [perturbed(Us, e, rng) for e in (1e-6, 1e-3, 1e-1)]
        for fi, U in enumerate(frames):
            lhs = frame_energy(K, trK, U) - frame_energy(K, trK, Us)
            rhs, s2 = _expansion_rhs(K, Us, U)
            err = abs(lhs - rhs)
            # relative error only where the gap is well above the trace roundoff
            rel = err / abs(lhs) if abs(lhs) > 1e4 * atol else math.nan
            rel_errs.append(rel)
            slack_used.append(err / (1e-11 * abs(lhs) + atol))
            lo = (mu[d - 1] - mu[d]) * s2
            hi = (mu[0] - mu[-1]) * s2
            lo_margin.append((lhs - lo) / trK)
            hi_margin.append((hi - lhs) / trK)
            if fi == 0:
                bs_rel.append(rel)
                bs_gap.append(lhs / trK)
            if err > 1e-11 * abs(lhs) + atol:
                failures.append(
                    f"group {gi} frame {fi}: expansion off by {err:.3e} (lhs {lhs:.3e})"
                )
            if lhs < lo - atol or lhs > hi + atol:
                failures.append(
                    f"group {gi} frame {fi}: gap {lhs:.3e} outside [{lo:.3e}, {hi:.3e}]"
                )
    if tying > TYING_ATOL:
        failures.append(f"layers of a group do not share a subspace (sine {tying:.3e})")
    return TheoremReport(
        name=f"principal_angle_expansion[k={k}]",
        holds=not failures,
        figures={
            "k": k,
            "max_relative_error": nanmax(rel_errs),
            "max_error_over_tolerance": max(slack_used),
            "theorem_b_gap_relative_error": bs_rel,
            "theorem_b_gap_relative": bs_gap,
            "min_lower_bound_margin_relative": min(lo_margin),
            "min_upper_bound_margin_relative": min(hi_margin),
            "tying_defect": tying,
        },
        tolerance={"equality_rtol": 1e-11, "absolute_slack_factor": 100.0},
        why=(
            "traces carry absolute roundoff ~d*eps*||K||_2, so the slack is 100*d*eps*||K||_2 "
            "plus 1e-11 relative for eigenvector error in U*"
        ),
        summary=(
            f"max rel err {fmt(nanmax(rel_errs))}; B_g gap rel err {fmt(nanmax(bs_rel))}; "
            f"bound margins >= {fmt(min(lo_margin))}, {fmt(min(hi_margin))}"
        ),
        failures=failures,
    )
