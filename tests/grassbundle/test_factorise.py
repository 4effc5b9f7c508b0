"""grassbundle.factorise: every method against its definition, computed here from scratch.

The references below use only numpy's ``eigh``/``svd``/``cholesky`` on the
definitions (``N_l = W_l W_l^T``, ``M_l = W_l C_l W_l^T``, the bundle's
``K_g``, SVD-LLM's and Basis Sharing's whitened SVDs), never the code under
test.  Subspaces are compared through reconstructed weights ``W'_l`` or
projectors, with a tolerance from the eigengap that decides them
(``1e-9 + 1e3 eps mu_1 / (mu_d - mu_{d+1})``: an eigensolver moves a
subspace by about ``eps ||K|| / gap``), never through signs or orders that
roundoff decides.
"""

from __future__ import annotations

import math
import warnings

import grassbundle as gb
import numpy as np
import pytest
import scipy.linalg
from grassbundle.baselines import basis_sharing_input
from grassbundle.bundle import BundleProblem, anchor_section, solve
from grassbundle.coupling import solve_coupled
from hypothesis import assume, given
from hypothesis import strategies as st

EPS = float(np.finfo(np.float64).eps)


# -- references, from the definitions ------------------------------------------


def _family(L: int, m: int, n: int, seed: int, tokens: int | None = None):  # type: ignore[no-untyped-def]
    """Gaussian weights with per-layer scales, anisotropic covariances X X^T / T."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((L, m, n)) * rng.uniform(0.5, 2.0, size=(L, 1, 1))
    T = tokens if tokens is not None else 3 * n
    X = rng.standard_normal((L, n, T)) * np.geomspace(2.0, 0.2, n)[None, :, None]
    C = X @ np.swapaxes(X, 1, 2) / T
    return W, C


def _top(K: np.ndarray, d: int) -> tuple[np.ndarray, float]:
    """Projector onto the top-d eigenspace of symmetric K and the tolerance its gap allows."""
    mu, V = np.linalg.eigh(0.5 * (K + K.T))
    mu, V = mu[::-1], V[:, ::-1]
    gap = mu[d - 1] - mu[d] if d < len(mu) else mu[d - 1]
    tol = 1e-9 + 1e3 * EPS * abs(mu[0]) / max(gap, 1e-300)
    return V[:, :d] @ V[:, :d].T, tol


def _rel_gap(K: np.ndarray, d: int) -> float:
    mu = np.linalg.eigvalsh(K)[::-1]
    return float((mu[d - 1] - mu[d]) / mu[0]) if d < len(mu) else 1.0


def _whitened_truncation(W: np.ndarray, C: np.ndarray, d: int) -> np.ndarray:
    """SVD-LLM as its authors write it: U_d Sigma_d V_d^T S^{-1}, S S^T = C (Cholesky)."""
    S = np.linalg.cholesky(C)
    U, s, Vt = np.linalg.svd(W @ S, full_matrices=False)
    core = (U[:, :d] * s[:d]) @ Vt[:d]
    return scipy.linalg.solve_triangular(S, core.T, trans="T", lower=True).T


def _authors_basis_sharing(W: np.ndarray, C: np.ndarray, d: int, k: int) -> list[np.ndarray]:
    """Basis Sharing's recipe: Cholesky of the summed Gram, stacked SVD, B = V_d^T S^{-1}."""
    L = W.shape[0]
    out = []
    for start in range(0, L, k):
        members = range(start, min(start + k, L))
        S = np.linalg.cholesky(sum(C[l] for l in members))
        _, _, Vt = np.linalg.svd(np.concatenate([W[l] @ S for l in members]), full_matrices=False)
        Vd = Vt[:d].T
        B = scipy.linalg.solve_triangular(S, Vd, trans="T", lower=True).T
        out += [(W[l] @ S @ Vd) @ B for l in members]
    return out


def _check_errors(f: gb.Factorisation, W: np.ndarray, C: np.ndarray | None) -> None:
    """The reported errors are those of the factors' own product, from the definitions.

    The package computes energies as trace minus projected norm (absolute
    roundoff ~ eps * total); 1e-10 of the layer's total leaves a wide margin.
    """
    for l in range(W.shape[0]):
        E = W[l] - f.left(l) @ f.right(l)
        total = float(np.sum(W[l] * W[l]))
        assert f.frobenius_error[l] == pytest.approx(np.sum(E * E), abs=1e-10 * total)
        assert f.frobenius_fraction[l] == pytest.approx(np.sum(E * E) / total, abs=1e-10)
        if C is None:
            assert f.activation_error is None and f.activation_fraction is None
            continue
        assert f.activation_error is not None and f.activation_fraction is not None
        act_total = float(np.trace(W[l] @ C[l] @ W[l].T))
        act = float(np.trace(E @ C[l] @ E.T))
        assert f.activation_error[l] == pytest.approx(act, abs=1e-10 * act_total)
        assert f.activation_fraction[l] == pytest.approx(act / act_total, abs=1e-10)


def _check_shapes_and_sharing(f: gb.Factorisation, L: int, m: int, n: int) -> None:
    G = int(f.groups.max()) + 1
    assert len(f.shared) == G and len(f.layer_factors) == L
    assert f.groups.shape == (L,) and f.ranks.shape == (L,)
    for l in range(L):
        d, g = int(f.ranks[l]), int(f.groups[l])
        left, right = f.left(l), f.right(l)
        assert left.shape == (m, d) and right.shape == (d, n)
        if f.side == "left":
            assert left is f.shared[g] and right is f.layer_factors[l]
        else:
            assert right is f.shared[g] and left is f.layer_factors[l]
        np.testing.assert_array_equal(f.weight(l), left @ right)
    # each shared factor counted once
    kept = sum(a.size for a in f.shared) + sum(b.size for b in f.layer_factors)
    assert f.params_kept == kept and f.params_dense == L * m * n


# -- the methods ------------------------------------------------------------------


@given(
    L=st.integers(1, 4),
    m=st.integers(2, 9),
    n=st.integers(1, 9),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_svd_is_eckart_young(L: int, m: int, n: int, data: st.DataObject, seed: int) -> None:
    d = data.draw(st.integers(1, min(m - 1, n)))
    W, _ = _family(L, m, n, seed)
    assume(all(_rel_gap(W[l] @ W[l].T, d) > 1e-6 for l in range(L)))
    f = gb.factorise(W, None, "svd", d)
    assert f.method == "svd" and f.side == "left"
    np.testing.assert_array_equal(f.groups, np.arange(L))
    np.testing.assert_array_equal(f.ranks, np.full(L, d))
    for l in range(L):
        U, s, Vt = np.linalg.svd(W[l], full_matrices=False)
        ref = (U[:, :d] * s[:d]) @ Vt[:d]
        _, tol = _top(W[l] @ W[l].T, d)
        scale = np.linalg.norm(W[l], 2)
        np.testing.assert_allclose(f.weight(l), ref, rtol=0, atol=tol * scale)
        # the shared factor is an orthonormal basis, the layer's factor U^T W_l
        U_l = f.left(l)
        np.testing.assert_allclose(U_l.T @ U_l, np.eye(d), rtol=0, atol=1e-12)
        np.testing.assert_allclose(f.right(l), U_l.T @ W[l], rtol=0, atol=1e-12 * scale)
        # Eckart-Young: the error is the tail of the spectrum
        tail = float(np.sum(s[d:] ** 2))
        assert f.frobenius_error[l] == pytest.approx(tail, abs=1e-10 * np.sum(s**2))
    _check_errors(f, W, None)
    _check_shapes_and_sharing(f, L, m, n)
    assert f.params_kept == L * (m * d + d * n)


def test_svd_reports_activation_errors_when_given_c() -> None:
    W, C = _family(3, 8, 6, seed=1)
    f = gb.factorise(W, C, "svd", 3)
    _check_errors(f, W, C)
    np.testing.assert_allclose(
        [f.weight(l) for l in range(3)],
        [gb.factorise(W, None, "svd", 3).weight(l) for l in range(3)],
        rtol=0,
        atol=1e-13,
    )


@pytest.mark.parametrize(("L", "m", "n", "d"), [(3, 8, 6, 2), (2, 5, 9, 4), (4, 10, 10, 5)])
def test_svd_llm_is_the_whitened_truncation(L: int, m: int, n: int, d: int) -> None:
    W, C = _family(L, m, n, seed=L + m + n)
    f = gb.factorise(W, C, "svd-llm", d)
    assert f.side == "left"
    for l in range(L):
        M = W[l] @ C[l] @ W[l].T
        _, tol = _top(M, d)
        scale = np.linalg.norm(W[l], 2)
        np.testing.assert_allclose(
            f.weight(l), _whitened_truncation(W[l], C[l], d), rtol=0, atol=tol * scale * 10
        )
        # Ky Fan: the activation error is the sum of the m - d smallest eigenvalues of M
        mu = np.linalg.eigvalsh(M)
        assert f.activation_error[l] == pytest.approx(mu[:-d].sum(), abs=1e-10 * mu.sum())  # type: ignore[index]
        assert f.activation_fraction[l] == pytest.approx(mu[:-d].sum() / mu.sum(), abs=1e-10)  # type: ignore[index]
    _check_errors(f, W, C)
    _check_shapes_and_sharing(f, L, m, n)


def _bundle_reference(
    W: np.ndarray, C: np.ndarray, d: int, lam: float, k: int, metric: str
) -> tuple[list[np.ndarray], list[float]]:
    """Per-layer projectors of the minimiser of J_{lam,k}, from its definition.

    omega_l = 1 / ||W_l||_F^2; E_l = N_l or M_l; anchors A_l = top-d of M_l;
    K_g = sum_{l in g} [omega_l E_l + (lam/d) A_l A_l^T] (lam = inf: sum A_l A_l^T).
    """
    L = W.shape[0]
    M = [W[l] @ C[l] @ W[l].T for l in range(L)]
    E = [W[l] @ W[l].T for l in range(L)] if metric == "weight" else M
    omega = [1.0 / float(np.sum(W[l] ** 2)) for l in range(L)]
    anchors = [_top(M[l], d)[0] for l in range(L)]
    P, tols = [], []
    for start in range(0, L, k):
        g = range(start, min(start + k, L))
        if math.isinf(lam):
            K = sum(anchors[l] for l in g)
        else:
            K = sum(omega[l] * E[l] + (lam / d) * anchors[l] for l in g)
        Pg, tol = _top(K, d)
        P += [Pg] * len(g)
        tols += [tol] * len(g)
    return P, tols


@given(
    lam=st.sampled_from([0.0, 0.1, 2.0, 50.0, math.inf]),
    k=st.integers(1, 4),
    metric=st.sampled_from(["weight", "activation"]),
    seed=st.integers(0, 2**16),
)
def test_bundle_is_the_closed_form_minimiser(lam: float, k: int, metric: str, seed: int) -> None:
    L, m, n, d = 4, 7, 6, 2
    W, C = _family(L, m, n, seed)
    M = [W[l] @ C[l] @ W[l].T for l in range(L)]
    assume(all(_rel_gap(Ml, d) > 1e-4 for Ml in M))  # anchors well defined
    P, tols = _bundle_reference(W, C, d, lam, k, metric)
    assume(max(tols) < 1e-6)
    f = gb.factorise(W, C, "bundle", d, lam=lam, tying=k, metric=metric)
    np.testing.assert_array_equal(f.groups, np.arange(L) // k)
    for l in range(L):
        U = f.left(l)
        np.testing.assert_allclose(U @ U.T, P[l], rtol=0, atol=tols[l])
        scale = np.linalg.norm(W[l], 2)
        np.testing.assert_allclose(f.weight(l), P[l] @ W[l], rtol=0, atol=tols[l] * scale)
    _check_errors(f, W, C)
    _check_shapes_and_sharing(f, L, m, n)
    G = -(-L // k)
    assert f.params_kept == G * m * d + L * d * n


def test_bundle_weight_metric_at_lam_zero_needs_no_covariance() -> None:
    W, _ = _family(4, 6, 5, seed=3)
    f = gb.factorise(W, None, "bundle", 2, tying=2)
    assert f.activation_error is None and f.activation_fraction is None
    for start in (0, 2):
        K = sum(W[l] @ W[l].T / np.sum(W[l] ** 2) for l in (start, start + 1))
        P, tol = _top(K, 2)
        for l in (start, start + 1):
            np.testing.assert_allclose(f.left(l) @ f.left(l).T, P, rtol=0, atol=tol)
    assert f.left(0) is f.left(1) and f.left(2) is f.left(3) and f.left(1) is not f.left(2)


def test_soft_coupling_is_a_fixed_point_of_exact_block_steps() -> None:
    """Every U_l is the top-d eigenspace of its block matrix with the neighbours fixed.

    K_l = omega_l N_l + (lam/d) P_{A_l} + (mu/d) (P_{U_{l-1}} + P_{U_{l+1}})
    (the coupled energy's block minimiser).  The solver stops when a sweep
    gains less than 1e-12 of the energy's scale, which leaves each block
    within about sqrt(1e-12 scale / gap) ~ 1e-5 of its minimiser (measured:
    1e-6 on seeds 0 to 4 of this problem); 1e-4.
    """
    L, d, lam, mu = 4, 2, 0.5, 2.0
    W, C = _family(L, 7, 6, seed=5)
    f = gb.factorise(W, C, "bundle", d, lam=lam, coupling=mu)
    np.testing.assert_array_equal(f.groups, np.arange(L))
    M = [W[l] @ C[l] @ W[l].T for l in range(L)]
    PA = [_top(Ml, d)[0] for Ml in M]
    PU = [f.left(l) @ f.left(l).T for l in range(L)]
    for l in range(L):
        K = W[l] @ W[l].T / np.sum(W[l] ** 2) + (lam / d) * PA[l]
        K = K + (mu / d) * sum(PU[j] for j in (l - 1, l + 1) if 0 <= j < L)
        np.testing.assert_allclose(PU[l], _top(K, d)[0], rtol=0, atol=1e-4)

    def energy(P: list[np.ndarray]) -> float:
        w = sum(np.sum((W[l] - P[l] @ W[l]) ** 2) / np.sum(W[l] ** 2) for l in range(L))
        a = sum(np.sum((P[l] - PA[l]) ** 2) / (2 * d) for l in range(L))
        c = sum(np.sum((P[l] - P[l + 1]) ** 2) / (2 * d) for l in range(L - 1))
        return float(w + lam * a + mu * c)

    # no worse than the untied section it starts from (mu = 0 optimum)
    free, _ = _bundle_reference(W, C, d, lam, 1, "weight")
    assert energy(PU) <= energy(free) + 1e-12
    _check_errors(f, W, C)
    _check_shapes_and_sharing(f, L, 7, 6)


@pytest.mark.parametrize(("L", "k"), [(4, 2), (5, 2), (3, 3), (3, 1)])
def test_basis_sharing_is_the_authors_input_side_construction(L: int, k: int) -> None:
    m, n, d = 9, 7, 3
    W, C = _family(L, m, n, seed=10 * L + k, tokens=60)
    f = gb.factorise(W, C, "basis-sharing", d, group_size=k)
    assert f.side == "right"
    np.testing.assert_array_equal(f.groups, np.arange(L) // k)
    ref = _authors_basis_sharing(W, C, d, k)
    for l in range(L):
        # both routes are backward stable; the summed Gram's condition number is ~100 here
        np.testing.assert_allclose(f.weight(l), ref[l], rtol=0, atol=1e-9 * np.abs(ref[l]).max())
        # the shared factor is the group's input-side basis: W'_l lies in its row space
        B = f.shared[f.groups[l]]
        Q, _ = np.linalg.qr(B.T)
        Wl = f.weight(l)
        np.testing.assert_allclose(Wl - Wl @ Q @ Q.T, 0.0, atol=1e-10 * np.abs(Wl).max())
    _check_errors(f, W, C)
    _check_shapes_and_sharing(f, L, m, n)
    G = -(-L // k)
    assert f.params_kept == G * d * n + L * m * d


def test_per_layer_ranks_are_svd_llm_at_each_rank() -> None:
    L, m, n = 4, 8, 6
    W, C = _family(L, m, n, seed=7)
    ranks = [1, 3, 2, 5]
    f = gb.factorise(W, C, "svd-llm", None, ranks=ranks)
    np.testing.assert_array_equal(f.ranks, ranks)
    np.testing.assert_array_equal(f.groups, np.arange(L))
    assert f.side == "left"
    for l, d in enumerate(ranks):
        _, tol = _top(W[l] @ C[l] @ W[l].T, d)
        scale = np.linalg.norm(W[l], 2)
        np.testing.assert_allclose(
            f.weight(l), _whitened_truncation(W[l], C[l], d), rtol=0, atol=10 * tol * scale
        )
    _check_errors(f, W, C)
    _check_shapes_and_sharing(f, L, m, n)
    assert f.params_kept == sum(ranks) * (m + n)


# -- the same numbers as the routines the adapter called --------------------------


def test_energies_are_those_of_the_sections_and_of_basis_sharing() -> None:
    W, C = _family(4, 8, 7, seed=11)
    problem = BundleProblem(W, C, rank=3)
    for f, sec in [
        (gb.factorise(W, C, "svd-llm", 3), anchor_section(problem)),
        (gb.factorise(W, C, "svd", 3), solve(problem, 0.0, 1)),
        (gb.factorise(W, C, "bundle", 3, lam=0.5, tying=3), solve(problem, 0.5, 3)),
    ]:
        e = problem.layer_energies(sec.layer_bases)
        np.testing.assert_array_equal(f.frobenius_error, e["frobenius"])
        np.testing.assert_array_equal(f.activation_error, e["activation"])  # type: ignore[arg-type]
        np.testing.assert_array_equal(f.frobenius_fraction, sec.frobenius_error)
        np.testing.assert_array_equal(f.activation_fraction, sec.activation_error)  # type: ignore[arg-type]
        for g in range(sec.bases.shape[0]):
            np.testing.assert_array_equal(f.shared[g], sec.bases[g])
    act = BundleProblem(W, C, rank=3, metric="activation")
    f = gb.factorise(W, C, "bundle", 3, lam=1.0, tying=2, metric="activation")
    np.testing.assert_array_equal(f.activation_fraction, solve(act, 1.0, 2).activation_error)  # type: ignore[arg-type]
    coupled = solve_coupled(problem, 0.5, 2.0)
    f = gb.factorise(W, C, "bundle", 3, lam=0.5, coupling=2.0)
    e = problem.layer_energies(coupled.bases)
    np.testing.assert_array_equal(f.frobenius_error, e["frobenius"])
    share = basis_sharing_input(W, C, 3, 2)
    f = gb.factorise(W, C, "basis-sharing", 3)
    np.testing.assert_array_equal(f.frobenius_error, share.frobenius_error)
    np.testing.assert_array_equal(f.activation_error, share.activation_error)  # type: ignore[arg-type]


# -- zero activation energy -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("svd-llm", {}),
        ("basis-sharing", {}),
        ("bundle", {"lam": math.inf}),
        ("bundle", {"metric": "activation"}),
        ("svd-llm", {"ranks": [2, 2, 2]}),
    ],
)
def test_zero_activation_energy_is_named_where_c_is_needed(method: str, kwargs: dict) -> None:  # type: ignore[type-arg]
    W, C = _family(3, 6, 5, seed=2)
    C[1] = 0.0
    rank = None if "ranks" in kwargs else 2
    with pytest.raises(ValueError, match=r"zero activation energy .* in layers \[1\]"):
        gb.factorise(W, C, method, rank, **kwargs)


def test_zero_activation_energy_where_c_only_reports_is_a_zero_fraction() -> None:
    W, C = _family(3, 6, 5, seed=2)
    C[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 warning either
        f = gb.factorise(W, C, "svd", 2)
    assert f.activation_error is not None and f.activation_fraction is not None
    assert f.activation_error[1] == 0.0 and f.activation_fraction[1] == 0.0
    assert f.activation_fraction[0] > 0 and f.activation_fraction[2] > 0


# -- errors name the value ------------------------------------------------------


def _bad_calls():  # type: ignore[no-untyped-def]
    W, C = _family(3, 6, 5, seed=4)
    Wn = W.copy()
    Wn[2, 1, 1] = np.nan
    return [
        (lambda: gb.factorise(W, C, "pca", 2), "unknown method 'pca'"),
        (lambda: gb.factorise(W, C, "svd", 2, lam=1.0), "lam applies to method 'bundle'"),
        (lambda: gb.factorise(W, C, "svd-llm", 2, tying=2), "tying applies to method 'bundle'"),
        (lambda: gb.factorise(W, C, "bundle", 2, group_size=3), "group_size applies to"),
        (lambda: gb.factorise(W, C, "basis-sharing", None, ranks=[1, 2, 3]), "ranks applies to"),
        (
            lambda: gb.factorise(W, C, "bundle", None, ranks=[1, 2, 3], lam=0.5),
            "per-group ranks of the bundle need the tied corner",
        ),
        (
            lambda: gb.factorise(W, C, "bundle", None, ranks=[1, 2, 2], tying=2),
            "equal within a tied group",
        ),
        (lambda: gb.factorise(W, None, "svd-llm", 2), "'svd-llm' needs the input covariances"),
        (lambda: gb.factorise(W, None, "basis-sharing", 2), "needs the input covariances"),
        (
            lambda: gb.factorise(W, None, "bundle", 2, lam=0.1),
            "'bundle' with metric='weight' and lam = 0.1 needs the input",
        ),
        (
            lambda: gb.factorise(W, None, "bundle", 2, metric="activation"),
            "metric='activation'.* needs the input",
        ),
        (lambda: gb.factorise(W[0], C, "svd", 2), r"W must have shape \(L, m, n\)"),
        (lambda: gb.factorise(Wn, C, "svd", 2), "W must have finite entries"),
        (lambda: gb.factorise(W, C[:2], "svd-llm", 2), r"C must have shape \(L, n, n\)"),
        (lambda: gb.factorise(W, C, "svd", 0), "got rank = 0"),
        (lambda: gb.factorise(W, C, "svd", 6), "got rank = 6 with m = 6"),
        (lambda: gb.factorise(W, C, "svd-llm", True), "rank must be an integer; got rank = True"),
        (lambda: gb.factorise(W, C, "basis-sharing", 6), "got d = 6"),
        (lambda: gb.factorise(W, C, "svd-llm", None), "need a rank"),
        (lambda: gb.factorise(W, C, "svd-llm", 2, ranks=[2, 2, 2]), "not both"),
        (lambda: gb.factorise(W, C, "svd-llm", None, ranks=[2, 2]), "ranks must be 3 integers"),
        (lambda: gb.factorise(W, C, "svd-llm", None, ranks=[2, 6, 2]), r"got ranks\[1\] = 6"),
        (lambda: gb.factorise(W, C, "bundle", 2, tying=4), "got k = 4"),
        (lambda: gb.factorise(W, C, "bundle", 2, lam=-1.0), "got lam = -1.0"),
        (lambda: gb.factorise(W, C, "bundle", 2, metric="act"), "got metric = 'act'"),
        (lambda: gb.factorise(W, C, "bundle", 2, coupling=-1.0), "got coupling = -1.0"),
        (lambda: gb.factorise(W, C, "bundle", 2, coupling=1.0, tying=2), "got tying = 2"),
        (lambda: gb.factorise(W, C, "bundle", 2, coupling=1.0, lam=math.inf), "got lam = inf"),
        (lambda: gb.factorise(W, C, "basis-sharing", 2, group_size=4), "got k = 4"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_errors_name_the_value(i: int) -> None:
    call, match = _bad_calls()[i]
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# -- reconstruction_errors ----------------------------------------------------------


@given(L=st.integers(1, 3), m=st.integers(1, 6), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_reconstruction_errors_are_token_averages(L: int, m: int, n: int, seed: int) -> None:
    """Every error is the average over tokens it stands for.

    With tokens x_t (original input) and x_hat_t (compressed model's input):
    C = mean x x^T, C_hat = mean x_hat x_hat^T, C_cross = mean x x_hat^T, and
    the errors are means of squared norms; both sides are sums of T terms of
    size ||W||^2 |x|^2, equal to ~1e-12 of that.
    """
    rng = np.random.default_rng(seed)
    T = 20
    W = rng.standard_normal((L, m, n))
    W_hat = W + 0.3 * rng.standard_normal((L, m, n))
    X = rng.standard_normal((L, T, n))
    X_hat = X + 0.2 * rng.standard_normal((L, T, n))
    C = np.swapaxes(X, 1, 2) @ X / T
    C_hat = np.swapaxes(X_hat, 1, 2) @ X_hat / T
    C_cross = np.swapaxes(X, 1, 2) @ X_hat / T
    r = gb.reconstruction_errors(W, W_hat, C, C_hat=C_hat, C_cross=C_cross)
    for l in range(L):
        E = W[l] - W_hat[l]
        scale = np.sum(W[l] ** 2 + W_hat[l] ** 2) * np.mean(np.sum(X[l] ** 2 + X_hat[l] ** 2, 1))
        assert r.frobenius_error[l] == pytest.approx(np.sum(E * E), rel=1e-12)
        assert r.frobenius_total[l] == pytest.approx(np.sum(W[l] ** 2), rel=1e-12)
        act = np.mean(np.sum((X[l] @ E.T) ** 2, axis=1))
        assert r.activation_error[l] == pytest.approx(act, abs=1e-12 * scale)  # type: ignore[index]
        tot = np.mean(np.sum((X[l] @ W[l].T) ** 2, axis=1))
        assert r.activation_total[l] == pytest.approx(tot, abs=1e-12 * scale)  # type: ignore[index]
        out = np.mean(np.sum((X[l] @ W[l].T - X_hat[l] @ W_hat[l].T) ** 2, axis=1))
        assert r.output_error[l] == pytest.approx(out, abs=1e-12 * scale)  # type: ignore[index]
        assert r.activation_fraction[l] == pytest.approx(act / tot, rel=1e-8)  # type: ignore[index]


def test_reconstruction_errors_of_one_map_and_without_c() -> None:
    rng = np.random.default_rng(0)
    W, W_hat = rng.standard_normal((2, 5, 4))
    r = gb.reconstruction_errors(W, W_hat)
    assert r.frobenius_error.shape == (1,)
    assert r.activation_error is None and r.activation_fraction is None
    assert r.output_error is None
    assert r.frobenius_fraction[0] == pytest.approx(np.sum((W - W_hat) ** 2) / np.sum(W**2))
    # zero total: fraction 0, not NaN
    z = gb.reconstruction_errors(np.zeros((4, 3)), np.zeros((4, 3)), np.eye(3))
    assert z.frobenius_fraction[0] == 0.0 and z.activation_fraction[0] == 0.0  # type: ignore[index]


def test_reconstruction_errors_reject_bad_input() -> None:
    W = np.ones((2, 4, 3))
    C = np.broadcast_to(np.eye(3), (2, 3, 3))
    with pytest.raises(ValueError, match=r"W_hat must have the shape of W"):
        gb.reconstruction_errors(W, W[:1])
    with pytest.raises(ValueError, match="C_hat and C_cross go together"):
        gb.reconstruction_errors(W, W, C, C_hat=C)
    with pytest.raises(ValueError, match="needs C"):
        gb.reconstruction_errors(W, W, C_hat=C, C_cross=C)
    with pytest.raises(ValueError, match=r"C must have shape"):
        gb.reconstruction_errors(W, W, np.eye(4))
    bad = W.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="W_hat must have finite entries"):
        gb.reconstruction_errors(W, bad)


@pytest.mark.parametrize("metric", ["weight", "activation"])
def test_per_group_ranks_are_each_groups_tied_corner(metric: str) -> None:
    """Tied corner with a rank per group: each group's basis spans the top-d_g eigenspace of
    its own sum_l omega_l E_l matrix (omega_l = 1/||W_l||_F^2), computed here with eigh."""
    rng = np.random.default_rng(7)
    L, m, n, k = 5, 6, 4, 2
    W = rng.standard_normal((L, m, n))
    X = rng.standard_normal((L, 40, n))
    C = np.einsum("lti,ltj->lij", X, X) / 40
    ranks = [3, 3, 1, 1, 2]  # groups {0,1}, {2,3}, {4}
    f = gb.factorise(W, C, "bundle", None, ranks=ranks, tying=k, metric=metric)
    np.testing.assert_array_equal(f.groups, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(f.ranks, ranks)
    for g, layers in enumerate([[0, 1], [2, 3], [4]]):
        d = ranks[layers[0]]
        K = np.zeros((m, m))
        for l in layers:
            E = W[l] @ C[l] @ W[l].T if metric == "activation" else W[l] @ W[l].T
            K += E / np.sum(W[l] ** 2)
        vals, vecs = np.linalg.eigh(K)
        assert vals[-d] - vals[-d - 1] > 1e-6  # a gap: the subspace is unique
        P_ref = vecs[:, -d:] @ vecs[:, -d:].T
        U = f.shared[g]
        assert U.shape == (m, d)
        # projectors agree to float64 roundoff scaled by the gap (Davis-Kahan)
        tol = 1e-9 / (vals[-d] - vals[-d - 1])
        np.testing.assert_allclose(U @ U.T, P_ref, atol=tol)
        for l in layers:
            np.testing.assert_allclose(f.weight(l), P_ref @ W[l], atol=tol * np.abs(W[l]).max())
            E = W[l] - P_ref @ W[l]
            np.testing.assert_allclose(f.frobenius_error[l], np.sum(E * E), rtol=1e-8)
    assert f.params_kept == sum(
        ranks[g * k] * (m + len(ls) * n) for g, ls in enumerate([[0, 1], [2, 3], [4]])
    )
