"""Chordal and Karcher means on Gr(p, n).

The chordal mean is checked against an independent computation (the top-p
eigenvectors of the explicitly formed ``sum_i w_i P_i`` by ``eigh``); the
Karcher mean against known answers (two points: the weighted geodesic point;
symmetric configurations: the centre) and its first-order condition.
"""

from __future__ import annotations

import numpy as np
import pytest
from grassbundle import (
    KarcherMeanResult,
    chordal_mean,
    dist,
    exp,
    geodesic,
    karcher_mean,
    log,
    principal_angles,
    project_tangent,
    projector,
    random_point,
)
from hypothesis import given
from hypothesis import strategies as st

SEEDS = st.integers(0, 2**32 - 1)


def cluster(n: int, p: int, k: int, radius: float, seed: int, batch: tuple = ()) -> np.ndarray:
    """k points within geodesic distance ``radius`` of a random centre."""
    rng = np.random.default_rng(seed)
    C = random_point(n, p, rng=rng, batch=batch)
    pts = []
    for _ in range(k):
        X = project_tangent(C, rng.standard_normal(C.shape))
        X *= (radius / np.linalg.norm(X, axis=(-2, -1)))[..., None, None]
        pts.append(exp(C, X))
    return np.stack(pts, axis=-3)


def max_angle(U: np.ndarray, V: np.ndarray) -> float:
    return float(np.max(principal_angles(U, V)))


# -- chordal mean ------------------------------------------------------------


@given(st.integers(3, 12), st.integers(1, 6), SEEDS)
def test_chordal_mean_is_top_eigenspace_of_weighted_projector_sum(
    n: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, n))
    pts = random_point(n, p, rng=rng, batch=k)
    w = rng.uniform(0.1, 1.0, size=k)
    K = np.einsum("i,ijk->jk", w / w.sum(), projector(pts))
    evals, evecs = np.linalg.eigh(K)  # ascending
    mean, ev = chordal_mean(pts, w, return_eigenvalues=True)
    m = min(n, k * p)
    np.testing.assert_allclose(ev, evals[::-1][:m], atol=1e-12)
    assert mean.shape == (n, p)
    gap = evals[-p] - (evals[-p - 1] if p < n else 0.0)
    if gap > 1e-6:  # the mean is unique; Davis-Kahan: angle error <= eps / gap
        assert max_angle(mean, evecs[:, -p:]) < 1e-12 / gap


def test_chordal_mean_minimises_the_chordal_cost() -> None:
    """No random perturbation of the mean lowers sum_i w_i ||P - P_i||_F^2."""
    pts = cluster(10, 3, 5, 0.6, seed=1)
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    M = chordal_mean(pts, w)

    def cost(U: np.ndarray) -> float:
        return float(np.sum(w * np.sum((projector(U) - projector(pts)) ** 2, axis=(-2, -1))))

    rng = np.random.default_rng(2)
    c0 = cost(M)
    for _ in range(20):
        X = project_tangent(M, rng.standard_normal(M.shape))
        assert cost(exp(M, 1e-3 * X / np.linalg.norm(X))) > c0


def test_chordal_mean_simple_cases() -> None:
    U = random_point(8, 3, rng=3)
    Q = random_point(3, 3, rng=4)
    # one point (in any basis) is its own mean
    assert max_angle(chordal_mean(U[None]), U) < 1e-14
    assert max_angle(chordal_mean(np.stack([U, U @ Q])), U) < 1e-14
    # zero weight: the point is ignored
    V = random_point(8, 3, rng=5)
    assert max_angle(chordal_mean(np.stack([U, V]), [1.0, 0.0]), U) < 1e-14
    # two points: the chordal mean of U and V lies on the geodesic, at its
    # midpoint (every principal plane is symmetric about its bisector)
    assert max_angle(chordal_mean(np.stack([U, V])), geodesic(U, V, 0.5)) < 1e-12


def test_chordal_mean_wide_concatenation() -> None:
    """k p > n: the n x kp concatenation is wide; still the top-p eigenspace."""
    pts = random_point(5, 3, rng=6, batch=4)
    K = projector(pts).mean(axis=0)
    top = np.linalg.eigh(K)[1][:, -3:]
    assert max_angle(chordal_mean(pts), top) < 1e-12


def test_chordal_mean_is_equivariant() -> None:
    rng = np.random.default_rng(7)
    pts = cluster(9, 2, 4, 0.5, seed=8)
    O = random_point(9, 9, rng=rng)
    Qs = random_point(2, 2, rng=rng, batch=4)
    M = chordal_mean(pts)
    assert max_angle(chordal_mean(pts @ Qs), M) < 1e-12
    assert max_angle(chordal_mean(O @ pts), O @ M) < 1e-12


def test_chordal_mean_batched_equals_looped() -> None:
    pts = random_point(7, 2, rng=9, batch=(3, 4))
    w = np.random.default_rng(10).uniform(0.5, 1.0, size=(3, 4))
    M = chordal_mean(pts, w)
    assert M.shape == (3, 7, 2) and M.dtype == np.float64
    for b in range(3):
        assert max_angle(M[b], chordal_mean(pts[b], w[b])) < 1e-13
    # shared weights broadcast over the batch
    M2 = chordal_mean(pts, w[0])
    for b in range(3):
        assert max_angle(M2[b], chordal_mean(pts[b], w[0])) < 1e-13


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0, -1.0, 1.0], "non-negative"),
        ([0.0, 0.0, 0.0], "not all be zero"),
        ([1.0, 1.0], "shape"),
        ([1.0, np.nan, 1.0], "finite"),
    ],
)
def test_bad_weights(weights: list, match: str) -> None:
    pts = random_point(6, 2, rng=11, batch=3)
    with pytest.raises(ValueError, match=match):
        chordal_mean(pts, weights)
    with pytest.raises(ValueError, match=match):
        karcher_mean(pts, weights)


def test_bad_points() -> None:
    with pytest.raises(ValueError, match="stack"):
        chordal_mean(random_point(6, 2, rng=12))
    with pytest.raises(ValueError, match="orthonormal"):
        chordal_mean(2 * random_point(6, 2, rng=12, batch=3))
    for mean in (chordal_mean, karcher_mean):  # the mean of nothing
        with pytest.raises(ValueError, match="at least one basis"):
            mean(np.zeros((0, 6, 2)))


# -- Karcher mean ------------------------------------------------------------


@given(st.integers(3, 10), SEEDS, st.floats(0.1, 0.9))
def test_karcher_mean_of_two_points_is_the_geodesic_point(n: int, seed: int, t: float) -> None:
    """argmin (1-t) d(U, .)^2 + t d(V, .)^2 is geodesic(U, V, t)."""
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, n))
    pts = cluster(n, p, 2, 0.5, seed=seed)
    res = karcher_mean(pts, [1 - t, t])
    assert bool(res.converged)
    assert max_angle(res.point, geodesic(pts[0], pts[1], t)) < 1e-9


def test_karcher_mean_first_order_condition_and_result_fields() -> None:
    pts = cluster(12, 3, 6, 0.5, seed=13)
    w = np.array([1.0, 2.0, 3.0, 1.0, 1.0, 2.0])
    res = karcher_mean(pts, w, tol=1e-12)
    assert isinstance(res, KarcherMeanResult)
    assert bool(res.converged) and 0 < int(res.iterations) < 100
    assert float(res.grad_norm) <= 1e-12
    # the gradient recomputed independently: sum_i w_i log_M(U_i) = 0
    G = np.einsum("i,ijk->jk", w / w.sum(), log(res.point, pts))
    assert np.linalg.norm(G) < 1e-11
    cost = 0.5 * np.sum(w / w.sum() * dist(res.point, pts) ** 2)
    np.testing.assert_allclose(res.cost, cost, rtol=1e-12)
    # it beats the chordal mean (its starting point) on the Karcher cost
    C = chordal_mean(pts, w)
    assert cost <= 0.5 * np.sum(w / w.sum() * dist(C, pts) ** 2)


def test_karcher_mean_of_a_symmetric_configuration_is_the_centre() -> None:
    rng = np.random.default_rng(14)
    C = random_point(10, 3, rng=rng)
    X = project_tangent(C, rng.standard_normal(C.shape))
    Y = project_tangent(C, rng.standard_normal(C.shape))
    X *= 0.4 / np.linalg.norm(X)
    Y *= 0.2 / np.linalg.norm(Y)
    pts = np.stack([exp(C, X), exp(C, -X), exp(C, Y), exp(C, -Y)])
    res = karcher_mean(pts, init=exp(C, 0.3 * X))  # start away from the answer
    assert bool(res.converged) and int(res.iterations) > 0
    assert max_angle(res.point, C) < 1e-10


def test_karcher_mean_reports_non_convergence() -> None:
    pts = cluster(10, 3, 5, 0.8, seed=15)
    init = random_point(10, 3, rng=16)
    res = karcher_mean(pts, init=init, max_iter=1)
    assert not bool(res.converged)
    assert int(res.iterations) == 1
    assert float(res.grad_norm) > 1e-10
    res0 = karcher_mean(pts, init=init, max_iter=0)
    assert int(res0.iterations) == 0 and not bool(res0.converged)
    assert max_angle(res0.point, init) < 1e-15


def test_karcher_mean_batched_equals_looped() -> None:
    pts = cluster(8, 2, 4, 0.5, seed=17, batch=(3,))  # shape (3, 4, 8, 2)
    res = karcher_mean(pts, tol=1e-12)
    assert res.point.shape == (3, 8, 2)
    assert res.converged.shape == (3,) and res.iterations.shape == (3,)
    for b in range(3):
        single = karcher_mean(pts[b], tol=1e-12)
        assert max_angle(res.point[b], single.point) < 1e-10
        # both converge (the iteration counts may differ by one: the gradient norm
        # of the last step can sit within roundoff of tol)
        assert bool(res.converged[b]) and bool(single.converged)


def test_karcher_mean_bad_options() -> None:
    pts = random_point(6, 2, rng=18, batch=3)
    with pytest.raises(ValueError, match="tol"):
        karcher_mean(pts, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        karcher_mean(pts, max_iter=-1)
    with pytest.raises(ValueError, match="same Gr"):
        karcher_mean(pts, init=random_point(6, 3, rng=0))


def test_means_accept_float32() -> None:
    pts = cluster(8, 2, 3, 0.3, seed=19).astype(np.float32)
    assert chordal_mean(pts).dtype == np.float64
    assert karcher_mean(pts, tol=1e-8).point.dtype == np.float64
