"""Distances on Gr(p, n), all functions of the principal angles.

Every distance here is computed from the principal angles ``theta`` of
:func:`grassbundle.principal_angles` (accurate to about 1e-15 absolute near 0
and near pi/2), never from ``arccos`` of cosines alone, so each one is below
1e-14 for the same subspace given in two different bases (``U`` and ``U Q``;
for large ``p`` the rounding of the product ``U Q`` itself moves the span by
about ``1e-15 sqrt(p)``, e.g. 1.5e-14 on Gr(512, 2048), and the distances
report that, accurately), and none of them forms an ``n x n`` projector.  The scales differ between
libraries, so each docstring states its own (the names follow [EAS98d]_ and
[HL08]_); in summary, with
``theta = (theta_1, ..., theta_p)``:

- :func:`dist`: ``||theta||_2``, the geodesic arc length, in ``[0, (pi/2) sqrt(p)]``;
- :func:`chordal_dist`: ``||sin theta||_2``, in ``[0, sqrt(p)]``;
- :func:`projection_dist`: ``||P_U - P_V||_F = sqrt(2) ||sin theta||_2``, in
  ``[0, sqrt(2 p)]`` (or, with ``ord=2``, ``||P_U - P_V||_2 = max sin theta``);
- :func:`procrustes_dist`: ``||2 sin(theta / 2)||_2 = min_Q ||U Q - V||_F``, in
  ``[0, sqrt(2 p)]``;
- :func:`binet_cauchy_dist`: ``sqrt(1 - prod cos^2 theta)``, in ``[0, 1]``;
- :func:`fubini_study_dist`: ``arccos(prod cos theta)``, in ``[0, pi/2]``.

geomstats' ``Grassmannian`` (projector representation) measures
``sqrt(2) ||theta||_2``; pymanopt's ``Grassmann.dist`` measures ``||theta||_2``
(from arccos only).  All functions return float64: an array of the broadcast
batch shape, or a numpy float64 scalar for unbatched input.  The accuracies
quoted are for float64 bases; low-precision (float16) bases are accepted
while ``max |U^T U - I| <= 1e-2`` and their distances carry that departure
from orthonormality (about 1e-4 for a float64 basis rounded to float16; see
:func:`grassbundle.principal_angles`).

References
----------
.. [EAS98d] A. Edelman, T. A. Arias and S. T. Smith, "The geometry of
   algorithms with orthogonality constraints", SIAM J. Matrix Anal. Appl.
   20(2), 1998 (Section 4.3, distances on the Grassmann manifold).
.. [HL08] J. Hamm and D. D. Lee, "Grassmann discriminant analysis: a unifying
   view on subspace-based learning", ICML 2008.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import check_point_pair
from .angles import principal_angles_unchecked

__all__ = [
    "binet_cauchy_dist",
    "chordal_dist",
    "dist",
    "fubini_study_dist",
    "procrustes_dist",
    "projection_dist",
]

F64 = NDArray[np.float64]


def _angles(U: ArrayLike, V: ArrayLike) -> F64:
    U64, V64 = check_point_pair(U, V)
    theta = principal_angles_unchecked(U64, V64)
    assert isinstance(theta, np.ndarray)
    return theta


def _norm(x: F64) -> F64:
    return np.sqrt(np.sum(x * x, axis=-1))


def dist(U: ArrayLike, V: ArrayLike) -> F64:
    """Geodesic (arc-length) distance ``||theta||_2``.

    The length of the shortest geodesic between ``span(U)`` and ``span(V)``
    for the metric ``<X, Y> = tr(X^T Y)`` on orthonormal bases; it equals
    ``||log(U, V)||_F``.  geomstats' projector-representation distance is
    ``sqrt(2)`` times this.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        In ``[0, (pi/2) sqrt(p)]``; a float64 scalar for unbatched input.
        Absolute accuracy about ``sqrt(p) * 1e-15`` for float64 bases; for
        low-precision bases about their ``||U^T U - I||_2`` more (1e-4 for
        float16 copies of orthonormal bases).

    Raises
    ------
    ValueError
        For bad shapes, non-finite entries or non-orthonormal bases.

    Examples
    --------
    >>> import numpy as np
    >>> from grassbundle import dist
    >>> U = np.eye(3)[:, :1]
    >>> V = np.array([[np.cos(0.3)], [np.sin(0.3)], [0.0]])
    >>> float(dist(U, V))  # doctest: +ELLIPSIS
    0.3...
    """
    return _norm(_angles(U, V))


def chordal_dist(U: ArrayLike, V: ArrayLike) -> F64:
    """Chordal distance ``||sin theta||_2 = ||P_U - P_V||_F / sqrt(2)``.

    The Conway-Hardin-Sloane chordal distance (Edelman-Arias-Smith's
    "projection F-norm"): the Frobenius distance of the projectors, scaled by
    ``1 / sqrt(2)``.  For ``||P_U - P_V||_F`` itself use
    :func:`projection_dist`.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        In ``[0, sqrt(p)]``; a float64 scalar for unbatched input.
    """
    return _norm(np.sin(_angles(U, V)))


def projection_dist(U: ArrayLike, V: ArrayLike, *, ord: Literal["fro", 2] = "fro") -> F64:
    """Norm of the difference of the orthogonal projectors, ``||P_U - P_V||``.

    Computed from the principal angles, without forming ``n x n`` matrices:
    the nonzero eigenvalues of ``P_U - P_V`` are ``+-sin theta_i``.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.
    ord : {"fro", 2}, default "fro"
        ``"fro"``: ``||P_U - P_V||_F = sqrt(2) ||sin theta||_2``, in
        ``[0, sqrt(2 p)]``.  ``2``: the spectral norm
        ``||P_U - P_V||_2 = max_i sin theta_i`` (the "gap", the quantity in
        the Davis-Kahan sin-Theta theorem), in ``[0, 1]``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        A float64 scalar for unbatched input.
    """
    if ord not in ("fro", 2):
        raise ValueError(f"ord must be 'fro' or 2; got {ord!r}")
    sin = np.sin(_angles(U, V))
    if ord == 2:
        return np.max(sin, axis=-1)
    return np.sqrt(2.0) * _norm(sin)


def procrustes_dist(U: ArrayLike, V: ArrayLike) -> F64:
    """Procrustes distance ``min_Q ||U Q - V||_F = ||2 sin(theta / 2)||_2``.

    The Frobenius distance between the bases after the best orthogonal
    alignment ``Q`` in O(p) (Edelman-Arias-Smith's "chordal F-norm").

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        In ``[0, sqrt(2 p)]``; a float64 scalar for unbatched input.
    """
    return _norm(2.0 * np.sin(0.5 * _angles(U, V)))


def _log_prod_cos(theta: F64) -> F64:
    # log(cos t) = log1p(-2 sin^2(t / 2)): no cancellation for small t;
    # -inf at t = pi/2 (exactly representable through the clip below).
    h = np.sin(0.5 * theta)
    with np.errstate(divide="ignore"):
        return np.sum(np.log1p(np.clip(-2.0 * h * h, -1.0, 0.0)), axis=-1)


def binet_cauchy_dist(U: ArrayLike, V: ArrayLike) -> F64:
    """Binet-Cauchy distance ``sqrt(1 - prod_i cos^2 theta_i)``.

    From the Binet-Cauchy kernel ``det(U^T V)^2 = prod cos^2 theta`` [HL08]_.
    Evaluated as ``sqrt(-expm1(2 sum log cos theta))`` with
    ``log cos t = log1p(-2 sin^2(t/2))``, so it keeps full relative accuracy
    for tiny angles (where ``1 - prod cos^2`` would cancel).

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        In ``[0, 1]``; 1 as soon as one angle is pi/2.  A float64 scalar for
        unbatched input.
    """
    return np.sqrt(-np.expm1(2.0 * _log_prod_cos(_angles(U, V))))


def fubini_study_dist(U: ArrayLike, V: ArrayLike) -> F64:
    """Fubini-Study distance ``arccos(prod_i cos theta_i) = arccos |det(U^T V)|``.

    The angle between the Plücker embeddings of the two subspaces.  Evaluated
    as ``arctan2(s, c)`` with ``c = prod cos theta`` and ``s = sqrt(1 - c^2)``
    from :func:`binet_cauchy_dist`'s stable form, so it is accurate near 0,
    where ``arccos`` alone loses half the digits.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis.
    V : array-like, shape=[..., n, p]
        Orthonormal basis; batch axes broadcast against those of ``U``.

    Returns
    -------
    d : ndarray, shape=[...], float64
        In ``[0, pi/2]``; a float64 scalar for unbatched input.
    """
    log_c = _log_prod_cos(_angles(U, V))
    c = np.exp(log_c)
    s = np.sqrt(-np.expm1(2.0 * log_c))
    return np.arctan2(s, c)
