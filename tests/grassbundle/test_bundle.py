"""The bundle objective, its closed-form minimiser and the phase diagram.

References are computed here independently of :mod:`grassbundle.bundle`:
projectors and norms written out directly, dense ``eigh`` / ``svd`` of the
``m x m`` matrices.
"""

from __future__ import annotations

import math

import grassbundle as gb
import numpy as np
import pytest
from grassbundle.bundle import BundleProblem, group_index

# Subspaces from different but exact routes (Gram vs dense eigh vs SVD) agree
# to eps * ||K|| / eigengap; the random problems below have relative gaps
# above 1e-2, so 1e-10 in the principal-angle sine is a safe bound.
SINE_ATOL = 1e-10
# Objective values are differences of O(scale) terms computed with roundoff
# ~ m * eps * scale; 1e-10 relative is far above that.
OBJ_RTOL = 1e-10


def frame(m: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((m, d)))[0]


def family(L: int, m: int, n: int, rng: np.random.Generator, decay: float = 0.2):
    r = min(m, n)
    W = np.empty((L, m, n))
    for l in range(L):
        s = np.exp(-decay * np.arange(r)) * np.exp(rng.uniform(-1, 1))
        W[l] = (frame(m, r, rng) * s) @ frame(n, r, rng).T
    X = rng.standard_normal((L, n, 2 * n)) * np.exp(-0.1 * np.arange(n))[None, :, None]
    C = X @ np.swapaxes(X, -1, -2) / (2 * n)
    return W, C


def sine(U: np.ndarray, V: np.ndarray) -> float:
    """Largest principal-angle sine via projectors (independent of principal_angles)."""
    return float(np.linalg.norm(U @ U.T - V @ V.T, 2))


def top(K: np.ndarray, d: int) -> np.ndarray:
    _, V = np.linalg.eigh(K)
    return V[:, ::-1][:, :d]


def sqrtm_psd(C: np.ndarray) -> np.ndarray:
    ev, V = np.linalg.eigh(C)
    return (V * np.sqrt(np.clip(ev, 0, None))) @ V.T


@pytest.fixture
def prob() -> BundleProblem:
    W, C = family(5, 14, 10, np.random.default_rng(7))
    return BundleProblem(W, C, rank=3)


def dense_K(p: BundleProblem, layers, lam: float) -> np.ndarray:
    """K_g(lam) written out from the definitions."""
    d = p.rank
    K = np.zeros((p.m, p.m))
    for l in layers:
        E = p.W[l] @ p.W[l].T if p.metric == "weight" else p.W[l] @ p.C[l] @ p.W[l].T
        Cl = p.C[l] if p.C is not None else np.eye(p.n)
        A = top(p.W[l] @ Cl @ p.W[l].T, d)
        K += p.omega[l] * E + (lam / d) * (A @ A.T)
    return K


# -- input validation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 14}, "rank"),
        ({"rank": 11}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rank": 3, "metric": "cosine"}, "metric"),
        ({"rank": 3, "omega": [1.0, 1.0]}, "omega"),
        ({"rank": 3, "omega": [1.0, -1.0, 1.0, 1.0, 1.0]}, "omega"),
    ],
)
def test_problem_rejects_bad_parameters(kwargs, match):
    W, C = family(5, 14, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        BundleProblem(W, C, **kwargs)


def test_problem_rejects_bad_arrays():
    W, C = family(3, 8, 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        BundleProblem(W[0], rank=2)
    Wn = W.copy()
    Wn[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        BundleProblem(Wn, rank=2)
    Cn = C.copy()
    Cn[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        BundleProblem(W, Cn, rank=2)
    with pytest.raises(ValueError, match=r"C must have shape"):
        BundleProblem(W, C[:, :5, :5], rank=2)
    Ca = C.copy()
    Ca[1, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        BundleProblem(W, Ca, rank=2)
    Cneg = C.copy()
    Cneg[2] -= 10 * np.eye(6) * np.linalg.eigvalsh(C[2])[-1]
    with pytest.raises(ValueError, match="positive semi-definite"):
        BundleProblem(W, Cneg, rank=2)
    with pytest.raises(ValueError, match="needs calibration"):
        BundleProblem(W, rank=2, metric="activation")
    Wz = W.copy()
    Wz[0] = 0
    with pytest.raises(ValueError, match="nonzero"):
        BundleProblem(Wz, rank=2)


@pytest.mark.parametrize("lam", [-1.0, math.nan, "x", None])
def test_solve_rejects_bad_lambda(prob, lam):
    with pytest.raises(ValueError, match="lam"):
        gb.solve(prob, lam, 1)


@pytest.mark.parametrize("k", [0, 6, -1, 1.5, True])
def test_solve_rejects_bad_k(prob, k):
    with pytest.raises(ValueError, match="k"):
        gb.solve(prob, 0.0, k)


def test_psd_tolerance_accepts_roundoff_negatives():
    rng = np.random.default_rng(3)
    W, _ = family(2, 8, 6, rng)
    X = rng.standard_normal((6, 3))
    C = np.stack([X @ X.T] * 2)  # rank 3: eigenvalues ~ -1e-16 * max from eigh
    p = BundleProblem(W, C, rank=2)
    assert p.C is not None


# -- definitions ------------------------------------------------------------------


def test_group_index_consecutive_last_shorter():
    np.testing.assert_array_equal(group_index(7, 3), [0, 0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(group_index(4, 4), [0, 0, 0, 0])
    np.testing.assert_array_equal(group_index(4, 1), [0, 1, 2, 3])


def test_terms_match_their_definitions(prob):
    rng = np.random.default_rng(1)
    B = np.stack([frame(prob.m, prob.rank, rng) for _ in range(2)])
    groups = np.array([0, 1, 1, 0, 1])
    lam = 0.7
    sec = gb.evaluate_section(prob, B, groups, lam)
    d = prob.rank
    fro, act, ad = [], [], []
    for l in range(prob.L):
        U = B[groups[l]]
        P = U @ U.T
        Wl, Cl = prob.W[l], prob.C[l]
        R = Wl - P @ Wl
        fro.append(np.linalg.norm(R) ** 2 / np.linalg.norm(Wl) ** 2)
        S = sqrtm_psd(Cl)
        act.append(np.linalg.norm(R @ S) ** 2 / np.trace(Wl @ Cl @ Wl.T))
        A = top(Wl @ Cl @ Wl.T, d)
        ad.append(np.linalg.norm(P - A @ A.T) ** 2 / (2 * d))
    np.testing.assert_allclose(sec.frobenius_error, fro, rtol=1e-10)
    np.testing.assert_allclose(sec.activation_error, act, rtol=1e-10)
    np.testing.assert_allclose(sec.anchor_distance, ad, rtol=1e-9, atol=1e-14)
    omega = 1 / np.linalg.norm(prob.W, axis=(1, 2)) ** 2
    wterm = float(np.sum(omega * np.array(fro) * np.linalg.norm(prob.W, axis=(1, 2)) ** 2))
    assert sec.weight_term == pytest.approx(wterm, rel=1e-10)
    assert sec.anchor_term == pytest.approx(lam * sum(ad), rel=1e-9)
    assert sec.objective == pytest.approx(wterm + lam * sum(ad), rel=1e-10)
    np.testing.assert_allclose(sec.frobenius_error_ratio, np.sqrt(fro), rtol=1e-10)
    np.testing.assert_array_equal(sec.basis(2), B[1])


def test_evaluate_section_rejects_bad_bases(prob):
    rng = np.random.default_rng(2)
    B = frame(prob.m, prob.rank, rng)[None]
    with pytest.raises(ValueError, match="orthonormal"):
        gb.evaluate_section(prob, 2 * B, np.zeros(prob.L, dtype=int))
    with pytest.raises(ValueError, match="shape"):
        gb.evaluate_section(prob, B[:, :, :2], np.zeros(prob.L, dtype=int))
    with pytest.raises(ValueError, match="groups"):
        gb.evaluate_section(prob, B, np.ones(prob.L, dtype=int))
    with pytest.raises(ValueError, match="groups"):
        gb.evaluate_section(prob, B, np.zeros(prob.L - 1, dtype=int))


# -- closed form -------------------------------------------------------------------


def test_plain_svd_is_lambda_zero_untied_weight_metric():
    rng = np.random.default_rng(4)
    W, _ = family(4, 12, 9, rng)
    d = 3
    sec = gb.solve(BundleProblem(W, rank=d), 0.0, 1)
    for l in range(4):
        U, s, _ = np.linalg.svd(W[l])
        assert sine(sec.basis(l), U[:, :d]) < SINE_ATOL
        # Eckart-Young: the error is the tail of the squared singular values
        assert sec.frobenius_error[l] == pytest.approx(np.sum(s[d:] ** 2) / np.sum(s**2), rel=1e-9)


@pytest.mark.parametrize("metric", ["weight", "activation"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 5.0])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_solve_is_top_eigenspace_of_K(metric, lam, k):
    W, C = family(5, 14, 10, np.random.default_rng(11))
    p = BundleProblem(W, C, rank=3, metric=metric)
    sec = gb.solve(p, lam, k)
    groups = group_index(5, k)
    opt = 0.0
    for g in range(groups.max() + 1):
        layers = np.flatnonzero(groups == g)
        K = dense_K(p, layers, lam)
        assert sine(sec.bases[g], top(K, 3)) < SINE_ATOL
        mu = np.linalg.eigvalsh(K)
        opt += np.trace(K) - np.sum(mu[-3:])
    # J - (sum omega tr E + lam L) + ... : the objective equals the Ky Fan optimum
    # up to the constants tr K_g = sum omega tr E + lam * |g|.
    assert sec.objective == pytest.approx(opt, rel=OBJ_RTOL)


def test_solve_thin_and_dense_routes_agree():
    # m = 30 > k * (n + d) for k <= 2 (Gram route); k = 5 forces the dense route.
    W, C = family(5, 30, 4, np.random.default_rng(5))
    p = BundleProblem(W, C, rank=2)
    for k in (1, 2, 5):
        for lam in (0.0, 1.0, math.inf):
            sec = gb.solve(p, lam, k)
            for g in range(sec.bases.shape[0]):
                layers = np.flatnonzero(sec.groups == g)
                K = (
                    dense_K(p, layers, lam)
                    if math.isfinite(lam)
                    else dense_K(p, layers, 1.0) - dense_K(p, layers, 0.0)
                )
                assert sine(sec.bases[g], top(K, 2)) < SINE_ATOL


def test_closed_form_beats_random_sections(prob):
    rng = np.random.default_rng(9)
    for k in (1, 2, 5):
        sec = gb.solve(prob, 0.5, k)
        groups = group_index(prob.L, k)
        for _ in range(20):
            B = np.stack([frame(prob.m, prob.rank, rng) for _ in range(groups.max() + 1)])
            other = gb.evaluate_section(prob, B, groups, 0.5)
            assert other.objective >= sec.objective * (1 - OBJ_RTOL)


def test_lambda_inf_untied_is_the_anchor_and_tied_is_the_l2_core(prob):
    sec = gb.solve(prob, math.inf, 1)
    for l in range(prob.L):
        A = top(prob.W[l] @ prob.C[l] @ prob.W[l].T, prob.rank)
        assert sine(sec.basis(l), A) < SINE_ATOL
    assert np.all(sec.anchor_distance < 1e-14)  # 1 - ||U^T A||^2 / d: roundoff ~ d * eps
    assert math.isinf(sec.objective)
    core = gb.l2_core(prob, 5)
    S = sum(prob.anchors[l] @ prob.anchors[l].T for l in range(prob.L))
    assert sine(core.bases[0], top(S, prob.rank)) < SINE_ATOL


def test_activation_metric_corners(prob):
    pa = BundleProblem(prob.W, prob.C, rank=prob.rank, metric="activation")
    # untied corner is SVD-LLM (the anchor), at every lambda
    for lam in (0.0, 2.0):
        sec = gb.solve(pa, lam, 1)
        assert max(sine(sec.basis(l), pa.anchors[l]) for l in range(pa.L)) < SINE_ATOL
    # anchor_section is the anchors; shared_output_basis is top-d of the unweighted sum of M_l
    anc = gb.anchor_section(prob)
    np.testing.assert_array_equal(anc.bases, prob.anchors)
    bs = gb.shared_output_basis(prob, 2)
    for g, layers in enumerate([[0, 1], [2, 3], [4]]):
        Msum = sum(prob.W[l] @ prob.C[l] @ prob.W[l].T for l in layers)
        assert sine(bs.bases[g], top(Msum, prob.rank)) < SINE_ATOL


def test_shared_output_basis_without_covariance_uses_N():
    W, _ = family(4, 12, 9, np.random.default_rng(6))
    p = BundleProblem(W, rank=2)
    bs = gb.shared_output_basis(p, 4)
    assert sine(bs.bases[0], top(sum(w @ w.T for w in W), 2)) < SINE_ATOL
    assert p.C is None and bs.activation_error is None


def test_float32_input_gives_float64_results():
    W, C = family(3, 10, 8, np.random.default_rng(8))
    p32 = BundleProblem(W.astype(np.float32), C.astype(np.float32), rank=2)
    p64 = BundleProblem(
        W.astype(np.float32).astype(np.float64), C.astype(np.float32).astype(np.float64), rank=2
    )
    s32, s64 = gb.solve(p32, 1.0, 2), gb.solve(p64, 1.0, 2)
    assert s32.bases.dtype == np.float64 and s32.frobenius_error.dtype == np.float64
    # same float64 values through the same code: equal up to roundoff (float32
    # arithmetic anywhere would move the objective by ~1e-7 relative)
    assert s32.objective == pytest.approx(s64.objective, rel=1e-13)


def test_solve_never_forms_wide_matrices_when_thin(monkeypatch):
    """With k (n + d) < m only Gram-sized eigenproblems are solved."""
    import grassbundle.bundle as bundle_mod

    W, C = family(3, 40, 5, np.random.default_rng(10))
    p = BundleProblem(W, C, rank=2)
    p.anchors
    sizes = []

    def spying(real):
        def spy(a, *args, **kw):
            sizes.append(np.shape(a)[-1])
            return real(a, *args, **kw)

        return spy

    monkeypatch.setattr(bundle_mod.np.linalg, "eigh", spying(np.linalg.eigh))
    monkeypatch.setattr(bundle_mod.scipy.linalg, "eigh", spying(bundle_mod.scipy.linalg.eigh))
    gb.solve(p, 1.0, 3)
    assert sizes and max(sizes) < 40


# -- phase diagram -----------------------------------------------------------------


def test_phase_diagram_equals_pointwise_solve(prob):
    lams = [0.0, 0.1, 1.0, 10.0, math.inf]
    ks = [1, 2, 3, 5]
    pd = gb.phase_diagram(prob, lams, ks, return_bases=True)
    assert pd.objective.shape == (4, 5) and pd.frobenius_error.shape == (4, 5, prob.L)
    for qi, k in enumerate(ks):
        for pi, lam in enumerate(lams):
            sec = gb.solve(prob, lam, k)
            if math.isfinite(lam):
                assert pd.objective[qi, pi] == pytest.approx(sec.objective, rel=OBJ_RTOL)
            assert pd.weight_term[qi, pi] == pytest.approx(sec.weight_term, rel=OBJ_RTOL)
            np.testing.assert_allclose(pd.frobenius_error[qi, pi], sec.frobenius_error, rtol=1e-9)
            np.testing.assert_allclose(pd.activation_error[qi, pi], sec.activation_error, rtol=1e-9)
            B = pd.bases[(k, float(lam))]
            assert max(sine(B[g], sec.bases[g]) for g in range(B.shape[0])) < SINE_ATOL
    again = pd.section(prob, 2, 1.0)
    assert again.objective == pytest.approx(pd.objective[1, 2], rel=1e-14)


@pytest.mark.parametrize("metric", ["weight", "activation"])
def test_phase_diagram_dense_route_and_torch_path(metric):
    pytest.importorskip("torch")
    W, C = family(4, 12, 12, np.random.default_rng(12))  # n >= m: projector route
    p = BundleProblem(W, C, rank=3, metric=metric)
    lams, ks = [0.0, 0.5, 4.0], [1, 2, 4]
    ref = gb.phase_diagram(p, lams, ks)
    via_torch = gb.phase_diagram(p, lams, ks, device="cpu")
    np.testing.assert_allclose(via_torch.objective, ref.objective, rtol=OBJ_RTOL)
    for qi, k in enumerate(ks):
        for pi, lam in enumerate(lams):
            sec = gb.solve(p, lam, k)
            assert ref.objective[qi, pi] == pytest.approx(sec.objective, rel=OBJ_RTOL)
            np.testing.assert_allclose(ref.frobenius_error[qi, pi], sec.frobenius_error, rtol=1e-9)
            np.testing.assert_allclose(
                ref.activation_error[qi, pi], sec.activation_error, rtol=1e-9
            )
            np.testing.assert_allclose(
                ref.anchor_distance[qi, pi], sec.anchor_distance, rtol=1e-8, atol=1e-13
            )


@pytest.mark.gpu
def test_phase_diagram_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    W, C = family(4, 64, 64, np.random.default_rng(13))
    p = BundleProblem(W, C, rank=8)
    ref = gb.phase_diagram(p, [0.0, 1.0], [1, 4])
    got = gb.phase_diagram(p, [0.0, 1.0], [1, 4], device="cuda")
    np.testing.assert_allclose(got.objective, ref.objective, rtol=1e-9)


def test_phase_diagram_validates(prob):
    with pytest.raises(ValueError, match="lam"):
        gb.phase_diagram(prob, [0.0, -1.0], [1])
    with pytest.raises(ValueError, match="k"):
        gb.phase_diagram(prob, [0.0], [0])
    with pytest.raises(ValueError, match="return_bases"):
        gb.phase_diagram(prob, [0.0], [1]).section(prob, 1, 0.0)


@pytest.mark.parametrize("shape", [(12, 40, 3), (30, 12, 7)])  # thin Gram route, dense route
def test_partial_eigensolves_match_full_eigh(shape):
    """The top-d routes (MRRR on the top d indices) against a full eigh, to roundoff.

    Tolerance: the span agrees to about ``eps * ||K|| / gap`` (1e-13 with the
    gaps of these seeded spectra), so the captured energy agrees to its
    square times ``||K||``; 1e-12 relative on the energy and 1e-10 on the
    sine of the angles leave room for the Gram route's ``sqrt(mu_1 / mu_d)``
    amplification.
    """
    from grassbundle.bundle import _top_eigenvectors, top_eigenspace_factor

    m, w, d = shape
    rng = np.random.default_rng(m + w)
    F = rng.standard_normal((m, w)) * (1.0 + np.arange(w)) ** -0.6
    K = F @ F.T
    mu, V = np.linalg.eigh(K)
    full = V[:, ::-1][:, :d]
    for U in (_top_eigenvectors(K, d), top_eigenspace_factor(F, d)):
        assert U.shape == (m, d)
        np.testing.assert_allclose(U.T @ U, np.eye(d), atol=1e-12)
        assert sine(U, full) < 1e-10
        captured = np.trace(U.T @ K @ U)
        assert captured == pytest.approx(np.sum(mu[-d:]), rel=1e-12)
