"""Rank allocation under a parameter budget (:mod:`grassbundle.allocation`).

The theorem tests (named ``test_theorems_allocation_*`` so that ``pytest -k
theorems`` selects them) compare the allocator against brute force over every
integer rank vector of small problems drawn by Hypothesis:

* equal costs: the greedy allocation is optimal;
* any costs: the dynamic programme is optimal;
* any costs: the continuous relaxation bounds the optimum from below, and the
  integer greedy allocation is within one increment of it;
* a fixed knapsack case where integer greedy is strictly suboptimal.

Energies are compared, never ranks: equal gains make several rank vectors
optimal, and which one wins is decided by roundoff.  Tolerance: energies are
sums of at most 20 terms of size <= the spectrum's total, computed in
different orders, so they agree to about ``20 eps * total``; ``1e-12 *
(1 + total)`` is far above that and far below the smallest gain a wrong
allocation gives up (the spectra are drawn away from zero, >= 1e-3).
"""

from __future__ import annotations

import itertools

import grassbundle as gb
import numpy as np
import pytest
from grassbundle.allocation import MAX_DP_WORK, _tails
from grassbundle.bundle import BundleProblem, shared_output_basis
from hypothesis import given
from hypothesis import strategies as st

# -- an independent brute force -------------------------------------------------------


def brute_force(spectra, costs, budget, *, normalise=False, weights=None, lo=0, hi=None, step=1):
    """Least energy over every feasible integer rank vector (and one minimiser)."""
    U = len(spectra)
    w = np.ones(U) if weights is None else np.asarray(weights, dtype=float)
    mus = [np.sort(np.asarray(s, dtype=float))[::-1] for s in spectra]
    los = np.broadcast_to(lo, (U,))
    his = [len(mu) for mu in mus] if hi is None else np.broadcast_to(hi, (U,))
    choices = [[d for d in range(los[u], his[u] + 1) if d % step == 0] for u in range(U)]
    best, arg = np.inf, None
    for ranks in itertools.product(*choices):
        if sum(c * d for c, d in zip(costs, ranks, strict=True)) > budget:
            continue
        e = 0.0
        for u, d in enumerate(ranks):
            tail = float(np.sum(mus[u][d:]))
            e += w[u] * (tail / float(np.sum(mus[u])) if normalise else tail)
        if e < best:
            best, arg = e, ranks
    return best, arg


def tol(spectra) -> float:
    return 1e-12 * (1.0 + sum(float(np.sum(s)) for s in spectra))


@st.composite
def problems(draw, equal_costs: bool):
    seed = draw(st.integers(0, 2**32 - 1))
    U = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    sizes = [draw(st.integers(1, 5)) for _ in range(U)]
    spectra = [1e-3 + rng.exponential(size=r) * rng.uniform(0.1, 10.0) for r in sizes]
    if equal_costs:
        costs = [draw(st.integers(1, 6))] * U
    else:
        costs = [draw(st.integers(1, 9)) for _ in range(U)]
    lo = draw(st.integers(0, 1))
    total = sum(c * r for c, r in zip(costs, sizes, strict=True))
    base = sum(c * lo for c in costs)
    budget = draw(st.integers(base, total))
    normalise = draw(st.booleans())
    return spectra, costs, budget, lo, normalise


# -- theorems ------------------------------------------------------------------------


@given(p=problems(equal_costs=True))
def test_theorems_allocation_greedy_exact_for_equal_costs(p) -> None:
    spectra, costs, budget, lo, normalise = p
    a = gb.allocate_ranks(spectra, costs, budget, min_rank=lo, normalise=normalise, method="greedy")
    best, _ = brute_force(spectra, costs, budget, lo=lo, normalise=normalise)
    assert a.exact
    assert a.cost <= budget
    assert abs(a.energy - best) <= tol(spectra)


@given(p=problems(equal_costs=False))
def test_theorems_allocation_dp_exact(p) -> None:
    spectra, costs, budget, lo, normalise = p
    a = gb.allocate_ranks(spectra, costs, budget, min_rank=lo, normalise=normalise, method="dp")
    best, _ = brute_force(spectra, costs, budget, lo=lo, normalise=normalise)
    assert a.exact and a.method == "dp"
    assert a.cost <= budget
    assert abs(a.energy - best) <= tol(spectra)


@given(p=problems(equal_costs=False))
def test_theorems_allocation_relaxation_bounds(p) -> None:
    """lower_bound <= optimum <= greedy <= lower_bound + (largest single gain)."""
    spectra, costs, budget, lo, normalise = p
    a = gb.allocate_ranks(spectra, costs, budget, min_rank=lo, normalise=normalise, method="greedy")
    best, _ = brute_force(spectra, costs, budget, lo=lo, normalise=normalise)
    t = tol(spectra)
    assert a.lower_bound <= best + t
    assert best <= a.energy + t
    gains = [np.max(s) / (np.sum(s) if normalise else 1.0) for s in spectra]
    assert a.energy <= a.lower_bound + max(gains) + t
    if a.exact:  # greedy claims optimality only when it holds
        assert abs(a.energy - best) <= t


@given(p=problems(equal_costs=False), small=st.booleans())
def test_theorems_allocation_auto_is_exact_when_it_says_so(p, small) -> None:
    spectra, costs, budget, lo, normalise = p
    a = gb.allocate_ranks(
        spectra,
        costs,
        budget,
        min_rank=lo,
        normalise=normalise,
        max_dp_work=1 if small else MAX_DP_WORK,
    )
    best, _ = brute_force(spectra, costs, budget, lo=lo, normalise=normalise)
    if not small:
        assert a.exact
    if a.exact:
        assert abs(a.energy - best) <= tol(spectra)
    else:
        assert a.method == "greedy" and a.energy >= best - tol(spectra)


def test_theorems_allocation_greedy_is_suboptimal_with_unequal_costs() -> None:
    # unit 0: one increment of gain 10 at cost 3 (ratio 3.33); unit 1: two of
    # gain 6 at cost 2 (ratio 3).  Budget 4: greedy takes unit 0 and nothing
    # else fits (energy 12); the optimum spends 4 on unit 1 (energy 10).
    spectra, costs, budget = [[10.0], [6.0, 6.0]], [3, 2], 4
    g = gb.allocate_ranks(spectra, costs, budget, min_rank=0, method="greedy")
    opt = gb.allocate_ranks(spectra, costs, budget, min_rank=0)
    assert g.energy == pytest.approx(12.0, rel=1e-15) and not g.exact
    assert opt.energy == pytest.approx(10.0, rel=1e-15) and opt.exact and opt.method == "dp"
    np.testing.assert_array_equal(opt.ranks, [0, 2])
    # the relaxation: unit 0 whole, then 1/2 of one unit-1 increment: 12 - 3 = 9
    assert g.lower_bound == pytest.approx(9.0, rel=1e-15)
    assert brute_force(spectra, costs, budget)[0] == pytest.approx(10.0, rel=1e-15)


def _greedy_by_raw_gain(spectra, costs, budget):
    """A wrong allocator: greedy by gain, ignoring what the increment costs."""
    mus = [np.sort(np.asarray(s, dtype=float))[::-1] for s in spectra]
    ranks = [0] * len(mus)
    left = budget
    while True:
        options = [
            (mus[u][ranks[u]], u)
            for u in range(len(mus))
            if ranks[u] < len(mus[u]) and costs[u] <= left
        ]
        if not options:
            break
        _, u = max(options)
        ranks[u] += 1
        left -= costs[u]
    return sum(float(np.sum(mus[u][ranks[u] :])) for u in range(len(mus)))


def test_theorems_allocation_brute_force_catches_a_wrong_allocator() -> None:
    # the check above can fail: a gain-only greedy loses to the optimum here
    spectra, costs, budget = [[5.0], [4.0, 4.0]], [5, 1], 5
    best, _ = brute_force(spectra, costs, budget)
    assert best == pytest.approx(5.0)
    assert _greedy_by_raw_gain(spectra, costs, budget) == pytest.approx(8.0)
    assert gb.allocate_ranks(spectra, costs, budget, min_rank=0).energy == pytest.approx(5.0)


# -- behaviour ------------------------------------------------------------------------


def test_step_and_bounds_are_respected() -> None:
    rng = np.random.default_rng(3)
    spectra = [np.sort(rng.exponential(size=12))[::-1] for _ in range(3)]
    costs = [4, 6, 10]
    a = gb.allocate_ranks(spectra, costs, 150, min_rank=2, max_rank=[12, 8, 12], step=4)
    assert np.all(a.ranks % 4 == 0) and np.all(a.ranks >= 4) and a.ranks[1] <= 8
    best, _ = brute_force(spectra, costs, 150, lo=2, hi=[12, 8, 12], step=4)
    assert a.exact and abs(a.energy - best) <= tol(spectra)
    assert a.cost == int(np.dot(costs, a.ranks)) <= 150


def test_unit_energy_is_the_tail_sum() -> None:
    spectra = [[4.0, 1.0, 3.0], [2.0, 0.5]]  # any order: sorted inside
    a = gb.allocate_ranks(spectra, [1, 1], 3, min_rank=0, weights=[2.0, 1.0])
    # gains: unit 0: 8, 6, 2 (weighted); unit 1: 2, 0.5 -> take 8, 6, then 2 (tie)
    assert a.energy == pytest.approx(2.5)
    assert np.sum(a.unit_energy) == pytest.approx(a.energy)
    assert a.exact


def test_family_with_one_rank_is_one_unit_with_the_summed_spectrum() -> None:
    # two families of two layers; within a family all layers share one rank
    rng = np.random.default_rng(11)
    fam = [[np.sort(rng.exponential(size=4))[::-1] for _ in range(2)] for _ in range(2)]
    layer_cost = [3, 5]
    budget = 40
    summed = [f[0] + f[1] for f in fam]
    a = gb.allocate_ranks(summed, [2 * c for c in layer_cost], budget, min_rank=0)
    best = np.inf
    for d0 in range(5):
        for d1 in range(5):
            if 2 * (3 * d0 + 5 * d1) <= budget:
                e = sum(np.sum(s[d0:]) for s in fam[0]) + sum(np.sum(s[d1:]) for s in fam[1])
                best = min(best, e)
    assert abs(a.energy - best) <= 1e-12 * (1 + sum(np.sum(s) for s in summed))


def test_tied_groups_use_the_group_spectrum() -> None:
    """Tail sums of a group's spectrum are the tied activation corner's energies."""
    rng = np.random.default_rng(5)
    L, m, n, d = 4, 7, 9, 3
    W = rng.standard_normal((L, m, n))
    X = rng.standard_normal((L, n, 3 * n))
    C = X @ np.swapaxes(X, 1, 2) / (3 * n)
    problem = BundleProblem(W, C, rank=d, metric="activation")
    sec = shared_output_basis(problem, 2)  # top-d of sum_{l in g} M_l, unweighted
    tr = problem.energy_trace()
    for layers in ([0, 1], [2, 3]):
        spec = gb.activation_spectrum(W[layers], C[layers])
        M = sum(W[l] @ C[l] @ W[l].T for l in layers)
        np.testing.assert_allclose(spec, np.linalg.eigvalsh(M)[::-1], rtol=0, atol=1e-10 * spec[0])
        energy = sum(sec.activation_error[l] * tr[l] for l in layers)
        np.testing.assert_allclose(_tails(spec)[d], energy, rtol=1e-9)
    # allocation over the two groups: each costs m + 2 n per rank
    cost = gb.factor_cost(m, n, 2)
    assert cost == m + 2 * n
    specs = [gb.activation_spectrum(W[[0, 1]], C[[0, 1]]), gb.activation_spectrum(W[2:], C[2:])]
    a = gb.allocate_ranks(specs, [cost, cost], 6 * cost)
    assert a.exact and a.ranks.sum() == 6


def test_activation_spectrum_without_covariance_and_with_weights() -> None:
    rng = np.random.default_rng(2)
    W = rng.standard_normal((2, 5, 3))
    spec = gb.activation_spectrum(W, omega=[2.0, 0.5])
    N = 2.0 * W[0] @ W[0].T + 0.5 * W[1] @ W[1].T
    np.testing.assert_allclose(spec, np.linalg.eigvalsh(N)[::-1], rtol=0, atol=1e-12 * spec[0])
    assert spec.shape == (5,)
    # rank <= n = 3 per layer, 6 for two layers: the spectrum is padded to m = 5
    one = gb.activation_spectrum(W[0])
    assert one.shape == (5,) and np.all(one[3:] == 0)


def test_factor_cost() -> None:
    assert gb.factor_cost(576, 1536) == 2112
    assert gb.factor_cost(576, 576, 3) == 576 * 4
    assert gb.factor_cost(576, 192, 2, shared="input") == 192 + 2 * 576
    with pytest.raises(ValueError, match="shared must be"):
        gb.factor_cost(4, 4, shared="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        gb.factor_cost(4, 4, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spectra": []}, "non-empty sequence"),
        ({"spectra": [[1.0, -1.0]]}, "non-negative"),
        ({"spectra": [[1.0, np.nan]]}, "finite"),
        ({"costs": [0]}, "costs must be >= 1"),
        ({"costs": [1.5]}, "costs must be 1 integers"),
        ({"budget": -1}, "budget must be a non-negative integer"),
        ({"budget": 1}, "below the cost of the smallest allowed ranks"),
        ({"min_rank": 3}, "min_rank <= max_rank <= len"),
        ({"step": 0}, "step must be a positive integer"),
        ({"step": 4, "min_rank": 1}, "no multiple of step"),
        ({"method": "lp"}, "method must be"),
        ({"spectra": [[0.0, 0.0]], "normalise": True}, "positive trace"),
        ({"weights": [-1.0]}, "weights must be positive"),
        ({"method": "dp", "max_dp_work": 1}, "max_dp_work"),
    ],
)
def test_bad_input_is_one_line_error(kwargs, match) -> None:
    args = {"spectra": [[3.0, 2.0]], "costs": [2], "budget": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gb.allocate_ranks(args.pop("spectra"), args.pop("costs"), args.pop("budget"), **args)
