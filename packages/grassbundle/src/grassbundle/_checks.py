"""Input validation shared by the Grassmann modules (private).

Every public function of :mod:`grassbundle.grassmann`, :mod:`grassbundle.angles`,
:mod:`grassbundle.distances` and :mod:`grassbundle.means` converts its inputs to
float64 here and raises a :class:`ValueError` that names the offending values
and the fix, instead of letting numpy fail deep inside a factorisation.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "as_float64",
    "broadcast_batch",
    "check_np",
    "check_point",
    "check_point_pair",
    "check_same_ambient",
    "check_same_point_shape",
    "check_tangent",
    "check_tangent_shape",
    "default_orthonormality_tol",
]

#: floor of the default orthonormality tolerance (see
#: :func:`default_orthonormality_tol`)
ORTHONORMALITY_FLOOR = 1e-10
#: ceiling of the default orthonormality tolerance, whatever the dtype and n
#: (see :func:`default_orthonormality_tol`)
ORTHONORMALITY_CEILING = 1e-2


def check_np(n: int, p: int) -> None:
    """Raise unless ``n >= p >= 1`` (the dimensions of Gr(p, n))."""
    if not (isinstance(n, int | np.integer) and isinstance(p, int | np.integer)):
        raise ValueError(f"n and p must be integers. Values supplied were n = {n!r} and p = {p!r}")
    if p < 1 or p > n:
        raise ValueError(f"Need n >= p >= 1. Values supplied were n = {n} and p = {p}")


def as_float64(X: ArrayLike, name: str, *, min_ndim: int = 2) -> NDArray[np.float64]:
    """``X`` as a finite float64 array with at least ``min_ndim`` axes."""
    A = np.asarray(X)
    if A.dtype == np.bool_ or not (
        np.issubdtype(A.dtype, np.floating) or np.issubdtype(A.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a real floating array; got dtype {A.dtype}")
    if A.ndim < min_ndim:
        shape = "(..., n, p)" if min_ndim == 2 else f"at least {min_ndim} axes"
        raise ValueError(f"{name} must have shape {shape}; got shape {A.shape} ({A.ndim} axes)")
    A64 = A.astype(np.float64, copy=False)
    finite = np.isfinite(A64)
    if not finite.all():
        bad = int(A64.size - np.count_nonzero(finite))
        raise ValueError(
            f"{name} must have finite entries; found {bad} NaN or inf entries of {A64.size}"
        )
    return A64


def default_orthonormality_tol(dtype: np.dtype, n: int) -> float:
    """Default bound on ``max |U^T U - I|`` for a basis of ``n``-vectors.

    ``min(max(1e-10, 10 * sqrt(n) * eps), 1e-2)`` with ``eps`` the machine
    epsilon of the input dtype (float64 for integer input).  Rounding a float64
    orthonormal basis leaves ``max |U^T U - I|`` at a few ``sqrt(n) * eps``
    (1e-14 for ``n = 2048``), far below the 1e-10 floor; a float32 basis
    computed in float32 carries its own roundoff, about ``sqrt(n) * 1.2e-7``,
    which the ``10 * sqrt(n) * eps`` term admits.

    The ceiling 1e-2 binds only for low precision (float16 from ``n = 2``;
    float32 only beyond ``n = 7e7``).  Rounding an exactly orthonormal basis to
    a dtype with unit roundoff ``u = eps / 2`` moves every entry of ``U^T U``
    by at most ``2u + u^2`` whatever ``n`` (Cauchy-Schwarz), i.e. at most
    ``9.8e-4`` for float16, so a float16 copy of an orthonormal basis passes
    with a factor 10 to spare, while a basis scaled by ``s`` has ``|s^2 - 1|``
    on the diagonal and is rejected at every ``n`` once ``s > 1.005`` (1.2
    gives 0.44).  Without the ceiling, ``10 * sqrt(n) * eps`` would reach 0.625
    for float16 at ``n = 4096`` and accept a basis scaled by 1.2.
    """
    eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 2.0**-52
    return min(max(ORTHONORMALITY_FLOOR, 10.0 * math.sqrt(n) * eps), ORTHONORMALITY_CEILING)


def check_point(X: ArrayLike, name: str, *, atol: float | None = None) -> NDArray[np.float64]:
    """Validate an orthonormal basis of shape ``(..., n, p)``; return it in float64.

    Raises :class:`ValueError` for a wrong number of axes, ``p > n`` or
    ``p < 1``, non-finite entries, or ``max |X^T X - I| > atol`` (default
    :func:`default_orthonormality_tol`).
    """
    A = np.asarray(X)
    A64 = as_float64(A, name)
    n, p = A64.shape[-2:]
    if p < 1 or p > n:
        raise ValueError(
            f"{name} must have shape (..., n, p) with n >= p >= 1. "
            f"Values supplied were n = {n} and p = {p} (shape {A64.shape})"
        )
    tol = default_orthonormality_tol(A.dtype, n) if atol is None else float(atol)
    if A64.size:
        G = np.swapaxes(A64, -1, -2) @ A64
        G[..., np.arange(p), np.arange(p)] -= 1.0
        err = np.abs(G).max(axis=(-2, -1))
        worst = float(err.max())
        if worst > tol:
            where = ""
            if err.ndim:
                idx = np.unravel_index(int(np.argmax(err)), err.shape)
                where = f" (worst at batch index {tuple(int(i) for i in idx)})"
            raise ValueError(
                f"{name} is not an orthonormal basis: max |{name}^T {name} - I| = {worst:.3g}"
                f"{where} exceeds the tolerance {tol:.3g}; orthonormalise it first with "
                f"grassbundle.as_point({name}, orthonormalize=True)"
            )
    return A64


def check_same_ambient(U: NDArray[np.float64], V: NDArray[np.float64], u: str, v: str) -> None:
    """Raise unless ``U`` and ``V`` are bases in the same ``R^n``."""
    if U.shape[-2] != V.shape[-2]:
        raise ValueError(
            f"{u} and {v} must live in the same ambient space R^n; "
            f"got n = {U.shape[-2]} ({u}) and n = {V.shape[-2]} ({v})"
        )


def check_same_point_shape(U: NDArray[np.float64], V: NDArray[np.float64], u: str, v: str) -> None:
    """Raise unless ``U`` and ``V`` are points of the same Gr(p, n)."""
    check_same_ambient(U, V, u, v)
    if U.shape[-1] != V.shape[-1]:
        raise ValueError(
            f"{u} and {v} must be points of the same Gr(p, n); "
            f"got p = {U.shape[-1]} ({u}) and p = {V.shape[-1]} ({v})"
        )


def check_tangent_shape(U: NDArray[np.float64], X: NDArray[np.float64], u: str, x: str) -> None:
    """Raise unless the tangent array ``X`` has the matrix shape ``(n, p)`` of ``U``."""
    if U.shape[-2:] != X.shape[-2:]:
        raise ValueError(
            f"{x} must have the matrix shape of {u}, (..., {U.shape[-2]}, {U.shape[-1]}); "
            f"got shape {X.shape}"
        )


def broadcast_batch(*arrays: NDArray[np.float64], names: tuple[str, ...]) -> tuple[int, ...]:
    """The broadcast batch shape of ``(..., n, p)`` arrays, or a clear error."""
    try:
        return tuple(np.broadcast_shapes(*(a.shape[:-2] for a in arrays)))
    except ValueError:
        shapes = ", ".join(f"{nm} {a.shape}" for nm, a in zip(names, arrays, strict=True))
        raise ValueError(f"batch axes do not broadcast: {shapes}") from None


def check_point_pair(
    U: ArrayLike, V: ArrayLike, *, same_p: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate bases ``U`` and ``V`` with broadcastable batch axes, in one ``R^n``.

    With ``same_p`` they must be points of the same Gr(p, n); without, only
    the ambient dimension must agree (subspaces of different dimensions).
    """
    U64 = check_point(U, "U")
    V64 = check_point(V, "V")
    if same_p:
        check_same_point_shape(U64, V64, "U", "V")
    else:
        check_same_ambient(U64, V64, "U", "V")
    broadcast_batch(U64, V64, names=("U", "V"))
    return U64, V64


def check_tangent(
    U: ArrayLike, X: ArrayLike, name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate a point ``U`` and an ``(..., n, p)`` array ``X`` (called ``name``) beside it."""
    U64 = check_point(U, "U")
    X64 = as_float64(X, name)
    check_tangent_shape(U64, X64, "U", name)
    broadcast_batch(U64, X64, names=("U", name))
    return U64, X64
