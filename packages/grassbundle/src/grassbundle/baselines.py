"""Baselines as their authors build them, for comparison with the bundle.

Basis Sharing [WZM24]_ shares one basis across a group of consecutive layers
*on the input side*, in the space whitened by the group's summed calibration
Gram.  In the PyTorch orientation ``y = W x`` with ``W_l`` of shape ``(m, n)``
and calibration covariances ``C_l`` of shape ``(n, n)``, for a group ``g``:

1. ``C_g = sum_{l in g} C_l`` and a square root ``S`` with ``S S^T = C_g``;
2. the SVD of the vertically stacked whitened weights
   ``[W_l S]_{l in g} = U Sigma V^T`` (the authors stack ``S^T W_l^T``
   horizontally, which is the transpose of the same matrix);
3. the shared right factor ``B_g = V_d^T S^+`` (``d x n``) and the per-layer
   left factors ``A_l = W_l S V_d`` (``m x d``), so ``W_l ~ A_l B_g``.

``S`` is taken from the eigendecomposition ``C_g = Q Lambda Q^T`` as
``S = Q_r Lambda_r^{1/2}`` on the numerical range of ``C_g`` (eigenvalues above
``rtol * lambda_max``).  For a nonsingular ``C_g`` this gives exactly the
factors of the Cholesky route (any two square roots differ by an orthogonal
factor that cancels in ``V_d^T S^{-1}``); for a singular ``C_g`` (fewer
calibration tokens than ``n``, or dead input directions) it is the
pseudo-inverse on the range, with no jitter: the right factor has no component
in directions the calibration inputs never visited, and a warning says so.

References
----------
.. [WZM24] J. Wang, Y. Chen, I. Lin, B. Li, G. L. Zhang, "Basis Sharing:
   Cross-Layer Parameter Sharing for Large Language Model Compression",
   arXiv 2410.03765, 2024.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray

from . import _validate
from .bundle import group_index

__all__ = ["InputSharing", "basis_sharing_input", "consecutive_groups"]

#: eigenvalues of the group Gram at or below ``RTOL * lambda_max`` are treated
#: as zero (about 1e3 units of float64 roundoff relative to the largest one)
RTOL = 1e-13


def consecutive_groups(L: int, k: int) -> NDArray[np.intp]:
    """Basis Sharing's groups: ``k`` consecutive layers each, the last one shorter.

    The layer-to-group map of :func:`grassbundle.group_index`, with the
    arguments checked as a group size.

    Parameters
    ----------
    L : int
        Number of layers.
    k : int
        Group size, ``1 <= k <= L``; the last group takes the remainder.

    Returns
    -------
    groups : ndarray of int, shape=[L]
        ``groups[l] = l // k``.
    """
    if not isinstance(L, int | np.integer) or L < 1:
        raise ValueError(f"need L >= 1 layers; got L = {L}")
    if not isinstance(k, int | np.integer) or not 1 <= k <= L:
        raise ValueError(f"need a group size 1 <= k <= L = {L}; got k = {k}")
    return group_index(int(L), int(k))


@dataclass(frozen=True)
class InputSharing:
    """Input-side shared factorisation ``W_l ~ A_l B_{g(l)}``.

    Attributes
    ----------
    left : ndarray, shape=[L, m, d]
        Per-layer left factors ``A_l = W_l S V_d``.
    right : ndarray, shape=[G, d, n]
        Shared right factors ``B_g = V_d^T S^+``, one per group.
    groups : ndarray of int, shape=[L]
        Layer -> group labels.
    frobenius_error : ndarray, shape=[L]
        ``||W_l - A_l B_g||_F^2``.
    activation_error : ndarray, shape=[L]
        ``tr((W_l - A_l B_g) C_l (W_l - A_l B_g)^T)``.
    """

    left: NDArray[np.float64]
    right: NDArray[np.float64]
    groups: NDArray[np.intp]
    frobenius_error: NDArray[np.float64]
    activation_error: NDArray[np.float64]

    def weight(self, l: int) -> NDArray[np.float64]:
        """The compressed weight of layer ``l``, shape ``(m, n)``."""
        return self.left[l] @ self.right[self.groups[l]]


def basis_sharing_input(W: ArrayLike, C: ArrayLike, rank: int, group_size: int) -> InputSharing:
    """Basis Sharing as its authors build it (shared input-side basis per group).

    Parameters
    ----------
    W : array-like, shape=[L, m, n]
        The family's weights, PyTorch orientation ``y = W x``.
    C : array-like, shape=[L, n, n]
        Calibration covariances of the inputs of each ``W_l`` (symmetric PSD).
    rank : int
        Shared rank ``d``, ``1 <= d <= n``.
    group_size : int
        Layers per group (consecutive, the last group takes the remainder),
        ``1 <= group_size <= L``.

    Returns
    -------
    InputSharing
        Factors, groups and per-layer Frobenius and activation errors.

    Warns
    -----
    RuntimeWarning
        When a group's summed Gram is numerically singular; the right factor
        is then built on its range only (see the module docstring).  When
        its numerical rank ``r`` is below ``d``, the whole range is kept and
        the last ``d - r`` rows of the right factor (columns of the left
        factors) are zero.
    """
    W64 = np.asarray(W, dtype=np.float64)
    C64 = np.asarray(C, dtype=np.float64)
    if W64.ndim != 3:
        raise ValueError(f"W must have shape (L, m, n); got shape {W64.shape}")
    L, m, n = W64.shape
    if C64.shape != (L, n, n):
        raise ValueError(f"C must have shape (L, n, n) = {(L, n, n)}; got shape {C64.shape}")
    if not (np.all(np.isfinite(W64)) and np.all(np.isfinite(C64))):
        raise ValueError("W and C must have finite entries; found NaN or inf")
    if not _validate.is_integer(rank) or not 1 <= rank <= n:
        raise ValueError(f"need a rank 1 <= d <= n = {n}; got d = {rank}")
    d = int(rank)
    groups = consecutive_groups(L, group_size)
    G = int(groups[-1]) + 1
    left = np.empty((L, m, d))
    right = np.empty((G, d, n))
    for g in range(G):
        members = np.flatnonzero(groups == g)
        Cg = C64[members].sum(axis=0)
        Cg = 0.5 * (Cg + Cg.T)
        evals, Q = scipy.linalg.eigh(Cg)
        top = evals[-1] if evals[-1] > 0 else 0.0
        keep = evals > RTOL * top
        r = int(keep.sum())
        if r < n:
            warnings.warn(
                f"basis sharing: the summed calibration Gram of group {g} (layers "
                f"{members.tolist()}) has numerical rank {r} < n = {n}; the shared basis "
                "is built on its range (pseudo-inverse, no jitter)",
                RuntimeWarning,
                stacklevel=2,
            )
        root = np.sqrt(evals[keep])  # Lambda_r^{1/2}
        S = Q[:, keep] * root  # (n, r), S S^T = C_g on its range
        stacked = np.concatenate([W64[l] @ S for l in members], axis=0)  # (k m, r)
        _, _, Vt = scipy.linalg.svd(stacked, full_matrices=False, lapack_driver="gesdd")
        # with d > r the whole range is kept and the extra factor rows are zero
        e = min(d, Vt.shape[0])
        Vd = Vt[:e].T  # (r, e)
        # B_g = V_d^T S^+ with S^+ = Lambda_r^{-1/2} Q_r^T (range only)
        right[g] = 0.0
        right[g, :e] = (Vd.T / root) @ Q[:, keep].T
        for l in members:
            left[l] = 0.0
            left[l, :, :e] = W64[l] @ S @ Vd
    frob = np.empty(L)
    act = np.empty(L)
    for l in range(L):
        E = W64[l] - left[l] @ right[groups[l]]
        frob[l] = float(np.sum(E * E))
        act[l] = float(np.sum((E @ C64[l]) * E))
    return InputSharing(
        left=left, right=right, groups=groups, frobenius_error=frob, activation_error=act
    )
