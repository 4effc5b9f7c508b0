"""The Grassmann bundle of a layer family: energies, the section objective and
its closed-form minimiser over the (lambda, k) design space.

Notation (docs/theory/formulation.rst; PyTorch orientation ``y = W x``):

* a *family* of ``L`` weights ``W_l`` of shape ``(m, n)``, optional calibration
  covariances ``C_l`` of shape ``(n, n)``, layer weights ``omega_l`` (default
  ``1 / ||W_l||_F^2``) and a rank ``d``;
* ``N_l = W_l W_l^T`` and ``M_l = W_l C_l W_l^T`` (both ``m x m``, never formed
  when a thinner factor gives the same answer);
* the Frobenius energy ``F_l(U) = ||W_l - U U^T W_l||_F^2 = tr N_l - tr(U^T N_l U)``
  and the activation energy
  ``A_l(U) = ||(W_l - U U^T W_l) C_l^{1/2}||_F^2 = tr M_l - tr(U^T M_l U)``;
* the *metric* picks the energy ``E_l`` that enters the objective: ``F_l``
  (``metric="weight"``) or ``A_l`` (``metric="activation"``);
* the anchor ``A_l``: the top-``d`` eigenspace of ``M_l`` (SVD-LLM), or of
  ``N_l`` when no covariance is given;
* tying degree ``k``: layers are tied in consecutive groups of ``k`` (0-based
  group of layer ``l`` is ``l // k``; the last group takes the remainder).

The objective of a section ``U_1..U_L`` (``U_l = U_{g(l)}``) is, exactly as
computed by :func:`evaluate_section`::

    J_{lambda,k} = sum_l omega_l E_l(U_l)
                   + lambda * sum_l ||U_l U_l^T - A_l A_l^T||_F^2 / (2 d)

and ``||P_U - P_A||_F^2 / (2d) = 1 - ||U^T A||_F^2 / d`` (mean squared sine of
the principal angles).  For fixed ``k`` the minimiser is, group by group, the
top-``d`` eigenspace of ``K_g(lambda) = sum_{l in g} [omega_l E_l + (lambda/d)
A_l A_l^T]`` (Ky Fan); ``lambda = inf`` is the limit, the top-``d`` eigenspace
of ``sum_{l in g} A_l A_l^T`` (the group's L2 core).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray

from . import _validate
from ._validate import PSD_RTOL as PSD_RTOL  # re-exported: the tolerances live in _validate
from ._validate import SYMMETRY_RTOL as SYMMETRY_RTOL

__all__ = [
    "BundleProblem",
    "PhaseDiagram",
    "Section",
    "anchor_section",
    "evaluate_section",
    "group_index",
    "l2_core",
    "phase_diagram",
    "shared_output_basis",
    "solve",
]

Metric = Literal["weight", "activation"]
F64 = NDArray[np.float64]

#: Orthonormality tolerance for bases handed to :func:`evaluate_section`:
#: ``||U^T U - I||_max <= tol``.  Bases from QR/SVD/eigh in float64 meet it by
#: six orders of magnitude; float32 bases (1e-7) are re-orthonormalised first.
ORTHONORMAL_ATOL = 1e-8


def group_index(L: int, k: int) -> NDArray[np.intp]:
    """The layer-to-group map of tying degree ``k``: layer ``l`` is in group ``l // k``.

    Parameters
    ----------
    L : int
        Number of layers.
    k : int
        Tying degree, ``1 <= k <= L``.

    Returns
    -------
    groups : ndarray, shape=[L], int
        ``groups[l] = l // k``; there are ``ceil(L / k)`` groups, the last one
        shorter when ``k`` does not divide ``L``.
    """
    check_k(k, L)
    return np.arange(L, dtype=np.intp) // k


def check_k(k: Any, L: int) -> int:
    """The tying degree ``k`` as an int, or ValueError unless it is an integer in ``[1, L]``."""
    if not _validate.is_integer(k):
        raise ValueError(f"tying degree k must be an integer in [1, L = {L}]; got k = {k!r}")
    if not 1 <= int(k) <= L:
        raise ValueError(f"tying degree k must satisfy 1 <= k <= L = {L}; got k = {k}")
    return int(k)


def check_lam(lam: Any) -> float:
    """The anchor strength ``lam`` as a float, or ValueError unless it is ``>= 0`` (inf allowed)."""
    return _validate.nonnegative(
        lam,
        "lam",
        allow_inf=True,
        want="a number >= 0 or float('inf')",
        bad=">= 0 (or float('inf'))",
    )


def _top_eigenvectors(K: F64, d: int) -> F64:
    """Top-``d`` eigenvectors (descending) of symmetric ``K``, without the rest.

    LAPACK's MRRR driver (``syevr``) restricted to the top ``d`` indices: the
    same eigenspace as a full ``eigh`` to about ``1e-13`` for ``m = 2048``
    (well within the 1e-8 objective tolerance the phase diagram promises),
    about 1.5x faster at ``d = m / 4``.
    """
    m = K.shape[0]
    _, V = scipy.linalg.eigh(K, subset_by_index=[m - d, m - 1], driver="evr")
    return np.ascontiguousarray(V[:, ::-1])


def top_eigenspace_factor(F: F64, d: int) -> F64:
    """Top-``d`` eigenspace of ``F F^T`` for ``F`` of shape ``(m, w)``.

    When ``w < m`` the eigenvectors come from the ``w x w`` Gram ``F^T F``
    (``U = F v / sqrt(mu)``, then a QR that fixes roundoff without changing
    the span); otherwise from the ``m x m`` ``F F^T``.  Either way only the
    top ``d`` eigenpairs are computed (``_top_eigenvectors``' driver).  The Gram route is
    used only when ``mu_d > 1e-8 mu_1``: the map ``v -> F v / sqrt(mu)``
    amplifies the eigenvector error by at most ``sqrt(mu_1 / mu_d) <= 1e4``,
    keeping the span accurate to about 1e-12.
    """
    m, w = F.shape
    if w < m and w >= d:
        mu, V = scipy.linalg.eigh(F.T @ F, subset_by_index=[w - d, w - 1], driver="evr")
        mu, V = mu[::-1], V[:, ::-1]
        if mu[-1] > 1e-8 * max(mu[0], np.finfo(np.float64).tiny):
            U = F @ (V / np.sqrt(mu))
            Q, R = np.linalg.qr(U)
            return Q * np.sign(np.diagonal(R))
    return _top_eigenvectors(F @ F.T, d)


class BundleProblem:
    """A layer family, its calibration covariances, layer weights, rank and metric.

    Parameters
    ----------
    W : array-like, shape=[L, m, n]
        The family's weights in PyTorch orientation (``y = W_l x``): the fiber
        is the output space ``R^m``.  Converted to float64.
    C : array-like, shape=[L, n, n], optional
        Calibration covariances of the layer inputs, symmetric positive
        semi-definite within :data:`SYMMETRY_RTOL` and :data:`PSD_RTOL`
        (relative to ``max |C_l|`` and ``lambda_max(C_l)``).
    rank : int
        The rank ``d``, with ``1 <= d < m`` and ``d <= n``: a rank-``d``
        projection of an ``m x n`` matrix with ``d > n`` has no unique best
        subspace (``N_l`` has rank at most ``n``), and ``d = m`` compresses
        nothing.
    metric : {"weight", "activation"}, default "weight"
        The energy in the objective: Frobenius ``F_l`` or activation ``A_l``
        (needs ``C``).
    omega : array-like, shape=[L], optional
        Positive finite layer weights; default ``1 / ||W_l||_F^2`` so that
        every layer's relative Frobenius error counts equally (the same
        default under both metrics).

    Attributes
    ----------
    W : ndarray, shape=[L, m, n], float64
    C : ndarray, shape=[L, n, n], float64, or None
    rank : int
    metric : str
    omega : ndarray, shape=[L], float64
    omega_is_default : bool
        True when ``omega`` was not given (so it is ``1 / ||W_l||_F^2``); the
        theorem checks recompute the default from ``W`` and compare.
    L, m, n : int
    """

    def __init__(
        self,
        W: ArrayLike,
        C: ArrayLike | None = None,
        *,
        rank: int,
        metric: Metric = "weight",
        omega: ArrayLike | None = None,
    ) -> None:
        W64 = _validate.family(W)
        L, m, n = W64.shape
        if not _validate.is_integer(rank):
            raise ValueError(f"rank must be an integer; got rank = {rank!r}")
        if not (1 <= rank < m and rank <= n):
            raise ValueError(
                f"rank must satisfy 1 <= rank < m and rank <= n; got rank = {rank} "
                f"with m = {m}, n = {n}"
            )
        if metric not in ("weight", "activation"):
            raise ValueError(f"metric must be 'weight' or 'activation'; got metric = {metric!r}")
        sq = np.einsum("lij,lij->l", W64, W64)
        if np.any(sq == 0):
            raise ValueError(
                "W_l must be nonzero (omega_l = 1/||W_l||_F^2); "
                f"layers {np.flatnonzero(sq == 0)} are zero"
            )
        C64: F64 | None = None
        if C is not None:
            C64 = _validate.covariance_stack(C, L, n, "C", psd=False, matrix=False)
        elif metric == "activation":
            raise ValueError("metric='activation' needs calibration covariances C; got C = None")
        self.W: F64 = W64
        self.C: F64 | None = C64
        self.rank = int(rank)
        self.metric: Metric = metric
        self.L, self.m, self.n = L, m, n
        self._fro_sq: F64 = sq
        # Factors Y_l with Y_l Y_l^T = M_l: Y_l = W_l R_l with R_l R_l^T = C_l (Cholesky
        # when C_l is positive definite, else eigh with eigenvalues <= 0 dropped).
        self._Y: list[F64] | None = None
        if C64 is not None:
            Ys = []
            for l in range(L):
                _validate.check_symmetric(C64[l], f"C[{l}]", "symmetrise it, e.g. (C + C^T) / 2")
                Ys.append(W64[l] @ _validate.sqrt_factor(C64[l], f"C[{l}]"))
            self._Y = Ys
            self._act_tr: F64 | None = np.array([float(np.sum(Y * Y)) for Y in Ys])
            if metric == "activation" and np.any(self._act_tr == 0):
                raise ValueError(
                    "tr(M_l) = 0 for layers "
                    f"{np.flatnonzero(self._act_tr == 0)}: activation metric undefined"
                )
        else:
            self._act_tr = None
        if omega is None:
            om = 1.0 / self._fro_sq
        else:
            om = np.asarray(omega, dtype=np.float64).reshape(-1)
            if om.shape != (L,):
                raise ValueError(f"omega must have shape (L,) = ({L},); got shape {om.shape}")
            if not np.all(np.isfinite(om)) or np.any(om <= 0):
                raise ValueError(f"omega must be positive and finite; got omega = {om}")
        self.omega: F64 = om
        self.omega_is_default = omega is None
        self._anchors: F64 | None = None

    # -- factors ---------------------------------------------------------
    def energy_factor(self, l: int) -> F64:
        """Factor ``X_l`` with ``X_l X_l^T = E_l``: ``W_l``, or ``W_l R_l`` (``R_l R_l^T = C_l``).

        Parameters
        ----------
        l : int
            Layer index.

        Returns
        -------
        X : ndarray, shape=[m, w], float64
        """
        if self.metric == "weight":
            return self.W[l]
        assert self._Y is not None
        return self._Y[l]

    def energy_trace(self) -> F64:
        """``tr E_l`` per layer, shape=[L]."""
        if self.metric == "weight":
            return self._fro_sq.copy()
        assert self._act_tr is not None
        return self._act_tr.copy()

    def energy_matrix(self, l: int) -> F64:
        """``E_l = N_l`` or ``M_l`` as an ``m x m`` matrix (for checks and small problems)."""
        X = self.energy_factor(l)
        return X @ X.T

    @property
    def anchors(self) -> F64:
        """The anchor bases ``A_l``, shape=[L, m, d].

        Top-``d`` eigenspace of ``M_l`` (of ``N_l`` when there are no covariances).
        """
        if self._anchors is None:
            src = self._Y if self._Y is not None else list(self.W)
            self._anchors = np.stack([top_eigenspace_factor(Y, self.rank) for Y in src])
        return self._anchors

    # -- per-layer energies ----------------------------------------------
    def layer_energies(self, U: ArrayLike) -> dict[str, F64 | None]:
        """Per-layer energies of per-layer bases.

        Parameters
        ----------
        U : array-like, shape=[L, m, d]
            Orthonormal basis of each layer's subspace.

        Returns
        -------
        energies : dict
            ``"frobenius"``: ``F_l(U_l)`` (shape [L]); ``"activation"``:
            ``A_l(U_l)`` or None without C; ``"metric"``: ``E_l(U_l)``;
            ``"anchor_distance"``: ``||P_{U_l} - P_{A_l}||_F^2 / (2d)`` in
            ``[0, 1]``.  Computed as trace minus projected norm, e.g.
            ``F_l = ||W_l||_F^2 - ||U_l^T W_l||_F^2`` (absolute roundoff about
            ``eps ||W_l||_F^2``), clipped below at 0.
        """
        U = np.asarray(U, dtype=np.float64)
        d = self.rank
        fro = np.empty(self.L)
        act = np.empty(self.L) if self._Y is not None else None
        adist = np.empty(self.L)
        A = self.anchors
        for l in range(self.L):
            Ut = U[l].T
            P = Ut @ self.W[l]
            fro[l] = self._fro_sq[l] - float(np.sum(P * P))
            if act is not None:
                assert self._Y is not None and self._act_tr is not None
                Q = Ut @ self._Y[l]
                act[l] = self._act_tr[l] - float(np.sum(Q * Q))
            G = Ut @ A[l]
            adist[l] = 1.0 - float(np.sum(G * G)) / d
        return _energies(self, fro, act, adist)

    def __repr__(self) -> str:
        return (
            f"BundleProblem(L={self.L}, m={self.m}, n={self.n}, rank={self.rank}, "
            f"metric={self.metric!r}, C={'yes' if self.C is not None else 'None'})"
        )


def _energies(
    problem: BundleProblem, fro: F64, act: F64 | None, adist: F64
) -> dict[str, F64 | None]:
    """Per-layer energies clipped below at 0, keyed as :meth:`BundleProblem.layer_energies`."""
    fro = np.maximum(fro, 0.0)
    adist = np.maximum(adist, 0.0)
    if act is not None:
        act = np.maximum(act, 0.0)
    metric = fro if problem.metric == "weight" else act
    return {"frobenius": fro, "activation": act, "metric": metric, "anchor_distance": adist}


@dataclass(frozen=True)
class Section:
    """A section of the bundle: one basis per tying group and every term of ``J_{lambda,k}``.

    Attributes
    ----------
    bases : ndarray, shape=[G, m, d], float64
        One orthonormal basis per group.
    groups : ndarray, shape=[L], int
        Layer-to-group map.
    lam : float
        The anchor strength the terms are evaluated at (may be ``inf``).
    k : int or None
        The tying degree (None for an arbitrary grouping).
    metric : str
        ``"weight"`` or ``"activation"``.
    energy : ndarray, shape=[L]
        ``E_l(U_l)``, the metric's energy per layer (unweighted).
    weight_term : float
        ``sum_l omega_l E_l(U_l)``: the data term of ``J`` (the Frobenius term
        under ``metric="weight"``, the activation term otherwise).
    anchor_distance : ndarray, shape=[L]
        ``||P_{U_l} - P_{A_l}||_F^2 / (2d) = 1 - ||U_l^T A_l||_F^2 / d`` in ``[0, 1]``.
    anchor_term : float
        ``lam * sum_l anchor_distance[l]``; ``inf`` when ``lam = inf`` (the
        objective is infinite off the anchor; compare ``anchor_distance``).
    objective : float
        ``J_{lam,k} = weight_term + anchor_term``.
    frobenius_error : ndarray, shape=[L]
        Frobenius error fraction ``||W_l - P_{U_l} W_l||_F^2 / ||W_l||_F^2``
        (a ratio of squared norms; :attr:`frobenius_error_ratio` is its
        square root, the ratio of norms).
    activation_error : ndarray, shape=[L], or None
        ``A_l(U_l) / tr(M_l)``, the activation error fraction (squared-norm
        ratio); None when the problem has no covariances.
    info : dict
        Free-form details (empty from the closed-form solvers).
    """

    bases: F64
    groups: NDArray[np.intp]
    lam: float
    k: int | None
    metric: str
    energy: F64
    weight_term: float
    anchor_distance: F64
    anchor_term: float
    objective: float
    frobenius_error: F64
    activation_error: F64 | None
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def basis(self, l: int) -> F64:
        """The basis of layer ``l``, shape=[m, d]."""
        return self.bases[self.groups[l]]

    @property
    def layer_bases(self) -> F64:
        """Per-layer bases, shape=[L, m, d]."""
        return self.bases[self.groups]

    @property
    def frobenius_error_ratio(self) -> F64:
        """``||W_l - P_{U_l} W_l||_F / ||W_l||_F`` (the square root of :attr:`frobenius_error`)."""
        return np.sqrt(self.frobenius_error)


def _terms(lam: float, wterm: float, adist: F64) -> tuple[float, float]:
    s = float(np.sum(adist))
    aterm = math.inf if math.isinf(lam) else lam * s
    if lam == 0.0:
        aterm = 0.0
    return aterm, wterm + aterm


def _make_section(
    problem: BundleProblem,
    bases: F64,
    groups: NDArray[np.intp],
    lam: float,
    k: int | None,
    info: dict[str, Any] | None = None,
    energies: dict[str, F64 | None] | None = None,
) -> Section:
    e = problem.layer_energies(bases[groups]) if energies is None else energies
    metric = e["metric"]
    assert metric is not None
    wterm = float(np.dot(problem.omega, metric))
    adist = e["anchor_distance"]
    assert adist is not None
    aterm, obj = _terms(lam, wterm, adist)
    fro = e["frobenius"]
    assert fro is not None
    act = e["activation"]
    act_frac = None
    if act is not None:
        assert problem._act_tr is not None
        act_frac = act / problem._act_tr
    return Section(
        bases=bases,
        groups=groups,
        lam=lam,
        k=k,
        metric=problem.metric,
        energy=metric,
        weight_term=wterm,
        anchor_distance=adist,
        anchor_term=aterm,
        objective=obj,
        frobenius_error=fro / problem._fro_sq,
        activation_error=act_frac,
        info=info or {},
    )


def evaluate_section(
    problem: BundleProblem, bases: ArrayLike, groups: ArrayLike, lam: float = 0.0
) -> Section:
    """Every term of ``J_{lam}`` for given bases and a given layer-to-group map.

    Parameters
    ----------
    problem : BundleProblem
    bases : array-like, shape=[G, m, d]
        Orthonormal bases (``||U^T U - I||_max <= 1e-8``; orthonormalise
        with ``np.linalg.qr`` first otherwise).
    groups : array-like, shape=[L], int
        ``groups[l]`` in ``[0, G)``: the basis used by layer ``l``.
    lam : float, default 0.0
        Anchor strength, ``>= 0`` or ``inf``.

    Returns
    -------
    Section
        With ``k = None`` (the grouping is arbitrary).
    """
    lam = check_lam(lam)
    B = np.asarray(bases, dtype=np.float64)
    if B.ndim == 2:
        B = B[None]
    if B.ndim != 3 or B.shape[1:] != (problem.m, problem.rank):
        raise ValueError(
            f"bases must have shape (G, m, d) = (G, {problem.m}, {problem.rank}); "
            f"got shape {B.shape}"
        )
    if not np.all(np.isfinite(B)):
        raise ValueError("bases must have finite entries; found NaN or inf")
    dev = float(np.max(np.abs(np.swapaxes(B, -1, -2) @ B - np.eye(problem.rank))))
    if dev > ORTHONORMAL_ATOL:
        raise ValueError(
            f"bases must be orthonormal: max |U^T U - I| = {dev:.3e} > {ORTHONORMAL_ATOL:g}; "
            "orthonormalise them first (np.linalg.qr)"
        )
    g = np.asarray(groups)
    if g.shape != (problem.L,) or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(
            f"groups must be an integer array of shape (L,) = ({problem.L},); got {g!r}"
        )
    if g.min() < 0 or g.max() >= B.shape[0]:
        raise ValueError(f"groups must lie in [0, G = {B.shape[0]}); got values {np.unique(g)}")
    return _make_section(problem, B, g.astype(np.intp), lam, None)


def _group_layers(L: int, k: int) -> list[range]:
    return [range(s, min(s + k, L)) for s in range(0, L, k)]


def _group_frame(problem: BundleProblem, layers: range, lam: float) -> F64:
    """Top-``d`` eigenspace of ``K_g(lam)`` for one group, by the thinnest exact route."""
    d, m = problem.rank, problem.m
    A = problem.anchors
    if math.isinf(lam):
        if len(layers) == 1:
            return A[layers[0]].copy()
        F = np.concatenate([A[l] for l in layers], axis=1)
        return top_eigenspace_factor(F, d)
    parts = [math.sqrt(problem.omega[l]) * problem.energy_factor(l) for l in layers]
    if lam > 0:
        parts += [math.sqrt(lam / d) * A[l] for l in layers]
    width = sum(p.shape[1] for p in parts)
    if width < m:
        return top_eigenspace_factor(np.concatenate(parts, axis=1), d)
    K = np.zeros((m, m))
    for p in parts:
        K += p @ p.T
    return _top_eigenvectors(K, d)


def solve(problem: BundleProblem, lam: float, k: int) -> Section:
    """Closed-form minimiser of ``J_{lam,k}`` over sections tied in groups of ``k``.

    Each group's basis is the top-``d`` eigenspace of ``K_g(lam) = sum_{l in
    g} [omega_l E_l + (lam/d) A_l A_l^T]`` (Ky Fan), computed from the
    ``w x w`` Gram of the factor ``[sqrt(omega_l) X_l, sqrt(lam/d) A_l]_{l in
    g}`` when its width ``w`` is below ``m``, from the ``m x m`` matrix
    otherwise.  ``lam = inf`` gives the group's L2 core (the anchor itself for
    ``k = 1``).  Plain per-layer SVD is ``solve(BundleProblem(W, rank=d), 0.0, 1)``.

    Parameters
    ----------
    problem : BundleProblem
    lam : float
        Anchor strength, ``>= 0`` or ``float("inf")``.
    k : int
        Tying degree, ``1 <= k <= L``.

    Returns
    -------
    Section
    """
    lam = check_lam(lam)
    k = check_k(k, problem.L)
    bases = np.stack([_group_frame(problem, g, lam) for g in _group_layers(problem.L, k)])
    return _make_section(problem, bases, group_index(problem.L, k), lam, k)


def anchor_section(problem: BundleProblem) -> Section:
    """The anchor section (SVD-LLM per layer): ``U_l = A_l``, evaluated at ``lam = 0``.

    ``A_l`` is the top-``d`` eigenspace of ``M_l = W_l C_l W_l^T`` (of
    ``N_l = W_l W_l^T`` when the problem has no covariances).

    Parameters
    ----------
    problem : BundleProblem

    Returns
    -------
    Section
        ``bases`` of shape ``(L, m, d)``, ``k = 1``.
    """
    return _make_section(problem, problem.anchors.copy(), group_index(problem.L, 1), 0.0, 1)


def shared_output_basis(problem: BundleProblem, k: int) -> Section:
    """One output-side basis per group: the top-``d`` eigenspace of ``sum_{l in g} M_l``.

    The best basis ``U_g`` (``m x d``) that a group of ``k`` consecutive
    layers can share on the *output* side, each layer keeping its own
    coefficients ``U_g^T W_l`` (so ``W'_l = P_{U_g} W_l``, a section of the
    bundle): it minimises the group's summed activation error ``sum_{l in g}
    A_l(U)`` over shared frames (``docs/theory/equivalences.rst``).  The sum
    is unweighted (no ``omega_l``), as Basis Sharing sums its group's Grams;
    ``N_l`` in place of ``M_l`` when the problem has no covariances.  It is
    the tied ``lam = 0`` corner of the activation objective up to the layer
    weights, and the frame Theorem B compares the Frobenius corner with
    (:func:`grassbundle.theorems.theorem_b`).

    It is *not* Basis Sharing as its authors build it: they share a ``d x
    n`` basis on the *input* side, found in the space whitened by the group's
    summed Gram ``sum_{l in g} C_l``, with per-layer ``m x d`` factors
    (:func:`grassbundle.basis_sharing_input`, the adapter's
    ``basis-sharing``).  Evaluated at ``lam = 0``.

    Parameters
    ----------
    problem : BundleProblem
    k : int
        Tying degree, ``1 <= k <= L``.

    Returns
    -------
    Section
    """
    k = check_k(k, problem.L)
    src = problem._Y if problem._Y is not None else list(problem.W)
    bases = np.stack(
        [
            top_eigenspace_factor(np.concatenate([src[l] for l in g], axis=1), problem.rank)
            for g in _group_layers(problem.L, k)
        ]
    )
    return _make_section(problem, bases, group_index(problem.L, k), 0.0, k)


def l2_core(problem: BundleProblem, k: int) -> Section:
    """The L2 core: per group, the top-``d`` eigenspace of ``sum_{l in g} A_l A_l^T``.

    This is ``solve(problem, inf, k)``: the chordal mean of the group's
    anchors, the anchor itself for ``k = 1``.

    Parameters
    ----------
    problem : BundleProblem
    k : int

    Returns
    -------
    Section
    """
    return solve(problem, math.inf, k)


@dataclass(frozen=True)
class PhaseDiagram:
    """Every term of ``J_{lam,k}`` over a ``(k, lam)`` grid.

    Attributes
    ----------
    lams : ndarray, shape=[P]
    ks : ndarray, shape=[Q], int
    objective, weight_term, anchor_term : ndarray, shape=[Q, P]
    frobenius_error, anchor_distance : ndarray, shape=[Q, P, L]
        As in :class:`Section`.
    activation_error : ndarray, shape=[Q, P, L], or None
    bases : dict or None
        ``bases[(k, lam)]`` of shape ``(G, m, d)`` when requested.
    """

    lams: F64
    ks: NDArray[np.intp]
    objective: F64
    weight_term: F64
    anchor_term: F64
    frobenius_error: F64
    anchor_distance: F64
    activation_error: F64 | None
    bases: dict[tuple[int, float], F64] | None = None

    def section(self, problem: BundleProblem, k: int, lam: float) -> Section:
        """The :class:`Section` at a grid point (needs ``return_bases=True``)."""
        if self.bases is None:
            raise ValueError("phase_diagram was run with return_bases=False; no bases stored")
        return _make_section(problem, self.bases[(k, lam)], group_index(problem.L, k), lam, k)


def _eigh_batch_torch(Ks: list[F64], d: int, device: str) -> list[F64]:
    import torch  # optional, imported only for device paths

    T = torch.from_numpy(np.stack(Ks)).to(device=device, dtype=torch.float64)
    _, V = torch.linalg.eigh(T)
    out = V.flip(-1)[..., :d].cpu().numpy()
    return [np.ascontiguousarray(o) for o in out]


class _DenseCache:
    """Per-layer ``m x m`` matrices ``N_l``, ``M_l`` and ``P_{A_l}`` for the projector route.

    With ``P_g = U_g U_g^T`` formed once per group and grid point, every
    per-layer energy is one ``m x m`` inner product: ``tr(U^T N_l U) =
    <N_l, P_g>``.  This beats the factor route (``||U^T W_l||_F^2``, ``2 m n d``
    flops per layer) when ``m <= n``, at the price of ``3 L m^2`` floats.
    """

    def __init__(self, problem: BundleProblem) -> None:
        L, m = problem.L, problem.m
        self.N = np.empty((L, m, m))
        self.M = np.empty((L, m, m)) if problem._Y is not None else None
        self.PA = np.empty((L, m, m))
        A = problem.anchors
        for l in range(L):
            Wl = problem.W[l]
            np.matmul(Wl, Wl.T, out=self.N[l])
            if self.M is not None:
                assert problem._Y is not None
                Y = problem._Y[l]
                np.matmul(Y, Y.T, out=self.M[l])
            np.matmul(A[l], A[l].T, out=self.PA[l])
        self.E = self.N if problem.metric == "weight" else self.M

    def energies(
        self, problem: BundleProblem, frames: F64, groups: list[range]
    ) -> dict[str, F64 | None]:
        L, d = problem.L, problem.rank
        fro = np.empty(L)
        act = np.empty(L) if self.M is not None else None
        adist = np.empty(L)
        for g, layers in enumerate(groups):
            U = frames[g]
            P = U @ U.T
            for l in layers:
                fro[l] = problem._fro_sq[l] - float(np.vdot(self.N[l], P))
                if act is not None:
                    assert self.M is not None and problem._act_tr is not None
                    act[l] = problem._act_tr[l] - float(np.vdot(self.M[l], P))
                adist[l] = 1.0 - float(np.vdot(self.PA[l], P)) / d
        return _energies(problem, fro, act, adist)


def phase_diagram(
    problem: BundleProblem,
    lams: Sequence[float] | ArrayLike,
    ks: Sequence[int] | ArrayLike,
    *,
    return_bases: bool = False,
    device: str | None = None,
) -> PhaseDiagram:
    """Evaluate ``J_{lam,k}`` at every grid point, reusing per-group work across ``lam``.

    For each ``k`` and each group the pieces of ``K_g(lam) = N_g + (lam/d)
    S_g`` (``N_g = sum omega_l E_l``, ``S_g = sum A_l A_l^T``) are built once
    and every finite ``lam`` costs one symmetric eigensolve (the thin Gram
    route of :func:`solve` when the factor is narrower than ``m``); ``lam =
    inf`` uses the thin factor of the anchors.  When ``m <= n``
    the per-layer ``m x m`` matrices are formed once and every per-layer
    energy is an inner product with the group projector (see
    ``_DenseCache``).  The results equal :func:`solve` point by point (same
    eigenspaces, energies summed in a different order: objective equal to
    about 1e-12 relative).

    Parameters
    ----------
    problem : BundleProblem
    lams : sequence of float, shape=[P]
        Anchor strengths ``>= 0``; ``inf`` allowed.
    ks : sequence of int, shape=[Q]
        Tying degrees in ``[1, L]``.
    return_bases : bool, default False
        Keep the bases of every grid point (``G x m x d`` each).
    device : str, optional
        ``None`` (numpy/LAPACK) or a torch device such as ``"cuda"``: the
        dense eigensolves of all ``lam`` of one group run as one batched
        ``torch.linalg.eigh`` in float64 there (torch imported on demand).

    Returns
    -------
    PhaseDiagram
    """
    lam_arr = np.array([check_lam(x) for x in np.atleast_1d(np.asarray(lams, dtype=object))])
    k_list = [
        check_k(int(x) if not isinstance(x, bool) else x, problem.L) for x in np.atleast_1d(ks)
    ]
    P, Q, L = len(lam_arr), len(k_list), problem.L
    d, m = problem.rank, problem.m
    obj = np.empty((Q, P))
    wt = np.empty((Q, P))
    at = np.empty((Q, P))
    fro = np.empty((Q, P, L))
    adist = np.empty((Q, P, L))
    act = np.empty((Q, P, L)) if problem.C is not None else None
    store: dict[tuple[int, float], F64] | None = {} if return_bases else None
    A = problem.anchors
    cache = _DenseCache(problem) if m <= problem.n else None
    for qi, k in enumerate(k_list):
        groups = _group_layers(L, k)
        frames = np.empty((P, len(groups), m, d))
        for gi, g in enumerate(groups):
            dense_N: F64 | None = None
            dense_S: F64 | None = None
            Ks: list[F64] = []
            Kidx: list[int] = []
            for pi, lam in enumerate(lam_arr):
                width = sum(problem.energy_factor(l).shape[1] for l in g)
                width += len(g) * d if lam > 0 else 0
                if math.isinf(lam) or width < m:
                    frames[pi, gi] = _group_frame(problem, g, lam)
                    continue
                if dense_N is None:
                    dense_N = np.zeros((m, m))
                    dense_S = np.zeros((m, m))
                    for l in g:
                        if cache is not None:
                            assert cache.E is not None
                            dense_N += problem.omega[l] * cache.E[l]
                            dense_S += cache.PA[l]
                        else:
                            X = problem.energy_factor(l)
                            dense_N += problem.omega[l] * (X @ X.T)
                            dense_S += A[l] @ A[l].T
                assert dense_S is not None
                K = dense_N + (lam / d) * dense_S
                if device is None:
                    frames[pi, gi] = _top_eigenvectors(K, d)
                else:
                    Ks.append(K)
                    Kidx.append(pi)
            if Ks:
                assert device is not None
                for pi, U in zip(Kidx, _eigh_batch_torch(Ks, d, device), strict=True):
                    frames[pi, gi] = U
        gmap = group_index(L, k)
        for pi, lam in enumerate(lam_arr):
            energies = cache.energies(problem, frames[pi], groups) if cache is not None else None
            sec = _make_section(problem, frames[pi], gmap, float(lam), k, energies=energies)
            obj[qi, pi], wt[qi, pi], at[qi, pi] = sec.objective, sec.weight_term, sec.anchor_term
            fro[qi, pi] = sec.frobenius_error
            adist[qi, pi] = sec.anchor_distance
            if act is not None:
                assert sec.activation_error is not None
                act[qi, pi] = sec.activation_error
            if store is not None:
                store[(k, float(lam))] = frames[pi].copy()
    return PhaseDiagram(
        lams=lam_arr.astype(np.float64),
        ks=np.array(k_list, dtype=np.intp),
        objective=obj,
        weight_term=wt,
        anchor_term=at,
        frobenius_error=fro,
        anchor_distance=adist,
        activation_error=act,
        bases=store,
    )
