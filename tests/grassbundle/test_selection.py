"""Loss-aware component selection: the claims of grassbundle.selection, from the definitions.

Brute force enumerates every choice (a subset of components, or a rank, or
dense, per unit) of small problems; the claims are checked against it, never
against the solver's own bookkeeping.  Tolerances: losses are sums of at most
a few dozen float64 scores of order 1, compared to 1e-9 absolute.
"""

from __future__ import annotations

import itertools

import grassbundle as gb
import numpy as np
import pytest

TOL = 1e-9


def _options(s, c, D, mode, lo=1, hi=None, forced=False):
    """Every choice of one unit from the definitions: (kept set or None, cost, loss)."""
    R = len(s)
    hi = R if hi is None else hi
    out = []
    if forced:
        return [(None, D, 0.0)]
    for r in range(lo, hi + 1):
        sets = itertools.combinations(range(R), r) if mode == "components" else [range(r)]
        for K in sets:
            removed = [s[i] for i in range(R) if i not in K]
            if D is not None and r * c >= D:
                continue  # break-even: not a factored option where dense is allowed
            out.append((frozenset(K), r * c, float(sum(removed))))
    if D is not None:
        out.append((None, D, 0.0))
    return out


def _brute(scores, costs, dense, budget, mode, **kw):
    """The optimum over every combination of the units' options within the budget."""
    lows = kw.get("min_rank") or [1] * len(scores)
    forced = kw.get("force_dense") or [False] * len(scores)
    per_unit = [
        _options(s, c, D, mode, lo, forced=f)
        for s, c, D, lo, f in zip(scores, costs, dense, lows, forced, strict=True)
    ]
    best = np.inf
    for combo in itertools.product(*per_unit):
        if sum(o[1] for o in combo) <= budget:
            best = min(best, sum(o[2] for o in combo))
    return best


def _problem(rng, U=3, signed=False):
    scores, costs, dense = [], [], []
    for _ in range(U):
        R = int(rng.integers(2, 5))
        s = rng.gamma(1.0, size=R) * np.exp(-np.arange(R) * rng.uniform(0, 1))
        if signed:
            s = s - rng.uniform(0, 0.5, size=R)
        scores.append(s)
        m, n = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        costs.append(m + n)
        dense.append(m * n if rng.random() < 0.7 else None)
    return scores, costs, dense


def _check(sel, scores, costs, dense):
    """Cost and loss recomputed from the kept sets alone."""
    cost = 0
    loss = 0.0
    for u, K in enumerate(sel.kept):
        if K is None:
            assert dense[u] is not None
            cost += dense[u]
        else:
            cost += len(K) * costs[u]
            loss += float(np.sum(np.delete(scores[u], K)))
    assert cost == sel.cost <= sel.budget
    assert abs(loss - sel.loss) <= TOL


@pytest.mark.parametrize("mode", ["components", "rank"])
@pytest.mark.parametrize("seed", range(12))
def test_theorems_selection_bounds_bracket_the_optimum(mode, seed):
    """Feasible; lower_bound <= brute-force optimum <= achieved loss, at random budgets."""
    rng = np.random.default_rng(seed)
    scores, costs, dense = _problem(rng, signed=seed % 3 == 0)
    cheapest = sum(c for c in costs)
    top = sum(
        D if D is not None else len(s) * c for s, c, D in zip(scores, costs, dense, strict=True)
    )
    for budget in rng.integers(cheapest, top + 1, size=3):
        sel = gb.select_components(scores, costs, int(budget), dense_costs=dense, mode=mode)
        _check(sel, scores, costs, dense)
        opt = _brute(scores, costs, dense, int(budget), mode)
        assert sel.lower_bound <= opt + TOL
        assert opt <= sel.loss + TOL


@pytest.mark.parametrize("mode", ["components", "rank"])
@pytest.mark.parametrize("seed", range(12))
def test_theorems_selection_everett(mode, seed):
    """At a budget spent exactly by some multiplier's choice, the selection is optimal.

    The multiplier's choice is computed here from the definitions (each unit
    minimises loss + beta cost over its brute-force options, cheapest at
    ties); Everett's theorem makes it optimal for its own cost, and the
    solver must reach that optimum.
    """
    rng = np.random.default_rng(100 + seed)
    scores, costs, dense = _problem(rng, signed=seed % 2 == 0)
    for beta in rng.uniform(0.0, 0.3, size=3):
        budget = 0
        for s, c, D in zip(scores, costs, dense, strict=True):
            opts = sorted(_options(s, c, D, mode), key=lambda o: o[1])
            values = [o[2] + beta * o[1] for o in opts]
            budget += opts[int(np.argmin(values))][1]
        sel = gb.select_components(scores, costs, budget, dense_costs=dense, mode=mode)
        _check(sel, scores, costs, dense)
        assert abs(sel.loss - _brute(scores, costs, dense, budget, mode)) <= TOL


@pytest.mark.parametrize("seed", range(8))
def test_theorems_selection_components_keeps_the_top_scores(seed):
    """In components mode a unit at rank r keeps r components no other r-set beats."""
    rng = np.random.default_rng(200 + seed)
    scores, costs, dense = _problem(rng, U=4, signed=True)
    budget = sum(costs) + int(rng.integers(0, 40))
    sel = gb.select_components(scores, costs, budget, dense_costs=dense)
    for s, K in zip(scores, sel.kept, strict=True):
        if K is None:
            continue
        best = max(sum(s[list(S)]) for S in itertools.combinations(range(len(s)), len(K)))
        assert float(np.sum(s[K])) >= best - TOL


def test_theorems_selection_break_even_reverts_to_dense():
    """A map whose kept rank would cost at least its dense form stays dense instead.

    A k/v-like 2 x 6 map (cost 8 per component, dense 12): rank 2 costs 16
    > 12, so with a budget that affords it the map is dense, never rank 2;
    rank 1 (8 < 12) remains an option.
    """
    s = [np.array([5.0, 1.0]), np.array([3.0, 2.0, 1.0])]
    costs, dense = [8, 10], [12, 21]
    for budget in range(18, 40):
        sel = gb.select_components(s, costs, budget, dense_costs=dense, mode="rank")
        for u, K in enumerate(sel.kept):
            if K is not None:
                assert len(K) * costs[u] < dense[u]
        assert sel.loss <= _brute(s, costs, dense, budget, "rank") + 1.0 + TOL
    # budget 12 + 10 = 22: the first map dense (loses nothing), the second at rank 1
    sel = gb.select_components(s, costs, 22, dense_costs=dense, mode="rank")
    assert sel.kept[0] is None and sel.dense[0]
    assert sel.loss == pytest.approx(3.0)


def test_selection_constraints_are_kept():
    rng = np.random.default_rng(7)
    scores, costs, _ = _problem(rng, U=4)
    dense = [c * len(s) + 1 for s, c in zip(scores, costs, strict=True)]
    lows = [min(2, len(s)) for s in scores]
    forced = [True, False, False, False]
    budget = dense[0] + sum(lo * c for lo, c in zip(lows[1:], costs[1:], strict=True)) + 5
    sel = gb.select_components(
        scores, costs, budget, dense_costs=dense, min_rank=lows, force_dense=forced
    )
    assert sel.kept[0] is None
    for u in range(1, 4):
        assert sel.kept[u] is None or len(sel.kept[u]) >= lows[u]
    opt = _brute(scores, costs, dense, budget, "components", min_rank=lows, force_dense=forced)
    assert opt <= sel.loss + TOL


def test_selection_rejects_bad_input():
    s = [np.ones(3)]
    with pytest.raises(ValueError, match="below the cheapest"):
        gb.select_components(s, [5], 4)
    with pytest.raises(ValueError, match="costs"):
        gb.select_components(s, [0], 10)
    with pytest.raises(ValueError, match="mode"):
        gb.select_components(s, [5], 10, mode="energy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        gb.select_components([np.array([1.0, np.nan])], [5], 10)
    with pytest.raises(ValueError, match="forced dense"):
        gb.select_components(s, [5], 10, force_dense=[True])


def _loss(W, X, Y):
    return 0.5 * float(np.sum((W @ X - Y) ** 2))


@pytest.mark.parametrize(("m", "n"), [(5, 7), (7, 5), (3, 9)])
def test_theorems_removal_gradient_is_the_directional_derivative(m, n):
    """-u_i^T G W^T u_i is d/dt L(W - t u_i u_i^T W) at 0 (central differences), for a
    least-squares loss whose gradient (W X - Y) X^T is written from its definition;
    and it equals Zero Sum SVD's whitened form -sigma_i u_i^T G S^{-T} v_i (Cholesky S,
    SVD of W S), independently computed."""
    rng = np.random.default_rng(m * 10 + n)
    W = rng.standard_normal((m, n))
    X = rng.standard_normal((n, 40)) * np.linspace(2.0, 0.3, n)[:, None]
    Y = rng.standard_normal((m, 40))
    G = (W @ X - Y) @ X.T
    C = X @ X.T / 40
    mu, U = gb.activation_basis(W, C)
    g = gb.removal_gradients(W, U, G)
    t = 1e-6
    for i in range(U.shape[1]):
        D = np.outer(U[:, i], U[:, i]) @ W
        fd = (_loss(W - t * D, X, Y) - _loss(W + t * D, X, Y)) / (2 * t)
        assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-6 * np.abs(G).max())
    S = np.linalg.cholesky(C)
    Us, sig, Vt = np.linalg.svd(W @ S, full_matrices=False)
    zs = -sig * np.einsum("mi,mn,in->i", Us, G @ np.linalg.inv(S).T, Vt)
    np.testing.assert_allclose(g, zs, rtol=1e-7, atol=1e-9 * np.abs(zs).max())
    np.testing.assert_allclose(mu, sig**2, rtol=1e-9, atol=1e-12 * sig[0] ** 2)
    # stacked per-window gradients give one row each
    rows = gb.removal_gradients(W, U, np.stack([G, 2 * G]))
    np.testing.assert_allclose(rows, np.stack([g, 2 * g]), rtol=1e-12, atol=1e-12)


def test_theorems_activation_basis_prefix_is_svd_llm():
    """The first r columns span SVD-LLM's subspace: U_r U_r^T W equals the whitened
    truncation (W S)_r S^{-1}, computed by SVD."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((6, 9))
    X = rng.standard_normal((9, 50))
    C = X @ X.T / 50
    _, U = gb.activation_basis(W, C)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-12)
    S = np.linalg.cholesky(C)
    Us, sig, Vt = np.linalg.svd(W @ S, full_matrices=False)
    for r in (1, 3, 5):
        ref = (Us[:, :r] * sig[:r]) @ Vt[:r] @ np.linalg.inv(S)
        np.testing.assert_allclose(U[:, :r] @ (U[:, :r].T @ W), ref, atol=1e-10)


@pytest.mark.parametrize(("m", "n", "samples"), [(8, 5, 3), (5, 8, 3), (9, 4, 50)])
def test_theorems_activation_basis_energies(m, n, samples):
    """mu are the eigenvalues of W C W^T (computed here by eigvalsh), U is orthonormal
    and U diag(mu) U^T = W C W^T, also for a singular C (fewer samples than inputs)."""
    rng = np.random.default_rng(m + n + samples)
    W = rng.standard_normal((m, n))
    X = rng.standard_normal((n, samples))
    C = X @ X.T / samples
    mu, U = gb.activation_basis(W, C)
    M = W @ C @ W.T
    ref = np.sort(np.linalg.eigvalsh(M))[::-1][: min(m, n)]
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(mu, np.clip(ref, 0, None), atol=1e-10 * scale)
    np.testing.assert_allclose(U.T @ U, np.eye(min(m, n)), atol=1e-10)
    np.testing.assert_allclose((U * mu) @ U.T, M, atol=1e-10 * scale)
