"""Basis Sharing as its authors build it (input side, whitened, summed Gram)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from grassbundle import basis_sharing_input
from grassbundle.baselines import consecutive_groups


def _family(L: int, m: int, n: int, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((L, m, n))
    C = np.empty((L, n, n))
    for l in range(L):
        # anisotropic inputs, as real activations are
        X = rng.standard_normal((tokens, n)) * np.geomspace(3.0, 0.1, n)
        C[l] = X.T @ X / tokens
    return W, C


def _authors(W: np.ndarray, C: np.ndarray, d: int, k: int) -> list[np.ndarray]:
    """The authors' recipe, straightforwardly: Cholesky, stacked SVD, S^{-1}."""
    L = W.shape[0]
    out = []
    for start in range(0, L, k):
        members = range(start, min(start + k, L))
        S = np.linalg.cholesky(sum(C[l] for l in members))  # lower, S S^T = C_g
        stacked = np.concatenate([W[l] @ S for l in members], axis=0)
        _, _, Vt = np.linalg.svd(stacked, full_matrices=False)
        Vd = Vt[:d].T
        B = scipy.linalg.solve_triangular(S, Vd, trans="T", lower=True).T  # V_d^T S^{-1}
        out += [(W[l] @ S @ Vd) @ B for l in members]
    return out


@pytest.mark.parametrize(("L", "k"), [(4, 2), (5, 2), (3, 3), (3, 1)])
def test_equals_authors_cholesky_route(L: int, k: int) -> None:
    W, C = _family(L, 12, 10, tokens=200, seed=L + k)
    res = basis_sharing_input(W, C, 4, k)
    ref = _authors(W, C, 4, k)
    for l in range(L):
        # both routes are backward stable; 1e-9 relative leaves room for the
        # conditioning of S (condition number about 30 here)
        np.testing.assert_allclose(res.weight(l), ref[l], rtol=0, atol=1e-9 * np.abs(ref[l]).max())


def test_whitened_error_is_eckart_young_tail() -> None:
    """sum_l ||(W_l - A_l B) S||_F^2 over a group = tail of the stacked spectrum."""
    W, C = _family(4, 9, 8, tokens=100, seed=3)
    d, k = 3, 2
    res = basis_sharing_input(W, C, d, k)
    for start in (0, 2):
        members = [start, start + 1]
        Cg = C[members].sum(axis=0)
        S = np.linalg.cholesky(Cg)
        sv = np.linalg.svd(np.concatenate([W[l] @ S for l in members]), compute_uv=False)
        err = sum(np.sum(((W[l] - res.weight(l)) @ S) ** 2) for l in members)
        np.testing.assert_allclose(err, np.sum(sv[d:] ** 2), rtol=1e-10)


def test_shared_right_factor_and_reported_errors() -> None:
    W, C = _family(5, 7, 6, tokens=50, seed=5)
    res = basis_sharing_input(W, C, 2, 2)
    np.testing.assert_array_equal(res.groups, [0, 0, 1, 1, 2])
    assert res.right.shape == (3, 2, 6)
    assert res.left.shape == (5, 7, 2)
    for l in range(5):
        E = W[l] - res.left[l] @ res.right[res.groups[l]]
        np.testing.assert_allclose(res.frobenius_error[l], np.sum(E * E), rtol=1e-12)
        np.testing.assert_allclose(res.activation_error[l], np.trace(E @ C[l] @ E.T), rtol=1e-10)


def test_untied_identity_gram_is_truncated_svd() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 6, 5))
    C = np.broadcast_to(np.eye(5), (2, 5, 5))
    res = basis_sharing_input(W, C, 2, 1)
    for l in range(2):
        U, s, Vt = np.linalg.svd(W[l])
        ref = (U[:, :2] * s[:2]) @ Vt[:2]
        np.testing.assert_allclose(res.weight(l), ref, atol=1e-12)


def test_singular_gram_warns_and_stays_finite() -> None:
    # 3 tokens per layer, n = 8: each C_l has rank 3, the group sum rank 6 < 8
    W, C = _family(2, 6, 8, tokens=3, seed=1)
    with pytest.warns(RuntimeWarning, match="numerical rank 6 < n = 8"):
        res = basis_sharing_input(W, C, 4, 2)
    assert np.all(np.isfinite(res.left)) and np.all(np.isfinite(res.right))
    # on the range the whitened error is still the stacked spectrum's tail
    ev, Q = np.linalg.eigh(C.sum(axis=0))
    keep = ev > 1e-10 * ev[-1]
    S = Q[:, keep] * np.sqrt(ev[keep])
    sv = np.linalg.svd(np.concatenate([W[l] @ S for l in range(2)]), compute_uv=False)
    err = sum(np.sum(((W[l] - res.weight(l)) @ S) ** 2) for l in range(2))
    np.testing.assert_allclose(err, np.sum(sv[4:] ** 2), rtol=1e-8)


def test_no_warning_when_full_rank() -> None:
    W, C = _family(2, 6, 5, tokens=100, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basis_sharing_input(W, C, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank 1 <= d <= n"),
        ({"rank": 6}, "rank 1 <= d <= n"),
        ({"group_size": 4}, "group size 1 <= k <= L = 3"),
        ({"group_size": 0}, "group size"),
    ],
)
def test_bad_input(kwargs: dict[str, int], match: str) -> None:
    W, C = _family(3, 4, 5, tokens=20, seed=0)
    args = {"rank": 2, "group_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        basis_sharing_input(W, C, args["rank"], args["group_size"])


def test_bad_shapes_and_values() -> None:
    W, C = _family(2, 4, 3, tokens=20, seed=0)
    with pytest.raises(ValueError, match="W must have shape"):
        basis_sharing_input(W[0], C, 1, 1)
    with pytest.raises(ValueError, match=r"C must have shape \(L, n, n\)"):
        basis_sharing_input(W, C[:1], 1, 1)
    W = W.copy()
    W[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        basis_sharing_input(W, C, 1, 1)


def test_consecutive_groups() -> None:
    np.testing.assert_array_equal(consecutive_groups(7, 3), [0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="1 <= k <= L = 2"):
        consecutive_groups(2, 3)


def test_rank_above_gram_rank_keeps_whole_range() -> None:
    # 2 tokens, n = 6: rank-2 Gram; d = 4 > 2 keeps all of the range, zero-padded
    W, C = _family(1, 5, 6, tokens=2, seed=8)
    with pytest.warns(RuntimeWarning, match="numerical rank 2 < n = 6"):
        res = basis_sharing_input(W, C, 4, 1)
    np.testing.assert_array_equal(res.right[0, 2:], 0.0)
    # exact on the calibration inputs' span: activation error is zero to roundoff
    assert res.activation_error[0] <= 1e-12 * np.trace(W[0] @ C[0] @ W[0].T)
