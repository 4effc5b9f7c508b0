"""Means of points on Gr(p, n): the chordal (extrinsic) mean and the Karcher mean.

- :func:`chordal_mean`: the minimiser of ``sum_i w_i ||P - P_i||_F^2`` over
  projectors ``P`` of rank ``p``, i.e. the top-``p`` eigenspace of
  ``sum_i w_i P_i`` (Ky Fan).  Closed form, one SVD.
- :func:`karcher_mean`: the minimiser of ``(1/2) sum_i w_i dist(U, U_i)^2``
  (intrinsic, geodesic distance) [Kar77]_, by Riemannian gradient descent
  with Armijo backtracking [AMS08]_ from the chordal mean, with a result
  object that reports convergence.

Points are stacked along the axis before the matrix axes: ``(..., k, n, p)``
for ``k`` points, with optional leading batch axes.  All arithmetic is float64
and all arrays returned are float64.

References
----------
.. [Kar77] H. Karcher, "Riemannian center of mass and mollifier smoothing",
   Comm. Pure Appl. Math. 30(5), 1977.
.. [AMS08] P.-A. Absil, R. Mahony and R. Sepulchre, "Optimization Algorithms
   on Matrix Manifolds", Princeton University Press, 2008 (Armijo
   backtracking, Section 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import as_float64, check_point, check_same_point_shape
from .angles import principal_angles_unchecked
from .grassmann import exp_unchecked, log_unchecked

__all__ = ["KarcherMeanResult", "chordal_mean", "karcher_mean"]

F64 = NDArray[np.float64]


def _points_and_weights(points: ArrayLike, weights: ArrayLike | None) -> tuple[F64, F64]:
    P = check_point(points, "points")
    if P.ndim < 3:
        raise ValueError(
            f"points must be a stack of bases with shape (..., k, n, p); got shape {P.shape}"
        )
    k = P.shape[-3]
    if k == 0:
        raise ValueError(f"points must hold at least one basis; got shape {P.shape}")
    w: F64
    if weights is None:
        w = np.full(P.shape[:-2], 1.0 / k)
    else:
        w = as_float64(weights, "weights", min_ndim=1)
        if w.shape[-1] != k:
            raise ValueError(
                f"weights must have shape (..., k) with k = {k} (the number of points); "
                f"got shape {w.shape}"
            )
        if np.any(w < 0):
            raise ValueError(f"weights must be non-negative; the smallest is {float(w.min())}")
        total = w.sum(axis=-1, keepdims=True)
        if np.any(total <= 0):
            raise ValueError("weights must not all be zero (in every batch entry)")
        w = w / total
        try:
            w = np.broadcast_to(w, np.broadcast_shapes(w.shape, P.shape[:-2]))
        except ValueError:
            raise ValueError(
                f"weights (shape {w.shape}) do not broadcast against the points' "
                f"batch shape {P.shape[:-2]}"
            ) from None
    return P, w


@overload
def chordal_mean(
    points: ArrayLike,
    weights: ArrayLike | None = ...,
    *,
    return_eigenvalues: Literal[False] = ...,
) -> F64: ...


@overload
def chordal_mean(
    points: ArrayLike,
    weights: ArrayLike | None = ...,
    *,
    return_eigenvalues: Literal[True],
) -> tuple[F64, F64]: ...


def chordal_mean(
    points: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    return_eigenvalues: bool = False,
) -> F64 | tuple[F64, F64]:
    """Chordal (extrinsic L2) mean: the top-``p`` eigenspace of ``sum_i w_i P_i``.

    It minimises ``sum_i w_i ||P_U - P_{U_i}||_F^2`` over Gr(p, n).  No
    ``n x n`` matrix is formed: with ``A = [sqrt(w_1) U_1, ..., sqrt(w_k) U_k]``
    (``n x k p``), ``sum_i w_i P_i = A A^T``, so its top-``p`` eigenvectors are
    the top-``p`` left singular vectors of ``A``, from one thin SVD in
    ``O(n (k p) min(n, k p))`` operations.  The SVD of ``A`` rather than the
    eigendecomposition of ``A A^T`` keeps the small eigenvalues accurate.

    Parameters
    ----------
    points : array-like, shape=[..., k, n, p]
        ``k`` orthonormal bases (``k >= 1``).
    weights : array-like, shape=[..., k], optional
        Non-negative weights, not all zero; default uniform.  They are
        normalised to sum to 1 (this does not change the mean).
    return_eigenvalues : bool, default False
        Also return the eigenvalues of ``sum_i w_i P_i`` (normalised weights).

    Returns
    -------
    mean : ndarray, shape=[..., n, p], float64
        Orthonormal basis of the mean.  It is unique exactly when the
        eigengap ``lambda_p - lambda_{p+1}`` is positive.
    eigenvalues : ndarray, shape=[..., min(n, k p)], float64
        Only with ``return_eigenvalues=True``: the eigenvalues of
        ``sum_i w_i P_i`` in descending order (the rest are zero), in
        ``[0, 1]``.

    Raises
    ------
    ValueError
        For bad shapes, non-finite entries, non-orthonormal bases, or
        negative, all-zero or mis-shaped weights.
    """
    P, w = _points_and_weights(points, weights)
    W, s = _chordal_mean(P, w)
    p = P.shape[-1]
    mean = np.ascontiguousarray(W[..., :p])
    if return_eigenvalues:
        return mean, s * s
    return mean


def _chordal_mean(P: F64, w: F64) -> tuple[F64, F64]:
    k, n, p = P.shape[-3:]
    scaled = P * np.sqrt(w)[..., None, None]
    A = np.swapaxes(scaled, -3, -2).reshape(*scaled.shape[:-3], n, k * p)
    W, s, _ = np.linalg.svd(A, full_matrices=False)
    return W, s


@dataclass(frozen=True)
class KarcherMeanResult:
    """Result of :func:`karcher_mean`.

    For batched input every field but ``point`` has the batch shape; for a
    single set of points they are 0-d arrays.

    Attributes
    ----------
    point : ndarray, shape=[..., n, p], float64
        Orthonormal basis of the mean found.
    converged : ndarray of bool, shape=[...]
        Whether the Riemannian gradient norm reached ``tol``.
    iterations : ndarray of int, shape=[...]
        Gradient steps taken.
    grad_norm : ndarray, shape=[...], float64
        Final Riemannian gradient norm ``||sum_i w_i log_U(U_i)||_F``.
    cost : ndarray, shape=[...], float64
        Final ``(1/2) sum_i w_i dist(U, U_i)^2`` (normalised weights).
    """

    point: F64
    converged: NDArray[np.bool_]
    iterations: NDArray[np.int64]
    grad_norm: F64
    cost: F64


def _karcher_cost(U: F64, P: F64, w: F64) -> F64:
    theta = principal_angles_unchecked(U[..., None, :, :], P)
    assert isinstance(theta, np.ndarray)
    return 0.5 * np.sum(w * np.sum(theta * theta, axis=-1), axis=-1)


def _karcher_grad(U: F64, P: F64, w: F64) -> F64:
    L = log_unchecked(U[..., None, :, :], P)  # (..., k, n, p)
    return -np.sum(w[..., None, None] * L, axis=-3)


def karcher_mean(
    points: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    init: ArrayLike | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> KarcherMeanResult:
    """Karcher (Riemannian centre of mass) mean by Riemannian gradient descent.

    Minimises ``f(U) = (1/2) sum_i w_i dist(U, U_i)^2`` [Kar77]_, whose
    Riemannian gradient is ``-sum_i w_i log_U(U_i)``.  Each step moves along
    the geodesic ``U <- exp_U(-alpha grad f)`` with ``alpha = 1`` (the classical
    fixed-point iteration, linearly convergent for clustered points) halved
    until the Armijo condition ``f_new <= f - 1e-4 alpha ||grad f||^2`` holds
    up to a rounding slack of ``1e-13 (1 + f)`` [AMS08]_.  The iteration starts
    from the chordal mean, which is already close when the points are.

    The mean is unique when the points lie in a geodesic ball of radius below
    pi/4 (the convexity radius of Gr(p, n) in the 2-norm of the angles);
    for spread-out points this finds a local minimiser.

    Parameters
    ----------
    points : array-like, shape=[..., k, n, p]
        ``k`` orthonormal bases.
    weights : array-like, shape=[..., k], optional
        Non-negative weights, not all zero; default uniform; normalised to
        sum to 1.
    init : array-like, shape=[..., n, p], optional
        Starting basis; default :func:`chordal_mean`.
    tol : float, default 1e-10
        Stop when ``||grad f||_F <= tol``.  The gradient is accurate to a few
        ``1e-15 sqrt(n p)``, so values down to about 1e-13 are reachable.
    max_iter : int, default 100
        Maximum number of gradient steps.

    Returns
    -------
    result : KarcherMeanResult
        The mean, whether it converged, iterations, the final gradient norm
        and cost (see :class:`KarcherMeanResult`).  Batch entries that have
        converged stop moving while the others continue.

    Raises
    ------
    ValueError
        As :func:`chordal_mean`, or for ``tol <= 0`` or ``max_iter < 0``.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be non-negative; got {max_iter}")
    P, w = _points_and_weights(points, weights)
    batch = P.shape[:-3]
    if init is None:
        U = np.ascontiguousarray(_chordal_mean(P, w)[0][..., : P.shape[-1]])
    else:
        U = check_point(init, "init")
        check_same_point_shape(U, P, "init", "points")
        U = np.array(np.broadcast_to(U, (*batch, *P.shape[-2:])))
    w = np.broadcast_to(w, (*batch, P.shape[-3]))
    cost = _karcher_cost(U, P, w)
    G = _karcher_grad(U, P, w)
    gnorm = np.sqrt(np.sum(G * G, axis=(-2, -1)))
    iterations = np.zeros(batch, dtype=np.int64)
    stalled = np.zeros(batch, dtype=bool)
    for _ in range(max_iter):
        active = (gnorm > tol) & ~stalled
        if not active.any():
            break
        alpha = np.ones(batch)
        for _halving in range(40):
            trial = exp_unchecked(U, -alpha[..., None, None] * G)
            trial_cost = _karcher_cost(trial, P, w)
            ok = trial_cost <= cost - 1e-4 * alpha * gnorm**2 + 1e-13 * (1.0 + cost)
            if np.all(ok | ~active):
                break
            alpha = np.where(ok, alpha, 0.5 * alpha)
        stalled |= active & ~ok
        move = active & ok
        U = np.where(move[..., None, None], trial, U)
        cost = np.where(move, trial_cost, cost)
        iterations += move
        G = _karcher_grad(U, P, w)
        gnorm = np.sqrt(np.sum(G * G, axis=(-2, -1)))
    return KarcherMeanResult(
        point=U,
        converged=np.asarray(gnorm <= tol),
        iterations=np.asarray(iterations),
        grad_norm=np.asarray(gnorm),
        cost=np.asarray(cost),
    )
