"""Principal angles between subspaces, accurate for tiny angles and near pi/2.

The recipe is Knyazev and Argentati's sine-cosine split [KA02]_: the cosines
are the singular values of ``U^T V`` and the sines the singular values of
``(I - U U^T) V``.  A cosine near 1 carries no information about a tiny angle
(``arccos(1 - 1e-24)`` rounds to 0), and a sine near 1 carries none about an
angle near pi/2, so each angle is taken from whichever of the two is small:
the sine below pi/4 and the cosine above.  Both branches are accurate to a
few units of roundoff in absolute terms, about 1e-15 for float64 input.
Principal vectors come from the same two SVDs; for them the switch moves to
the widest gap between consecutive angles in [pi/6, pi/3], so that a cluster
of equal angles is never split between two unrelated bases.

All arithmetic is done in float64 whatever the input dtype; the angles are
returned as float64.  Low-precision input (float16, float32) is taken as
stored: the angles are those between the spans of the rounded bases, with an
extra error of about ``||U^T U - I||_2`` (the stored basis's departure from
orthonormality, at most ``p`` times the tolerance of
:func:`grassbundle.as_point`).  A float64 basis rounded to float16 departs by
at most 9.8e-4 per entry at any ``n`` (about 1e-4 in practice), so its angles
are good to about 1e-4 rad, not 1e-15; a basis further from orthonormal than
1e-2 is rejected whatever its dtype and ``n``.

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

from ._checks import check_point_pair

__all__ = ["principal_angles"]

_QUARTER_PI = np.pi / 4.0


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
    ``max |U^T U - I|`` above ``min(max(1e-10, 10 sqrt(n) eps), 1e-2)``
    (``eps`` of the input dtype) raises :class:`ValueError`; orthonormalise
    such input with :func:`grassbundle.as_point` first.  Low-precision input
    gets angles accurate to about its own departure from orthonormality,
    ``||U^T U - I||_2`` (about 1e-4 rad for a float64 basis rounded to
    float16; see the module docstring), not 1e-15.  Cost: one ``p x q`` SVD and one thin
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
    U64, V64 = check_point_pair(U, V, same_p=False)
    return principal_angles_unchecked(U64, V64, vectors=vectors)


def principal_angles_unchecked(
    U64: NDArray[np.float64], V64: NDArray[np.float64], *, vectors: bool = False
) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`principal_angles` on validated float64 bases (no checks)."""
    swapped = U64.shape[-1] < V64.shape[-1]
    if swapped:  # make U the larger basis, so that (I - U U^T) V has min(p, q) columns
        U64, V64 = V64, U64
    if vectors:
        theta, Ycoef, Zcoef, _ = principal_frames(U64, V64)
        Yvec = U64 @ Ycoef
        Zvec = V64 @ Zcoef
        if swapped:
            return theta, Zvec, Yvec
        return theta, Yvec, Zvec
    M = np.swapaxes(U64, -1, -2) @ V64  # (..., p, q), p >= q
    cos = np.clip(np.linalg.svd(M, compute_uv=False), 0.0, 1.0)  # descending
    theta = np.arccos(cos)  # ascending; accurate where cos <= 1/sqrt(2)
    small = theta < _QUARTER_PI
    # The sine branch only for the batch entries that have a small angle.
    rows = np.any(small, axis=-1)
    if not rows.any():
        return theta
    if rows.all():
        sin = np.linalg.svd(V64 - U64 @ M, compute_uv=False)  # (I - U U^T) V; descending
        return np.where(small, np.arcsin(np.clip(sin[..., ::-1], 0.0, 1.0)), theta)
    batch = M.shape[:-2]
    Ub = np.broadcast_to(U64, (*batch, *U64.shape[-2:]))[rows]
    Vb = np.broadcast_to(V64, (*batch, *V64.shape[-2:]))[rows]
    sin = np.linalg.svd(Vb - Ub @ M[rows], compute_uv=False)
    theta = theta.copy()
    theta[rows] = np.where(small[rows], np.arcsin(np.clip(sin[..., ::-1], 0.0, 1.0)), theta[rows])
    return theta


def _sine_branch(theta: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Which angles (ascending, last axis) to take from the sine branch, for vectors.

    Angles alone may switch branches at pi/4.  Principal *vectors* come from
    two different SVDs, and a cluster of (nearly) equal angles split between
    them would get two unrelated bases of its subspace.  So the switch is put
    in the widest gap between consecutive angles at which both branches are
    still accurate: between pi/6 and pi/3 (there ``1 / sin`` and ``1 / cos``,
    the error amplification of arccos and arcsin, are at most 2).
    """
    q = theta.shape[-1]
    pad = np.full((*theta.shape[:-1], 1), np.inf)
    below = np.concatenate([-pad, theta], axis=-1)  # the last sine-branch angle
    above = np.concatenate([theta, pad], axis=-1)  # the first cosine-branch angle
    ok = (above >= np.pi / 6) & (below <= np.pi / 3)
    k = np.argmax(np.where(ok, above - below, -1.0), axis=-1)
    return np.arange(q) < k[..., None]


def principal_frames(
    U64: NDArray[np.float64], V64: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Angles and principal frames of bases with ``p >= q`` (no checks).

    Returns ``theta`` (ascending, shape ``(..., q)``), ``Ycoef`` (``p x q``)
    and ``Zcoef`` (``q x q``) with the principal vectors ``Y = U Ycoef`` and
    ``Z = V Zcoef``, and ``Q`` (``n x q``), unit vectors orthogonal to
    ``span(U)`` with ``Z = Y cos(theta) + Q sin(theta)`` column by column.
    For the sine-branch angles ``Q`` and ``Z`` are the singular vectors of
    ``(I - U U^T) V``, so they are accurate for tiny angles, and
    ``Q diag(theta) Ycoef^T`` is the logarithm ``log_U(V)`` when ``p = q``.
    """
    M = np.swapaxes(U64, -1, -2) @ V64  # (..., p, q), p >= q
    Yc, cos, Zct = np.linalg.svd(M, full_matrices=False)  # cos descending
    theta = np.arccos(np.clip(cos, 0.0, 1.0))  # ascending
    small = _sine_branch(theta)
    B = V64 - U64 @ M  # (I - U U^T) V
    Qs, sin, Zst = np.linalg.svd(B, full_matrices=False)  # sin descending
    Qs = Qs[..., ::-1]  # ascending sine order
    Zs = np.swapaxes(Zst, -1, -2)[..., ::-1]
    sin_asc = np.clip(sin[..., ::-1], 0.0, 1.0)
    theta = np.where(small, np.arcsin(sin_asc), theta)
    # In span(V): right singular vectors of B for the sine-branch angles, of
    # M for the others (eigenvectors of the same symmetric V^T (I - U U^T) V).
    Zc = np.swapaxes(Zct, -1, -2)
    mask = small[..., None, :]
    Zcoef = np.where(mask, Zs, Zc)
    # In span(U): for a sine-branch angle (below pi/3), M z / cos is well
    # conditioned (cos >= 1/2); for the others, the left singular vectors of M.
    with np.errstate(divide="ignore", invalid="ignore"):
        Yproj = (M @ Zcoef) / np.where(small, np.cos(theta), 1.0)[..., None, :]
    Ycoef = np.where(mask, Yproj, Yc)
    # Orthogonal to span(U): left singular vectors of B for the sine branch;
    # for the others (angles above pi/6, so |B z| >= 1/2) B z normalised.
    BZ = B @ Zc
    norm = np.sqrt(np.sum(BZ * BZ, axis=-2, keepdims=True))
    Q = np.where(mask, Qs, BZ / np.where(norm > 0, norm, 1.0))
    return theta, Ycoef, Zcoef, Q
