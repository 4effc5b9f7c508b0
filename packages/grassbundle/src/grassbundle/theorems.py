"""The corner theorems of the bundle as executable checks.

One function per statement of docs/theory/theorems.rst; each returns a
:class:`TheoremReport` (``holds``, the measured figures, the tolerances used
and why) instead of only asserting.  Every check takes the solver under test
as an argument (default :func:`grassbundle.solve`) and compares what it
returns with references recomputed here from the definitions, so a wrong
solver -- bottom-``d`` instead of top-``d``, the anchor term dropped, layers
assigned to the wrong groups -- makes the check fail.

The references share no code with what they check.  From the problem's raw
``W``, ``C`` and rank alone, each check recomputes

* the layer weights ``omega_l = 1 / ||W_l||_F^2`` (when the problem uses the
  default; a user's explicit ``omega`` is taken as given) and compares them
  with ``problem.omega``;
* the energy matrices ``N_l = W_l W_l^T`` and ``M_l = W_l C_l W_l^T`` as dense
  ``m x m`` matrices, and the energies ``||(W_l - P_U W_l)||_F^2`` and
  ``tr((W_l - P_U W_l) C_l (W_l - P_U W_l)^T)`` straight from them (no
  Cholesky factor, no ``problem.layer_energies``);
* the anchors (top-``d`` eigenspace of ``M_l`` by a dense ``eigh``), the L2
  core and the shared output basis ``B_g`` (top-``d`` eigenspace of
  ``sum_{l in g} M_l``), which is compared with
  :func:`grassbundle.shared_output_basis`;
* distances as ``||sin Theta(U, V)||_2 = ||P_U - P_V||_2 = ||(I - U U^T)
  V||_2``, a residual norm, not through :func:`grassbundle.principal_angles`;
  the package's principal-angle route (``_sin_max``) is measured alongside
  and must agree with it, so a wrong angle routine fails the checks too.

Every check also verifies, for the section the solver returns,

* *tying*: the layers of each consecutive group of ``k`` share one subspace
  (``||P_U - P_V||_2`` below ``TYING_ATOL``);
* *optimality* where the statement relies on it: ``J`` of the section equals
  the Ky Fan optimum ``sum_g [tr K_g - (sum of the top d eigenvalues of K_g)]``.

The statements of ``docs/theory/allocation.rst`` (rank allocation, SVD-LLM's
update, the residual fit, the ridge), the factorisations of
:func:`grassbundle.factorise`, the Grassmann distances and means and soft
coupling are
checked in :mod:`grassbundle.theorems_fits`; :func:`run_all_checks` runs both.

Checks need the ``m x m`` matrices ``K_g`` and one dense ``eigh`` per layer
(cached per problem, which is treated as immutable): they are meant for
problems up to a few thousand rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .angles import principal_angles
from .bundle import (
    BundleProblem,
    Section,
    phase_diagram,
    shared_output_basis,
    solve,
)

__all__ = [
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

F64 = NDArray[np.float64]
#: A solver under test: ``solver(problem, lam, k) -> Section``.
Solver = Callable[[BundleProblem, float, int], Section]

EPS = float(np.finfo(np.float64).eps)
#: Tying: layers of one group must share a subspace up to roundoff in the
#: principal angles (about 1e-15); 1e-10 leaves room for bases that were
#: recomputed rather than shared, and is far below any real mis-assignment.
TYING_ATOL = 1e-10
#: Objective optimality: ``J`` is a difference of terms of size ``scale =
#: sum_l omega_l tr E_l + lam * L``; roundoff in the traces and in the Ky Fan
#: sum is about ``m * eps * scale`` (< 1e-12 scale for m < 4000), and an
#: eigenvector error ``e`` changes ``J`` only by ``O(e^2)``.  1e-9 * scale.
OPT_RTOL = 1e-9
#: Two routes to ``||sin Theta||_2``: the residual norm ``||(I - U U^T) V||_2``
#: and the sine of the package's largest principal angle.  Both are accurate to
#: a few ``eps`` in absolute terms (about 1e-15); 1e-12 leaves a factor 1000,
#: while taking another angle than the largest is off by the spread of the
#: angles (1e-6 or more on every problem the checks run on).
SINE_ROUTE_ATOL = 1e-12
#: ``omega`` against ``1 / ||W_l||_F^2`` recomputed here: the same sum of
#: squares in another order, equal to a few ``n m eps``; 1e-12 relative.
OMEGA_RTOL = 1e-12
#: Theorem A's closed form ``c_g / (lam - c_g)`` against the Davis-Kahan form
#: ``||H||_2 / (delta_g - ||H||_2)`` with ``||H||_2 = (d / lam) ||E_g||_2``
#: from an SVD: the same number by two routes, equal to ~1e-15 relative (the
#: 2-norms from ``eigvalsh`` and ``svd`` agree to ``eps`` relative); 1e-9.
FORMULA_RTOL = 1e-9
#: On the default problems Theorem A's bound must not be loose by more than
#: this factor: the largest ratio ``measured / bound`` over the ladder must be
#: at least ``1 / THEOREM_A_MAX_LOOSENESS``.  Measured there: 0.056 to 0.37
#: (``python -m grassbundle check --json``, figure ``measured_over_bound_max``;
#: the k = 1 activation case converges exactly and is exempt), so 100 leaves a
#: margin of 5.6 below the loosest, and a constant made 6x larger or more
#: (a 2-norm replaced by a sum over layers, a gap by its square) fails.
THEOREM_A_MAX_LOOSENESS = 100.0
#: Theorem A's rate: the log-log slope of the measured distance, fitted on the
#: rungs where the bound is at most 0.05, must be within this of -1.  There
#: the second-order term moves the slope by O(0.05) (measured: within 0.01
#: on the default problems), while a solver converging as ``1 / sqrt(lam)``
#: has slope -0.5 and one converging as ``1 / lam^2`` slope -2; both fail
#: (``test_theorems_a_rate_rejects_a_slow_solver``).
SLOPE_ATOL = 0.1


@dataclass
class TheoremReport:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        The statement and its parameters, e.g. ``"theorem_a[k=2]"``.
    holds : bool
        Whether every assertion of the statement held within tolerance.
    figures : dict
        The measured numbers (floats, lists of floats, bools).
    tolerance : dict
        Each tolerance used, by name.
    why : str
        Why these tolerances.
    summary : str
        One line of the key figures, for the table of ``python -m grassbundle check``.
    failures : list of str
        The assertions that failed (empty when ``holds``).
    """

    name: str
    holds: bool
    figures: dict[str, Any]
    tolerance: dict[str, float]
    why: str
    summary: str = ""
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (numpy scalars and arrays converted)."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return v
    return x


# -- independent references ----------------------------------------------


def _groups(L: int, k: int) -> list[list[int]]:
    return [list(range(s, min(s + k, L))) for s in range(0, L, k)]


def _top_dense(K: F64, d: int) -> tuple[F64, F64]:
    """Top-``d`` eigenvectors and all eigenvalues (descending) of symmetric ``K`` (``eigh``)."""
    mu, V = np.linalg.eigh(K)
    return V[:, ::-1][:, :d], mu[::-1]


def gram(problem: BundleProblem, l: int, which: str) -> F64:
    """``N_l = W_l W_l^T`` or ``M_l = W_l C_l W_l^T`` (symmetrised), from the definitions."""
    W = problem.W[l]
    if which == "N":
        return W @ W.T
    assert problem.C is not None
    M = W @ problem.C[l] @ W.T
    return 0.5 * (M + M.T)


def _energy_kind(problem: BundleProblem) -> str:
    """The energy matrix in the objective: ``N`` (weight metric) or ``M`` (activation)."""
    return "N" if problem.metric == "weight" else "M"


def _anchor_kind(problem: BundleProblem) -> str:
    """Anchors and the shared output basis use ``M_l``, or ``N_l`` without covariances."""
    return "M" if problem.C is not None else "N"


@dataclass
class _Reference:
    """What the checks compare against, recomputed from ``W``, ``C`` and ``rank`` only."""

    omega: F64
    anchors: F64  # (L, m, d): top-d eigenspace of M_l (N_l without C)
    anchor_top: F64  # mu_1 of that matrix, per layer
    anchor_gap: F64  # mu_d - mu_{d+1} of that matrix, per layer
    trace: F64  # tr E_l, per layer


_REFERENCES: weakref.WeakKeyDictionary[BundleProblem, _Reference] = weakref.WeakKeyDictionary()


def reference(problem: BundleProblem) -> _Reference:
    """The independent references of ``problem`` (computed once per problem object)."""
    ref = _REFERENCES.get(problem)
    if ref is not None:
        return ref
    L, d = problem.L, problem.rank
    W = problem.W
    sq = np.array([float(np.sum(W[l] * W[l])) for l in range(L)])
    omega = 1.0 / sq if problem.omega_is_default else np.array(problem.omega, dtype=np.float64)
    anchors = np.empty((L, problem.m, d))
    top = np.empty(L)
    gap = np.empty(L)
    for l in range(L):
        V, mu = _top_dense(gram(problem, l, _anchor_kind(problem)), d)
        anchors[l] = V
        top[l] = mu[0]
        gap[l] = mu[d - 1] - mu[d]
    if problem.metric == "weight":
        trace = sq
    else:
        assert problem.C is not None
        trace = np.array([float(np.sum((W[l] @ problem.C[l]) * W[l])) for l in range(L)])
    ref = _Reference(omega=omega, anchors=anchors, anchor_top=top, anchor_gap=gap, trace=trace)
    _REFERENCES[problem] = ref
    return ref


def _group_energy(problem: BundleProblem, ref: _Reference, layers: Sequence[int]) -> F64:
    """``E_g = sum_{l in g} omega_l E_l`` (dense, from the definitions)."""
    K = np.zeros((problem.m, problem.m))
    for l in layers:
        K += ref.omega[l] * gram(problem, l, _energy_kind(problem))
    return K


def _anchor_sum(ref: _Reference, layers: Sequence[int]) -> F64:
    """``G_g = sum_{l in g} A_l A_l^T`` with the reference anchors."""
    A = np.concatenate([ref.anchors[l] for l in layers], axis=1)
    return A @ A.T


def layer_energy(problem: BundleProblem, l: int, U: F64, kind: str | None = None) -> float:
    """``||(W - P_U W)||_F^2`` (``N``) or ``tr((W - P_U W) C (W - P_U W)^T)`` (``M``)."""
    W = problem.W[l]
    R = W - U @ (U.T @ W)
    if (kind or _energy_kind(problem)) == "N":
        return float(np.sum(R * R))
    assert problem.C is not None
    return float(np.sum((R @ problem.C[l]) * R))


def _anchor_distance(U: F64, A: F64) -> float:
    """``||P_U - P_A||_F^2 / (2d) = ||(I - U U^T) A||_F^2 / d`` (equal dimensions)."""
    R = A - U @ (U.T @ A)
    return float(np.sum(R * R)) / A.shape[1]


def _proj_sine(U: F64, V: F64) -> float:
    """``||sin Theta(U, V)||_2 = ||P_U - P_V||_2 = ||(I - U U^T) V||_2`` for equal dimensions.

    For subspaces of the same dimension ``||P_U - P_V||_2 = ||(I - P_U) P_V||_2``
    (Golub and Van Loan, *Matrix Computations*, Theorem 2.5.1), and ``P_V = V
    V^T`` with orthonormal ``V``.  A residual norm: accurate to a few ``eps``
    in absolute terms however small the angle, and independent of
    :func:`grassbundle.principal_angles`.
    """
    return float(np.linalg.norm(V - U @ (U.T @ V), 2))


def _sin_max(U: F64, V: F64) -> float:
    """The package's route: sine of the largest principal angle (``principal_angles`` ascending)."""
    return float(np.sin(principal_angles(U, V)[-1]))


def _sines(U: F64, V: F64) -> tuple[float, float]:
    """``(||(I - U U^T) V||_2, |that - _sin_max(U, V)|)``: the measured sine and the route gap."""
    s = _proj_sine(U, V)
    return s, abs(s - _sin_max(U, V))


def _random_frames(m: int, d: int, count: int, rng: np.random.Generator) -> list[F64]:
    return [np.linalg.qr(rng.standard_normal((m, d)))[0] for _ in range(count)]


def _perturbed(U: F64, eps: float, rng: np.random.Generator) -> F64:
    return np.linalg.qr(U + eps * rng.standard_normal(U.shape))[0]


def _tying_defect(sec: Section, L: int, k: int) -> float:
    """Largest sine between a layer's subspace and its group leader's (groups of ``k``)."""
    worst = 0.0
    for g in _groups(L, k):
        U0 = sec.basis(g[0])
        for l in g[1:]:
            worst = max(worst, _proj_sine(U0, sec.basis(l)))
    return worst


def _tied_corner(
    problem: BundleProblem, k: int, solver: Solver
) -> tuple[_Reference, Section, float]:
    """The references, the solver's ``lam = 0`` section at tying ``k``, and its tying defect."""
    sec = solver(problem, 0.0, k)
    return reference(problem), sec, _tying_defect(sec, problem.L, k)


def _omega_deviation(problem: BundleProblem, ref: _Reference) -> float:
    """Largest relative difference between ``problem.omega`` and the reference weights."""
    return float(np.max(np.abs(np.asarray(problem.omega) / ref.omega - 1.0)))


def _objective(
    problem: BundleProblem, ref: _Reference, sec: Section, lam: float
) -> tuple[float, float, float]:
    """``(J, weight term, sum of anchor distances)`` of a section, from the definitions."""
    w = sum(ref.omega[l] * layer_energy(problem, l, sec.basis(l)) for l in range(problem.L))
    a = sum(_anchor_distance(sec.basis(l), ref.anchors[l]) for l in range(problem.L))
    return w + lam * a, w, a


def _nanmax(xs: Sequence[float]) -> float:
    """Largest non-NaN value (NaN when there is none)."""
    arr = np.array(xs, dtype=np.float64)
    return float(np.nanmax(arr)) if np.any(~np.isnan(arr)) else math.nan


def fmt(x: float) -> str:
    """``x`` to three significant digits, ``n/a`` for NaN."""
    return "n/a" if math.isnan(x) else f"{x:.3g}"


# -- random problems -------------------------------------------------------


def random_problem(
    L: int,
    m: int,
    n: int,
    rank: int,
    *,
    rng: np.random.Generator,
    decay: float = 0.15,
    gap: float = 0.5,
    covariance: bool = True,
    metric: str = "weight",
) -> BundleProblem:
    """A seeded random family with decaying spectra and a controlled eigengap at ``rank``.

    ``W_l = P_l diag(s) Q_l^T`` with Haar-random ``P_l, Q_l`` and
    ``s_i = exp(-decay * i) * (1 + gap)`` for ``i < rank``, ``exp(-decay * i)``
    after, times a per-layer scale ``exp(u_l)``, ``u_l ~ U(-1, 1)`` (so that the
    default weights ``omega_l`` differ between layers); covariances
    ``C_l = X X^T / (2n)`` with Gaussian ``X`` (n x 2n), its rows scaled by
    ``exp(-decay * j)`` so that they are anisotropic.

    Parameters
    ----------
    L, m, n, rank : int
        Family size, shape and rank.
    rng : numpy.random.Generator
        Source of randomness.
    decay : float, default 0.15
        Exponential decay rate of the singular values.
    gap : float, default 0.5
        Relative jump of the singular values after index ``rank``.
    covariance : bool, default True
        Draw covariances ``C``.
    metric : {"weight", "activation"}, default "weight"

    Returns
    -------
    BundleProblem
    """
    r = min(m, n)
    s = np.exp(-decay * np.arange(r))
    s[:rank] *= 1.0 + gap
    W = np.empty((L, m, n))
    for l in range(L):
        P = np.linalg.qr(rng.standard_normal((m, r)))[0]
        Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
        W[l] = (P * (s * np.exp(rng.uniform(-1.0, 1.0)))) @ Q.T
    C = None
    if covariance:
        X = rng.standard_normal((L, n, 2 * n)) * np.exp(-decay * np.arange(n))[None, :, None]
        C = X @ np.swapaxes(X, -1, -2) / (2 * n)
    return BundleProblem(W, C, rank=rank, metric=metric)  # type: ignore[arg-type]


# -- Theorem A ---------------------------------------------------------------


def _theorem_a_constant(d: int, norm_E: float, delta: float) -> float:
    """Theorem A's constant ``c_g = d ||E_g||_2 / delta_g``."""
    return d * norm_E / delta


def _theorem_a_bound(c: float, lam: float) -> float:
    """Theorem A's bound ``min(1, c_g / (lam - c_g))``; 1 (no information) for ``lam <= c_g``."""
    return min(1.0, c / (lam - c)) if math.isfinite(c) and lam > c else 1.0


def theorem_a(
    problem: BundleProblem,
    k: int,
    lams: Sequence[float] | None = None,
    *,
    solver: Solver = solve,
    max_looseness: float | None = None,
) -> TheoremReport:
    """Theorem A: ``U_g(lam)`` converges to the group's L2 core at rate ``O(1/lam)``.

    With ``N_g = sum_{l in g} omega_l E_l`` and ``S_g = sum_{l in g} A_l A_l^T``
    (eigengap ``delta_g = mu_d(S_g) - mu_{d+1}(S_g)``; ``= 1`` for ``k = 1``),
    ``U_g(lam)`` is the top-``d`` eigenspace of ``S_g + E`` with the
    perturbation ``E = (d/lam) N_g`` (``K_g(lam)`` scaled by ``d/lam``, which
    leaves eigenspaces unchanged).  By Weyl, the ``(d+1)``-th eigenvalue of
    ``S_g + E`` is at most ``mu_{d+1}(S_g) + ||E||_2``, so the top-``d``
    eigenvalues of ``S_g`` are separated from the bottom ones of ``S_g + E``
    by at least ``delta_g - ||E||_2``, and the Davis-Kahan sin-Theta theorem
    gives, for ``lam > d ||N_g||_2 / delta_g``,

        ||sin Theta(U_g(lam), core_g)||_2 <= ||E||_2 / (delta_g - ||E||_2)
                                          = c_g / (lam - c_g),
        c_g = d ||N_g||_2 / delta_g,

    i.e. ``<= 2 c_g / lam`` once ``lam >= 2 c_g``; and, since ``E`` is
    positive semi-definite, the sharper ``<= c_g / lam`` for every ``lam >
    0``.  ``N_g``, the anchors ``A_l`` and the core are recomputed here from
    ``W``, ``C`` and the definition of ``omega`` (see the module docstring).

    The check, at every rung of the ladder:

    * measures the distance as ``||P_U - P_core||_2`` (largest over the layers
      of the group; see the module docstring), and the same distance through
      the package's principal angles, which must agree to ``SINE_ROUTE_ATOL``;
    * asserts the measured distance is at most ``min(1, c_g / (lam - c_g))``
      and at most ``min(1, c_g / lam)``;
    * asserts the bound is the stated formula: ``c_g / (lam - c_g)`` equals the
      Davis-Kahan form ``||E||_2 / (delta_g - ||E||_2)`` with ``||E||_2 =
      (d/lam) ||N_g||_2`` from an SVD (to ``FORMULA_RTOL``).

    It fits the log-log slope of the measured distance on the rungs where
    ``c_g / (lam - c_g) <= 0.05`` (first-order regime: the slope there is
    ``-1 + O(0.05)``), and checks that ``solver(problem, inf, 1)`` returns the
    anchors (``k = 1`` reproduces SVD-LLM).  With ``max_looseness`` it also
    asserts that the bound is informative: the largest ``measured / bound``
    over the rungs is at least ``1 / max_looseness`` (skipped when the
    distance is at roundoff, i.e. ``N_g`` leaves the core invariant).

    Parameters
    ----------
    problem : BundleProblem
    k : int
        Tying degree.
    lams : sequence of float, optional
        The ladder; default ``2 max_g c_g * 10^(j/4)``, ``j = 0..16``.
    solver : callable, default :func:`grassbundle.solve`
        The solver under test.
    max_looseness : float, optional
        Assert ``max(measured / bound) >= 1 / max_looseness``;
        :func:`run_all_checks` passes :data:`THEOREM_A_MAX_LOOSENESS` on the
        default problems.  Default: reported, not asserted.

    Returns
    -------
    TheoremReport
    """
    d, L = problem.rank, problem.L
    ref = reference(problem)
    groups = _groups(L, k)
    cores, cs, deltas, norms, norms_svd = [], [], [], [], []
    for g in groups:
        core, mu = _top_dense(_anchor_sum(ref, g), d)
        cores.append(core)
        delta = float(mu[d - 1] - mu[d]) if len(g) > 1 else 1.0
        Eg = _group_energy(problem, ref, g)
        nE = float(np.linalg.eigvalsh(Eg)[-1])
        deltas.append(delta)
        norms.append(nE)
        norms_svd.append(float(np.linalg.norm(Eg, 2)))
        ok = delta > 1e-12 * max(float(mu[0]), 1.0)
        cs.append(_theorem_a_constant(d, nE, delta) if ok else math.inf)
    hyp = [math.isfinite(c) for c in cs]
    cmax = max((c for c in cs if math.isfinite(c)), default=1.0)
    ladder = (
        [2.0 * cmax * 10 ** (j / 4) for j in range(17)]
        if lams is None
        else [float(x) for x in lams]
    )
    atol = 1e-10
    measured = np.zeros((len(ladder), len(groups)))
    bounds = np.ones((len(ladder), len(groups)))
    sharp = np.ones((len(ladder), len(groups)))
    formula_diff = 0.0
    route = 0.0
    tying = 0.0
    for i, lam in enumerate(ladder):
        sec = solver(problem, lam, k)
        tying = max(tying, _tying_defect(sec, L, k))
        for j, g in enumerate(groups):
            for l in g:
                s, r = _sines(sec.basis(l), cores[j])
                measured[i, j] = max(measured[i, j], s)
                route = max(route, r)
            c = cs[j]
            if not math.isfinite(c):
                continue
            bounds[i, j] = _theorem_a_bound(c, lam)
            sharp[i, j] = min(1.0, c / lam) if lam > 0 else 1.0
            h = (d / lam) * norms_svd[j] if lam > 0 else math.inf
            dk = min(1.0, h / (deltas[j] - h)) if deltas[j] > h else 1.0
            formula_diff = max(formula_diff, abs(bounds[i, j] - dk) / dk)
    checked = np.array(hyp)
    viol = measured[:, checked] - bounds[:, checked]
    viol_sharp = measured[:, checked] - sharp[:, checked]
    bound_ok = bool(np.all(viol <= atol)) if checked.any() else True
    sharp_ok = bool(np.all(viol_sharp <= atol)) if checked.any() else True
    # slope on the first-order rungs, from the worst group
    worst = measured[:, checked].max(axis=1) if checked.any() else measured.max(axis=1)
    bworst = bounds[:, checked].max(axis=1) if checked.any() else bounds.max(axis=1)
    sel = (bworst <= 0.05) & (worst > 1e-12)
    slope = math.nan
    if sel.sum() >= 3:
        slope = float(np.polyfit(np.log(np.array(ladder)[sel]), np.log(worst[sel]), 1)[0])
    exact = bool(np.all(worst[bworst <= 0.05] <= 1e-12)) and bool((bworst <= 0.05).any())
    slope_ok = exact or (math.isfinite(slope) and abs(slope + 1.0) <= SLOPE_ATOL)
    informative = (bounds < 1.0) & checked[None, :]
    tightness = float(np.max(measured[informative] / bounds[informative], initial=0.0))
    # k = 1 reproduces SVD-LLM: the lam = inf limit is the anchor section
    sec_inf = solver(problem, math.inf, 1)
    k1 = 0.0
    k1_excess = 0.0
    for l in range(L):
        s, r = _sines(sec_inf.basis(l), ref.anchors[l])
        route = max(route, r)
        k1 = max(k1, s)
        # the two anchor routes agree to ~eps * mu_1 / gap (eigenvector error)
        gap = float(ref.anchor_gap[l])
        tol_l = 1e-8 + 100 * EPS * float(ref.anchor_top[l]) / gap if gap > 0 else math.inf
        k1_excess = max(k1_excess, s - tol_l)
    failures = []
    if not bound_ok:
        failures.append(f"Davis-Kahan bound violated by up to {float(viol.max()):.3e}")
    if not sharp_ok:
        failures.append(f"sharper bound c_g/lam violated by up to {float(viol_sharp.max()):.3e}")
    if formula_diff > FORMULA_RTOL:
        failures.append(
            "the bound is not the stated formula: c_g/(lam - c_g) differs from "
            f"||E||/(delta_g - ||E||) by {formula_diff:.3e} relative"
        )
    if route > SINE_ROUTE_ATOL:
        failures.append(
            f"principal-angle sine differs from ||P_U - P_V||_2 by {route:.3e} "
            "(largest angle not the last one?)"
        )
    if not slope_ok:
        failures.append(f"log-log slope {slope:.3f} not within {SLOPE_ATOL:g} of -1")
    if max_looseness is not None and not exact and tightness < 1.0 / max_looseness:
        failures.append(
            f"bound loose by a factor {1.0 / max(tightness, 1e-300):.3g} > {max_looseness:g}"
        )
    if tying > TYING_ATOL:
        failures.append(f"layers of a group do not share a subspace (sine {tying:.3e})")
    if k1_excess > 0:
        failures.append(f"solver(problem, inf, 1) is not the anchor section (sine {k1:.3e})")
    figures = {
        "k": k,
        "lams": ladder,
        "c_g": cs,
        "delta_g": deltas,
        "norm_N_g": norms,
        "hypothesis_met": hyp,
        "measured_sin_theta_max": worst.tolist(),
        "bound_max": bworst.tolist(),
        "bound_sharp_max": (
            sharp[:, checked].max(axis=1) if checked.any() else sharp.max(axis=1)
        ).tolist(),
        "max_violation": float(viol.max()) if viol.size else 0.0,
        "max_violation_sharp": float(viol_sharp.max()) if viol_sharp.size else 0.0,
        "formula_max_relative_difference": formula_diff,
        "measured_over_bound_max": tightness,
        "sine_route_max_difference": route,
        "loglog_slope": slope,
        "exact_convergence": exact,
        "tying_defect": tying,
        "k1_lam_inf_vs_anchor_sine": k1,
    }
    return TheoremReport(
        name=f"theorem_a[k={k}]",
        holds=not failures,
        figures=figures,
        tolerance={
            "bound_atol": atol,
            "slope_atol": SLOPE_ATOL,
            "tying_atol": TYING_ATOL,
            "k1_atol": 1e-8,
            "formula_rtol": FORMULA_RTOL,
            "sine_route_atol": SINE_ROUTE_ATOL,
            "max_looseness": math.nan if max_looseness is None else max_looseness,
        },
        why=(
            "bound_atol: the residual-norm sine is accurate to ~1e-15 and eigenvectors to "
            "eps*||K||/gap, far below 1e-10; slope_atol: in the fitted regime "
            "||E||/delta <= 0.05 the second-order term moves the slope by O(0.05); "
            "k1_atol: anchors and the lam=inf solution are the same eigenspace computed "
            "by different routes (error eps*||M||/gap, added to 1e-8); formula_rtol: one "
            "number by two routes; max_looseness: see THEOREM_A_MAX_LOOSENESS"
        ),
        summary=(
            f"max sin/bound {fmt(tightness)}; "
            + ("slope: exact (distance at roundoff)" if exact else f"slope {slope:.3f}")
            + "; "
            f"c_g max {fmt(cmax)}; k=1 vs anchor {fmt(k1)}"
        ),
        failures=failures,
    )


# -- Theorem B and the principal-angle expansion ----------------------------------


def _energy(K: F64, trK: float, U: F64) -> float:
    return trK - float(np.sum(U * (K @ U)))


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


def _shared_output_reference(
    problem: BundleProblem, layers: Sequence[int]
) -> tuple[F64, float, float]:
    """The shared output basis of a group from its definition: top-``d`` of ``sum_{l in g} M_l``.

    ``N_l`` in place of ``M_l`` without covariances.  Returns the frame,
    ``mu_1`` and the eigengap ``mu_d - mu_{d+1}`` of the sum.
    """
    d = problem.rank
    K = np.zeros((problem.m, problem.m))
    for l in layers:
        K += gram(problem, l, _anchor_kind(problem))
    B, mu = _top_dense(K, d)
    return B, float(mu[0]), float(mu[d - 1] - mu[d])


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
    ref, sec, tying = _tied_corner(problem, k, solver)
    bs = shared_output_basis(problem, k)
    opt_gap, rand_margin, bs_gap, bs_lower, bs_sine, gaps = [], [], [], [], [], []
    bs_def_sine: list[float] = []
    route = 0.0
    failures: list[str] = []
    omega_dev = _omega_deviation(problem, ref)
    if omega_dev > OMEGA_RTOL:
        failures.append(
            f"problem.omega differs from 1/||W_l||_F^2 by {omega_dev:.3e} relative"
            if problem.omega_is_default
            else f"problem.omega differs from the omega it was given by {omega_dev:.3e}"
        )
    for gi, g in enumerate(_groups(L, k)):
        K = _group_energy(problem, ref, g)
        trK = float(np.trace(K))
        mu = np.linalg.eigvalsh(K)[::-1]
        tol = OPT_RTOL * trK
        U = sec.basis(g[0])
        EU = _energy(K, trK, U)
        opt = trK - float(np.sum(mu[:d]))
        opt_gap.append((EU - opt) / trK)
        others = _random_frames(problem.m, d, n_random, rng) + [
            _perturbed(U, e, rng) for e in (1e-4, 1e-2, 1e-1)
        ]
        rand_margin.append(min(_energy(K, trK, V) - EU for V in others) / trK)
        B, muB, gapB = _shared_output_reference(problem, g)
        sdef = _proj_sine(bs.bases[gi], B)
        bs_def_sine.append(sdef)
        if gapB > 0 and sdef > 1e-10 + 100 * EPS * muB / gapB:
            failures.append(
                f"group {gi}: shared_output_basis is not the top-d eigenspace of sum M_l "
                f"(sine {sdef:.3e})"
            )
        EB = _energy(K, trK, B)
        gap_mu = float(mu[d - 1] - mu[d])
        gaps.append(gap_mu / trK)
        s, r = _sines(B, U)
        route = max(route, r)
        bs_sine.append(s)
        R = B - U @ (U.T @ B)
        s2 = float(np.sum(R * R))  # ||sin Theta(B, U)||_F^2
        bs_gap.append((EB - EU) / trK)
        bs_lower.append(gap_mu * s2 / trK)
        if EU - opt > tol:
            failures.append(f"group {gi}: frame misses the Ky Fan minimum by {EU - opt:.3e}")
        if min(_energy(K, trK, V) for V in others) < EU - tol:
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
    ref, sec, tying = _tied_corner(problem, k, solver)
    rel_errs: list[float] = []
    slack_used: list[float] = []
    bs_rel: list[float] = []
    bs_gap: list[float] = []
    lo_margin: list[float] = []
    hi_margin: list[float] = []
    failures: list[str] = []
    for gi, g in enumerate(_groups(L, k)):
        K = _group_energy(problem, ref, g)
        trK = float(np.trace(K))
        mu = np.linalg.eigvalsh(K)[::-1]
        atol = 100 * d * EPS * float(mu[0])
        Us = sec.basis(g[0])
        frames = [_shared_output_reference(problem, g)[0]]
        frames += _random_frames(problem.m, d, n_random, rng)
        frames += [_perturbed(Us, e, rng) for e in (1e-6, 1e-3, 1e-1)]
        for fi, U in enumerate(frames):
            lhs = _energy(K, trK, U) - _energy(K, trK, Us)
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
            "max_relative_error": _nanmax(rel_errs),
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
            f"max rel err {fmt(_nanmax(rel_errs))}; B_g gap rel err {fmt(_nanmax(bs_rel))}; "
            f"bound margins >= {fmt(min(lo_margin))}, {fmt(min(hi_margin))}"
        ),
        failures=failures,
    )


# -- SVD-LLM equivalence ---------------------------------------------------------


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


# -- path monotonicity -------------------------------------------------------------


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
    reference anchors (see the module docstring).  It also checks that the
    ``objective`` and ``weight_term`` the section reports equal ``J`` and
    ``F`` recomputed so (to ``OPT_RTOL`` of the scale), and that
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
    groups = _groups(L, k)
    Eg = [_group_energy(problem, ref, g) for g in groups]
    Gg = [_anchor_sum(ref, g) for g in groups]
    F, D, opt_gaps, reported = [], [], [], []
    tying = 0.0
    failures: list[str] = []
    omega_dev = _omega_deviation(problem, ref)
    if omega_dev > OMEGA_RTOL:
        failures.append(f"problem.omega differs from the reference by {omega_dev:.3e} relative")
    scale0 = float(np.dot(ref.omega, ref.trace))
    for lam in ladder:
        sec = solver(problem, lam, k)
        tying = max(tying, _tying_defect(sec, L, k))
        J, w, a = _objective(problem, ref, sec, lam)
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


# -- everything ------------------------------------------------------------------


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


def check_tying_degrees(L: int) -> list[int]:
    """The tying degrees the checks run at: ``1``, ``2``, ``L`` and one with a shorter last group.

    The last is the smallest ``k >= 2`` that does not divide ``L`` (groups
    of ``k`` and a last one of ``L mod k`` layers); there is none for ``L <=
    2``, and for odd ``L`` it is ``2`` itself.

    Parameters
    ----------
    L : int
        Number of layers.

    Returns
    -------
    list of int
        Sorted, without repeats.
    """
    ks = {1, min(2, L), L}
    short = next((k for k in range(2, L) if L % k), None)
    if short is not None:
        ks.add(short)
    return sorted(ks)


def default_problems(seed: int = 0) -> list[tuple[str, BundleProblem]]:
    """The seeded random problems ``python -m grassbundle check`` runs on.

    Parameters
    ----------
    seed : int, default 0

    Returns
    -------
    list of (str, BundleProblem)
    """
    rng = np.random.default_rng(seed)
    return [
        ("weight L=6 m=24 n=20 d=4", random_problem(6, 24, 20, 4, rng=rng)),
        (
            "activation L=4 m=16 n=24 d=3",
            random_problem(4, 16, 24, 3, rng=rng, metric="activation"),
        ),
    ]


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
    from .theorems_fits import fit_checks  # imports this module: not at the top

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
