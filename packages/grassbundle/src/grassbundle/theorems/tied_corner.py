"""Theorem B (the tied corner) as a check.

The ``lam = 0`` tied frame minimises a group's energy over every frame the
group's layers could share, the shared output basis included.  The statement
and its proof are on ``docs/theory/theorems.rst``; :func:`theorem_b` checks it
against the references of :mod:`grassbundle.theorems.references`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle import BundleProblem, shared_output_basis, solve
from .references import (
    EPS,
    OMEGA_RTOL,
    OPT_RTOL,
    SINE_ROUTE_ATOL,
    TYING_ATOL,
    corner_section,
    frame_energy,
    group_energy,
    layer_energy,
    layer_groups,
    omega_deviation,
    perturbed,
    proj_sine,
    random_frames,
    shared_output_reference,
    sines,
)
from .report import Solver, TheoremReport, fmt

__all__ = ["theorem_b"]


def theorem_b(
    problem: BundleProblem,
    k: int,
    *,
    solver: Solver = solve,
    n_random: int = 6,
    seed: int = 0,
) -> TheoremReport:
    """Theorem B: the ``lam = 0`` tied frame minimises the group energy over shared frames.

    Proof: a shared frame ``U`` gives the group the energy ``sum_{l in g}
    omega_l E_l(U) = tr K_g - tr(U^T K_g U)``, minimised by the top-``d``
    eigenspace of ``K_g`` (Ky Fan), which is what the ``lam = 0`` closed form
    returns; the shared output basis ``B_g`` is one shared frame, so it cannot do
    better, and by the principal-angle expansion it does worse by at least
    ``(mu_d - mu_{d+1}) ||sin Theta||_F^2 > 0`` whenever it differs and the
    eigengap is positive.

    For each consecutive group ``g`` with ``K_g = sum_{l in g} omega_l E_l``
    and group energy ``E_g(U) = tr K_g - tr(U^T K_g U) = sum_{l in g} omega_l
    E_l(U)`` (``omega``, ``E_l`` and ``K_g`` recomputed here from ``W`` and
    ``C``; ``problem.omega`` must equal ``1 / ||W_l||_F^2`` to
    ``OMEGA_RTOL`` when the problem uses the default), the frame ``U_g =
    solver(problem, 0, k)`` must

    * attain the Ky Fan minimum ``tr K_g - (mu_1 + ... + mu_d)`` (computed
      here with ``eigvalsh``);
    * be no worse than ``n_random`` Haar-random frames and small perturbations
      of itself;
    * be no worse than the shared output basis ``B_g`` (top-``d`` of ``sum_{l
      in g} M_l``, recomputed here by a dense ``eigh``), and strictly
      better -- by at least ``(mu_d - mu_{d+1}) ||sin Theta(B_g, U_g)||_F^2``
      (the expansion's lower bound) -- when the two differ and the eigengap is
      positive.

    ``B_g`` is the best *output-side* frame a group can share under the
    activation energy (the output-side form of Basis Sharing's core, see
    :func:`grassbundle.shared_output_basis`); Basis Sharing as its authors
    build it shares an *input-side* basis whitened by the group's summed
    Gram (:func:`grassbundle.basis_sharing_input`), which is not a section of
    the bundle and which the theorem says nothing about.

    :func:`grassbundle.shared_output_basis` must return ``B_g`` (sine at most
    ``1e-10 + 100 eps mu_1 / (mu_d - mu_{d+1})`` of ``sum M_l``: two routes
    to one eigenspace), and the package's principal-angle sine of ``(B_g,
    U_g)`` must agree with ``||P_B - P_U||_2`` to ``SINE_ROUTE_ATOL``.  For
    ``k = 1`` under the weight metric it also checks the corollary: the ``lam
    = 0`` corner is no worse than SVD-LLM in Frobenius error on every layer.

    Parameters
    ----------
    problem : BundleProblem
    k : int
    solver : callable, default :func:`grassbundle.solve`
    n_random : int, default 6
        Random frames per group.
    seed : int, default 0
        Seed of the random and perturbed frames.

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed)
    d, L = problem.rank, problem.L
    ref, sec, tying = corner_section(problem, k, solver)
    bs = shared_output_basis(problem, k)
    opt_gap, rand_margin, bs_gap, bs_lower, bs_sine, gaps = [], [], [], [], [], []
    bs_def_sine: list[float] = []
    route = 0.0
    failures: list[str] = []
    omega_dev = omega_deviation(problem, ref)
    if omega_dev > OMEGA_RTOL:
        failures.append(
            f"problem.omega differs from 1/||W_l||_F^2 by {omega_dev:.3e} relative"
            if problem.omega_is_default
            else f"problem.omega differs from the omega it was given by {omega_dev:.3e}"
        )
    for gi, g in enumerate(layer_groups(L, k)):
        K = group_energy(problem, ref, g)
        trK = float(np.trace(K))
        mu = np.linalg.eigvalsh(K)[::-1]
        tol = OPT_RTOL * trK
        U = sec.basis(g[0])
        EU = frame_energy(K, trK, U)
        opt = trK - float(np.sum(mu[:d]))
        opt_gap.append((EU - opt) / trK)
        others = random_frames(problem.m, d, n_random, rng) + [
            perturbed(U, e, rng) for e in (1e-4, 1e-2, 1e-1)
        ]
        rand_margin.append(min(frame_energy(K, trK, V) - EU for V in others) / trK)
        B, muB, gapB = shared_output_reference(problem, g)
        sdef = proj_sine(bs.bases[gi], B)
        bs_def_sine.append(sdef)
        if gapB > 0 and sdef > 1e-10 + 100 * EPS * muB / gapB:
            failures.append(
                f"group {gi}: shared_output_basis is not the top-d eigenspace of sum M_l "
                f"(sine {sdef:.3e})"
            )
        EB = frame_energy(K, trK, B)
        gap_mu = float(mu[d - 1] - mu[d])
        gaps.append(gap_mu / trK)
        s, r = sines(B, U)
        route = max(route, r)
        bs_sine.append(s)
        R = B - U @ (U.T @ B)
        s2 = float(np.sum(R * R))  # ||sin Theta(B, U)||_F^2
        bs_gap.append((EB - EU) / trK)
        bs_lower.append(gap_mu * s2 / trK)
        if EU - opt > tol:
            failures.append(f"group {gi}: frame misses the Ky Fan minimum by {EU - opt:.3e}")
        if min(frame_energy(K, trK, V) for V in others) < EU - tol:
            failures.append(f"group {gi}: a random or perturbed frame beats the tied frame")
        if EB < EU - tol:
            failures.append(f"group {gi}: the shared output basis beats the tied frame")
        if s > 1e-6 and gap_mu > 1e-12 * mu[0] and not EB - EU >= gap_mu * s2 - tol:
            failures.append(
                f"group {gi}: shared output basis gap {EB - EU:.3e} below the strict lower bound "
                f"{gap_mu * s2:.3e}"
            )
    if route > SINE_ROUTE_ATOL:
        failures.append(f"principal-angle sine differs from ||P_U - P_V||_2 by {route:.3e}")
    if tying > TYING_ATOL:
        failures.append(f"layers of a group do not share a subspace (sine {tying:.3e})")
    figures: dict[str, Any] = {
        "k": k,
        "metric": problem.metric,
        "omega_relative_deviation": omega_dev,
        "relative_gap_to_ky_fan_min": opt_gap,
        "min_relative_margin_random_perturbed": rand_margin,
        "relative_gap_shared_output_basis": bs_gap,
        "relative_lower_bound_shared_output_basis": bs_lower,
        "sin_theta_shared_output_basis": bs_sine,
        "shared_output_basis_vs_definition_sine": bs_def_sine,
        "sine_route_max_difference": route,
        "relative_eigengap": gaps,
        "tying_defect": tying,
    }
    if k == 1 and problem.metric == "weight":
        margin = []
        for l in range(L):
            own = layer_energy(problem, l, sec.basis(l), "N")
            anc = layer_energy(problem, l, ref.anchors[l], "N")
            margin.append((anc - own) / float(np.sum(problem.W[l] ** 2)))
        figures["frobenius_margin_vs_svd_llm"] = margin
        if min(margin) < -OPT_RTOL:
            failures.append(
                "the lam = 0 corner is worse than SVD-LLM in Frobenius error on a layer"
            )
    return TheoremReport(
        name=f"theorem_b[k={k}]",
        holds=not failures,
        figures=figures,
        tolerance={
            "energy_rtol": OPT_RTOL,
            "tying_atol": TYING_ATOL,
            "omega_rtol": OMEGA_RTOL,
            "sine_route_atol": SINE_ROUTE_ATOL,
        },
        why=(
            "energies are tr K - tr(U^T K U), differences of O(tr K) terms: roundoff "
            "~m*eps*tr K, and eigenvector errors enter quadratically; 1e-9 tr K; "
            "shared_output_basis and the dense eigh compute one eigenspace with error "
            "~eps*mu_1/gap"
        ),
        summary=(
            f"gap to Ky Fan min {fmt(max(opt_gap))}; B_g gap {fmt(min(bs_gap))} "
            f">= bound {fmt(min(bs_lower))}; random margin {fmt(min(rand_margin))}"
        ),
        failures=failures,
    )
