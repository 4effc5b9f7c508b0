"""Points, tangent vectors, exp/log, geodesics and parallel transport on Gr(p, n).

Identity tests, one identity per test, over Hypothesis-drawn (n, p) including
p = 1, p = n/2 and p = n - 1, and batches.  Tolerances: everything is a short
chain of SVDs and products of n x p orthonormal matrices (n <= 12 here), whose
roundoff is a few 1e-16; ``ATOL = 1e-12`` keeps a margin of ~1000x, still
orders of magnitude below any real error (a wrong sign or transpose moves
results by O(1)).
"""

from __future__ import annotations

import numpy as np
import pytest
from grassbundle import (
    as_point,
    dist,
    exp,
    geodesic,
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

ATOL = 1e-12
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def dims(draw: st.DrawFn, max_n: int = 12) -> tuple[int, int]:
    """(n, p) including p = 1, p = n/2 and p = n - 1."""
    n = draw(st.integers(2, max_n))
    p = draw(st.sampled_from([1, max(1, n // 2), n - 1, draw(st.integers(1, n))]))
    return n, p


BATCHES = st.sampled_from([(), (3,), (2, 2)])


def tangent(U: np.ndarray, rng: np.random.Generator, norm2: float | None = None) -> np.ndarray:
    """Random tangent vector at U, optionally scaled to spectral norm ``norm2``.

    For p = n the tangent space is {0}; the projection then leaves roundoff,
    which is returned as an exact zero rather than blown up by the scaling.
    """
    X = project_tangent(U, rng.standard_normal(U.shape))
    if norm2 is not None:
        s = np.linalg.norm(X, ord=2, axis=(-2, -1))
        X = X * np.where(s > 1e-8, norm2 / np.where(s > 0, s, 1.0), 0.0)[..., None, None]
    return X


def orth_err(U: np.ndarray) -> float:
    p = U.shape[-1]
    return float(np.abs(np.swapaxes(U, -1, -2) @ U - np.eye(p)).max())


def max_angle(U: np.ndarray, V: np.ndarray) -> float:
    return float(np.max(principal_angles(U, V)))


# -- points ------------------------------------------------------------------


def test_random_point_shape_dtype_orthonormal_and_seeded() -> None:
    U = random_point(7, 3, rng=np.random.default_rng(0), batch=(4, 2))
    assert U.shape == (4, 2, 7, 3) and U.dtype == np.float64
    assert orth_err(U) < 1e-14
    np.testing.assert_array_equal(U, random_point(7, 3, rng=0, batch=(4, 2)))
    assert random_point(5, 2, rng=1, batch=3).shape == (3, 5, 2)


def test_random_point_is_rotation_invariant_in_distribution() -> None:
    """Haar: E[P_U] = (p/n) I.  Over 4000 draws each entry of the sample mean
    of P_U has standard deviation below 0.01, so 0.05 is a 5-sigma bound; a
    non-uniform sampler (e.g. the first p columns of a fixed matrix plus noise)
    is off by O(1)."""
    U = random_point(6, 2, rng=7, batch=4000)
    mean_P = projector(U).mean(axis=0)
    np.testing.assert_allclose(mean_P, np.eye(6) * 2 / 6, atol=0.05)


@pytest.mark.parametrize(("n", "p"), [(3, 5), (3, 0), (0, 0)])
def test_random_point_rejects_bad_dimensions(n: int, p: int) -> None:
    with pytest.raises(ValueError, match=f"Need n >= p >= 1. Values supplied were n = {n}"):
        random_point(n, p, rng=0)


def test_as_point_validates_and_converts() -> None:
    U = random_point(8, 3, rng=1).astype(np.float32)
    out = as_point(U)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, U.astype(np.float64))
    with pytest.raises(ValueError, match=r"not an orthonormal basis: max \|X\^T X - I\| = 0\.21"):
        as_point(1.1 * U.astype(np.float64))
    # a float64 basis perturbed by 1e-9 is outside the default 1e-10 tolerance,
    # inside an explicit one
    V = random_point(8, 3, rng=2) + 1e-9
    with pytest.raises(ValueError, match="tolerance 1e-10"):
        as_point(V)
    assert as_point(V, atol=1e-7).shape == (8, 3)


@pytest.mark.parametrize(("dtype", "n"), [(np.float32, 2048), (np.float16, 64)])
def test_default_tolerance_admits_rounded_low_precision_bases(dtype: type, n: int) -> None:
    """A float64 basis rounded to float32/float16 is accepted as it is (the
    default tolerance scales with the dtype's eps), and converted to float64."""
    U = random_point(n, 16, rng=22).astype(dtype)
    out = as_point(U)
    assert out.dtype == np.float64
    # ...while a genuinely non-orthonormal one of the same dtype is not
    with pytest.raises(ValueError, match="not an orthonormal basis"):
        as_point((1.05 * U.astype(np.float64)).astype(dtype))


@pytest.mark.parametrize("n", [1, 2, 16, 256, 4096, 65536, 2**20])
def test_default_tolerance_rejects_a_scaled_float16_basis_at_every_n(n: int) -> None:
    """1.2 * U has max |U^T U - I| = 0.44: rejected at every n, in every dtype
    (10 sqrt(n) eps alone would be 0.625 for float16 at n = 4096, and dist would
    then return 1.29 rad for the same span)."""
    p = min(4, n)
    U = random_point(n, p, rng=23)
    for dtype in (np.float16, np.float32, np.float64):
        with pytest.raises(ValueError, match="not an orthonormal basis"):
            dist((1.2 * U).astype(dtype), U)
        with pytest.raises(ValueError, match="not an orthonormal basis"):
            as_point((1.2 * U).astype(dtype))


@pytest.mark.parametrize("n", [1, 2, 16, 256, 4096, 65536, 2**20])
def test_float16_copy_of_a_basis_is_accepted_and_close(n: int) -> None:
    """Rounding to float16 (u = 2^-11) moves U^T U by at most 2u + u^2 at any n,
    inside the 1e-2 ceiling.  Treated as orthonormal, U16 = U + D with |D| <= u|U|
    gives sines of at most ||(I - U16 U16^T) U||_2 <= 2||D||_2 + ||D||_2^2 with
    ||D||_2 <= u sqrt(p), so dist(U16, U) <= sqrt(p) (2 u sqrt(p) + u^2 p): 2.1 u p."""
    p = min(4, n)
    u = 2.0**-11
    U = random_point(n, p, rng=24)
    U16 = U.astype(np.float16)
    G = U16.astype(np.float64).T @ U16.astype(np.float64) - np.eye(p)
    assert np.abs(G).max() <= 2 * u + u**2
    assert as_point(U16).dtype == np.float64
    assert float(dist(U16, U)) <= 2.1 * u * p


def test_as_point_orthonormalize_keeps_span_and_is_closest() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 9, 4))
    U = as_point(X, orthonormalize=True)
    assert orth_err(U) < 1e-14
    # same span: the residual of X after projecting onto span(U) vanishes
    np.testing.assert_allclose(X - U @ (np.swapaxes(U, -1, -2) @ X), 0.0, atol=1e-13)
    # polar factor: U^T X is symmetric positive definite
    S = np.swapaxes(U, -1, -2) @ X
    np.testing.assert_allclose(S, np.swapaxes(S, -1, -2), atol=1e-13)
    assert np.all(np.linalg.eigvalsh(S) > 0)


@pytest.mark.parametrize(
    ("X", "kwargs", "match"),
    [
        (np.ones(4), {}, r"shape \(\.\.\., n, p\)"),
        (np.ones((3, 5)), {}, "Values supplied were n = 3 and p = 5"),
        (np.ones((3, 5)), {"orthonormalize": True}, "Values supplied were n = 3 and p = 5"),
        (np.ones((3, 0)), {}, "n >= p >= 1"),
        (np.array([[np.inf], [0.0]]), {}, "finite"),
        (np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]]), {"orthonormalize": True}, "rank"),
        (np.array([[1.0, 0.0], [0.0, 1.0]], dtype=bool), {}, "real floating"),
    ],
)
def test_as_point_errors(X: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        as_point(X, **kwargs)


def test_functions_reject_non_orthonormal_points() -> None:
    U = random_point(6, 2, rng=4)
    bad = 1.5 * U
    X = tangent(U, np.random.default_rng(0))
    for call in (
        lambda: projector(bad),
        lambda: exp(bad, X),
        lambda: log(bad, U),
        lambda: log(U, bad),
        lambda: retraction(bad, X),
        lambda: geodesic(U, bad, 0.5),
        lambda: parallel_transport(U, bad, X),
        lambda: project_tangent(bad, X),
    ):
        with pytest.raises(ValueError, match="orthonormal"):
            call()


def test_shape_mismatches_raise() -> None:
    U = random_point(6, 2, rng=5)
    with pytest.raises(ValueError, match="same Gr"):
        log(U, random_point(6, 3, rng=5))
    with pytest.raises(ValueError, match="same ambient"):
        log(U, random_point(7, 2, rng=5))
    with pytest.raises(ValueError, match="matrix shape"):
        exp(U, np.zeros((6, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        log(random_point(6, 2, rng=0, batch=2), random_point(6, 2, rng=1, batch=3))


# -- projector and tangent space ---------------------------------------------


@given(dims(), BATCHES, SEEDS)
def test_projector_is_symmetric_idempotent_rank_p(nm: tuple, batch: tuple, seed: int) -> None:
    n, p = nm
    U = random_point(n, p, rng=seed, batch=batch)
    P = projector(U)
    np.testing.assert_allclose(P, np.swapaxes(P, -1, -2), atol=ATOL)
    np.testing.assert_allclose(P @ P, P, atol=ATOL)
    np.testing.assert_allclose(np.trace(P, axis1=-2, axis2=-1), p, atol=ATOL)


@given(dims(), BATCHES, SEEDS)
def test_project_tangent_is_horizontal_projection(nm: tuple, batch: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng, batch=batch)
    Z = rng.standard_normal(U.shape)
    X = project_tangent(U, Z)
    np.testing.assert_allclose(np.swapaxes(U, -1, -2) @ X, 0.0, atol=ATOL)
    np.testing.assert_allclose(project_tangent(U, X), X, atol=ATOL)  # idempotent
    np.testing.assert_allclose(X, (np.eye(n) - projector(U)) @ Z, atol=ATOL)


# -- retraction --------------------------------------------------------------


@given(dims(), SEEDS)
def test_retraction_spans_u_plus_x_and_is_equivariant(nm: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    X = tangent(U, rng)
    R = retraction(U, X)
    assert orth_err(R) < ATOL
    assert max_angle(R, as_point(U + X, orthonormalize=True)) < 1e-10
    Q = random_point(p, p, rng=rng)
    np.testing.assert_allclose(retraction(U @ Q, X @ Q), R @ Q, atol=ATOL)
    # first order: retraction and exp agree to O(t^2)
    t = 1e-4
    assert dist(retraction(U, t * X), exp(U, t * X)) < 10 * t**2 * (1 + np.linalg.norm(X)) ** 3


# -- exp and log -------------------------------------------------------------


@given(dims(), BATCHES, SEEDS, st.floats(0.0, 0.95))
def test_log_inverts_exp_inside_injectivity_radius(
    nm: tuple, batch: tuple, seed: int, frac: float
) -> None:
    """log(U, exp(U, X)) = X whenever ||X||_2 < pi/2."""
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng, batch=batch)
    X = tangent(U, rng, norm2=frac * np.pi / 2)
    # near the radius (||X||_2 = 0.95 pi/2) log's conditioning grows like
    # 1 / cos(||X||_2) ~ 13, hence the tolerance 1e-11
    np.testing.assert_allclose(log(U, exp(U, X)), X, atol=1e-11)


@given(dims(), BATCHES, SEEDS)
def test_exp_of_log_spans_target(nm: tuple, batch: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng, batch=batch)
    V = random_point(n, p, rng=rng, batch=batch)
    X = log(U, V)
    np.testing.assert_allclose(np.swapaxes(U, -1, -2) @ X, 0.0, atol=ATOL)
    E = exp(U, X)
    assert orth_err(E) < ATOL
    assert max_angle(E, V) < 1e-11
    # ||log||_F is the geodesic distance, and its singular values the angles
    np.testing.assert_allclose(np.linalg.norm(X, axis=(-2, -1)), dist(U, V), atol=ATOL)
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(X, compute_uv=False), axis=-1), principal_angles(U, V), atol=ATOL
    )


@given(dims(), SEEDS)
def test_exp_log_equivariance(nm: tuple, seed: int) -> None:
    """log(U Q, V) = log(U, V) Q, log(O U, O V) = O log(U, V), exp(U Q, X Q) = exp(U, X) Q."""
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    Q = random_point(p, p, rng=rng)
    O = random_point(n, n, rng=rng)
    X = log(U, V)
    np.testing.assert_allclose(log(U @ Q, V @ random_point(p, p, rng=rng)), X @ Q, atol=1e-11)
    np.testing.assert_allclose(log(O @ U, O @ V), O @ X, atol=1e-11)
    Y = tangent(U, rng)
    np.testing.assert_allclose(exp(U @ Q, Y @ Q), exp(U, Y) @ Q, atol=ATOL)
    np.testing.assert_allclose(exp(O @ U, O @ Y), O @ exp(U, Y), atol=ATOL)


def _one_angle_pair(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U = O[e_1, e_2], V = O[e_1, cos t e_2 + sin t e_3] and the log t O e_3 e_2^T."""
    O = random_point(5, 5, rng=11)
    U = O @ np.eye(5)[:, :2]
    V = O @ np.stack([np.eye(5)[0], np.cos(t) * np.eye(5)[1] + np.sin(t) * np.eye(5)[2]], 1)
    return U, V, t * np.outer(O[:, 2], np.eye(2)[1])


@pytest.mark.parametrize("t", [1e-12, 1e-8, 0.3, np.pi / 2 - 1e-9])
def test_log_at_known_angles_up_to_the_cut_locus(t: float) -> None:
    """Below pi/2 the shortest geodesic is unique: log is t O e_3 e_2^T, sign
    included.  At pi/2 - 1e-9, cos t = 1e-9 is seven orders above the roundoff
    of ``U^T V`` (about 1e-16), so the sign is still determined."""
    U, V, expected = _one_angle_pair(t)
    X = log(U, V)
    np.testing.assert_allclose(X, expected, atol=1e-15 * 8)
    assert max_angle(exp(U, X), V) < 1e-15 * 8


def test_log_on_the_cut_locus_is_either_shortest_geodesic() -> None:
    """At t = fl(pi/2), cos t = 6.1e-17 is below the roundoff of ``U^T V``: the
    two shortest geodesics, +X and -X, are equally valid and BLAS rounding picks
    one (the sign differs between OpenBLAS kernels).  Only sign-free invariants
    are asserted: X is horizontal, its singular values are the principal angles,
    its norm is the distance, exp(U, X) spans V, and X is +-t O e_3 e_2^T."""
    t = np.pi / 2
    U, V, expected = _one_angle_pair(t)
    X = log(U, V)
    np.testing.assert_allclose(U.T @ X, 0.0, atol=1e-15 * 8)
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(X, compute_uv=False)),
        np.sort(principal_angles(U, V)),
        rtol=0,
        atol=1e-15 * 8,
    )
    np.testing.assert_allclose(np.linalg.norm(X), dist(U, V), rtol=0, atol=1e-15 * 8)
    np.testing.assert_allclose(np.linalg.norm(X), t, rtol=0, atol=1e-15 * 8)
    assert max_angle(exp(U, X), V) < 1e-15 * 8
    assert min(np.abs(X - expected).max(), np.abs(X + expected).max()) < 1e-15 * 8


@pytest.mark.parametrize(
    "theta",
    [
        [np.pi / 4] * 4,
        [np.pi / 6] * 3 + [np.pi / 3] * 3,
        [np.pi / 2 - 1e-8, np.pi / 2 - 2e-8, np.pi / 2 - 1e-9],
        [1e-9, 2e-9, 0.3],
    ],
)
def test_log_with_clusters_of_equal_angles(theta: list[float]) -> None:
    """||log||_F = ||theta|| and exp(log) spans V, to roundoff, for repeated
    angles at the branch switch and clustered angles near 0 and near pi/2."""
    p = len(theta)
    O = random_point(2 * p + 2, 2 * p + 2, rng=21)
    U = O[:, :p]
    V = O[:, :p] * np.cos(theta) + O[:, p : 2 * p] * np.sin(theta)
    X = log(U, V)
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(X, compute_uv=False)), np.sort(theta), rtol=0, atol=1e-14
    )
    assert max_angle(exp(U, X), V) < 1e-13


def test_log_at_cut_locus_is_a_shortest_geodesic() -> None:
    """All angles pi/2: the result is finite, has norm ||theta||, and exp hits V."""
    U = np.eye(6)[:, :3]
    V = np.eye(6)[:, 3:]
    X = log(U, V)
    assert np.all(np.isfinite(X))
    np.testing.assert_allclose(np.linalg.svd(X, compute_uv=False), np.pi / 2, atol=1e-15)
    assert max_angle(exp(U, X), V) < 1e-15


def test_log_of_same_subspace_in_another_basis_is_zero() -> None:
    U = random_point(30, 5, rng=12)
    Q = random_point(5, 5, rng=13)
    assert np.abs(log(U, U @ Q)).max() < 1e-14


def test_exp_stays_orthonormal_for_long_tangent_vectors() -> None:
    """Long geodesics wind around Gr(p, n); exp stays orthonormal however long."""
    rng = np.random.default_rng(20)
    U = random_point(9, 3, rng=rng)
    for r in (3.0, 30.0, 300.0):
        E = exp(U, tangent(U, rng, norm2=r))
        assert orth_err(E) < 1e-13


def test_exp_discards_the_vertical_component() -> None:
    rng = np.random.default_rng(14)
    U = random_point(7, 3, rng=rng)
    X = tangent(U, rng)
    np.testing.assert_allclose(exp(U, X + U @ rng.standard_normal((3, 3))), exp(U, X), atol=ATOL)
    np.testing.assert_allclose(exp(U, np.zeros_like(U)), U, atol=1e-15)


# -- geodesic ----------------------------------------------------------------


@given(dims(), SEEDS, st.floats(0.0, 1.0))
def test_geodesic_endpoints_and_constant_speed(nm: tuple, seed: int, t: float) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    d = dist(U, V)
    assert max_angle(geodesic(U, V, 0.0), U) < ATOL
    assert max_angle(geodesic(U, V, 1.0), V) < 1e-11
    G = geodesic(U, V, t)
    np.testing.assert_allclose(dist(U, G), t * d, atol=1e-11)
    np.testing.assert_allclose(dist(G, V), (1 - t) * d, atol=1e-11)


def test_geodesic_broadcasts_t() -> None:
    U = random_point(8, 3, rng=15)
    V = random_point(8, 3, rng=16)
    ts = np.array([0.0, 0.25, 0.5, 1.0])
    G = geodesic(U, V, ts)
    assert G.shape == (4, 8, 3)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(G[i], geodesic(U, V, t), atol=1e-15)
    with pytest.raises(ValueError, match="broadcast"):
        geodesic(random_point(8, 3, rng=0, batch=2), random_point(8, 3, rng=1, batch=2), ts)


# -- parallel transport ------------------------------------------------------


@given(dims(), SEEDS)
def test_parallel_transport_is_an_isometry_onto_the_tangent_space(nm: tuple, seed: int) -> None:
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    X = tangent(U, rng)
    Y = tangent(U, rng)
    tX = parallel_transport(U, V, X)
    tY = parallel_transport(U, V, Y)
    np.testing.assert_allclose(V.T @ tX, 0.0, atol=ATOL)
    np.testing.assert_allclose(np.sum(tX * tY), np.sum(X * Y), atol=1e-11)
    np.testing.assert_allclose(np.sum(tX * tX), np.sum(X * X), atol=1e-11)


@given(dims(), SEEDS)
def test_parallel_transport_carries_log_to_minus_log(nm: tuple, seed: int) -> None:
    """The velocity of a geodesic is parallel: tau(log_U V) = -log_V U."""
    n, p = nm
    rng = np.random.default_rng(seed)
    U = random_point(n, p, rng=rng)
    V = random_point(n, p, rng=rng)
    np.testing.assert_allclose(parallel_transport(U, V, log(U, V)), -log(V, U), atol=1e-10)


def test_parallel_transport_composes_along_a_geodesic() -> None:
    """Transport U -> M -> V with M the midpoint equals transport U -> V."""
    rng = np.random.default_rng(17)
    U = random_point(9, 3, rng=rng)
    V = random_point(9, 3, rng=rng)
    M = geodesic(U, V, 0.5)
    X = tangent(U, rng)
    two_steps = parallel_transport(M, V, parallel_transport(U, M, X))
    np.testing.assert_allclose(two_steps, parallel_transport(U, V, X), atol=1e-12)


# -- batches and dtypes --------------------------------------------------------


def test_batched_equals_looped() -> None:
    rng = np.random.default_rng(18)
    U = random_point(8, 3, rng=rng, batch=5)
    V = random_point(8, 3, rng=rng, batch=5)
    X = tangent(U, rng)
    for name, f, args in [
        ("log", log, (U, V)),
        ("exp", exp, (U, X)),
        ("retraction", retraction, (U, X)),
        ("projector", projector, (U,)),
        ("project_tangent", project_tangent, (U, X)),
        ("geodesic", lambda a, b: geodesic(a, b, 0.3), (U, V)),
        ("parallel_transport", parallel_transport, (U, V, X)),
    ]:
        batched = f(*args)
        looped = np.stack([f(*(a[i] for a in args)) for i in range(5)])
        np.testing.assert_allclose(batched, looped, atol=1e-14, err_msg=name)


def test_float32_inputs_return_float64() -> None:
    rng = np.random.default_rng(19)
    U = random_point(16, 4, rng=rng)
    V = random_point(16, 4, rng=rng)
    X = tangent(U, rng)
    U32, V32, X32 = (a.astype(np.float32) for a in (U, V, X))
    for f, args in [
        (log, (U32, V32)),
        (exp, (U32, X32)),
        (retraction, (U32, X32)),
        (projector, (U32,)),
        (project_tangent, (U32, X32)),
        (parallel_transport, (U32, V32, X32)),
    ]:
        assert f(*args).dtype == np.float64
    # float32 rounding of the inputs perturbs the result by ~1e-7
    np.testing.assert_allclose(log(U32, V32), log(U, V), atol=1e-5)
    assert as_point(U32).dtype == np.float64
