"""Principal angles between subspaces, accurate for tiny angles and near pi/2.

The recipe is Knyazev and Argentati's sine-cosine split [KA02]_: the cosines
are the singular values of ``U^T V`` and the sines the singular values of
``(I - U U^T) V``.  A cosine near 1 carries no information about a tiny angle
(``arccos(1 - 1e-24)`` rounds to 0), and a sine near 1 carries none about an
angle near pi/2, so each angle is taken from whichever of the two is small:
the sine below pi/4 and the cosine above.  Both branches are accurate to a
few units of roundoff in absolute terms, about 1e-15 for float64 input.

All arithmetic is done in float64 whatever the input dtype; the angles are
returned as float64.

References
----------
.. [KA02] A. V. Knyazev and M. E. Argentati, "Principal angles between
   subspaces in an A-based scalar product: algorithms and perturbation
   estimates", SIAM J. Sci. Comput. 23(6), 2002.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import broadcast_batch, check_point, check_same_ambient

__all__ = ["principal_angles"]

_QUARTER_PI = np.pi / 4.0


def _as_basis_pair(U: ArrayLike, V: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    U64 = check_point(U, "U")
    V64 = check_point(V, "V")
    check_same_ambient(U64, V64, "U", "V")
    broadcast_batch(U64, V64, names=("U", "V"))
    return U64, V64


@overload
def principal_angles(
    U: ArrayLike, V: ArrayLike, *, vectors: Literal[False] = ...
) -> NDArray[np.float64]: ...


@overload
def principal_angles(
    U: ArrayLike, V: ArrayLike, *, vectors: Literal[True]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]: ...


def principal_angles(
    U: ArrayLike, V: ArrayLike, *, vectors: bool = False
) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Principal angles between the column spans of two orthonormal bases.

    Parameters
    ----------
    U : array-like, shape=[..., n, p]
        Orthonormal basis (``U^T U = I``) of the first subspace.
    V : array-like, shape=[..., n, q]
        Orthonormal basis of the second subspace.  Leading batch axes of
        ``U`` and ``V`` broadcast against each other.
    vectors : bool, default False
        Also return the principal vectors.

    Returns
    -------
    theta : ndarray, shape=[..., min(p, q)], float64
        The principal angles in ``[0, pi/2]``, sorted ascending.  Absolute
        accuracy about 1e-15 for float64 input, for tiny angles and for
        angles near pi/2 alike.
    Y : ndarray, shape=[..., n, min(p, q)], float64
        Only with ``vectors=True``: principal vectors in ``span(U)``.
    Z : ndarray, shape=[..., n, min(p, q)], float64
        Only with ``vectors=True``: principal vectors in ``span(V)``, with
        ``Y[..., i] . Z[..., i] = cos(theta[..., i])``.

    Notes
    -----
    The inputs are validated, not re-orthonormalised: a basis with
    ``max |U^T U - I|`` above ``max(1e-10, 10 sqrt(n) eps)`` (``eps`` of the
    input dtype) raises :class:`ValueError`; orthonormalise such input with
    :func:`grassbundle.as_point` first.  Cost: one ``p x q`` SVD and one thin
    ``n x q`` SVD (the latter is skipped for the batch entries with no angle
    below pi/4 when no vectors are requested), plus the two Gram matrices of
    the orthonormality check.

    Raises
    ------
    ValueError
        For a wrong number of axes, ``p > n`` or ``p < 1``, different ``n``,
        batch axes that do not broadcast, non-finite entries, or a basis that
        is not orthonormal.

    Examples
    --------
    >>> import numpy as np
    >>> from grassbundle import principal_angles
    >>> U = np.eye(3)[:, :1]
    >>> V = np.array([[np.cos(0.3)], [np.sin(0.3)], [0.0]])
    >>> float(principal_angles(U, V)[0])  # doctest: +ELLIPSIS
    0.3...
    """
    U64, V64 = _as_basis_pair(U, V)
    return _principal_angles(U64, V64, vectors=vectors)


def _principal_angles(
    U64: NDArray[np.float64], V64: NDArray[np.float64], *, vectors: bool = False
) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`principal_angles` on validated float64 bases (no checks)."""
    swapped = U64.shape[-1] < V64.shape[-1]
    if swapped:  # make U the larger basis, so that (I - U U^T) V has min(p, q) columns
        U64, V64 = V64, U64
    Ut = np.swapaxes(U64, -1, -2)
    M = Ut @ V64  # (..., p, q), p >= q
    if vectors:
        Yc, cos, Zct = np.linalg.svd(M, full_matrices=False)  # cos descending
    else:
        cos = np.linalg.svd(M, compute_uv=False)
    cos = np.clip(cos, 0.0, 1.0)
    theta = np.arccos(cos)  # ascending; accurate where cos <= 1/sqrt(2)
    small = theta < _QUARTER_PI
    if not vectors:
        # The sine branch only for the batch entries that have a small angle.
        rows = np.any(small, axis=-1)
        if not rows.any():
            return theta
        if rows.all():
            B = V64 - U64 @ M  # (I - U U^T) V
            sin = np.linalg.svd(B, compute_uv=False)  # descending
        else:
            batch = M.shape[:-2]
            Ub = np.broadcast_to(U64, (*batch, *U64.shape[-2:]))[rows]
            Vb = np.broadcast_to(V64, (*batch, *V64.shape[-2:]))[rows]
            sin = np.linalg.svd(Vb - Ub @ M[rows], compute_uv=False)
            theta = theta.copy()
            small = small[rows]
        sin_asc = np.clip(sin[..., ::-1], 0.0, 1.0)
        if rows.all():
            return np.where(small, np.arcsin(sin_asc), theta)
        theta[rows] = np.where(small, np.arcsin(sin_asc), theta[rows])
        return theta
    B = V64 - U64 @ M  # (I - U U^T) V
    _, sin, Zst = np.linalg.svd(B, full_matrices=False)  # sin descending
    sin_asc = np.clip(sin[..., ::-1], 0.0, 1.0)
    theta = np.where(small, np.arcsin(sin_asc), theta)
    # Principal vectors in span(V): right singular vectors of B for the small
    # angles, of M for the others.  Both are eigenvectors of the same
    # symmetric matrix V^T (I - U U^T) V, so the two sets are orthogonal.
    Zc = np.swapaxes(Zct, -1, -2)
    Zs = np.swapaxes(Zst, -1, -2)[..., ::-1]  # ascending sine order
    Zcoef = np.where(small[..., None, :], Zs, Zc)
    Zvec = V64 @ Zcoef
    # In span(U): for a small angle, U U^T z / cos is well conditioned
    # (cos >= 1/sqrt(2)); for a large one take the left singular vectors of M.
    with np.errstate(divide="ignore", invalid="ignore"):
        Yproj = (M @ Zcoef) / np.where(small, np.cos(theta), 1.0)[..., None, :]
    Ycoef = np.where(small[..., None, :], Yproj, Yc)
    Yvec = U64 @ Ycoef
    if swapped:
        return theta, Zvec, Yvec
    return theta, Yvec, Zvec
