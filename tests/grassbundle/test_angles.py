"""Principal angles: accuracy at known angles, vectors, invariances, errors.

Tolerances: products and SVDs of n x p orthonormal matrices with n <= 40 carry
roundoff of a few units of 1e-16 per entry; ``ATOL = 1e-13`` leaves a margin of
about 100x over what is observed while still failing for any arccos-only
shortcut (error about 1e-8 near 0) or any sign/ordering mistake.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from grassbundle import principal_angles, random_point
from hypothesis import given
from hypothesis import strategies as st

ATOL = 1e-13
KNOWN = [0.0, 1e-12, 1e-8, 0.3, np.pi / 4, np.pi / 2 - 1e-9, np.pi / 2]


@st.composite
def dims(draw: st.DrawFn, max_n: int = 12) -> tuple[int, int]:
    """(n, p) including p = 1, p = n/2 and p = n - 1."""
    n = draw(st.integers(2, max_n))
    p = draw(st.sampled_from([1, max(1, n // 2), n - 1, draw(st.integers(1, n))]))
    return n, p


def with_angles(theta: np.ndarray, n: int, rng: np.random.Generator) -> tuple:
    """Bases U, V of R^n (n >= 2p) whose principal angles are exactly ``theta``.

    U = e_1..e_p and V_i = cos t_i e_i + sin t_i e_{p+i}, both rotated by the
    same Haar orthogonal O: rotation preserves angles, and makes every entry
    nonzero so that no coordinate shortcut can be taken.
    """
    p = len(theta)
    U = np.zeros((n, p))
    V = np.zeros((n, p))
    idx = np.arange(p)
    U[idx, idx] = 1.0
    V[idx, idx] = np.cos(theta)
    V[p + idx, idx] = np.sin(theta)
    O = random_point(n, n, rng=rng)
    return O @ U, O @ V


@pytest.mark.parametrize("t", KNOWN)
def test_known_angles_to_roundoff(t: float) -> None:
    rng = np.random.default_rng(0)
    theta = np.array([t, 0.3, 1e-5])
    U, V = with_angles(theta, 9, rng)
    got = principal_angles(U, V)
    # rotation by O adds up to ~1e-16 per entry, i.e. ~1e-16 in the angles
    np.testing.assert_allclose(got, np.sort(theta), rtol=0, atol=2e-15)


def test_arccos_only_would_fail_here() -> None:
    """The accuracy cases above are ones an arccos-only method gets wrong."""
    rng = np.random.default_rng(1)
    U, V = with_angles(np.array([1e-12]), 6, rng)
    s = np.linalg.svd(U.T @ V, compute_uv=False)
    naive = np.arccos(np.clip(s, 0, 1))
    assert abs(naive[0] - 1e-12) > 1e-9  # arccos(1 - 5e-25) is 0 or ~1e-8
    assert abs(principal_angles(U, V)[0] - 1e-12) < 2e-15


def test_same_subspace_two_bases_is_zero() -> None:
    rng = np.random.default_rng(2)
    U = random_point(40, 7, rng=rng)
    Q = random_point(7, 7, rng=rng)
    assert np.max(principal_angles(U, U @ Q)) < 1e-14


def test_orthogonal_subspaces_are_pi_over_2() -> None:
    U = np.eye(6)[:, :3]
    V = np.eye(6)[:, 3:]
    np.testing.assert_allclose(principal_angles(U, V), np.full(3, np.pi / 2), rtol=0, atol=1e-15)


@given(dims(), st.integers(0, 2**32 - 1))
def test_matches_scipy(nm: tuple[int, int], seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    q = int(rng.integers(1, n + 1))
    U = random_point(n, p, rng=rng)
    V = random_point(n, q, rng=rng)
    ref = np.sort(scipy.linalg.subspace_angles(U, V))
    ours = principal_angles(U, V)
    # cosines to roundoff; angles to scipy's own arccos floor sqrt(2 eps) =
    # 1.5e-8, which it hits for small angles next to large ones (its arcsin
    # mask is applied in reverse order; see test_peers.py)
    np.testing.assert_allclose(np.cos(ours), np.cos(ref), rtol=0, atol=ATOL)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-8)


@given(dims(), st.integers(0, 2**32 - 1))
def test_range_sorted_and_symmetric(nm: tuple[int, int], seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    t = principal_angles(U, V)
    assert t.shape == (p,) and t.dtype == np.float64
    assert np.all(t >= 0) and np.all(t <= np.pi / 2)
    assert np.all(np.diff(t) >= 0)
    np.testing.assert_allclose(principal_angles(V, U), t, rtol=0, atol=ATOL)


@given(dims(), st.integers(0, 2**32 - 1))
def test_invariant_under_change_of_basis_and_rotation(nm: tuple[int, int], seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    Q1 = random_point(p, p, rng=rng)
    Q2 = random_point(p, p, rng=rng)
    O = random_point(n, n, rng=rng)
    t = principal_angles(U, V)
    np.testing.assert_allclose(principal_angles(U @ Q1, V @ Q2), t, rtol=0, atol=ATOL)
    np.testing.assert_allclose(principal_angles(O @ U, O @ V), t, rtol=0, atol=ATOL)


@given(dims(), st.integers(0, 2**32 - 1))
def test_principal_vectors(nm: tuple[int, int], seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    q = int(rng.integers(1, n + 1))
    U = random_point(n, p, rng=rng)
    V = random_point(n, q, rng=rng)
    t, Y, Z = principal_angles(U, V, vectors=True)
    r = min(p, q)
    assert Y.shape == (n, r) and Z.shape == (n, r)
    # orthonormal, inside the right spans, and Y^T Z = diag(cos theta)
    np.testing.assert_allclose(Y.T @ Y, np.eye(r), atol=1e-12)
    np.testing.assert_allclose(Z.T @ Z, np.eye(r), atol=1e-12)
    np.testing.assert_allclose(U @ (U.T @ Y), Y, atol=1e-12)
    np.testing.assert_allclose(V @ (V.T @ Z), Z, atol=1e-12)
    np.testing.assert_allclose(Y.T @ Z, np.diag(np.cos(t)), atol=1e-12)


def test_principal_vectors_for_tiny_angles() -> None:
    """Sine-branch vectors: (Z - Y cos t) / sin t is a unit vector orthogonal to U."""
    rng = np.random.default_rng(3)
    theta = np.array([1e-9, 2e-9, 0.5])
    U, V = with_angles(theta, 8, rng)
    t, Y, Z = principal_angles(U, V, vectors=True)
    np.testing.assert_allclose(t, theta, rtol=0, atol=2e-15)
    Qv = (Z - Y * np.cos(t)) / np.sin(t)
    np.testing.assert_allclose(np.linalg.norm(Qv, axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(U.T @ Qv, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "theta",
    [
        [np.pi / 4] * 4,  # one cluster exactly at the pi/4 switch of the angle formula
        [np.pi / 4 - 1e-12, np.pi / 4 + 1e-12, np.pi / 4, 0.1, 1.5],
        [np.pi / 6] * 3 + [np.pi / 3] * 3,
        list(np.linspace(np.pi / 6, np.pi / 3, 8)),
        [np.pi / 2 - 1e-8, np.pi / 2 - 2e-8, 1e-9, 2e-9],
    ],
)
def test_principal_vectors_for_clusters_of_equal_angles(theta: list[float]) -> None:
    """Sine- and cosine-branch vectors come from two SVDs; a cluster of equal
    angles must not be split between them (it would get two unrelated bases
    of its subspace, and Y would not be orthonormal: O(1) errors)."""
    U, V = with_angles(np.array(theta), 2 * len(theta) + 3, np.random.default_rng(6))
    t, Y, Z = principal_angles(U, V, vectors=True)
    r = len(theta)
    np.testing.assert_allclose(t, np.sort(theta), rtol=0, atol=2e-15)
    np.testing.assert_allclose(Y.T @ Y, np.eye(r), atol=1e-13)
    np.testing.assert_allclose(Z.T @ Z, np.eye(r), atol=1e-13)
    np.testing.assert_allclose(Y.T @ Z, np.diag(np.cos(t)), atol=1e-13)


def test_batched_equals_looped_and_broadcasts() -> None:
    rng = np.random.default_rng(4)
    U = random_point(10, 3, rng=rng, batch=(2, 3))
    V = random_point(10, 3, rng=rng, batch=(3,))
    V[1] = np.linalg.qr(U[0, 1] + 1e-6 * rng.standard_normal((10, 3)))[0]  # small angles
    t = principal_angles(U, V)
    assert t.shape == (2, 3, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(t[i, j], principal_angles(U[i, j], V[j]), atol=1e-15)
    tv, Y, Z = principal_angles(U, V, vectors=True)
    np.testing.assert_allclose(tv, t, atol=1e-15)
    for i in range(2):
        for j in range(3):
            _, y, z = principal_angles(U[i, j], V[j], vectors=True)
            # the same vectors up to sign (the angles here are distinct)
            np.testing.assert_allclose(np.abs(Y[i, j].T @ y), np.eye(3), atol=1e-8)
            np.testing.assert_allclose(np.abs(Z[i, j].T @ z), np.eye(3), atol=1e-8)


def test_float32_input_gives_float64() -> None:
    rng = np.random.default_rng(5)
    U = random_point(20, 4, rng=rng)
    V = random_point(20, 4, rng=rng)
    t32 = principal_angles(U.astype(np.float32), V.astype(np.float32))
    assert t32.dtype == np.float64
    # float32 rounding of the bases moves the angles by ~1e-7
    np.testing.assert_allclose(t32, principal_angles(U, V), atol=1e-5)


@pytest.mark.parametrize(
    ("U", "V", "match"),
    [
        (np.ones(3), np.eye(3)[:, :1], "shape"),
        (np.eye(3)[:, :1], np.eye(4)[:, :1], "same ambient space"),
        (np.eye(2, 3), np.eye(2, 3), "n >= p >= 1"),
        (np.full((3, 1), np.nan), np.eye(3)[:, :1], "finite"),
        (2 * np.eye(3)[:, :1], np.eye(3)[:, :1], "not an orthonormal basis"),
        (np.eye(3)[:, :1].astype(complex), np.eye(3)[:, :1], "real floating"),
    ],
)
def test_bad_input_raises(U: np.ndarray, V: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        principal_angles(U, V)
