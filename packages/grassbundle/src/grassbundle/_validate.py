"""Input validation shared by the bundle-side modules (private).

:mod:`grassbundle.bundle`, :mod:`grassbundle.refit`,
:mod:`grassbundle.allocation`, :mod:`grassbundle.baselines`,
:mod:`grassbundle.coupling` and :mod:`grassbundle.factorise` take weight
stacks, covariance stacks and scalar knobs; each check here raises a
:class:`ValueError` whose one-line message names the offending value.  (The
Grassmann modules validate points in :mod:`grassbundle._checks`.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

#: Relative tolerance for the symmetry of a covariance, ``||C - C^T||_max <=
#: tol * ||C||_max``: covariances accumulated in float64 are symmetric to
#: roundoff; anything larger is a wrong input, not noise.
SYMMETRY_RTOL = 1e-8
#: Relative tolerance for positive semi-definiteness: the smallest eigenvalue
#: may be as low as ``-tol * lambda_max`` (roundoff in an accumulated Gram is
#: about ``n * eps * lambda_max``; 1e-8 leaves ample room for n up to 1e6).
#: Slightly negative eigenvalues within the tolerance are clipped to zero.
PSD_RTOL = 1e-8

_TINY = float(np.finfo(np.float64).tiny)


def is_integer(x: Any) -> bool:
    """Whether ``x`` is a Python or numpy integer (booleans are not)."""
    return not isinstance(x, bool | np.bool_) and isinstance(x, int | np.integer)


def nonnegative(value: Any, name: str, *, allow_inf: bool, want: str, bad: str) -> float:
    """``value`` as a float ``>= 0`` (finite unless ``allow_inf``).

    The messages read ``"{name} must be {want}; got {name} = ..."`` for a
    value that is not a number and ``"{name} must be {bad}; ..."`` for NaN, a
    negative value, or (without ``allow_inf``) an infinite one.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {want}; got {name} = {value!r}") from None
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be {bad}; got {name} = {value!r}")
    return v


def finite(A: NDArray[Any], name: str) -> None:
    """Raise unless every entry of ``A`` is finite."""
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} must have finite entries; found NaN or inf")


def family(W: ArrayLike) -> F64:
    """A family of weights: a real, finite ``(L, m, n)`` array with ``L, m, n >= 1``, in float64."""
    A = np.asarray(W)
    if A.ndim != 3:
        raise ValueError(f"W must have shape (L, m, n); got shape {A.shape}")
    if not (np.issubdtype(A.dtype, np.floating) or np.issubdtype(A.dtype, np.integer)):
        raise ValueError(f"W must be a real array; got dtype {A.dtype}")
    W64 = np.ascontiguousarray(A, dtype=np.float64)
    if min(W64.shape) < 1:
        raise ValueError(f"W must have L, m, n >= 1; got shape {W64.shape}")
    finite(W64, "W")
    return W64


def weight_stack(W: ArrayLike, name: str = "W") -> F64:
    """One map ``(m, n)`` or a stack ``(k, m, n)`` of finite weights, as ``(k, m, n)`` float64."""
    W64 = np.asarray(W, dtype=np.float64)
    if W64.ndim == 2:
        W64 = W64[None]
    if W64.ndim != 3 or min(W64.shape) < 1:
        raise ValueError(f"{name} must have shape (m, n) or (k, m, n); got shape {np.shape(W)}")
    finite(W64, name)
    return np.ascontiguousarray(W64)


def check_symmetric(C: F64, label: str, fix: str = "symmetrise it") -> None:
    """Raise unless ``max |C - C^T| <= SYMMETRY_RTOL * max |C|``; the message ends with ``fix``."""
    scale = max(float(np.max(np.abs(C))), _TINY)
    asym = float(np.max(np.abs(C - C.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{label} must be symmetric: max |C - C^T| = {asym:.3e} exceeds "
            f"{SYMMETRY_RTOL:g} * max|C| = {SYMMETRY_RTOL * scale:.3e}; {fix}"
        )


def covariance_stack(
    C: ArrayLike, k: int, n: int, name: str, *, psd: bool, matrix: bool = True
) -> F64:
    """Covariances of ``k`` maps with ``n`` inputs as a finite ``(k, n, n)`` float64 stack.

    ``matrix=True`` also accepts one ``(n, n)`` matrix for ``k = 1``.  With
    ``psd`` every matrix must be symmetric (:func:`check_symmetric`) and is
    returned symmetrised, ``(C + C^T) / 2``; positive semi-definiteness
    itself is tested where a factorisation of ``C`` is formed anyway
    (:func:`eig_psd`, :func:`sqrt_factor`).
    """
    C64 = np.asarray(C, dtype=np.float64)
    if matrix and C64.ndim == 2:
        C64 = C64[None]
    if C64.shape != (k, n, n):
        if matrix:
            raise ValueError(
                f"{name} must have shape (n, n) = ({n}, {n}) or (k, n, n) = ({k}, {n}, {n}); "
                f"got shape {np.shape(C)}"
            )
        raise ValueError(f"{name} must have shape (L, n, n) = {(k, n, n)}; got shape {C64.shape}")
    finite(C64, name)
    if not psd:
        return np.ascontiguousarray(C64)
    out = np.empty_like(C64)
    for l in range(k):
        check_symmetric(C64[l], f"{name}[{l}]")
        out[l] = 0.5 * (C64[l] + C64[l].T)
    return out


def eig_psd(C: F64, name: str) -> tuple[F64, F64]:
    """Eigenvalues (ascending, clipped at 0) and eigenvectors of symmetric PSD ``C``.

    Raises unless the smallest eigenvalue is at least ``-PSD_RTOL *
    lambda_max`` (at least 0 when ``lambda_max <= 0``).
    """
    c, Q = np.linalg.eigh(C)
    top = max(float(c[-1]), 0.0)
    if c[0] < -PSD_RTOL * top:
        raise ValueError(
            f"{name} must be positive semi-definite: smallest eigenvalue {c[0]:.3e} < "
            f"-{PSD_RTOL:g} * largest ({top:.3e})"
        )
    return np.maximum(c, 0.0), Q


def sqrt_factor(C: F64, name: str) -> F64:
    """``R`` with ``R R^T = C`` for a symmetric PSD ``C``: Cholesky, else eigh on the range.

    A positive definite ``C`` has a Cholesky factor (``n x n``); otherwise the
    eigendecomposition decides (:func:`eig_psd`) and ``R = Q_r c_r^{1/2}`` on
    the positive eigenvalues (``n x r``).
    """
    Cs = 0.5 * (C + C.T)
    try:
        return np.asarray(np.linalg.cholesky(Cs))
    except np.linalg.LinAlgError:
        pass
    c, Q = eig_psd(Cs, name)
    keep = c > 0
    return np.asarray(Q[:, keep] * np.sqrt(c[keep]))
