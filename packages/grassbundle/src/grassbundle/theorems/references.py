"""The references the checks compare against, recomputed from the definitions.

From a problem's raw ``W``, ``C`` and rank alone, and sharing no code with
what the checks test:

* the layer weights ``omega_l = 1 / ||W_l||_F^2`` (when the problem uses the
  default; a user's explicit ``omega`` is taken as given);
* the energy matrices ``N_l = W_l W_l^T`` and ``M_l = W_l C_l W_l^T`` as dense
  ``m x m`` matrices (:func:`gram`), and the energies ``||(W_l - P_U
  W_l)||_F^2`` and ``tr((W_l - P_U W_l) C_l (W_l - P_U W_l)^T)`` straight from
  them (:func:`layer_energy`: no Cholesky factor, no
  ``problem.layer_energies``);
* the anchors (top-``d`` eigenspace of ``M_l`` by a dense ``eigh``,
  :func:`reference`), the group sums ``E_g`` and ``G_g`` and the shared output
  basis ``B_g`` (top-``d`` eigenspace of ``sum_{l in g} M_l``,
  :func:`shared_output_reference`);
* distances as ``||sin Theta(U, V)||_2 = ||P_U - P_V||_2 = ||(I - U U^T)
  V||_2`` (:func:`proj_sine`), a residual norm, not through
  :func:`grassbundle.principal_angles`; the package's principal-angle route
  (:func:`sin_max`) is measured alongside and must agree with it, so a wrong
  angle routine fails the checks too;
* the tying defect of a section (:func:`tying_defect`) and its objective
  ``J`` (:func:`objective`).

It also holds the tolerances more than one check uses.  The references are
cached per problem, which is treated as immutable.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..angles import principal_angles
from ..bundle import BundleProblem, Section
from .report import Solver

__all__ = [
    "EPS",
    "OMEGA_RTOL",
    "OPT_RTOL",
    "SINE_ROUTE_ATOL",
    "TYING_ATOL",
    "Reference",
    "anchor_distance",
    "anchor_kind",
    "anchor_sum",
    "corner_section",
    "energy_kind",
    "frame_energy",
    "gram",
    "group_energy",
    "layer_energy",
    "layer_groups",
    "objective",
    "omega_deviation",
    "perturbed",
    "proj_sine",
    "random_frames",
    "reference",
    "shared_output_reference",
    "sin_max",
    "sines",
    "top_dense",
    "tying_defect",
]

F64 = NDArray[np.float64]

#: Machine epsilon of float64.
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


def layer_groups(L: int, k: int) -> list[list[int]]:
    """Consecutive groups of ``k`` of the ``L`` layers (the last one shorter when ``L % k``)."""
    return [list(range(s, min(s + k, L))) for s in range(0, L, k)]


def top_dense(K: F64, d: int) -> tuple[F64, F64]:
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


def energy_kind(problem: BundleProblem) -> str:
    """The energy matrix in the objective: ``N`` (weight metric) or ``M`` (activation)."""
    return "N" if problem.metric == "weight" else "M"


def anchor_kind(problem: BundleProblem) -> str:
    """Anchors and the shared output basis use ``M_l``, or ``N_l`` without covariances."""
    return "M" if problem.C is not None else "N"


@dataclass
class Reference:
    """What the checks compare against, recomputed from ``W``, ``C`` and ``rank`` only."""

    omega: F64
    anchors: F64  # (L, m, d): top-d eigenspace of M_l (N_l without C)
    anchor_top: F64  # mu_1 of that matrix, per layer
    anchor_gap: F64  # mu_d - mu_{d+1} of that matrix, per layer
    trace: F64  # tr E_l, per layer


_REFERENCES: weakref.WeakKeyDictionary[BundleProblem, Reference] = weakref.WeakKeyDictionary()


def reference(problem: BundleProblem) -> Reference:
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
        V, mu = top_dense(gram(problem, l, anchor_kind(problem)), d)
        anchors[l] = V
        top[l] = mu[0]
        gap[l] = mu[d - 1] - mu[d]
    if problem.metric == "weight":
        trace = sq
    else:
        assert problem.C is not None
        trace = np.array([float(np.sum((W[l] @ problem.C[l]) * W[l])) for l in range(L)])
    ref = Reference(omega=omega, anchors=anchors, anchor_top=top, anchor_gap=gap, trace=trace)
    _REFERENCES[problem] = ref
    return ref


def group_energy(problem: BundleProblem, ref: Reference, layers: Sequence[int]) -> F64:
    """``E_g = sum_{l in g} omega_l E_l`` (dense, from the definitions)."""
    K = np.zeros((problem.m, problem.m))
    for l in layers:
        K += ref.omega[l] * gram(problem, l, energy_kind(problem))
    return K


def anchor_sum(ref: Reference, layers: Sequence[int]) -> F64:
    """``G_g = sum_{l in g} A_l A_l^T`` with the reference anchors."""
    A = np.concatenate([ref.anchors[l] for l in layers], axis=1)
    return A @ A.T


def layer_energy(problem: BundleProblem, l: int, U: F64, kind: str | None = None) -> float:
    """``||(W - P_U W)||_F^2`` (``N``) or ``tr((W - P_U W) C (W - P_U W)^T)`` (``M``)."""
    W = problem.W[l]
    R = W - U @ (U.T @ W)
    if (kind or energy_kind(problem)) == "N":
        return float(np.sum(R * R))
    assert problem.C is not None
    return float(np.sum((R @ problem.C[l]) * R))


def anchor_distance(U: F64, A: F64) -> float:
    """``||P_U - P_A||_F^2 / (2d) = ||(I - U U^T) A||_F^2 / d`` (equal dimensions)."""
    R = A - U @ (U.T @ A)
    return float(np.sum(R * R)) / A.shape[1]


def proj_sine(U: F64, V: F64) -> float:
    """``||sin Theta(U, V)||_2 = ||P_U - P_V||_2 = ||(I - U U^T) V||_2`` for equal dimensions.

    For subspaces of the same dimension ``||P_U - P_V||_2 = ||(I - P_U) P_V||_2``
    (Golub and Van Loan, *Matrix Computations*, Theorem 2.5.1), and ``P_V = V
    V^T`` with orthonormal ``V``.  A residual norm: accurate to a few ``eps``
    in absolute terms however small the angle, and independent of
    :func:`grassbundle.principal_angles`.
    """
    return float(np.linalg.norm(V - U @ (U.T @ V), 2))


def sin_max(U: F64, V: F64) -> float:
    """The package's route: sine of the largest principal angle (``principal_angles`` ascending)."""
    return float(np.sin(principal_angles(U, V)[-1]))


def sines(U: F64, V: F64) -> tuple[float, float]:
    """``(||(I - U U^T) V||_2, |that - sin_max(U, V)|)``: the measured sine and the route gap."""
    s = proj_sine(U, V)
    return s, abs(s - sin_max(U, V))


def random_frames(m: int, d: int, count: int, rng: np.random.Generator) -> list[F64]:
    """``count`` Haar-random orthonormal ``m x d`` frames."""
    return [np.linalg.qr(rng.standard_normal((m, d)))[0] for _ in range(count)]


def perturbed(U: F64, eps: float, rng: np.random.Generator) -> F64:
    """``U`` plus Gaussian noise of size ``eps``, orthonormalised: a frame near ``U``."""
    return np.linalg.qr(U + eps * rng.standard_normal(U.shape))[0]


def tying_defect(sec: Section, L: int, k: int) -> float:
    """Largest sine between a layer's subspace and its group leader's (groups of ``k``)."""
    worst = 0.0
    for g in layer_groups(L, k):
        U0 = sec.basis(g[0])
        for l in g[1:]:
            worst = max(worst, proj_sine(U0, sec.basis(l)))
    return worst


def corner_section(
    problem: BundleProblem, k: int, solver: Solver
) -> tuple[Reference, Section, float]:
    """The references, the solver's ``lam = 0`` section at tying ``k``, and its tying defect."""
    sec = solver(problem, 0.0, k)
    return reference(problem), sec, tying_defect(sec, problem.L, k)


def omega_deviation(problem: BundleProblem, ref: Reference) -> float:
    """Largest relative difference between ``problem.omega`` and the reference weights."""
    return float(np.max(np.abs(np.asarray(problem.omega) / ref.omega - 1.0)))


def objective(
    problem: BundleProblem, ref: Reference, sec: Section, lam: float
) -> tuple[float, float, float]:
    """``(J, weight term, sum of anchor distances)`` of a section, from the definitions."""
    w = sum(ref.omega[l] * layer_energy(problem, l, sec.basis(l)) for l in range(problem.L))
    a = sum(anchor_distance(sec.basis(l), ref.anchors[l]) for l in range(problem.L))
    return w + lam * a, w, a


def frame_energy(K: F64, trK: float, U: F64) -> float:
    """The energy ``tr K - tr(U^T K U)`` of the frame ``U`` (``trK = tr K``)."""
    return trK - float(np.sum(U * (K @ U)))


def shared_output_reference(
    problem: BundleProblem, layers: Sequence[int]
) -> tuple[F64, float, float]:
    """The shared output basis of a group from its definition: top-``d`` of ``sum_{l in g} M_l``.

    ``N_l`` in place of ``M_l`` without covariances.  Returns the frame,
    ``mu_1`` and the eigengap ``mu_d - mu_{d+1}`` of the sum.
    """
    d = problem.rank
    K = np.zeros((problem.m, problem.m))
    for l in layers:
        K += gram(problem, l, anchor_kind(problem))
    B, mu = top_dense(K, d)
    return B, float(mu[0]), float(mu[d - 1] - mu[d])
