"""The Grassmann manifold Gr(p, n): points, projectors, exp, log, transport.

A point of Gr(p, n), the set of ``p``-dimensional subspaces of ``R^n``, is
stored as an ``n x p`` orthonormal basis ``U`` (``U^T U = I``), defined up to
``U -> U Q`` with ``Q`` in O(p).  Every function takes optional leading batch
axes, ``(..., n, p)``, which broadcast against each other.

Tangent vectors at ``U`` are ``n x p`` matrices ``X`` with ``U^T X = 0`` (the
horizontal space of the quotient Stiefel(n, p) / O(p)); the metric is
``<X, Y> = tr(X^T Y)``, under which the geodesic distance is the 2-norm of the
principal angles (:func:`grassbundle.dist`).  The formulas follow [EAS98]_ and
[BZA24]_.  A tangent vector belongs to the
basis it was built on: the same direction at ``U Q`` is ``X Q``.

All arithmetic is in float64 whatever the input dtype (float16, float32,
float64 and integer input are accepted), and every array returned is float64.

References
----------
.. [EAS98] A. Edelman, T. A. Arias and S. T. Smith, "The geometry of
   algorithms with orthogonality constraints", SIAM J. Matrix Anal. Appl.
   20(2), 1998.
.. [BZA24] T. Bendokat, R. Zimmermann and P.-A. Absil, "A Grassmann manifold
   handbook: basic geometry and computational aspects", Adv. Comput. Math.
   50, 2024 (arXiv 2011.13699).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import (
    as_float64,
    broadcast_batch,
    check_np,
    check_point,
    check_point_pair,
    check_same_point_shape,
    check_tangent,
    check_tangent_shape,
)
from .angles import principal_frames

__all__ = [
    "as_point",
    "exp",
    "geodesic",
    "log",
    "parallel_transport",
    "project_tangent",
    "projector",
    "random_point",
    "retraction",
]

F64 = NDArray[np.float64]


def _T(A: F64) -> F64:
    return np.swapaxes(A, -1, -2)


def random_point(
    n: int,
    p: int,
    *,
    rng: np.random.Generator | int,
    batch: int | Sequence[int] = (),
) -> F64:
    """Haar-distributed random points of Gr(p, n).

    The Q factor of a Gaussian ``n x p`` matrix, with the signs of the columns
    fixed so that ``R`` has a positive diagonal, is uniform on the Stiefel
    manifold, so its span is uniform (Haar) on Gr(p, n).

    Parameters
    ----------
    n, p : int
        Ambient dimension and subspace dimension, ``n >= p >= 1``.
    rng : numpy.random.Generator or int
        Source of randomness, or a seed for :func:`numpy.random.default_rng`.
    batch : int or sequence of int, default ()
        Leading batch shape.

    Returns
    -------
    U : ndarray, shape=[*batch, n, p], float64
        Orthonormal bases.

    Raises
    ------
    ValueError
        Unless ``n >= p >= 1``.

    Examples
    --------
    >>> from grassbundle import random_point
    >>> random_point(5, 2, rng=0, batch=3).shape
    (3, 5, 2)
    """
    check_np(n, p)
    gen = np.random.default_rng(rng)
    shape = (batch,) if isinstance(batch, int | np.integer) else tuple(batch)
    G = gen.standard_normal((*shape, n, p))
    Q, R = np.linalg.qr(G)
    signs = np.sign(np.diagonal(R, axis1=-2, axis2=-1))
    signs[signs == 0] = 1.0
    return Q * signs[..., None, :]


def as_point(X: ArrayLike, *, orthonormalize: bool = False, atol: float | None = None) -> F64:
    """Validate an orthonormal basis, or orthonormalise a full-rank one.

    Parameters
    ----------
    X : array-like, shape=[..., n, p]
        Candidate basis, ``n >= p >= 1``.
    orthonormalize : bool, default False
        If False, ``X`` must already be orthonormal: ``max |X^T X - I| <= atol``.
        If True, return the orthonormal polar factor ``W V^T`` of the thin SVD
        ``X = W S V^T``: the orthonormal basis closest to ``X`` in Frobenius
        norm, with the same span.  ``X`` must then have full column rank.
    atol : float, optional
        Orthonormality tolerance when ``orthonormalize=False``.  Default
        ``min(max(1e-10, 10 sqrt(n) eps), 1e-2)``, ``eps`` the machine epsilon
        of the input dtype: a float64 basis rounded to working precision is
        far inside it (``max |X^T X - I|`` is a few ``sqrt(n) eps``), a float32
        one (``eps = 1.2e-7``) is admitted with its own roundoff, and a
        float16 one (at most ``9.8e-4`` from orthonormal at any ``n``) is
        admitted under the ``1e-2`` ceiling, which rejects a basis scaled by
        1.2 (``|1.2^2 - 1| = 0.44``) at every ``n``.  Low-precision input is
        converted as stored, not re-orthonormalised: results computed from it
        carry its departure from orthonormality (about 1e-4 for float16).

    Returns
    -------
    U : ndarray, shape=[..., n, p], float64
        ``X`` in float64 (validated), or its polar factor.

    Raises
    ------
    ValueError
        For fewer than two axes, ``p > n`` or ``p < 1``, non-finite entries,
        a basis that is not orthonormal (``orthonormalize=False``) or one that
        is numerically rank deficient (``orthonormalize=True``: smallest
        singular value at or below ``max(n, p) * eps64`` times the largest).

    Examples
    --------
    >>> import numpy as np
    >>> from grassbundle import as_point
    >>> U = as_point(np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]), orthonormalize=True)
    >>> U.T @ U
    array([[1., 0.],
           [0., 1.]])
    """
    if not orthonormalize:
        return check_point(X, "X", atol=atol)
    A = as_float64(X, "X")
    n, p = A.shape[-2:]
    if p < 1 or p > n:
        raise ValueError(
            f"X must have shape (..., n, p) with n >= p >= 1. "
            f"Values supplied were n = {n} and p = {p} (shape {A.shape})"
        )
    if A.size == 0:
        return A.copy()
    W, s, Vt = np.linalg.svd(A, full_matrices=False)
    rtol = max(n, p) * np.finfo(np.float64).eps
    ratio = s[..., -1] / np.where(s[..., 0] > 0, s[..., 0], 1.0)
    if np.any(ratio <= rtol):
        worst = float(np.min(ratio))
        raise ValueError(
            f"X (shape {A.shape}) is numerically rank deficient: smallest / largest singular "
            f"value = {worst:.3g} <= {rtol:.3g}, so its columns do not span a "
            f"{p}-dimensional subspace; remove dependent columns or lower p"
        )
    return W @ Vt


def projector(U: ArrayLike) -> F64:
    """The orthogonal projector ``P_U = U U^T`` onto ``span(U)``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.

    Returns
    -------
    P : ndarray, shape=[..., n, n], float64
        Symmetric idempotent projector of rank ``p``.  This forms an
        ``n x n`` matrix; the rest of the package never needs it.
    """
    U64 = check_point(U, "U")
    return U64 @ _T(U64)


def project_tangent(U: ArrayLike, Z: ArrayLike) -> F64:
    """Orthogonal projection of ``Z`` onto the tangent space at ``U``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    Z : array-like, shape=[..., n, p]
        Any ``n x p`` matrix (e.g. a Euclidean gradient).

    Returns
    -------
    X : ndarray, shape=[..., n, p], float64
        ``(I - U U^T) Z``, computed as ``Z - U (U^T Z)`` in ``O(n p^2)``.
    """
    U64, Z64 = check_tangent(U, Z, "Z")
    return _project_tangent(U64, Z64)


def _project_tangent(U: F64, Z: F64) -> F64:
    return Z - U @ (_T(U) @ Z)


def retraction(U: ArrayLike, X: ArrayLike) -> F64:
    """Polar retraction: the orthonormal polar factor of ``U + X``.

    A first-order approximation of :func:`exp` that costs one thin SVD.  It is
    the same map as pymanopt's ``Grassmann.retraction`` and commutes with the
    change of basis: ``retraction(U Q, X Q) = retraction(U, X) Q``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    X : array-like, shape=[..., n, p]
        Tangent vector at ``U``.  Any component along ``span(U)`` is removed
        first (``X <- (I - U U^T) X``), so ``U + X`` always has full rank.

    Returns
    -------
    R : ndarray, shape=[..., n, p], float64
        Orthonormal basis of ``span(U + X)``.
    """
    U64, X64 = check_tangent(U, X, "X")
    W, _, Vt = np.linalg.svd(U64 + _project_tangent(U64, X64), full_matrices=False)
    return W @ Vt


def exp(U: ArrayLike, X: ArrayLike) -> F64:
    """Riemannian exponential: the end point of the geodesic from ``U`` with velocity ``X``.

    With the thin SVD ``X = W diag(s) V^T`` [EAS98]_ (Theorem 2.3),

        ``exp_U(X) = U V diag(cos s) V^T + W diag(sin s) V^T``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    X : array-like, shape=[..., n, p]
        Tangent vector at ``U``.  Any component along ``span(U)`` is removed
        first (``X <- (I - U U^T) X``), which keeps the result orthonormal to
        working precision.

    Returns
    -------
    Y : ndarray, shape=[..., n, p], float64
        Orthonormal basis of the end point, in the basis carried along the
        geodesic from ``U`` (so ``exp(U, 0) = U``).

    Examples
    --------
    >>> import numpy as np
    >>> from grassbundle import exp, dist
    >>> U = np.eye(3)[:, :1]
    >>> X = np.array([[0.0], [0.3], [0.0]])
    >>> float(dist(U, exp(U, X)))  # doctest: +ELLIPSIS
    0.3...
    """
    U64, X64 = check_tangent(U, X, "X")
    return exp_unchecked(U64, _project_tangent(U64, X64))


def exp_unchecked(U: F64, X: F64) -> F64:
    """:func:`exp` on validated float64 arrays (no checks, no projection)."""
    W, s, Vt = np.linalg.svd(X, full_matrices=False)
    return (U @ (_T(Vt) * np.cos(s)[..., None, :]) + W * np.sin(s)[..., None, :]) @ Vt


def log(U: ArrayLike, V: ArrayLike) -> F64:
    """Riemannian logarithm: the shortest tangent vector at ``U`` pointing to ``span(V)``.

    Built from the principal angles and vectors, with SVDs only, never a
    solve with the possibly singular ``U^T V`` (compare [BZA24]_, Algorithm
    5.3).  With principal vectors ``Y = U Ycoef`` in ``span(U)`` and ``Z`` in
    ``span(V)``, write ``Z = Y cos(theta) + Q sin(theta)`` with ``Q``
    orthonormal and orthogonal to ``span(U)``; then

        ``log_U(V) = Q diag(theta) Ycoef^T``.

    ``Q`` is never obtained by dividing by a small sine: for the small angles
    (sine branch) ``Q`` and ``Z`` are the singular vectors of
    ``(I - U U^T) V``, whose singular values are the sines; for the others
    ``Q = (I - U U^T) Z / sin(theta)`` with ``sin(theta) >= 1/2``.  The angles
    are those of :func:`grassbundle.principal_angles` (absolute accuracy about
    1e-15 near 0 and near pi/2), and the two branches meet in the widest gap
    between pi/6 and pi/3 so that no cluster of equal angles is split.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis of the base point.
    V : array-like, shape=[..., n, p]
        Orthonormal basis of the target point.

    Returns
    -------
    X : ndarray, shape=[..., n, p], float64
        Tangent vector at ``U`` (``U^T X = 0``) with singular values the
        principal angles, so ``||X||_F = dist(U, V)`` and
        ``span(exp(U, X)) = span(V)``.  Inside the injectivity radius (largest
        angle below pi/2) it is the unique such vector of 2-norm below pi/2.
        At the cut locus (an angle equal to pi/2) the shortest geodesic is not
        unique and one of them is returned; the result stays finite and
        ``exp(U, X)`` still spans ``V``.
    """
    U64, V64 = check_point_pair(U, V)
    return log_unchecked(U64, V64)


def log_unchecked(U: F64, V: F64) -> F64:
    """:func:`log` on validated float64 bases (no checks)."""
    theta, Ycoef, _, Q = principal_frames(U, V)
    return (Q * theta[..., None, :]) @ _T(Ycoef)


def geodesic(U: ArrayLike, V: ArrayLike, t: ArrayLike) -> F64:
    """Point at parameter ``t`` on the shortest geodesic from ``U`` (t = 0) to ``V`` (t = 1).

    ``geodesic(U, V, t) = exp(U, t * log(U, V))``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis of the start point.
    V : array-like, shape=[..., n, p]
        Orthonormal basis of the end point.
    t : float or array-like, shape=[...]
        Curve parameter(s); broadcasts against the batch axes of ``U`` and
        ``V``.  Values outside ``[0, 1]`` extrapolate along the same geodesic.

    Returns
    -------
    G : ndarray, shape=[..., n, p], float64
        Orthonormal bases; ``span(G) = span(V)`` at ``t = 1`` (in a basis that
        differs from ``V`` by an O(p) factor), and ``dist(U, G) = |t| dist(U, V)``
        for ``|t| <= 1``.
    """
    U64, V64 = check_point_pair(U, V)
    t64 = as_float64(t, "t", min_ndim=0)
    X = log_unchecked(U64, V64)
    try:
        tX = t64[..., None, None] * X
    except ValueError:
        raise ValueError(
            f"t (shape {t64.shape}) does not broadcast against the batch shape {X.shape[:-2]}"
        ) from None
    return exp_unchecked(np.broadcast_to(U64, tX.shape), tX)


def parallel_transport(U: ArrayLike, V: ArrayLike, X: ArrayLike) -> F64:
    """Parallel transport of the tangent vector ``X`` at ``U`` to ``V`` along the shortest geodesic.

    With the direction ``H = log_U(V) = W diag(s) Z^T`` (in SVD form, as
    :func:`log` builds it: ``s`` the principal angles), the
    Levi-Civita transport along ``t -> exp_U(t H)`` is [EAS98]_ (Theorem 2.4)

        ``tau X = (-U Z diag(sin s) W^T + W diag(cos s) W^T + I - W W^T) X``,

    a tangent vector at the end point ``E = exp_U(H)``.  It is returned in the
    caller's basis ``V`` (``E = V R`` with ``R = V^T E`` orthogonal, and a
    tangent vector at ``E`` is ``tau X R^T`` at ``V``).

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis of the start point.
    V : array-like, shape=[..., n, p]
        Orthonormal basis of the end point.
    X : array-like, shape=[..., n, p]
        Tangent vector at ``U``; any component along ``span(U)`` is removed
        first.

    Returns
    -------
    Y : ndarray, shape=[..., n, p], float64
        Tangent vector at ``V`` (``V^T Y = 0``) with the same norm as ``X``;
        transport preserves inner products, and ``log_U(V)`` is carried to
        ``-log_V(U)``.  At the cut locus the geodesic chosen by :func:`log`
        is used.
    """
    U64 = check_point(U, "U")
    V64 = check_point(V, "V")
    X64 = as_float64(X, "X")
    check_same_point_shape(U64, V64, "U", "V")
    check_tangent_shape(U64, X64, "U", "X")
    broadcast_batch(U64, V64, X64, names=("U", "V", "X"))
    X64 = _project_tangent(U64, X64)
    # log_U(V) = W diag(s) Z^T in SVD form straight from the principal frames
    s, Z, _, W = principal_frames(U64, V64)
    Zt = _T(Z)
    sin = np.sin(s)[..., None, :]
    cos = np.cos(s)[..., None, :]
    WtX = _T(W) @ X64
    tauX = (-(U64 @ (_T(Zt) * sin)) + W * (cos - 1.0)) @ WtX + X64
    E = (U64 @ (_T(Zt) * cos) + W * sin) @ Zt
    R = _T(V64) @ E
    return tauX @ _T(R)
