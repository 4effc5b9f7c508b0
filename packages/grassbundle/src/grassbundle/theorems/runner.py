"""Every check at once: :func:`run_all_checks`, and the phase diagram as a solver under test."""

from __future__ import annotations

import dataclasses

from ..bundle import BundleProblem, Section, phase_diagram, solve
from .anchor_corner import THEOREM_A_MAX_LOOSENESS, theorem_a
from .expansion import principal_angle_expansion
from .monotonicity import path_monotonicity
from .problems import check_tying_degrees, default_problems
from .report import Solver, TheoremReport
from .svd_llm import svd_llm_equivalence
from .tied_corner import theorem_b

__all__ = ["phase_diagram_solver", "run_all_checks"]


def phase_diagram_solver(problem: BundleProblem, lam: float, k: int) -> Section:
    """:func:`grassbundle.phase_diagram` at one grid point, as a :data:`Solver`.

    The bases are the phase diagram's (its own eigensolver routes: the top-``d``
    ``syevr`` on the dense ``K_g`` and the projector route for the energies when
    ``m <= n``), and so are the ``objective``, ``weight_term``, ``anchor_term``
    and per-layer errors of the returned section, so every check run with this
    solver checks :func:`grassbundle.phase_diagram` end to end.

    Parameters
    ----------
    problem : BundleProblem
    lam : float
    k : int

    Returns
    -------
    Section
    """
    pd = phase_diagram(problem, [lam], [k], return_bases=True)
    sec = pd.section(problem, k, float(pd.lams[0]))
    return dataclasses.replace(
        sec,
        objective=float(pd.objective[0, 0]),
        weight_term=float(pd.weight_term[0, 0]),
        anchor_term=float(pd.anchor_term[0, 0]),
        frobenius_error=pd.frobenius_error[0, 0],
        anchor_distance=pd.anchor_distance[0, 0],
        activation_error=None if pd.activation_error is None else pd.activation_error[0, 0],
    )


def run_all_checks(
    problem: BundleProblem | None = None,
    *,
    seed: int = 0,
    solver: Solver | None = None,
) -> list[TheoremReport]:
    """Run every check at every ``k`` of :func:`check_tying_degrees`, on a problem or the defaults.

    Parameters
    ----------
    problem : BundleProblem, optional
        A user's problem; default :func:`default_problems`, on which
        :func:`theorem_a` also asserts that its bound is not loose by more
        than :data:`THEOREM_A_MAX_LOOSENESS`.
    seed : int, default 0
    solver : callable, optional
        The solver under test.  Default: both of the package's routes, every
        check once with :func:`grassbundle.solve` and once with
        :func:`phase_diagram_solver` (names suffixed ``via phase_diagram``),
        and, once per problem, the checks of :mod:`grassbundle.theorems_fits`
        (allocation, refits, factorisations, distances and means, coupling).  With a
        solver given, only the bundle checks run, on that solver.

    Returns
    -------
    list of TheoremReport
        Names are suffixed with the problem's label when the default problems run.
    """
    cases = [("", problem)] if problem is not None else default_problems(seed)
    solvers: list[tuple[str, Solver]] = (
        [("", solve), ("via phase_diagram", phase_diagram_solver)]
        if solver is None
        else [("", solver)]
    )
    from ..theorems_fits import fit_checks  # imports this package: not at the top

    looseness = THEOREM_A_MAX_LOOSENESS if problem is None else None
    reports: list[TheoremReport] = []
    for label, p in cases:
        if solver is None:
            fits = fit_checks(p, seed=seed)
            for r in fits:
                if label:
                    r.name = f"{r.name} ({label})"
                r.figures["problem"] = label or repr(p)
            reports += fits
        for route, s in solvers:
            batch = [svd_llm_equivalence(p, solver=s, seed=seed)]
            for k in check_tying_degrees(p.L):
                batch.append(theorem_a(p, k, solver=s, max_looseness=looseness))
                batch.append(theorem_b(p, k, solver=s, seed=seed))
                batch.append(principal_angle_expansion(p, k, solver=s, seed=seed))
                batch.append(path_monotonicity(p, k, solver=s))
            suffix = "; ".join(x for x in (label, route) if x)
            for r in batch:
                if suffix:
                    r.name = f"{r.name} ({suffix})"
                r.figures["problem"] = label or repr(p)
                r.figures["solver"] = (
                    "phase_diagram" if route else ("solve" if solver is None else "given")
                )
            reports += batch
    return reports
