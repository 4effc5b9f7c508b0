"""Cross-validation against the peers: scipy, geomstats and pymanopt.

- ``scipy.linalg.subspace_angles``: the same Knyazev-Argentati recipe.  The
  angles agree to roundoff on random pairs.  At known angles mixing a tiny and
  a near-pi/2 angle scipy 1.17 is off by up to ~3e-8: it pairs its arcsin
  mask, computed in descending-cosine order, with angles in descending-angle
  order, so there the small angle comes from arccos.
- geomstats' ``Grassmannian`` works with ``n x n`` projectors; its distance is
  ``sqrt(2) ||theta||_2`` and its tangent vector at ``P_U`` for our horizontal
  ``X`` at ``U`` is ``X U^T + U X^T``.
- pymanopt's ``Grassmann`` uses our representation and scale; its ``dist`` is
  arccos-only and its ``log`` solves with ``V^T U``, so the comparison uses
  generic angles (away from 0 and pi/2), where both are accurate.

Tolerances: geomstats goes through ``expm``/``logm`` of ``n x n`` matrices
(accurate to ~1e-12 here); pymanopt's arccos loses half the digits for small
angles, which random points in these dimensions do not have (the smallest
angle is checked to exceed 1e-3, where arccos is accurate to ~1e-13).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from grassbundle import (
    dist,
    exp,
    log,
    parallel_transport,
    principal_angles,
    project_tangent,
    projector,
    random_point,
    retraction,
)
from hypothesis import given
from hypothesis import strategies as st

SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def dims(draw: st.DrawFn, max_n: int = 10) -> tuple[int, int]:
    """(n, p) with 1 <= p < n, including p = 1, p = n/2 and p = n - 1."""
    n = draw(st.integers(2, max_n))
    p = draw(st.sampled_from([1, max(1, n // 2), n - 1, draw(st.integers(1, n - 1))]))
    return n, p


def tangent(U: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    X = project_tangent(U, rng.standard_normal(U.shape))
    return scale * X / max(np.linalg.norm(X, ord=2), 1e-300)


# -- scipy -------------------------------------------------------------------


@pytest.mark.parametrize("t", [1e-12, 1e-8, 0.3, np.pi / 2 - 1e-9, np.pi / 2])
def test_scipy_agrees_at_known_angles(t: float) -> None:
    O = random_point(6, 6, rng=0)
    U = O[:, :2]
    V = np.stack([O[:, 0], np.cos(t) * O[:, 1] + np.sin(t) * O[:, 2]], axis=1)
    ours = principal_angles(U, V)
    ref = np.sort(scipy.linalg.subspace_angles(U, V))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)  # scipy's arccos branch
    np.testing.assert_allclose(ours, [0.0, t], rtol=0, atol=2e-15)


@given(dims(), SEEDS)
def test_scipy_agrees_on_random_pairs(nm: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, int(rng.integers(1, n + 1)), rng=rng)
    ours = principal_angles(U, V)
    ref = np.sort(scipy.linalg.subspace_angles(U, V))
    # cosines to roundoff; angles to scipy's arccos floor sqrt(2 eps) = 1.5e-8
    # (see the module docstring: an angle that is exactly 0 because p + q > n
    # comes out of scipy as ~1.5e-8)
    np.testing.assert_allclose(np.cos(ours), np.cos(ref), atol=1e-13)
    np.testing.assert_allclose(ours, ref, atol=5e-8)


# -- geomstats ---------------------------------------------------------------


@pytest.fixture(scope="module")
def geomstats_grassmannian():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from geomstats.geometry.grassmannian import Grassmannian
    return Grassmannian


@pytest.mark.parametrize(("n", "p"), [(4, 1), (6, 3), (7, 6), (9, 4)])
def test_geomstats_distance_is_sqrt2_times_ours(geomstats_grassmannian, n: int, p: int) -> None:
    G = geomstats_grassmannian(n, p)
    rng = np.random.default_rng(n * 10 + p)
    U = random_point(n, p, rng=rng, batch=3)
    V = random_point(n, p, rng=rng, batch=3)
    ref = G.metric.dist(projector(U), projector(V))
    np.testing.assert_allclose(np.sqrt(2) * dist(U, V), ref, atol=1e-10)


@pytest.mark.parametrize(("n", "p"), [(5, 2), (8, 3), (6, 5)])
def test_geomstats_exp_log_transport_in_projector_form(
    geomstats_grassmannian, n: int, p: int
) -> None:
    G = geomstats_grassmannian(n, p)
    rng = np.random.default_rng(n + p)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    PU, PV = projector(U), projector(V)

    def lift(B: np.ndarray, X: np.ndarray) -> np.ndarray:
        return X @ B.T + B @ X.T

    X = log(U, V)
    np.testing.assert_allclose(lift(U, X), G.metric.log(PV, PU), atol=1e-10)
    Y = tangent(U, rng, scale=1.2)
    np.testing.assert_allclose(projector(exp(U, Y)), G.metric.exp(lift(U, Y), PU), atol=1e-10)
    Z = tangent(U, rng)
    ref = G.metric.parallel_transport(lift(U, Z), PU, end_point=PV)
    np.testing.assert_allclose(lift(V, parallel_transport(U, V, Z)), ref, atol=1e-10)


# -- pymanopt ----------------------------------------------------------------


@given(dims(), SEEDS)
def test_pymanopt_dist_exp_log_retraction(nm: tuple, seed: int) -> None:
    from pymanopt.manifolds import Grassmann

    n, p = nm
    M = Grassmann(n, p)
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    theta = principal_angles(U, V)
    # generic angles only: pymanopt's arccos (near 0) and solve (near pi/2)
    # are accurate there, so any disagreement would be ours
    if theta[0] < 1e-3 or theta[-1] > np.pi / 2 - 1e-3:
        return
    np.testing.assert_allclose(dist(U, V), M.dist(U, V), atol=1e-11)
    np.testing.assert_allclose(log(U, V), M.log(U, V), atol=1e-9)
    X = tangent(U, rng, scale=1.0)
    # pymanopt re-orthonormalises exp's output by QR: compare spans
    assert np.max(principal_angles(exp(U, X), M.exp(U, X))) < 1e-12
    np.testing.assert_allclose(retraction(U, X), M.retraction(U, X), atol=1e-12)


def test_pymanopt_dist_is_inaccurate_near_zero_where_ours_is_not() -> None:
    """The documented failure of arccos-only distances, and our fix."""
    from pymanopt.manifolds import Grassmann

    O = random_point(6, 6, rng=1)
    U = O[:, :1]
    V = np.cos(1e-10) * O[:, :1] + np.sin(1e-10) * O[:, 1:2]
    assert abs(dist(U, V) - 1e-10) < 1e-15
    assert abs(Grassmann(6, 1).dist(U, V) - 1e-10) > 1e-10  # arccos(1 - 5e-21) = 0 or 1e-8
