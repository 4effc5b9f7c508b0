"""Closed-form refits of low-rank factors on calibration statistics.

Conventions as in :mod:`grassbundle.bundle`: a map ``y = W x`` with ``W`` of
shape ``(m, n)``; ``x`` is the map's input in the *original* model and
``x_hat`` its input in the *compressed* model (upstream layers already
compressed).  The statistics, all ``n x n`` and accumulated in float64 over
the same calibration tokens::

    C       = E[x x^T]          (the original model's input covariance)
    C_hat   = E[x_hat x_hat^T]  (the compressed model's input covariance)
    C_cross = E[x x_hat^T]      (cross-covariance, original times compressed)

The functions, each exact for the objective it states:

* :func:`svd_llm_update`: SVD-LLM's truncation followed by its authors'
  closed-form update of the left factor (the ``whitening_local_update`` step
  of their code): the right factor is kept, the left factor is the least-
  squares fit of the map's output ``W x_hat`` on the inputs ``x_hat``.
* :func:`refit_left`: that update for any right factor, and with the target
  ``W x`` (original model) instead of ``W x_hat`` when ``C_cross`` is given.
* :func:`constrained_refit`: the refit variants (which factors, which
  target, a ridge towards the unrefit factors), with SVD-LLM's update and the
  residual fit as special cases; :func:`constrained_refit_path` the same at
  several ridges, sharing the work that does not depend on the ridge.
* :func:`residual_fit`: the best rank-``d`` map ``A B`` (both factors) for
  ``E||W x - A B x_hat||^2``, a reduced-rank regression in closed form; for a
  group of ``k`` maps it gives the best shared output basis.

Regularisation (every function, ``ridge >= 0``): the objective gets
``eps * ||W - A B||_F^2`` added, ``eps = ridge * tr(C_hat) / n`` (``ridge``
relative to the mean eigenvalue of ``C_hat``).  This is the same as adding
``eps`` times the identity to ``C``, ``C_hat`` and ``C_cross``: a few virtual
isotropic calibration inputs on which the compressed model's input equals the
original's.  It makes every solve positive definite, pulls the fit towards
``W`` (not towards zero) in directions the calibration inputs never visit,
and keeps the reduction to SVD-LLM: with ``x_hat = x`` the residual fit is
the top-``d`` eigenspace of ``W (C + eps I) W^T``.  ``ridge = 0`` gives the
unregularised optimum, with pseudo-inverses on the numerical range.  No
inverse is ever formed: with ``ridge > 0`` the positive definite
``C_hat + eps I`` is applied through its Cholesky factor (triangular solves),
with ``ridge = 0`` through an eigendecomposition with a stated cut-off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray

from . import _validate
from ._validate import PSD_RTOL
from ._validate import covariance_stack as _stack

__all__ = [
    "REFIT_FACTORS",
    "REFIT_TARGETS",
    "RIDGE",
    "LowRankFit",
    "ResidualFit",
    "constrained_refit",
    "constrained_refit_path",
    "refit_left",
    "residual_fit",
    "svd_llm_update",
]

F64 = NDArray[np.float64]

#: Default relative ridge: ``eps = RIDGE * tr(C_hat) / n``.  1e-6 of the mean
#: input eigenvalue bounds every solve's condition number by about ``1e6 n
#: lambda_max / tr`` (harmless in float64) while changing the objective by at
#: most ``eps ||W - A B||_F^2``, far below calibration noise.
RIDGE = 1e-6

#: Eigenvalues at or below ``RCOND * lambda_max`` count as zero in the
#: pseudo-inverses used when ``ridge = 0`` (about ``100 eps`` of float64 per
#: unit of dimension; roundoff in an accumulated Gram is about ``n eps``).
RCOND = 1e-13


@dataclass(frozen=True)
class LowRankFit:
    """A rank-``d`` factorisation ``W ~ left @ right`` and its errors.

    Attributes
    ----------
    left : ndarray, shape=[m, d]
        Left factor (not orthonormal after a refit).
    right : ndarray, shape=[d, n]
        Right factor.
    error : float
        The expected squared output error of ``left @ right`` on the fitting
        statistics, without the ridge term (see :func:`svd_llm_update`).
    reference : float
        The expected squared norm of the target output, so that
        ``error / reference`` is the error fraction.
    info : dict
        ``"error_before"``: the same error before the refit; ``"ridge"``: the
        absolute ``eps`` used.
    """

    left: F64
    right: F64
    error: float
    reference: float
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def weight(self) -> F64:
        """The compressed weight ``left @ right``, shape ``(m, n)``.

        Returns
        -------
        ndarray, shape=[m, n]
        """
        return self.left @ self.right

    @property
    def error_fraction(self) -> float:
        """``error / reference`` (0 when the reference is 0)."""
        return self.error / self.reference if self.reference > 0 else 0.0


@dataclass(frozen=True)
class ResidualFit:
    """The residual-aware fit of a map or of a group sharing one output basis.

    Attributes
    ----------
    basis : ndarray, shape=[m, d]
        The orthonormal output basis ``U`` (shared by the group).
    right : ndarray, shape=[k, d, n]
        Per map, the right factor ``B_l = U^T T_l``; the compressed map is
        ``U B_l``.
    spectrum : ndarray, shape=[m]
        Eigenvalues, descending, of ``K = sum_l omega_l K_l`` with ``K_l = T_l
        (C_hat_l + eps_l I) T_l^T``: the group's energy at rank ``d'`` is a
        constant plus ``sum_{i > d'} spectrum[i]``, so this is what
        :func:`grassbundle.allocate_ranks` takes.
    target : ndarray, shape=[k, m, n]
        ``T_l = W_l (C_cross_l + eps_l I)(C_hat_l + eps_l I)^{-1}``, the
        unconstrained least-squares map (computed without an inverse, see
        :func:`residual_fit`).
    error : ndarray, shape=[k], or None
        ``E||W_l x - U B_l x_hat||^2`` per map, without the ridge term; None
        when ``C_cross`` is given and ``C`` is not.
    reference : ndarray, shape=[k], or None
        ``E||W_l x||^2 = tr(W_l C_l W_l^T)`` (``C_hat`` in place of ``C``
        when the target is ``W_l x_hat``); None with ``error``.
    ridge : ndarray, shape=[k]
        The absolute ``eps_l`` used.
    """

    basis: F64
    right: F64
    spectrum: F64
    target: F64
    error: F64 | None
    reference: F64 | None
    ridge: F64

    def weight(self, l: int = 0) -> F64:
        """The compressed weight ``U B_l`` of map ``l``, shape ``(m, n)``.

        Parameters
        ----------
        l : int, default 0
            Map index within the group.

        Returns
        -------
        ndarray, shape=[m, n]
        """
        return self.basis @ self.right[l]

    @property
    def error_fraction(self) -> F64 | None:
        """``error / reference`` per map (None without them)."""
        if self.error is None or self.reference is None:
            return None
        ref = np.where(self.reference > 0, self.reference, 1.0)
        return np.asarray(self.error / ref)


# -- validation -------------------------------------------------------------------


def _check_rank(rank: Any, m: int, n: int) -> int:
    if not _validate.is_integer(rank):
        raise ValueError(f"rank must be an integer; got rank = {rank!r}")
    if not 1 <= int(rank) <= min(m, n):
        raise ValueError(
            f"rank must satisfy 1 <= rank <= min(m, n) = {min(m, n)} for maps of shape "
            f"{m}x{n}; got rank = {rank}"
        )
    return int(rank)


def _check_ridge(ridge: Any) -> float:
    return _validate.nonnegative(
        ridge, "ridge", allow_inf=False, want="a number >= 0", bad="finite and >= 0"
    )


def _check_psd(C: F64, name: str) -> None:
    """Raise unless symmetric ``C`` is PSD within ``PSD_RTOL`` (a Cholesky test first).

    ``C + PSD_RTOL * lambda_bound * I`` has a Cholesky factor for every PSD
    ``C`` (``lambda_bound = max_i sum_j |C_ij| >= lambda_max``); only when it
    fails are the eigenvalues computed (the exact test, and the message).
    """
    bound = max(float(np.max(np.sum(np.abs(C), axis=1))), float(np.finfo(np.float64).tiny))
    shift = PSD_RTOL * bound
    try:
        np.linalg.cholesky(C + shift * np.eye(len(C)))
    except np.linalg.LinAlgError:
        _validate.eig_psd(C, name)  # the exact test: raises with the smallest eigenvalue


def _eps(C_hat: F64, ridge: float, name: str) -> float:
    n = C_hat.shape[0]
    tr = float(np.trace(C_hat))
    if tr <= 0:
        raise ValueError(
            f"{name} has zero trace: the map never saw a nonzero calibration input; "
            "collect statistics on more tokens"
        )
    return ridge * tr / n


def _spd_solve_right(G: F64, R: F64) -> F64:
    """``X`` with ``X G = R`` for symmetric PSD ``G`` (``d x d``), by eigendecomposition.

    ``X = R V diag(1/g) V^T`` on the eigenvalues ``g > RCOND * g_max``
    (the minimum-norm least-squares solution when ``G`` is singular); no
    inverse is formed.
    """
    g, V = np.linalg.eigh(0.5 * (G + G.T))
    top = float(g[-1]) if g.size else 0.0
    keep = g > RCOND * max(top, 0.0)
    if not np.any(keep):
        return np.zeros_like(R)
    Vk = V[:, keep]
    return np.asarray(((R @ Vk) / g[keep]) @ Vk.T)


def _whiten_solve(G: F64, C_hat: F64, eps: float, name: str) -> tuple[F64, F64]:
    """``Y`` with ``Y Y^T = G Ce^+ G^T`` and ``T = G Ce^+`` for ``Ce = C_hat + eps I``.

    ``eps > 0``: ``Ce`` is positive definite; Cholesky ``Ce = L L^T``, ``Y =
    G L^{-T}`` and ``T = G Ce^{-1}`` by triangular solves (the condition
    number of ``Ce`` is at most ``(c_max + eps) / eps``).  ``eps = 0`` (or a
    Cholesky failure at roundoff level): the eigendecomposition ``C_hat = Q
    diag(c) Q^T``, ``Y = G Q_r diag(c_r^{-1/2})`` and ``T = G Q_r diag(1/c_r)
    Q_r^T`` on the eigenvalues ``c > RCOND * c_max`` (the pseudo-inverse).
    """
    if eps > 0:
        try:
            Lc = np.linalg.cholesky(C_hat + eps * np.eye(len(C_hat)))
        except np.linalg.LinAlgError:
            pass
        else:
            Y = scipy.linalg.solve_triangular(Lc, G.T, lower=True).T
            T = scipy.linalg.solve_triangular(Lc, Y.T, lower=True, trans="T").T
            return np.ascontiguousarray(Y), np.ascontiguousarray(T)
    c, Q = _validate.eig_psd(C_hat, name)
    ce = c + eps
    keep = ce > RCOND * float(ce[-1])
    Qk, ck = Q[:, keep], ce[keep]
    GQ = G @ Qk
    return GQ / np.sqrt(ck), (GQ / ck) @ Qk.T


# -- the fits ---------------------------------------------------------------------


def refit_left(
    W: ArrayLike,
    right: ArrayLike,
    C_hat: ArrayLike,
    C_cross: ArrayLike | None = None,
    *,
    ridge: float = RIDGE,
) -> F64:
    """The least-squares left factor for a fixed right factor.

    Minimises, over ``A`` of shape ``(m, d)``::

        E||W x - A Z x_hat||^2 + eps ||W - A Z||_F^2      (Z = right)

    whose normal equations are ``A (Z (C_hat + eps I) Z^T) = W (C_cross +
    eps I) Z^T``; the ``d x d`` system is solved by eigendecomposition
    (minimum-norm on its numerical range, cut-off ``RCOND``).  Without
    ``C_cross`` the target is ``W x_hat`` (``C_cross = C_hat``): SVD-LLM's
    update.  The product ``A Z`` depends on ``Z`` only through its row space.

    Parameters
    ----------
    W : array-like, shape=[m, n]
        The original map.
    right : array-like, shape=[d, n]
        The fixed right factor ``Z``.
    C_hat : array-like, shape=[n, n]
        ``E[x_hat x_hat^T]``, symmetric PSD.
    C_cross : array-like, shape=[n, n], optional
        ``E[x x_hat^T]``; default ``C_hat`` (target ``W x_hat``).
    ridge : float, default :data:`RIDGE`
        Relative ridge, ``eps = ridge * tr(C_hat) / n``.

    Returns
    -------
    ndarray, shape=[m, d]
        The left factor ``A``.
    """
    W64 = _validate.weight_stack(W)
    if W64.shape[0] != 1:
        raise ValueError(f"W must have shape (m, n); got shape {np.shape(W)}")
    n = W64.shape[2]
    Z = np.asarray(right, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != n or Z.shape[0] < 1:
        raise ValueError(f"right must have shape (d, n) with n = {n}; got shape {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise ValueError("right must have finite entries; found NaN or inf")
    Ch = _stack(C_hat, 1, n, "C_hat", psd=True)[0]
    _check_psd(Ch, "C_hat")
    Cx = Ch if C_cross is None else _stack(C_cross, 1, n, "C_cross", psd=False)[0]
    eps = _eps(Ch, _check_ridge(ridge), "C_hat")
    G = Z @ Ch @ Z.T + eps * (Z @ Z.T)
    R = W64[0] @ (Cx @ Z.T) + eps * (W64[0] @ Z.T)
    return _spd_solve_right(G, R)


def _output_error(ref: float, A: F64, B: F64, WCx: F64, C_hat: F64) -> float:
    """``E||W x - A B x_hat||^2 = tr(W C W^T) - 2 <A B, W C_cross> + tr(A B C_hat B^T A^T)``.

    ``ref = tr(W C W^T)`` and ``WCx = W C_cross`` are given; the rest costs
    ``O(d n^2 + m n d)``: ``<A B, WCx> = <A, WCx B^T>`` and ``tr(A B C_hat
    B^T A^T) = <A^T A, B C_hat B^T>``.  Absolute roundoff about ``n eps
    ref``.
    """
    BC = B @ C_hat
    return float(ref - 2.0 * np.vdot(A, WCx @ B.T) + np.vdot(A.T @ A, BC @ B.T))


def _truncation(Wm: F64, C64: F64, d: int) -> F64:
    """SVD-LLM's truncation basis: the top-``d`` left singular vectors of ``W R``, ``R R^T = C``.

    Cholesky as the authors (the eigh square root on the range if ``C`` is
    singular).  When ``C`` has rank ``r < d`` any completion is optimal for
    ``C`` (the extra directions see no calibration input); the top singular
    vectors of the rest of ``W`` complete it, so the weight energy that ``C``
    cannot rank is kept by Frobenius norm.
    """
    R = _validate.sqrt_factor(C64, "C")
    Uf, _, _ = scipy.linalg.svd(Wm @ R, full_matrices=False, lapack_driver="gesdd")
    U = np.ascontiguousarray(Uf[:, :d])
    if U.shape[1] < d:
        rest = Wm - U @ (U.T @ Wm)
        Ur, _, _ = scipy.linalg.svd(rest, full_matrices=False, lapack_driver="gesdd")
        U = np.linalg.qr(np.concatenate([U, Ur[:, : d - U.shape[1]]], axis=1))[0]
    return U


def svd_llm_update(
    W: ArrayLike,
    C: ArrayLike,
    *,
    rank: int,
    C_update: ArrayLike | None = None,
    ridge: float = RIDGE,
) -> LowRankFit:
    """SVD-LLM [WZM24]_ with its authors' closed-form update of the left factor.

    1. Truncation (SVD-LLM's whitening step, computed without a whitening
       inverse): ``U`` = the top-``d`` eigenvectors of ``M = W C W^T``, right
       factor ``Z = U^T W`` (the same row space as the authors' ``Sigma_d
       V_d^T S^{-1}``, so the same product after step 2).
    2. Update (the authors' ``whitening_local_update``): keep ``Z``, replace
       ``U`` by the least-squares left factor for the target ``W x_hat`` on
       the update statistics ``C_update = E[x_hat x_hat^T]``, collected, as
       the authors do, with every upstream layer already compressed
       (:func:`refit_left` without ``C_cross``).  The authors solve it with
       ``torch.linalg.lstsq`` on the tokens; here it is the same least-squares
       problem on its covariance, plus the ridge.

    When ``C`` has rank ``r < d`` (fewer calibration tokens than ``d``, dead
    inputs) the truncation is not unique; its last ``d - r`` directions are
    then the top left singular vectors of ``W - P_U W`` (plain SVD of what the
    calibration cannot rank), where SVD-LLM's authors add a jitter to ``C``.
    The update keeps ``W`` along them only with ``ridge > 0``; with ``ridge =
    0`` it returns the minimum-norm left factor, which is zero in directions
    the update statistics never see.

    When ``C_update`` equals ``C`` and ``ridge = 0`` step 2 changes nothing
    (``Z`` is already optimal for ``C``): the update acts only through the
    shift of the inputs (and a different calibration sample).  Only the left
    factor is updated, as in the authors' code.

    Parameters
    ----------
    W : array-like, shape=[m, n]
        The original map.
    C : array-like, shape=[n, n]
        The whitening covariance ``E[x x^T]`` (original model).
    rank : int
        ``1 <= d <= min(m, n)``.
    C_update : array-like, shape=[n, n], optional
        ``E[x_hat x_hat^T]`` for the update; default ``C``.
    ridge : float, default :data:`RIDGE`
        Relative ridge of the update (see the module docstring); the
        truncation itself is unregularised, as SVD-LLM's.

    Returns
    -------
    LowRankFit
        ``error`` and ``reference``: ``E||W x_hat - left right x_hat||^2``
        and ``E||W x_hat||^2`` under ``C_update``; ``info["error_before"]``
        is the error of the truncation before the update.
    """
    W64 = _validate.weight_stack(W)
    if W64.shape[0] != 1:
        raise ValueError(f"W must have shape (m, n); got shape {np.shape(W)}")
    Wm = W64[0]
    m, n = Wm.shape
    d = _check_rank(rank, m, n)
    C64 = _stack(C, 1, n, "C", psd=True)[0]
    Cu = C64 if C_update is None else _stack(C_update, 1, n, "C_update", psd=True)[0]
    r = _check_ridge(ridge)
    U = _truncation(Wm, C64, d)
    Z = U.T @ Wm
    A = refit_left(Wm, Z, Cu, ridge=r)
    WCu = Wm @ Cu
    ref = float(np.vdot(WCu, Wm))
    before = _output_error(ref, U, Z, WCu, Cu)
    after = _output_error(ref, A, Z, WCu, Cu)
    return LowRankFit(
        left=A,
        right=Z,
        error=max(after, 0.0),
        reference=ref,
        info={"error_before": max(before, 0.0), "ridge": _eps(Cu, r, "C_update")},
    )


def residual_fit(
    W: ArrayLike,
    C_hat: ArrayLike,
    C_cross: ArrayLike | None = None,
    *,
    rank: int,
    C: ArrayLike | None = None,
    omega: ArrayLike | None = None,
    ridge: float = RIDGE,
) -> ResidualFit:
    """Best rank-``d`` map from the compressed model's input to the original output.

    For one map, minimises over all ``A`` (``m x d``) and ``B`` (``d x n``)::

        E||W x - A B x_hat||^2 + eps ||W - A B||_F^2

    in closed form (reduced-rank regression): with ``Ce = C_hat + eps I``,
    ``Xe = C_cross + eps I`` and ``T = W Xe Ce^{-1}`` the objective is
    ``const + ||(T - A B) Ce^{1/2}||_F^2``, minimised by ``A = U``, the
    top-``d`` eigenvectors of ``K = T Ce T^T = W Xe Ce^{-1} Xe^T W^T``, and
    ``B = U^T T``.  For a group of ``k`` maps sharing ``U`` (each with its
    own ``B_l``), the weighted sum ``sum_l omega_l (...)`` is minimised by
    the top-``d`` eigenvectors of ``sum_l omega_l K_l``.  With ``x_hat = x``
    (``C_hat = C_cross = C``) and ``ridge = 0`` this is SVD-LLM (one map) and
    the tied activation corner (a group); see ``docs/theory/allocation.rst``.

    No inverse is formed.  With ``ridge > 0``, ``Ce = L L^T`` (Cholesky),
    ``Y = W Xe L^{-T}`` and ``T = Y L^{-1}`` by triangular solves, ``K = Y
    Y^T``.  With ``ridge = 0``, the eigendecomposition ``C_hat = Q diag(c)
    Q^T`` gives ``Y = W Xe Q diag(c^{-1/2})`` and ``T = W Xe Q diag(1/c)
    Q^T`` on the eigenvalues ``c > RCOND * c_max`` (the pseudo-inverse: the
    fit is minimum-norm off the range of ``C_hat``).  ``U`` comes from the SVD
    of ``[sqrt(omega_l) Y_l]_l`` (or the eigendecomposition of its Gram when
    it is wider than ``m``).

    Parameters
    ----------
    W : array-like, shape=[m, n] or [k, m, n]
        One map, or a group of ``k`` maps sharing the output basis.
    C_hat : array-like, shape=[n, n] or [k, n, n]
        ``E[x_hat x_hat^T]`` per map, symmetric PSD.
    C_cross : array-like, shape=[n, n] or [k, n, n], optional
        ``E[x x_hat^T]`` per map (original input times compressed input).
        Default ``C_hat``: the target is ``W x_hat``, and the fit is SVD-LLM
        recomputed on the compressed model's inputs.
    rank : int
        ``1 <= d <= min(m, n)``.
    C : array-like, shape=[n, n] or [k, n, n], optional
        ``E[x x^T]`` per map: only for reporting the error and its reference
        when ``C_cross`` is given.
    omega : array-like, shape=[k], optional
        Positive weights of the maps in the shared-basis objective; default
        ones (the summed expected squared error, as Basis Sharing sums).
    ridge : float, default :data:`RIDGE`
        Relative ridge, ``eps_l = ridge * tr(C_hat_l) / n``.

    Returns
    -------
    ResidualFit
    """
    W64 = _validate.weight_stack(W)
    k, m, n = W64.shape
    d = _check_rank(rank, m, n)
    r = _check_ridge(ridge)
    Ch = _stack(C_hat, k, n, "C_hat", psd=True)
    Cx = Ch if C_cross is None else _stack(C_cross, k, n, "C_cross", psd=False)
    C64: F64 | None
    if C_cross is None:
        C64 = Ch
    elif C is not None:
        C64 = _stack(C, k, n, "C", psd=True)
    else:
        C64 = None
    if omega is None:
        om = np.ones(k)
    else:
        om = np.asarray(omega, dtype=np.float64).reshape(-1)
        if om.shape != (k,) or not np.all(np.isfinite(om)) or np.any(om <= 0):
            raise ValueError(f"omega must be {k} positive finite weights; got omega = {omega!r}")
    eps = np.empty(k)
    T = np.empty((k, m, n))
    Ys = []
    WCx = np.empty((k, m, n))
    for l in range(k):
        name = f"C_hat[{l}]" if k > 1 else "C_hat"
        if C64 is not None and C64 is not Ch:
            _check_psd(C64[l], f"C[{l}]" if k > 1 else "C")
        _check_psd(Ch[l], name)
        eps[l] = _eps(Ch[l], r, name)
        WCx[l] = W64[l] @ Cx[l]
        G = WCx[l] + eps[l] * W64[l]  # W Xe   (m x n)
        Y, T[l] = _whiten_solve(G, Ch[l], eps[l], name)
        Ys.append(math.sqrt(om[l]) * Y)
    F = np.concatenate(Ys, axis=1)
    if F.shape[1] <= m:
        Uf, s, _ = scipy.linalg.svd(F, full_matrices=False, lapack_driver="gesdd")
        U = np.ascontiguousarray(Uf[:, :d])
        spec = np.zeros(m)
        spec[: s.size] = s * s
    else:
        mu, V = np.linalg.eigh(F @ F.T)
        U = np.ascontiguousarray(V[:, ::-1][:, :d])
        spec = np.maximum(mu[::-1], 0.0)
    B = np.einsum("md,kmn->kdn", U, T)
    err: F64 | None = None
    ref: F64 | None = None
    if C64 is not None:
        if C64 is Ch:  # target W x_hat: tr(W C_hat W^T) = <W C_cross, W>
            ref = np.array([float(np.vdot(WCx[l], W64[l])) for l in range(k)])
        else:
            ref = np.array([float(np.vdot(W64[l] @ C64[l], W64[l])) for l in range(k)])
        err = np.array([max(_output_error(ref[l], U, B[l], WCx[l], Ch[l]), 0.0) for l in range(k)])
    return ResidualFit(
        basis=U, right=B, spectrum=spec, target=T, error=err, reference=ref, ridge=eps
    )


# -- constrained refits -------------------------------------------------------------

#: Which factors :func:`constrained_refit` refits.
REFIT_FACTORS = ("left", "right", "both", "sigma")
#: Which output :func:`constrained_refit` fits.
REFIT_TARGETS = ("output", "local", "joint")


def _refit_statistics(C: F64, C_hat: F64, C_cross: F64, target: str, mix: float) -> tuple[F64, F64]:
    """The input Gram ``G`` and cross-moment ``X`` of a target.

    ``J(A B) = c - 2 <A B, W X> + <A B G, A B>``.
    """
    if target == "output":
        return C_hat, C_cross
    if target == "local":
        return C_hat, C_hat
    return mix * C + (1.0 - mix) * C_hat, mix * C + (1.0 - mix) * C_cross


def constrained_refit(
    W: ArrayLike,
    C: ArrayLike,
    C_hat: ArrayLike,
    C_cross: ArrayLike,
    *,
    rank: int | None = None,
    left: ArrayLike | None = None,
    right: ArrayLike | None = None,
    factor: str = "left",
    target: str = "output",
    mix: float = 0.5,
    ridge: float = 0.0,
) -> LowRankFit:
    """A refit of some factors of a rank-``d`` map, pulled towards the unrefit ones.

    The unrefit factors ``A0`` (``m x d``) and ``B0`` (``d x n``) are given
    (``left``, ``right``) or, with ``rank``, SVD-LLM's truncation on ``C``
    (``A0 = U`` the top-``d`` eigenvectors of ``W C W^T``, ``B0 = U^T W``, as
    :func:`svd_llm_update`); ``W0 = A0 B0``.  The target fixes an input Gram
    ``G`` and a cross-moment ``X``, and the objective::

        J(A B) = E_target - 2 <A B, W X> + <A B G, A B>        (<P, Q> = tr(P Q^T))

        output:  E||W x - A B x_hat||^2              G = C_hat,          X = C_cross
        local:   E||W x_hat - A B x_hat||^2          G = C_hat,          X = C_hat
        joint:   mix E||W x - A B x||^2
                 + (1 - mix) E||W x - A B x_hat||^2  G = mix C + (1-mix) C_hat,
                                                     X = mix C + (1-mix) C_cross

    is minimised with the ridge ``eps ||A B - W0||_F^2``, ``eps = ridge *
    tr(G) / n`` (relative to the mean diagonal of ``G``, as GPTQ damps its
    Hessian), over the factors ``factor`` frees:

    * ``"left"``: ``A`` (``B = B0``): ``A (B0 Ge B0^T) = Xw B0^T``;
    * ``"right"``: ``B`` (``A = A0``): ``(A0^T A0) B Ge = A0^T Xw``;
    * ``"both"``: the best rank-``d`` ``A B`` (reduced-rank regression):
      ``A = U``, the top-``d`` eigenvectors of ``T Ge T^T``, ``B = U^T T``,
      ``T = Xw Ge^{-1}``;
    * ``"sigma"``: ``A = A0 diag(g)``, ``B = B0`` (the kept singular values
      rescaled): ``((A0^T A0) o (B0 Ge B0^T)) g = diag(A0^T Xw B0^T)``, a
      ``d x d`` solve (``o`` the entrywise product);

    with ``Ge = G + eps I`` and ``Xw = W X + eps W0``: the ridge is ``n``
    virtual inputs ``sqrt(eps) e_i`` whose target is the unrefit map's output
    ``W0 e_i``.  ``ridge = 0`` is the unregularised fit (minimum-norm on the
    numerical range, cut-off :data:`RCOND`); ``ridge -> inf`` returns ``W0``
    (``A0``, ``B0`` or ``g = 1``), at distance ``O(1 / ridge)``.  Special
    cases: ``"left"``, ``"local"``, ``ridge = 0`` is SVD-LLM's update
    (:func:`svd_llm_update` at ``ridge = 0``); ``"both"``, ``"output"``,
    ``ridge = 0`` is :func:`residual_fit` at ``ridge = 0``; ``"joint"`` with
    ``mix = 1`` and ``"both"`` is SVD-LLM's truncation itself (the activation
    corner of the bundle), with ``mix = 0`` the output target.

    Parameters
    ----------
    W : array-like, shape=[m, n]
        The original map.
    C, C_hat, C_cross : array-like, shape=[n, n]
        ``E[x x^T]``, ``E[x_hat x_hat^T]`` (symmetric PSD) and ``E[x x_hat^T]``.
    rank : int, optional
        With neither ``left`` nor ``right``: the truncation's rank.
    left, right : array-like, shape=[m, d] and [d, n], optional
        The unrefit factors (both or neither).
    factor : {"left", "right", "both", "sigma"}, default "left"
    target : {"output", "local", "joint"}, default "output"
    mix : float, default 0.5
        The teacher-input weight of the joint target, in ``[0, 1]``.
    ridge : float, default 0.0
        ``>= 0``, relative to the mean diagonal of ``G``.

    Returns
    -------
    LowRankFit
        ``error`` and ``reference``: ``E||W x - A B x_hat||^2`` and ``E||W
        x||^2`` whatever the target; ``info``: ``"error_before"`` (of ``W0``),
        ``"ridge"`` (the absolute ``eps``), ``"objective"`` and
        ``"objective_before"`` (``J`` without the ridge term, of the fit and
        of ``W0``), ``"left_before"`` and ``"right_before"`` (``A0``,
        ``B0``), ``"gains"`` (``g``, ``"sigma"`` only).
    """
    return constrained_refit_path(
        W, C, C_hat, C_cross, ridges=(ridge,), rank=rank, left=left, right=right,
        factor=factor, target=target, mix=mix,
    )[0]  # fmt: skip


def constrained_refit_path(
    W: ArrayLike,
    C: ArrayLike,
    C_hat: ArrayLike,
    C_cross: ArrayLike,
    *,
    ridges: Sequence[float],
    rank: int | None = None,
    left: ArrayLike | None = None,
    right: ArrayLike | None = None,
    factor: str = "left",
    target: str = "output",
    mix: float = 0.5,
) -> list[LowRankFit]:
    """:func:`constrained_refit` at several ridges, on one set of statistics.

    The same fits, ridge by ridge, as separate calls of
    :func:`constrained_refit` with these arguments and the unrefit factors of
    the first (the same floating-point operations in the same order); the
    checks of the arguments, the unrefit factors (with ``rank``, SVD-LLM's
    truncation), the target's statistics and the products that do not depend
    on the ridge are computed once.

    Parameters
    ----------
    W, C, C_hat, C_cross, rank, left, right, factor, target, mix
        As for :func:`constrained_refit`.
    ridges : sequence of float
        One fit per value, each ``>= 0`` (relative, as ``ridge`` there); at
        least one.

    Returns
    -------
    list of LowRankFit
        In the order of ``ridges``.
    """
    if isinstance(ridges, str | bytes) or len(ridges) < 1:
        raise ValueError(f"ridges must be a sequence of at least one number; got {ridges!r}")
    if factor not in REFIT_FACTORS:
        raise ValueError(f"factor must be one of {', '.join(REFIT_FACTORS)}; got {factor!r}")
    if target not in REFIT_TARGETS:
        raise ValueError(f"target must be one of {', '.join(REFIT_TARGETS)}; got {target!r}")
    if isinstance(mix, bool) or not isinstance(mix, int | float) or not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be a number in [0, 1]; got mix = {mix!r}")
    rhos = [_check_ridge(r) for r in ridges]
    W64 = _validate.weight_stack(W)
    if W64.shape[0] != 1:
        raise ValueError(f"W must have shape (m, n); got shape {np.shape(W)}")
    Wm = W64[0]
    m, n = Wm.shape
    C64 = _stack(C, 1, n, "C", psd=True)[0]
    Ch = _stack(C_hat, 1, n, "C_hat", psd=True)[0]
    Cx = _stack(C_cross, 1, n, "C_cross", psd=False)[0]
    _check_psd(Ch, "C_hat")
    if (left is None) != (right is None):
        raise ValueError("give both left and right (the unrefit factors) or neither (use rank)")
    if left is None:
        if rank is None:
            raise ValueError("give rank (SVD-LLM's truncation) or the factors left and right")
        d = _check_rank(rank, m, n)
        A0 = _truncation(Wm, C64, d)
        B0 = A0.T @ Wm
    else:
        A0 = np.asarray(left, dtype=np.float64)
        B0 = np.asarray(right, dtype=np.float64)
        if A0.ndim != 2 or B0.ndim != 2 or A0.shape[0] != m or B0.shape[1] != n:
            raise ValueError(
                f"left and right must have shapes (m, d) and (d, n) with m, n = {m}, {n}; "
                f"got {A0.shape} and {B0.shape}"
            )
        if A0.shape[1] != B0.shape[0] or not 1 <= A0.shape[1] <= min(m, n):
            raise ValueError(
                f"left and right must share a rank 1 <= d <= {min(m, n)}; "
                f"got {A0.shape} and {B0.shape}"
            )
        if not (np.all(np.isfinite(A0)) and np.all(np.isfinite(B0))):
            raise ValueError("left and right must have finite entries; found NaN or inf")
    G, X = _refit_statistics(C64, Ch, Cx, target, float(mix))
    W0 = A0 @ B0
    WCx = Wm @ Cx
    ref = float(np.vdot(Wm @ C64, Wm))
    WX = Wm @ X
    # E||target||^2: tr(W C_hat W^T) for the local target, tr(W C W^T) for the others
    ref_t = float(np.vdot(Wm @ Ch, Wm)) if target == "local" else ref
    error_before = max(_output_error(ref, A0, B0, WCx, Ch), 0.0)
    objective_before = max(_output_error(ref_t, A0, B0, WX, G), 0.0)
    fits = []
    for rho in rhos:
        eps = _eps(G, rho, "the target's input covariance")
        Xw = WX + eps * W0  # the cross-moment with the virtual inputs
        info: dict[str, Any] = {"ridge": eps, "left_before": A0, "right_before": B0}
        A, B = _refit_factors(factor, Wm, A0, B0, G, Xw, eps, info)
        info["error_before"] = error_before
        info["objective"] = max(_output_error(ref_t, A, B, WX, G), 0.0)
        info["objective_before"] = objective_before
        fits.append(
            LowRankFit(
                left=np.ascontiguousarray(A),
                right=np.ascontiguousarray(B),
                error=max(_output_error(ref, A, B, WCx, Ch), 0.0),
                reference=ref,
                info=info,
            )
        )
    return fits


def _refit_factors(
    factor: str, Wm: F64, A0: F64, B0: F64, G: F64, Xw: F64, eps: float, info: dict[str, Any]
) -> tuple[F64, F64]:
    """The refit factors ``(A, B)`` of :func:`constrained_refit` for one ridge ``eps``."""
    m = Wm.shape[0]
    if factor == "left":
        BG = B0 @ G
        A = _spd_solve_right(BG @ B0.T + eps * (B0 @ B0.T), Xw @ B0.T)
        B = B0
    elif factor == "right":
        _, T = _whiten_solve(Xw, G, eps, "the target's input covariance")
        Bt = _spd_solve_right(A0.T @ A0, T.T @ A0)  # B^T (A0^T A0) = T^T A0
        A, B = A0, np.ascontiguousarray(Bt.T)
    elif factor == "both":
        Y, T = _whiten_solve(Xw, G, eps, "the target's input covariance")
        d = A0.shape[1]
        if Y.shape[1] <= m:
            Uf, _, _ = scipy.linalg.svd(Y, full_matrices=False, lapack_driver="gesdd")
            U = Uf[:, :d]
            if U.shape[1] < d:  # Y has fewer columns than d: any completion is optimal
                U = np.linalg.qr(np.concatenate([U, A0], axis=1))[0][:, :d]
        else:
            _, V = np.linalg.eigh(Y @ Y.T)
            U = V[:, ::-1][:, :d]
        A, B = np.ascontiguousarray(U), U.T @ T
    else:  # sigma
        H = (A0.T @ A0) * (B0 @ G @ B0.T + eps * (B0 @ B0.T))
        h = np.einsum("md,mn,dn->d", A0, Xw, B0)
        g = _spd_solve_right(H, h[None, :])[0]
        A, B = A0 * g, B0
        info["gains"] = g
    return A, B
