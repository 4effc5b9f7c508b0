"""Path monotonicity as a check.

Along increasing ``lam`` the weight term of the optimal section never
decreases and its anchor term never increases (the proof is on
``docs/theory/theorems.rst``); :func:`path_monotonicity` checks the premise
(each section is optimal) and the conclusion on a ladder of ``lam``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..bundle import BundleProblem, solve
from .references import (
    OMEGA_RTOL,
    OPT_RTOL,
    TYING_ATOL,
    anchor_sum,
    group_energy,
    layer_groups,
    objective,
    omega_deviation,
    reference,
    tying_defect,
)
from .report import Solver, TheoremReport, fmt

__all__ = ["path_monotonicity"]


def path_monotonicity(
    problem: BundleProblem,
    k: int,
    lams: Sequence[float] | None = None,
    *,
    solver: Solver = solve,
) -> TheoremReport:
    """Along increasing ``lam`` the weight term never decreases and the anchor term never increases.

    For minimisers ``U(a)``, ``U(b)`` of ``F + a D`` and ``F + b D`` with
    ``a < b``: adding ``F(a) + a D(a) <= F(b) + a D(b)`` and ``F(b) + b D(b)
    <= F(a) + b D(a)`` gives ``(b - a)(D(a) - D(b)) >= 0``, hence ``D(b) <=
    D(a)`` and then ``F(b) >= F(a)``.  The check verifies the premise (each
    section attains the Ky Fan optimum of ``J_{lam,k}``, computed here with
    ``eigvalsh``) and the conclusion on the path, with ``F = sum_l omega_l
    E_l(U_l)`` and ``D = sum_l ||P_{U_l} - P_{A_l}||_F^2 / (2d)``, both
    recomputed from ``W``, ``C``, ``omega = 1 / ||W_l||_F^2`` and the
    reference anchors (see :mod:`grassbundle.theorems.references`).  It also
    checks that the ``objective`` and ``weight_term`` the section reports
    equal ``J`` and ``F`` recomputed so (to ``OPT_RTOL`` of the scale), and that
    ``problem.omega`` is the default it claims to be.

    Parameters
    ----------
    problem : BundleProblem
    k : int
    lams : sequence of float, optional
        Increasing ladder; default ``0`` and ``10^(j/2)``, ``j = -6..6``.
    solver : callable, default :func:`grassbundle.solve`

    Returns
    -------
    TheoremReport
    """
    ladder = [0.0] + [10 ** (j / 2) for j in range(-6, 7)] if lams is None else list(lams)
    if any(b <= a for a, b in itertools.pairwise(ladder)):
        raise ValueError(f"lams must be strictly increasing; got {ladder}")
    L, d = problem.L, problem.rank
    ref = reference(problem)
    groups = layer_groups(L, k)
    Eg = [group_energy(problem, ref, g) for g in groups]
    Gg = [anchor_sum(ref, g) for g in groups]
    F, D, opt_gaps, reported = [], [], [], []
    tying = 0.0
    failures: list[str] = []
    omega_dev = omega_deviation(problem, ref)
    if omega_dev > OMEGA_RTOL:
        failures.append(f"problem.omega differs from the reference by {omega_dev:.3e} relative")
    scale0 = float(np.dot(ref.omega, ref.trace))
    for lam in ladder:
        sec = solver(problem, lam, k)
        tying = max(tying, tying_defect(sec, L, k))
        J, w, a = objective(problem, ref, sec, lam)
        Jopt = 0.0
        for E, G in zip(Eg, Gg, strict=True):
            K = E + (lam / d) * G
            Jopt += float(np.trace(K) - np.sum(np.linalg.eigvalsh(K)[-d:]))
        scale = scale0 + lam * L
        opt_gaps.append((J - Jopt) / scale)
        rep = max(abs(sec.objective - J), abs(sec.weight_term - w)) / scale
        reported.append(rep)
        F.append(w)
        D.append(a)
        if J - Jopt > OPT_RTOL * scale:
            failures.append(
                f"lam = {lam:g}: section misses the optimum by {(J - Jopt) / scale:.3e}"
            )
        if rep > OPT_RTOL:
            failures.append(
                f"lam = {lam:g}: the section reports an objective off by {rep:.3e} of the scale"
            )
    tolF = OPT_RTOL * scale0
    tolD = OPT_RTOL * L
    dF = np.diff(F)
    dD = np.diff(D)
    if np.any(dF < -tolF):
        failures.append(f"weight term decreases by {-float(dF.min()):.3e} along the path")
    if np.any(dD > tolD):
        failures.append(f"anchor term increases by {float(dD.max()):.3e} along the path")
    if tying > TYING_ATOL:
        failures.append(f"layers of a group do not share a subspace (sine {tying:.3e})")
    return TheoremReport(
        name=f"path_monotonicity[k={k}]",
        holds=not failures,
        figures={
            "k": k,
            "lams": ladder,
            "weight_term": F,
            "anchor_distance_sum": D,
            "min_weight_increment": float(dF.min()),
            "max_anchor_increment": float(dD.max()),
            "max_relative_gap_to_optimum": max(opt_gaps),
            "max_reported_objective_error": max(reported),
            "omega_relative_deviation": omega_dev,
            "tying_defect": tying,
        },
        tolerance={"opt_rtol": OPT_RTOL, "tying_atol": TYING_ATOL, "omega_rtol": OMEGA_RTOL},
        why=(
            "terms are differences of O(sum omega tr E + lam L) quantities; roundoff "
            "~m*eps of that scale, eigenvector errors enter quadratically; 1e-9 of the scale"
        ),
        summary=(
            f"min dF {fmt(float(dF.min()))}; max dD {fmt(float(dD.max()))}; "
            f"gap to optimum {fmt(max(opt_gaps))}"
        ),
        failures=failures,
    )
