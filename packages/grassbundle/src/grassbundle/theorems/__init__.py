"""The corner theorems of the bundle as executable checks.

One function per statement of docs/theory/theorems.rst, one module per
theorem; each returns a :class:`TheoremReport` (``holds``, the measured
figures, the tolerances used and why) instead of only asserting.  Every
check takes the solver under test as an argument (default
:func:`grassbundle.solve`) and compares what it returns with references
recomputed from the definitions, so a wrong solver -- bottom-``d`` instead
of top-``d``, the anchor term dropped, layers assigned to the wrong groups --
makes the check fail.

* :mod:`~grassbundle.theorems.anchor_corner`: :func:`theorem_a` (Theorem A,
  the anchor corner);
* :mod:`~grassbundle.theorems.tied_corner`: :func:`theorem_b` (Theorem B,
  the tied corner);
* :mod:`~grassbundle.theorems.expansion`: :func:`principal_angle_expansion`;
* :mod:`~grassbundle.theorems.monotonicity`: :func:`path_monotonicity`;
* :mod:`~grassbundle.theorems.svd_llm`: :func:`svd_llm_equivalence`;
* :mod:`~grassbundle.theorems.references`: the references the checks share,
  recomputed from the problem's raw ``W``, ``C`` and rank with code that
  shares nothing with what they check (weights, dense ``N_l`` and ``M_l``,
  anchors and cores by dense ``eigh``, distances as residual norms), and
  the tolerances more than one check uses;
* :mod:`~grassbundle.theorems.report`: :class:`TheoremReport` and the
  :data:`Solver` type;
* :mod:`~grassbundle.theorems.problems`: the seeded problems and tying
  degrees the checks run on;
* :mod:`~grassbundle.theorems.runner`: :func:`run_all_checks`, and
  :func:`phase_diagram_solver`, the phase diagram as a solver under test.

Every check also verifies, for the section the solver returns,

* *tying*: the layers of each consecutive group of ``k`` share one subspace
  (``||P_U - P_V||_2`` below ``TYING_ATOL``);
* *optimality* where the statement relies on it: ``J`` of the section equals
  the Ky Fan optimum ``sum_g [tr K_g - (sum of the top d eigenvalues of K_g)]``.

The statements of ``docs/theory/allocation.rst`` (rank allocation, SVD-LLM's
update, the residual fit, the ridge), the factorisations of
:func:`grassbundle.factorise`, the Grassmann distances and means and soft
coupling are checked in :mod:`grassbundle.theorems_fits`;
:func:`run_all_checks` runs both.

Checks need the ``m x m`` matrices ``K_g`` and one dense ``eigh`` per layer
(cached per problem, which is treated as immutable): they are meant for
problems up to a few thousand rows.
"""

from __future__ import annotations

from .anchor_corner import FORMULA_RTOL, SLOPE_ATOL, THEOREM_A_MAX_LOOSENESS, theorem_a
from .expansion import principal_angle_expansion
from .monotonicity import path_monotonicity
from .problems import check_tying_degrees, default_problems, random_problem
from .references import EPS, OMEGA_RTOL, OPT_RTOL, SINE_ROUTE_ATOL, TYING_ATOL
from .report import Solver, TheoremReport
from .runner import phase_diagram_solver, run_all_checks
from .svd_llm import svd_llm_equivalence
from .tied_corner import theorem_b

__all__ = [
    "EPS",
    "FORMULA_RTOL",
    "OMEGA_RTOL",
    "OPT_RTOL",
    "SINE_ROUTE_ATOL",
    "SLOPE_ATOL",
    "THEOREM_A_MAX_LOOSENESS",
    "TYING_ATOL",
    "Solver",
    "TheoremReport",
    "check_tying_degrees",
    "default_problems",
    "path_monotonicity",
    "phase_diagram_solver",
    "principal_angle_expansion",
    "random_problem",
    "run_all_checks",
    "svd_llm_equivalence",
    "theorem_a",
    "theorem_b",
]
