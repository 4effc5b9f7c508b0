"""Distances on Gr(p, n): scales, identities with independent formulas, metric axioms.

Each distance is checked against a formula computed another way (projector
norms, an explicit Procrustes problem, determinants), not against itself.
Tolerance ``ATOL = 1e-12``: the independent formulas go through n x n
projectors or determinants of p x p matrices with n <= 12, whose roundoff is a
few 1e-16 per entry.
"""

from __future__ import annotations

import numpy as np
import pytest
from grassbundle import (
    binet_cauchy_dist,
    chordal_dist,
    dist,
    fubini_study_dist,
    principal_angles,
    procrustes_dist,
    projection_dist,
    projector,
    random_point,
)
from hypothesis import given
from hypothesis import strategies as st

ATOL = 1e-12
SEEDS = st.integers(0, 2**32 - 1)
ALL = [dist, chordal_dist, projection_dist, procrustes_dist, binet_cauchy_dist, fubini_study_dist]


@st.composite
def dims(draw: st.DrawFn, max_n: int = 12) -> tuple[int, int]:
    """(n, p) including p = 1, p = n/2 and p = n - 1."""
    n = draw(st.integers(2, max_n))
    p = draw(st.sampled_from([1, max(1, n // 2), n - 1, draw(st.integers(1, n))]))
    return n, p


def pair(n: int, p: int, seed: int, batch: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return random_point(n, p, rng=rng, batch=batch), random_point(n, p, rng=rng, batch=batch)


def with_angles(theta: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bases with principal angles exactly ``theta`` (rotated by a Haar O(n))."""
    p = len(theta)
    U = np.zeros((n, p))
    V = np.zeros((n, p))
    i = np.arange(p)
    U[i, i] = 1.0
    V[i, i] = np.cos(theta)
    V[p + i, i] = np.sin(theta)
    O = random_point(n, n, rng=seed)
    return O @ U, O @ V


@pytest.mark.parametrize("f", ALL)
def test_same_subspace_in_two_bases_is_zero(f) -> None:
    rng = np.random.default_rng(0)
    U = random_point(50, 8, rng=rng)
    Q = random_point(8, 8, rng=rng)
    assert f(U, U @ Q) < 1e-14
    assert f(U, U) < 1e-14


@pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double"
)
def test_same_subspace_residual_matches_extended_precision() -> None:
    """For V = fl(U Q) the spans really differ, by the rounding of the product.

    Their chordal distance is ||(I - U U^T) V||_F to first order; computed in
    long double (eps 1e-19) it is ~3e-15 on Gr(64, 512).  Our float64 value
    must agree to within float64 roundoff (~1e-15), which shows that what
    remains of "zero" at larger sizes is the inputs' own rounding, not error.
    """
    U = random_point(512, 64, rng=8)
    V = U @ random_point(64, 64, rng=9)
    Ul, Vl = U.astype(np.longdouble), V.astype(np.longdouble)
    B = Vl - Ul @ (Ul.T @ Vl)
    exact = float(np.sqrt(np.sum(B * B)))
    assert abs(float(chordal_dist(U, V)) - exact) < 2e-15
    assert abs(float(dist(U, V)) - exact) < 2e-15


@pytest.mark.parametrize("t", [1e-12, 1e-8, 0.3, np.pi / 2 - 1e-9, np.pi / 2])
def test_known_angles(t: float) -> None:
    theta = np.array([t, 0.2])
    U, V = with_angles(theta, 7, seed=1)
    # relative accuracy for tiny angles, absolute 1e-15-ish elsewhere
    tol = 1e-15 + 1e-13 * t
    np.testing.assert_allclose(dist(U, V), np.hypot(t, 0.2), rtol=1e-14)
    np.testing.assert_allclose(chordal_dist(U, V), np.hypot(np.sin(t), np.sin(0.2)), rtol=1e-14)
    np.testing.assert_allclose(projection_dist(U, V, ord=2), max(np.sin(t), np.sin(0.2)), atol=tol)
    # one angle alone: tiny distances keep their relative accuracy
    U1, V1 = with_angles(np.array([t]), 5, seed=2)
    for f, exact in [
        (dist, t),
        (chordal_dist, np.sin(t)),
        (procrustes_dist, 2 * np.sin(t / 2)),
        (binet_cauchy_dist, np.sin(t)),
        (fubini_study_dist, t),
    ]:
        np.testing.assert_allclose(f(U1, V1), exact, rtol=1e-7 if t < 1e-6 else 0, atol=tol)


def test_tiny_angle_relative_accuracy() -> None:
    """At theta = 1e-12 each distance is right to ~1e-3 relative (an absolute
    error of ~1e-15); an arccos-only method returns 0 or ~1e-8 here."""
    U, V = with_angles(np.array([1e-12]), 6, seed=3)
    for f, exact in [
        (dist, 1e-12),
        (chordal_dist, 1e-12),
        (procrustes_dist, 1e-12),
        (binet_cauchy_dist, 1e-12),
        (fubini_study_dist, 1e-12),
    ]:
        np.testing.assert_allclose(f(U, V), exact, rtol=1e-3, err_msg=f.__name__)


@given(dims(), SEEDS)
def test_projector_frobenius_identity(nm: tuple, seed: int) -> None:
    """||P_U - P_V||_F = sqrt(2) ||sin theta||_2, with P formed explicitly."""
    n, p = nm
    U, V = pair(n, p, seed)
    PF = np.linalg.norm(projector(U) - projector(V))
    np.testing.assert_allclose(PF, np.sqrt(2) * chordal_dist(U, V), atol=ATOL)
    np.testing.assert_allclose(PF, projection_dist(U, V), atol=ATOL)
    P2 = np.linalg.norm(projector(U) - projector(V), ord=2)
    np.testing.assert_allclose(P2, projection_dist(U, V, ord=2), atol=ATOL)


@given(dims(), SEEDS)
def test_procrustes_is_the_aligned_frobenius_distance(nm: tuple, seed: int) -> None:
    """min_Q ||U Q - V||_F, solved directly: Q = W Z^T from the SVD U^T V = W S Z^T."""
    n, p = nm
    U, V = pair(n, p, seed)
    W, _, Zt = np.linalg.svd(U.T @ V)
    np.testing.assert_allclose(procrustes_dist(U, V), np.linalg.norm(U @ W @ Zt - V), atol=ATOL)


@given(dims(), SEEDS)
def test_determinant_distances(nm: tuple, seed: int) -> None:
    """Binet-Cauchy and Fubini-Study against det(U^T V) = prod cos theta.

    Compared as d^2 = 1 - det^2 and cos d = |det|, which are well conditioned
    for every angle (sqrt and arccos of them are not, near 0)."""
    n, p = nm
    U, V = pair(n, p, seed)
    det = abs(np.linalg.det(U.T @ V))
    np.testing.assert_allclose(binet_cauchy_dist(U, V) ** 2, 1 - det**2, atol=ATOL)
    np.testing.assert_allclose(np.cos(fubini_study_dist(U, V)), det, atol=ATOL)


@given(dims(), SEEDS)
def test_scales_relate_through_the_angles(nm: tuple, seed: int) -> None:
    n, p = nm
    U, V = pair(n, p, seed)
    t = principal_angles(U, V)
    np.testing.assert_allclose(dist(U, V), np.linalg.norm(t), atol=ATOL)
    np.testing.assert_allclose(chordal_dist(U, V), np.linalg.norm(np.sin(t)), atol=ATOL)
    # ordering of the scales: 2/pi theta <= sin theta <= 2 sin(theta/2) <= theta
    assert chordal_dist(U, V) <= procrustes_dist(U, V) + ATOL
    assert procrustes_dist(U, V) <= dist(U, V) + ATOL
    assert 2 / np.pi * dist(U, V) <= chordal_dist(U, V) + ATOL
    assert 0 <= binet_cauchy_dist(U, V) <= 1 + ATOL
    assert 0 <= fubini_study_dist(U, V) <= np.pi / 2 + ATOL


@pytest.mark.parametrize("f", ALL)
@given(nm=dims(), seed=SEEDS)
def test_symmetric_and_invariant(f, nm: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U, V = pair(n, p, seed)
    d = f(U, V)
    np.testing.assert_allclose(f(V, U), d, atol=ATOL)
    Q1, Q2 = random_point(p, p, rng=rng), random_point(p, p, rng=rng)
    np.testing.assert_allclose(f(U @ Q1, V @ Q2), d, atol=ATOL)
    O = random_point(n, n, rng=rng)
    np.testing.assert_allclose(f(O @ U, O @ V), d, atol=ATOL)


@pytest.mark.parametrize("f", [dist, chordal_dist, projection_dist, procrustes_dist])
@given(nm=dims(), seed=SEEDS)
def test_triangle_inequality(f, nm: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U, V, W = (random_point(n, p, rng=rng) for _ in range(3))
    assert f(U, W) <= f(U, V) + f(V, W) + ATOL


def test_triangle_inequality_is_tight_on_a_geodesic() -> None:
    """dist is the geodesic distance: the midpoint of the geodesic splits it exactly."""
    from grassbundle import geodesic

    U, V = pair(10, 3, seed=4)
    M = geodesic(U, V, 0.4)
    np.testing.assert_allclose(dist(U, M) + dist(M, V), dist(U, V), atol=ATOL)


@pytest.mark.parametrize("f", ALL)
def test_batched_equals_looped_and_dtype(f) -> None:
    U, V = pair(9, 3, seed=5, batch=(2, 3))
    V[0, 0] = U[0, 0] @ random_point(3, 3, rng=0)  # a zero distance inside the batch
    d = f(U, V)
    assert d.shape == (2, 3) and d.dtype == np.float64
    looped = np.array([[f(U[i, j], V[i, j]) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(d, looped, atol=1e-15)
    assert f(U[..., 0, 0, :, :].astype(np.float32), V[0, 0].astype(np.float32)).dtype == np.float64
    # broadcasting one point against a batch
    np.testing.assert_allclose(
        f(U[0, 1], V[0]), [f(U[0, 1], V[0, j]) for j in range(3)], atol=1e-15
    )


@given(dims(), st.sampled_from([(3,), (2, 2)]), SEEDS)
def test_batched_equals_looped_property(nm: tuple, batch: tuple, seed: int) -> None:
    n, p = nm
    U, V = pair(n, p, seed, batch)
    flatU, flatV = U.reshape(-1, n, p), V.reshape(-1, n, p)
    for f in ALL:
        looped = np.array([f(a, b) for a, b in zip(flatU, flatV, strict=True)])
        np.testing.assert_allclose(f(U, V).ravel(), looped, atol=1e-15, err_msg=f.__name__)


@pytest.mark.parametrize("f", ALL)
def test_bad_input(f) -> None:
    U = random_point(6, 2, rng=6)
    with pytest.raises(ValueError, match="same Gr"):
        f(U, random_point(6, 3, rng=6))
    with pytest.raises(ValueError, match="orthonormal"):
        f(U, 2 * U)
    with pytest.raises(ValueError, match="finite"):
        f(U, np.full_like(U, np.nan))


def test_projection_dist_rejects_unknown_ord() -> None:
    U = random_point(6, 2, rng=7)
    with pytest.raises(ValueError, match="ord"):
        projection_dist(U, U, ord=1)
