"""The statements of ``docs/theory/allocation.rst`` and of the Grassmann maths as checks.

The companion of :mod:`grassbundle.theorems` (whose checks cover the bundle
itself): one function per statement, each returning a
:class:`~grassbundle.theorems.TheoremReport` and each recomputing its
reference from the definitions with code that shares nothing with what it
checks:

* :func:`allocation_greedy_equal_costs` (Theorem 1), :func:`allocation_relaxation`
  (Theorem 2 and the knapsack example), :func:`allocation_dynamic_programme`
  (the exact method and ``method="auto"``): brute force over every feasible
  integer rank vector, and the continuous relaxation by
  :func:`scipy.optimize.linprog`;
* :func:`allocation_costs_and_spectra`: :func:`grassbundle.factor_cost`
  against the parameters a factorisation stores (and the break-even rule),
  :func:`grassbundle.activation_spectrum` against a dense ``eigvalsh``, and
  the tail sums of a group's spectrum against the energies of the tied
  corner that :func:`grassbundle.factorise` returns at the allocated ranks;
* :func:`svd_llm_update_statement` (SVD-LLM's update and Proposition 3),
  :func:`residual_fit_theorem_4` (reduced-rank regression),
  :func:`residual_fit_theorem_5` (the shared output basis) and
  :func:`ridge_limits`: least squares (``numpy.linalg.lstsq``) on explicit
  samples whose second moments are the statistics, the ridge as virtual
  samples;
* :func:`refit_variants_statement`: :func:`grassbundle.constrained_refit`'s
  factor modes and targets against least squares on the rows (``lstsq``,
  the ridge as virtual rows), its ridge path and limits, and its special
  cases (SVD-LLM's update, the residual fit, SVD-LLM's truncation);
* :func:`factorise_statement`: every method of :func:`grassbundle.factorise`
  against its definition (Ky Fan optima from ``eigvalsh``, the section form
  ``W'_l = U_g U_g^T W_l``, the parameters counted from the group sizes),
  on families with a short last group, ``m != n`` and thin ``m < n`` maps;
* :func:`distances_statement` and :func:`means_statement`: the distances of
  :mod:`grassbundle.distances` on pairs with prescribed principal angles and
  against projector formulas; the chordal mean against a dense ``eigh``, the
  Karcher mean against the stationarity of its cost (the Grassmann
  logarithm written out here);
* :func:`coupling_statement`: :func:`grassbundle.solve_coupled` against its
  energy recomputed from the definitions, block optimality by ``eigvalsh``,
  and the closed form at ``mu = 0``.

Each takes a :class:`~grassbundle.BundleProblem` (its ``W``, ``C`` and rank;
seeded covariances when it has none) and a seed, so that ``python -m
grassbundle check`` runs them on its seeded problems and on a user's
``--problem`` file alike; the allocation and Grassmann checks add seeded
instances of their own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.optimize
from numpy.typing import NDArray

from . import distances as _dist
from .allocation import Allocation, activation_spectrum, allocate_ranks, factor_cost
from .bundle import BundleProblem
from .coupling import solve_coupled
from .factorise import Factorisation, factorise, reconstruction_errors
from .means import chordal_mean, karcher_mean
from .refit import constrained_refit, residual_fit, svd_llm_update
from .theorems.problems import check_tying_degrees
from .theorems.references import OPT_RTOL, gram, layer_energy, reference
from .theorems.report import TheoremReport, fmt

__all__ = [
    "ALLOC_RTOL",
    "DIST_RTOL",
    "FIT_RTOL",
    "LP_RTOL",
    "NAMES",
    "allocation_costs_and_spectra",
    "allocation_dynamic_programme",
    "allocation_greedy_equal_costs",
    "allocation_relaxation",
    "coupling_statement",
    "distances_statement",
    "factorise_statement",
    "fit_checks",
    "means_statement",
    "refit_variants_statement",
    "residual_fit_theorem_4",
    "residual_fit_theorem_5",
    "ridge_limits",
    "svd_llm_update_statement",
]

F64 = NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)

#: Allocation energies: sums of at most ~100 terms of size <= the spectra's
#: total, summed in different orders by the allocator and the brute force, so
#: they agree to ~100 eps * total; 1e-12 * (1 + total) is far above that and
#: far below the smallest gain a wrong allocation gives up (spectra >= 1e-3
#: on the seeded instances, and the problem's own spectra are decaying
#: exponentials above 1e-3 of their top).
ALLOC_RTOL = 1e-12
#: The continuous relaxation from ``linprog`` (HiGHS): its primal and dual
#: feasibility tolerances are 1e-7, so its optimum is good to ~1e-7 of the
#: gains' scale; 1e-6 * (1 + total).  A wrong bound (the critical increment
#: taken whole, an order by gain instead of gain per parameter) is off by a
#: fraction of one gain, 1e-3 or more of the total here.
LP_RTOL = 1e-6
#: Expected errors of the fits: differences of traces of size ``ref =
#: E||W x||^2``; roundoff ~ n eps ref times the conditioning of the
#: (ridged) input covariance, <= 1e4 on the problems checked, so 1e-9 * ref;
#: the wrong fits the checks exist for are off by >= 1e-4 ref.
FIT_RTOL = 1e-9
#: Distances: closed forms of angles in [1e-9, pi/2 - 1e-3] against the
#: package's, both accurate to a few eps relative; 1e-10 relative (absolute
#: 1e-12 for the tiny angles, where the projector formulas lose digits).
DIST_RTOL = 1e-10


#: The name of each check's report (before the problem's label), by function.
NAMES = {
    "allocation_greedy_equal_costs": "allocation_theorem_1[equal costs]",
    "allocation_relaxation": "allocation_theorem_2[relaxation]",
    "allocation_dynamic_programme": "allocation_dp[any costs]",
    "allocation_costs_and_spectra": "allocation_costs_and_spectra",
    "svd_llm_update_statement": "svd_llm_update[proposition 3]",
    "residual_fit_theorem_4": "residual_fit_theorem_4",
    "residual_fit_theorem_5": "residual_fit_theorem_5",
    "ridge_limits": "ridge_limits",
    "refit_variants_statement": "refit_variants[ridge, targets, corners]",
    "factorise_statement": "factorise[every method]",
    "distances_statement": "distances",
    "means_statement": "means",
    "coupling_statement": "coupling",
    "selection_statement": "selection[everett, break-even, scores]",
}


def _report(
    name: str,
    failures: list[str],
    figures: dict[str, Any],
    tolerance: dict[str, float],
    why: str,
    summary: str,
) -> TheoremReport:
    return TheoremReport(
        name=name,
        holds=not failures,
        figures=figures,
        tolerance=tolerance,
        why=why,
        summary=summary,
        failures=failures,
    )


# -- statistics and samples --------------------------------------------------------


def _covariances(problem: BundleProblem, rng: np.random.Generator) -> F64:
    """The problem's covariances, or seeded ones (``X X^T / 2n``, Gaussian ``X``)."""
    if problem.C is not None:
        return np.asarray(problem.C, dtype=np.float64)
    L, n = problem.L, problem.n
    X = rng.standard_normal((L, n, 2 * n))
    return X @ np.swapaxes(X, -1, -2) / (2 * n)


def _shifted_samples(C: F64, rng: np.random.Generator, shift: float = 0.4) -> tuple[F64, F64]:
    """Samples ``(X, X_hat)`` (rows) with ``X^T X / N = C`` and a seeded shift.

    ``x_hat = P^T x + noise`` with ``P = I + shift G / sqrt(n)`` and isotropic
    noise of variance ``shift^2 tr(C) / n``: the joint second moment
    ``J = [[C, C P], [P^T C, P^T C P + s I]]`` is factored as ``J = F^T F / N``
    (``N = 2n`` rows, from ``eigh``), so that every expected error has an
    empirical value, the mean over the rows.
    """
    n = C.shape[0]
    P = np.eye(n) + shift * rng.standard_normal((n, n)) / math.sqrt(n)
    s = shift**2 * float(np.trace(C)) / n
    J = np.block([[C, C @ P], [P.T @ C, P.T @ C @ P + s * np.eye(n)]])
    e, Q = np.linalg.eigh(0.5 * (J + J.T))
    Z = math.sqrt(2 * n) * (Q * np.sqrt(np.maximum(e, 0.0))).T
    return Z[:, :n], Z[:, n:]


def _stats(X: F64, Xh: F64) -> tuple[F64, F64, F64]:
    """``(C, C_hat, C_cross)`` of the samples: ``X^T X / N``, ``Xh^T Xh / N``, ``X^T Xh / N``."""
    N = X.shape[0]
    C = X.T @ X / N
    Ch = Xh.T @ Xh / N
    return 0.5 * (C + C.T), 0.5 * (Ch + Ch.T), X.T @ Xh / N


def _ridged(X: F64, Xh: F64, eps: float) -> tuple[F64, F64]:
    """The samples plus ``n`` virtual ones ``sqrt(N eps) e_i`` on which ``x_hat = x``.

    Their mean squared error over the ``N`` real rows is ``E||W x - A B
    x_hat||^2 + eps ||W - A B||_F^2``: the ridge of the docs, as data.
    """
    N, n = X.shape
    V = math.sqrt(N * eps) * np.eye(n)
    return np.vstack([X, V]), np.vstack([Xh, V])


def _mse(W: F64, X: F64, Xh: F64, Wc: F64, N: int | None = None) -> float:
    """``sum_t ||W x_t - Wc x_hat_t||^2 / N`` (``N`` the number of real rows)."""
    R = X @ W.T - Xh @ Wc.T
    return float(np.sum(R * R)) / (X.shape[0] if N is None else N)


def _rrr(W: F64, X: F64, Xh: F64, d: int) -> F64:
    """Reduced-rank regression of ``Y = X W^T`` on ``X_hat`` (Izenman 1975), as a map.

    Least squares ``Gamma = argmin ||Y - X_hat Gamma||_F`` (``lstsq``), then
    the projection of ``Gamma`` on the top-``d`` right singular vectors of the
    fitted values ``X_hat Gamma``.
    """
    Gamma = np.linalg.lstsq(Xh, X @ W.T, rcond=None)[0]
    _, _, Vt = np.linalg.svd(Xh @ Gamma, full_matrices=False)
    Vd = Vt[:d].T
    return np.asarray((Gamma @ Vd @ Vd.T).T)


def _top(K: F64, d: int) -> tuple[F64, F64]:
    """Top-``d`` eigenvectors and all eigenvalues, descending, of symmetric ``K`` (``eigh``)."""
    mu, V = np.linalg.eigh(0.5 * (K + K.T))
    return V[:, ::-1][:, :d], mu[::-1]


def _resid_sine(U: F64, V: F64) -> float:
    """``||(I - U U^T) V||_2`` (the largest principal-angle sine for equal dimensions)."""
    return float(np.linalg.norm(V - U @ (U.T @ V), 2))


def _ranks(problem: BundleProblem) -> list[int]:
    """Ranks to check: the problem's, and a smaller and a larger one where they exist."""
    top = min(problem.m - 1, problem.n)
    return sorted({max(1, problem.rank - 1), problem.rank, min(top, problem.rank + 1)})


# -- allocation: brute force and the relaxation -----------------------------------------


def _blocks(
    spectra: Sequence[F64], lo: int, hi: Sequence[int], step: int, w: F64
) -> tuple[list[list[int]], list[F64]]:
    """Allowed ranks per unit and the energy at each, ``w_u * sum_{i > d} mu_i`` (sorted here)."""
    ranks, energies = [], []
    for u, s in enumerate(spectra):
        mu = sorted((float(x) for x in s), reverse=True)
        ds = [d for d in range(lo, hi[u] + 1) if d % step == 0]
        ranks.append(ds)
        energies.append(np.array([w[u] * math.fsum(mu[d:]) for d in ds]))
    return ranks, energies


def _brute_force(
    spectra: Sequence[F64],
    costs: Sequence[int],
    budget: int,
    *,
    lo: int = 0,
    hi: Sequence[int] | None = None,
    step: int = 1,
    weights: F64 | None = None,
    normalise: bool = False,
) -> float:
    """Least ``sum_u E_u(d_u)`` over every feasible rank vector (a dense grid, numpy)."""
    U = len(spectra)
    w = np.ones(U) if weights is None else np.asarray(weights, dtype=np.float64)
    if normalise:
        w = w / np.array([math.fsum(float(x) for x in s) for s in spectra])
    his = [len(s) for s in spectra] if hi is None else list(hi)
    ranks, energies = _blocks(spectra, lo, his, step, w)
    E = np.zeros([len(r) for r in ranks])
    cost = np.zeros(E.shape, dtype=np.int64)
    for u in range(U):
        shape = [1] * U
        shape[u] = -1
        E = E + energies[u].reshape(shape)
        cost = cost + (costs[u] * np.array(ranks[u], dtype=np.int64)).reshape(shape)
    feasible = cost <= budget
    return float(E[feasible].min()) if feasible.any() else math.inf


def _relaxation(
    spectra: Sequence[F64],
    costs: Sequence[int],
    budget: int,
    *,
    lo: int,
    step: int = 1,
    weights: F64 | None = None,
    normalise: bool = False,
) -> float:
    """The continuous relaxation's optimum energy, from ``linprog`` with the chain constraints.

    Variables ``x_{u,j}`` in ``[0, 1]``: the fraction taken of unit ``u``'s
    ``j``-th block of ``step`` ranks above its smallest allowed rank; gain
    the block's energy decrease, cost ``c_u step``; ``x_{u,j+1} <= x_{u,j}``.
    """
    U = len(spectra)
    w = np.ones(U) if weights is None else np.asarray(weights, dtype=np.float64)
    if normalise:
        w = w / np.array([math.fsum(float(x) for x in s) for s in spectra])
    ranks, energies = _blocks(spectra, lo, [len(s) for s in spectra], step, w)
    gains: list[float] = []
    cst: list[int] = []
    chain: list[tuple[int, int]] = []
    for u in range(U):
        g = -np.diff(energies[u])
        for j in range(g.size):
            if j:
                chain.append((len(gains) - 1, len(gains)))
            gains.append(float(g[j]))
            cst.append(costs[u] * step)
    base = float(sum(e[0] for e in energies))
    spare = budget - sum(costs[u] * ranks[u][0] for u in range(U))
    if not gains:
        return base
    A = [cst] + [[(1.0 if i == b else -1.0 if i == a else 0.0) for i in range(len(gains))]
                 for a, b in chain]  # fmt: skip
    bnd = [float(spare)] + [0.0] * len(chain)
    res = scipy.optimize.linprog(
        -np.array(gains), A_ub=np.array(A), b_ub=np.array(bnd), bounds=(0.0, 1.0), method="highs"
    )
    if not res.success:  # pragma: no cover - a feasible, bounded LP
        raise RuntimeError(f"linprog failed on the relaxation: {res.message}")
    return base + float(res.fun)


def _instances(seed: int, equal_costs: bool, count: int = 24) -> list[dict[str, Any]]:
    """Seeded small allocation problems (1-4 units, spectra of 1-5 values >= 1e-3).

    A quarter of them take ranks in steps of 2, half of them a smallest rank
    of 1 (so with step 2 the smallest allowed rank is 2).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        U = int(rng.integers(1, 5))
        step = 2 if rng.uniform() < 0.25 else 1
        sizes = [int(rng.integers(step, 6)) for _ in range(U)]
        spectra = [1e-3 + rng.exponential(size=r) * rng.uniform(0.1, 10.0) for r in sizes]
        costs = (
            [int(rng.integers(1, 7))] * U
            if equal_costs
            else [int(rng.integers(1, 10)) for _ in range(U)]
        )
        lo = int(rng.integers(0, 2))
        first = -(-lo // step) * step
        total = sum(c * (r // step) * step for c, r in zip(costs, sizes, strict=True))
        budget = int(rng.integers(first * sum(costs), total + 1))
        out.append(
            {
                "spectra": spectra,
                "costs": costs,
                "budget": budget,
                "lo": lo,
                "step": step,
                "normalise": bool(rng.uniform() < 0.5),
                "weights": rng.uniform(0.5, 2.0, size=U) if rng.uniform() < 0.5 else None,
            }
        )
    return out


def _problem_instances(problem: BundleProblem, seed: int) -> list[dict[str, Any]]:
    """Allocation problems from the problem's own spectra: its first layers and tied pairs.

    Units: up to three single layers (spectra of ``M_l``, or ``N_l`` without
    covariances, from ``eigvalsh``) and one pair of layers tied (the spectrum
    of their summed matrix), at most 6 ranks each, costs ``m + n`` and ``m +
    2 n``; budgets at a third and at two thirds of the cost of every rank.
    """
    rng = np.random.default_rng(seed)
    C = _covariances(problem, rng)
    W = problem.W
    L, m, n = problem.L, problem.m, problem.n
    mats = [W[l] @ C[l] @ W[l].T for l in range(min(L, 3))]
    costs = [m + n] * len(mats)
    if L >= 2:
        mats.append(mats[0] + W[1] @ C[1] @ W[1].T if len(mats) > 1 else mats[0])
        costs.append(m + 2 * n)
    spectra = []
    for M in mats:
        mu = np.maximum(np.linalg.eigvalsh(0.5 * (M + M.T))[::-1], 0.0)[: min(m, n, 6)]
        spectra.append(np.maximum(mu, 1e-3 * mu[0]))
    full = sum(c * len(s) for c, s in zip(costs, spectra, strict=True))
    return [
        {
            "spectra": spectra,
            "costs": costs,
            "budget": full * f // 3,
            "lo": lo,
            "step": 1,
            "normalise": normalise,
            "weights": None,
        }
        for f, lo, normalise in ((1, 0, False), (2, 1, True))
        if full * f // 3 >= lo * sum(costs)
    ]


def _allocate(inst: dict[str, Any], **kw: Any) -> Allocation:
    return allocate_ranks(
        inst["spectra"],
        inst["costs"],
        inst["budget"],
        min_rank=inst["lo"],
        step=inst["step"],
        normalise=inst["normalise"],
        weights=inst["weights"],
        **kw,
    )


def _brute(inst: dict[str, Any]) -> float:
    return _brute_force(
        inst["spectra"],
        inst["costs"],
        inst["budget"],
        lo=inst["lo"],
        step=inst["step"],
        weights=inst["weights"],
        normalise=inst["normalise"],
    )


def _scale(inst: dict[str, Any]) -> float:
    w = np.ones(len(inst["spectra"])) if inst["weights"] is None else inst["weights"]
    tot = sum(float(np.sum(s)) * float(wu) for s, wu in zip(inst["spectra"], w, strict=True))
    return 1.0 + (len(inst["spectra"]) if inst["normalise"] else tot)


def _allocation_sanity(inst: dict[str, Any], a: Allocation, tag: str) -> list[str]:
    """The allocation is feasible and reports the energy of its own ranks (recomputed here)."""
    out = []
    U = len(inst["spectra"])
    w = np.ones(U) if inst["weights"] is None else np.asarray(inst["weights"])
    r = [int(x) for x in a.ranks]
    if sum(c * d for c, d in zip(inst["costs"], r, strict=True)) > inst["budget"]:
        out.append(f"{tag}: ranks {r} cost more than the budget {inst['budget']}")
    if any(
        d < inst["lo"] or d % inst["step"] or d > len(s)
        for d, s in zip(r, inst["spectra"], strict=True)
    ):
        out.append(f"{tag}: ranks {r} break min_rank {inst['lo']} or step {inst['step']}")
        return out
    e = 0.0
    for u, s in enumerate(inst["spectra"]):
        mu = sorted((float(x) for x in s), reverse=True)
        tail = math.fsum(mu[r[u] :]) / (math.fsum(mu) if inst["normalise"] else 1.0)
        e += float(w[u]) * tail
    if abs(e - a.energy) > ALLOC_RTOL * _scale(inst):
        out.append(f"{tag}: reported energy {a.energy:.6g} is not that of its ranks, {e:.6g}")
    return out


def allocation_greedy_equal_costs(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Theorem 1: with equal increment costs the greedy allocation is optimal.

    On seeded instances with equal costs (and on the problem's own spectra at
    equal costs ``m + n``), ``allocate_ranks(..., method="greedy")`` must say
    ``exact``, be feasible, report the energy of its own ranks and equal the
    brute-force optimum over every feasible rank vector (to ``ALLOC_RTOL``).

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    insts = _instances(seed, equal_costs=True)
    for inst in _problem_instances(problem, seed):
        inst["costs"] = [inst["costs"][0]] * len(inst["costs"])
        insts.append(inst)
    failures: list[str] = []
    worst = 0.0
    for i, inst in enumerate(insts):
        a = _allocate(inst, method="greedy")
        failures += _allocation_sanity(inst, a, f"instance {i}")
        gap = (a.energy - _brute(inst)) / _scale(inst)
        worst = max(worst, abs(gap))
        if not a.exact:
            failures.append(f"instance {i}: greedy with equal costs does not claim exactness")
        if abs(gap) > ALLOC_RTOL:
            failures.append(f"instance {i}: greedy energy differs from the optimum by {gap:.3e}")
    return _report(
        NAMES["allocation_greedy_equal_costs"],
        failures,
        {"instances": len(insts), "max_relative_gap_to_brute_force": worst},
        {"alloc_rtol": ALLOC_RTOL},
        "energies are sums of <= 100 terms in different orders: ~100 eps of the total",
        f"{len(insts)} instances; max gap to brute force {fmt(worst)}",
    )


def allocation_relaxation(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Theorem 2: the relaxation's bound, the sandwich, exactness when it is integral.

    With unequal costs, for ``allocate_ranks(..., method="greedy")``:
    ``lower_bound`` equals the continuous relaxation's optimum (``linprog``
    with the chain constraints, to ``LP_RTOL``), and ``lower_bound <= optimum
    <= energy < lower_bound + (largest block gain)`` (optimum by brute
    force); when it claims ``exact`` its energy is the optimum.  And the
    docs' example: gains 10 at cost 3 against 6, 6 at cost 2, budget 4:
    greedy 12, optimum 10, bound 9.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    insts = _instances(seed + 1, equal_costs=False) + _problem_instances(problem, seed)
    failures: list[str] = []
    lp_dev = 0.0
    for i, inst in enumerate(insts):
        a = _allocate(inst, method="greedy")
        failures += _allocation_sanity(inst, a, f"instance {i}")
        sc = _scale(inst)
        best = _brute(inst)
        lp = _relaxation(
            inst["spectra"],
            inst["costs"],
            inst["budget"],
            lo=inst["lo"],
            step=inst["step"],
            weights=inst["weights"],
            normalise=inst["normalise"],
        )
        lp_dev = max(lp_dev, abs(a.lower_bound - min(lp, a.energy)) / sc)
        w = np.ones(len(inst["spectra"])) if inst["weights"] is None else inst["weights"]
        top = max(
            float(wu)
            * float(np.max(s))
            * inst["step"]
            / (float(np.sum(s)) if inst["normalise"] else 1.0)
            for s, wu in zip(inst["spectra"], w, strict=True)
        )
        if abs(a.lower_bound - min(lp, a.energy)) > LP_RTOL * sc:
            failures.append(
                f"instance {i}: lower_bound {a.lower_bound:.6g} is not the relaxation's {lp:.6g}"
            )
        t = ALLOC_RTOL * sc
        if not (a.lower_bound <= best + t and best <= a.energy + t):
            failures.append(f"instance {i}: not lower_bound <= optimum <= greedy")
        if a.energy > a.lower_bound + top + t:
            failures.append(f"instance {i}: greedy more than one increment above the bound")
        if a.exact and abs(a.energy - best) > t:
            failures.append(
                f"instance {i}: greedy claims exactness {(a.energy - best) / sc:.3e} off"
            )
    ex = allocate_ranks([[10.0], [6.0, 6.0]], [3, 2], 4, min_rank=0, method="greedy")
    example = (ex.energy, ex.lower_bound, ex.exact)
    if abs(ex.energy - 12.0) > 1e-12 or abs(ex.lower_bound - 9.0) > 1e-12 or ex.exact:
        failures.append(
            f"docs' example: greedy (energy, bound, exact) = {example}, want (12, 9, False)"
        )
    return _report(
        NAMES["allocation_relaxation"],
        failures,
        {"instances": len(insts), "max_lower_bound_vs_linprog": lp_dev, "example": list(example)},
        {"alloc_rtol": ALLOC_RTOL, "lp_rtol": LP_RTOL},
        "linprog (HiGHS) is feasible to 1e-7; allocation energies to ~100 eps of the total",
        f"{len(insts)} instances; bound vs linprog {fmt(lp_dev)}; example {example[:2]}",
    )


def allocation_dynamic_programme(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """The exact method: ``method="dp"`` and ``method="auto"`` attain the brute-force optimum.

    Any costs; ``"auto"`` with the default ``max_dp_work`` must be exact
    (greedy when Theorem 1 or 2(3) applies, else the programme) and equal
    the optimum; with ``max_dp_work=1`` it may fall back to greedy, and then
    must not claim exactness it lacks.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    insts = _instances(seed + 2, equal_costs=False) + _problem_instances(problem, seed)
    failures: list[str] = []
    worst = 0.0
    for i, inst in enumerate(insts):
        best = _brute(inst)
        sc = _scale(inst)
        for tag, kw in (("dp", {"method": "dp"}), ("auto", {})):
            a = _allocate(inst, **kw)
            failures += _allocation_sanity(inst, a, f"instance {i} {tag}")
            gap = (a.energy - best) / sc
            worst = max(worst, abs(gap))
            if not a.exact or abs(gap) > ALLOC_RTOL:
                failures.append(
                    f"instance {i}: method {tag} gives energy {gap:.3e} above the optimum "
                    f"(exact={a.exact})"
                )
        a = _allocate(inst, max_dp_work=1)
        if a.exact and abs(a.energy - best) > ALLOC_RTOL * sc:
            failures.append(f"instance {i}: auto without the programme claims exactness wrongly")
    return _report(
        NAMES["allocation_dynamic_programme"],
        failures,
        {"instances": len(insts), "max_relative_gap_to_brute_force": worst},
        {"alloc_rtol": ALLOC_RTOL},
        "energies are sums of <= 100 terms in different orders: ~100 eps of the total",
        f"{len(insts)} instances; max gap to brute force {fmt(worst)}",
    )


def allocation_costs_and_spectra(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Costs, spectra and the tied corner's energies, as the allocation page states them.

    * ``factor_cost(m, n, k)`` is the parameters per rank of ``k`` maps
      sharing an output basis, counted here as ``m d + k d n`` over ``d``
      (``n + k m`` for a shared input basis), and equals what
      :func:`grassbundle.factorise` stores per rank (``params_kept``) for
      ``"bundle"`` and ``"basis-sharing"``; the break-even rule: the factors
      store fewer parameters than the dense maps exactly when ``c d < k m n``.
    * ``activation_spectrum(W, C, omega=...)`` is the descending spectrum of
      ``sum_l omega_l W_l C_l W_l^T`` (dense ``eigvalsh``; ``omega =
      "frobenius"`` is ``1 / ||W_l||_F^2``), padded with zeros to ``m``.
    * Allocating ranks over the problem's tied groups by those spectra and
      factorising at them (``method="bundle"``, activation metric, per-group
      ranks) gives every group the energy ``sum_{l in g} omega_l
      tr(E_l C_l E_l^T)`` equal to its tail sum (Ky Fan).

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed)
    C = _covariances(problem, rng)
    W = problem.W
    L, m, n = problem.L, problem.m, problem.n
    failures: list[str] = []
    # costs: the numbers the factors of rank dd hold, over dd: one m x dd basis and
    # k right factors dd x n (output side), or one dd x n and k m x dd (input side)
    dd = 3
    for mm, nn, k in ((m, n, 1), (m, n, 2), (n, m, 3), (7, 3, 2), (3, 7, 1)):
        out, inp = (mm * dd + k * dd * nn) // dd, (dd * nn + k * mm * dd) // dd
        if factor_cost(mm, nn, k) != out or factor_cost(mm, nn, k, shared="input") != inp:
            failures.append(
                f"factor_cost({mm}, {nn}, {k}) = {factor_cost(mm, nn, k)}, "
                f"shared='input' {factor_cost(mm, nn, k, shared='input')}; counted {out}, {inp}"
            )
    # what factorise stores, on the problem's first maps at its rank, and on a
    # seeded pair of 6 x 4 maps at every rank, across the break-even rank
    # (k m n = 48: output side c = 14, saves up to d = 3; input side c = 16,
    # stores exactly 48 at d = 3)
    rb = np.random.default_rng(seed + 3)
    Gb = rb.standard_normal((2, 4, 8))
    k = min(2, L)
    fams = [
        (W[:k], C[:k], [problem.rank]),
        (rb.standard_normal((2, 6, 4)), Gb @ np.swapaxes(Gb, 1, 2) / 8, [1, 2, 3, 4]),
    ]
    for Wf, Cf, ds in fams:
        kf, mf, nf = Wf.shape
        for dd in ds:
            for method, extra, per in (
                ("bundle", {"tying": kf}, mf + kf * nf),
                ("basis-sharing", {"group_size": kf}, nf + kf * mf),
            ):
                if method == "bundle" and dd >= mf:
                    continue
                f = factorise(Wf, Cf, method, dd, **extra)
                want = dd * (
                    factor_cost(mf, nf, kf)
                    if method == "bundle"
                    else factor_cost(mf, nf, kf, shared="input")
                )
                if f.params_kept != want or want != per * dd:
                    failures.append(
                        f"{method}: stores {f.params_kept} parameters at rank {dd} for {kf} "
                        f"{mf}x{nf} maps; factor_cost gives {want}, counted {per * dd}"
                    )
                if (f.params_kept < f.params_dense) != (per * dd < kf * mf * nf):
                    failures.append(
                        f"{method}: break-even rule c d < k m n fails at rank {dd} "
                        f"({f.params_kept} kept, {f.params_dense} dense)"
                    )
    # spectra: dense eigvalsh of the summed matrix
    spec_dev = 0.0
    for layers in ([0], list(range(min(L, 3)))):
        frob = np.array([1.0 / float(np.sum(W[l] * W[l])) for l in layers])
        for om, om_arg in ((np.ones(len(layers)), None), (frob, "frobenius"), (frob, frob)):
            for cov in (True, False):
                K = sum(
                    om[i] * (W[l] @ C[l] @ W[l].T if cov else W[l] @ W[l].T)
                    for i, l in enumerate(layers)
                )
                want_s = np.zeros(m)
                mu = np.linalg.eigvalsh(0.5 * (K + K.T))[::-1]
                want_s[:] = np.maximum(mu, 0.0)
                got = activation_spectrum(W[layers], C[layers] if cov else None, omega=om_arg)
                dev = float(np.max(np.abs(got - want_s))) / float(mu[0])
                spec_dev = max(spec_dev, dev)
                if got.shape != (m,) or dev > 1e-10:
                    failures.append(
                        f"activation_spectrum of layers {layers} (omega {om_arg!r}, C {cov}) "
                        f"differs from eigvalsh by {dev:.3e} of mu_1"
                    )
    # allocated per-group ranks: the corner's energy is the tail sum
    corner_dev = 0.0
    for kk in sorted({1, min(2, L), min(3, L)}):
        groups = [list(range(s, min(s + kk, L))) for s in range(0, L, kk)]
        specs = [activation_spectrum(W[g], C[g], omega="frobenius") for g in groups]
        costs = [factor_cost(m, n, len(g)) for g in groups]
        budget = sum(c * problem.rank for c in costs)
        top = min(m - 1, n)
        a = allocate_ranks(specs, costs, budget, max_rank=top)
        ranks = np.concatenate([[int(a.ranks[i])] * len(g) for i, g in enumerate(groups)])
        f = factorise(W, C, "bundle", None, tying=kk, metric="activation", ranks=ranks)
        for i, g in enumerate(groups):
            dg = int(a.ranks[i])
            om_g = [1.0 / float(np.sum(W[l] * W[l])) for l in g]
            energy = 0.0
            for j, l in enumerate(g):
                E = W[l] - f.weight(l)
                energy += om_g[j] * float(np.sum((E @ C[l]) * E))
            K = sum(om_g[j] * (W[l] @ C[l] @ W[l].T) for j, l in enumerate(g))
            mu = np.linalg.eigvalsh(0.5 * (K + K.T))[::-1]
            tail = float(np.sum(mu[dg:]))
            tr = float(np.sum(mu))
            dev = abs(energy - tail) / tr
            corner_dev = max(corner_dev, dev)
            if dev > OPT_RTOL or abs(a.unit_energy[i] - tail) > OPT_RTOL * tr:
                failures.append(
                    f"k={kk} group {i} at rank {dg}: energy {energy:.6g}, allocation's "
                    f"{a.unit_energy[i]:.6g}, tail sum {tail:.6g}"
                )
    return _report(
        NAMES["allocation_costs_and_spectra"],
        failures,
        {"spectrum_max_deviation": spec_dev, "corner_energy_max_deviation": corner_dev},
        {"spectrum_rtol": 1e-10, "energy_rtol": OPT_RTOL},
        (
            "spectra: squared singular values against eigvalsh, both within ~m eps mu_1; "
            "energies: differences of O(tr K) traces, ~m eps tr K"
        ),
        f"spectra vs eigvalsh {fmt(spec_dev)}; corner energy vs tail {fmt(corner_dev)}",
    )


# -- SVD-LLM's update, the residual fit, the ridge ----------------------------------------


def _fit_cases(problem: BundleProblem, seed: int) -> list[tuple[str, F64, F64, F64, int]]:
    """``(label, W, X, X_hat, d)``: the problem's first two layers, and thin and wide maps.

    The extra maps are seeded: ``m < n`` (a k/v-like thin map), ``m > n``
    and square, each with decaying singular values and its own covariance.
    """
    rng = np.random.default_rng(seed)
    C = _covariances(problem, rng)
    cases = []
    for l in range(min(problem.L, 2)):
        X, Xh = _shifted_samples(C[l], rng)
        cases.append((f"layer {l}", problem.W[l], X, Xh, problem.rank))
    for m, n, d in ((4, 12, 2), (11, 6, 3), (8, 8, 3)):
        W = rng.standard_normal((m, n)) * (1.0 + np.arange(n)) ** -0.5
        G = rng.standard_normal((n, 3 * n)) * np.exp(-0.1 * np.arange(n))[:, None]
        X, Xh = _shifted_samples(G @ G.T / (3 * n), rng)
        cases.append((f"{m}x{n}", W, X, Xh, d))
    return cases


def svd_llm_update_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """SVD-LLM's update and Proposition 3, against least squares on the tokens.

    For ``svd_llm_update(W, C, rank=d, C_update=C_hat, ridge=rho)``:

    * the truncation is the top-``d`` eigenspace of ``M = W C W^T`` (``eigh``;
      compared where the eigengap leaves it unique): ``info["error_before"]``
      is the error of ``P_U W`` on the shifted tokens;
    * the update is the authors' least squares: ``A = argmin_A sum_t ||W
      x_hat_t - A Z x_hat_t||^2`` with ``Z = U^T W`` (``lstsq`` on the
      tokens, the ridge as ``n`` virtual tokens ``sqrt(N eps) e_i``, ``eps =
      rho tr(C_hat) / n``): equal objective, and the reported error is the
      empirical one;
    * Proposition 3: with ``C_hat = C`` and ``ridge = 0`` it returns ``P_U W``.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    failures: list[str] = []
    worst = 0.0
    for label, W, X, Xh, d in _fit_cases(problem, seed):
        C, Ch, _ = _stats(X, Xh)
        N, n = X.shape
        U, mu = _top(W @ C @ W.T, d)
        ref = _mse(W, Xh, Xh, np.zeros_like(W))
        unique = len(mu) > d and mu[d - 1] - mu[d] > 1e-6 * mu[0]
        for rho in (0.0, 0.1):
            fit = svd_llm_update(W, C, rank=d, C_update=Ch, ridge=rho)
            eps = rho * float(np.trace(Ch)) / n
            if abs(fit.info["ridge"] - eps) > 1e-12 * max(eps, 1e-300):
                failures.append(
                    f"{label}: ridge {fit.info['ridge']:.6g}, want rho tr(C_hat)/n = {eps:.6g}"
                )
            Z = fit.right
            if unique:
                # the right factor's row space is that of U^T W
                Zref = U.T @ W
                rs = _resid_sine(np.linalg.qr(Zref.T)[0], np.linalg.qr(Z.T)[0])
                if rs > 1e-7 + 100 * EPS * mu[0] / (mu[d - 1] - mu[d]):
                    failures.append(
                        f"{label}: right factor is not U^T W, U the top-{d} of M (sine {rs:.3e})"
                    )
            Xa, Xha = _ridged(Xh, Xh, eps) if eps > 0 else (Xh, Xh)
            At = np.linalg.lstsq(Xha @ Z.T, Xa @ W.T, rcond=None)[0]
            want = _mse(W, Xa, Xha, At.T @ Z, N)
            got = _mse(W, Xa, Xha, fit.weight(), N)
            gap = (got - want) / ref
            worst = max(worst, abs(gap))
            if abs(gap) > FIT_RTOL:
                failures.append(
                    f"{label} ridge {rho:g}: update off the least-squares optimum by {gap:.3e}"
                )
            emp = _mse(W, Xh, Xh, fit.weight())
            if abs(fit.error - emp) > FIT_RTOL * ref:
                failures.append(f"{label}: reported error {fit.error:.6g}, on the tokens {emp:.6g}")
            if unique:
                before = _mse(W, Xh, Xh, U @ (U.T @ W))
                if abs(fit.info["error_before"] - before) > 1e-7 * ref:
                    failures.append(
                        f"{label}: error before the update {fit.info['error_before']:.6g}, "
                        f"P_U W with U the top-{d} of M gives {before:.6g}"
                    )
        fit = svd_llm_update(W, C, rank=d, ridge=0.0)
        if unique:
            dev = float(np.linalg.norm(fit.weight() - U @ (U.T @ W))) / float(np.linalg.norm(W))
            if dev > 1e-7:
                failures.append(f"{label}: without a shift the update moves P_U W by {dev:.3e}")
    return _report(
        NAMES["svd_llm_update_statement"],
        failures,
        {"max_relative_gap_to_lstsq": worst},
        {"fit_rtol": FIT_RTOL, "subspace_atol": 1e-7},
        "errors are differences of O(E||W x||^2) traces with conditioning <= 1e4: 1e-9",
        f"max gap to lstsq {fmt(worst)}",
    )


def residual_fit_theorem_4(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Theorem 4: the residual fit is reduced-rank regression; its value is ``c + tail``.

    For ``residual_fit(W, C_hat, C_cross, rank=d, C=C, ridge=rho)``, on
    samples whose second moments are the statistics (the ridge as virtual
    samples): its objective equals that of the textbook reduced-rank
    regression (``lstsq``, then the SVD of the fitted values), its reported
    error is the empirical ``E||W x - A B x_hat||^2``, ``eps = rho tr(C_hat) /
    n``, its ``spectrum`` is that of ``K = T C_hat_eps T^T`` with ``T`` from
    ``lstsq``, and the objective equals ``tr(W C_eps W^T) - tr K +
    sum_{i > d} mu_i(K)``.  With ``x_hat = x`` and ``rho = 0`` it is
    SVD-LLM: ``P_U W`` with ``U`` the top-``d`` of ``M``, error the tail of
    ``M``'s spectrum.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    failures: list[str] = []
    worst = 0.0
    for label, W, X, Xh, d in _fit_cases(problem, seed):
        C, Ch, Cx = _stats(X, Xh)
        N, n = X.shape
        ref = _mse(W, X, X, np.zeros_like(W))
        for rho in (0.0, 1e-6, 0.1):
            fit = residual_fit(W, Ch, Cx, rank=d, C=C, ridge=rho)
            eps = rho * float(np.trace(Ch)) / n
            if abs(float(fit.ridge[0]) - eps) > 1e-12 * max(eps, 1e-300):
                failures.append(
                    f"{label}: ridge {float(fit.ridge[0]):.6g}, want rho tr(C_hat)/n = {eps:.6g}"
                )
            Xa, Xha = _ridged(X, Xh, eps) if eps > 0 else (X, Xh)
            want = _mse(W, Xa, Xha, _rrr(W, Xa, Xha, d), N)
            got = _mse(W, Xa, Xha, fit.weight(), N)
            gap = (got - want) / ref
            worst = max(worst, abs(gap))
            if abs(gap) > FIT_RTOL:
                failures.append(
                    f"{label} ridge {rho:g}: objective {gap:.3e} off reduced-rank regression"
                )
            assert fit.error is not None
            emp = _mse(W, X, Xh, fit.weight())
            if abs(float(fit.error[0]) - emp) > FIT_RTOL * ref:
                failures.append(
                    f"{label}: reported error {float(fit.error[0]):.6g}, on the samples {emp:.6g}"
                )
            if eps > 0:
                Ce, Che, Xe = C + eps * np.eye(n), Ch + eps * np.eye(n), Cx + eps * np.eye(n)
                T = np.linalg.lstsq(Che, (W @ Xe).T, rcond=None)[0].T
                K = T @ Che @ T.T
                mu = np.maximum(np.linalg.eigvalsh(0.5 * (K + K.T))[::-1], 0.0)
                if float(np.max(np.abs(fit.spectrum - mu))) > 1e-8 * mu[0]:
                    failures.append(
                        f"{label} ridge {rho:g}: spectrum is not that of K = T C_hat T^T"
                    )
                value = float(np.trace(W @ Ce @ W.T)) - float(np.sum(mu[:d]))
                if abs(got - value) > FIT_RTOL * ref:
                    failures.append(
                        f"{label} ridge {rho:g}: objective {got:.6g} is not c + tail = {value:.6g}"
                    )
        # no shift, no ridge: SVD-LLM
        U, mu = _top(W @ C @ W.T, d)
        fit = residual_fit(W, C, C, rank=d, C=C, ridge=0.0)
        assert fit.error is not None
        if abs(float(fit.error[0]) - float(np.sum(mu[d:]))) > FIT_RTOL * ref:
            failures.append(f"{label}: x_hat = x does not give SVD-LLM's error, the tail of M")
        if len(mu) > d and mu[d - 1] - mu[d] > 1e-6 * mu[0]:
            dev = float(np.linalg.norm(fit.weight() - U @ (U.T @ W))) / float(np.linalg.norm(W))
            if dev > 1e-7:
                failures.append(f"{label}: x_hat = x does not give P_U W ({dev:.3e})")
    return _report(
        NAMES["residual_fit_theorem_4"],
        failures,
        {"max_relative_gap_to_rrr": worst},
        {"fit_rtol": FIT_RTOL},
        "errors are differences of O(E||W x||^2) traces with conditioning <= 1e4: 1e-9",
        f"max gap to reduced-rank regression {fmt(worst)}",
    )


def residual_fit_theorem_5(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Theorem 5: one shared output basis for a group: top-``d`` of ``sum_l omega_l K_l``.

    For a group of the problem's layers (up to 3) with seeded shifts and
    weights ``omega_l``, ``residual_fit(W, C_hat, C_cross, omega=omega)``
    must attain ``sum_l omega_l c_l + sum_{i > d} mu_i(K_g)`` (``K_l`` from
    ``lstsq``, the value from the samples), ``B_l = U^T T_l``, and no
    seeded shared basis with its least-squares right factors does better.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed + 5)
    C0 = _covariances(problem, rng)
    k = min(problem.L, 3)
    W = problem.W[:k]
    d = problem.rank
    n = problem.n
    samples = [_shifted_samples(C0[l], rng) for l in range(k)]
    stats = [_stats(X, Xh) for X, Xh in samples]
    omega = rng.uniform(0.5, 2.0, size=k)
    failures: list[str] = []
    ref = float(
        sum(
            omega[l] * _mse(W[l], samples[l][0], samples[l][0], np.zeros_like(W[l]))
            for l in range(k)
        )
    )
    worst = 0.0
    for rho in (0.0, 0.1):
        fit = residual_fit(
            W,
            np.stack([s[1] for s in stats]),
            np.stack([s[2] for s in stats]),
            rank=d,
            C=np.stack([s[0] for s in stats]),
            omega=omega,
            ridge=rho,
        )
        Kg = np.zeros((problem.m, problem.m))
        const = 0.0
        got = 0.0
        Ts = []
        aug = []
        for l in range(k):
            C, Ch, Cx = stats[l]
            eps = rho * float(np.trace(Ch)) / n
            Che, Xe = Ch + eps * np.eye(n), Cx + eps * np.eye(n)
            T = np.linalg.lstsq(Che, (W[l] @ Xe).T, rcond=None)[0].T
            Ts.append(T)
            K = T @ Che @ T.T
            Kg += omega[l] * K
            const += omega[l] * (
                float(np.trace(W[l] @ (C + eps * np.eye(n)) @ W[l].T)) - float(np.trace(K))
            )
            X, Xh = samples[l]
            Xa, Xha = _ridged(X, Xh, eps) if eps > 0 else (X, Xh)
            aug.append((Xa, Xha, X.shape[0]))
            got += omega[l] * _mse(W[l], Xa, Xha, fit.weight(l), X.shape[0])
        mu = np.linalg.eigvalsh(0.5 * (Kg + Kg.T))[::-1]
        value = const + float(np.sum(mu[d:]))
        gap = (got - value) / ref
        worst = max(worst, abs(gap))
        if abs(gap) > FIT_RTOL:
            failures.append(f"ridge {rho:g}: group objective {gap:.3e} off sum omega c + tail(K_g)")
        for l in range(k):
            Bl = fit.basis.T @ Ts[l]
            if float(np.linalg.norm(fit.right[l] - Bl)) > 1e-8 * float(np.linalg.norm(Bl)) + 1e-300:
                failures.append(f"ridge {rho:g}: right factor {l} is not U^T T_l")
        for _ in range(4):
            V = np.linalg.qr(rng.standard_normal((problem.m, d)))[0]
            other = 0.0
            for l in range(k):
                Xa, Xha, N = aug[l]
                B = np.linalg.lstsq(Xha, Xa @ W[l].T @ V, rcond=None)[0].T
                other += omega[l] * _mse(W[l], Xa, Xha, V @ B, N)
            if other < got - FIT_RTOL * ref:
                failures.append(f"ridge {rho:g}: a random shared basis beats the fit")
    return _report(
        NAMES["residual_fit_theorem_5"],
        failures,
        {"k": k, "max_relative_gap_to_value": worst},
        {"fit_rtol": FIT_RTOL},
        "errors are differences of O(E||W x||^2) traces with conditioning <= 1e4: 1e-9",
        f"k={k}; max gap to sum omega c + tail {fmt(worst)}",
    )


def ridge_limits(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """The ridge costs at most what it says: ``0 <= E(eps) - E(0) <= eps ||W - fit_0||_F^2``.

    ``E`` the expected error ``E||W x - A B x_hat||^2`` on the samples, for
    ``ridge`` in {1e-4, 1e-2, 1e-1}; also ``ridge -> 0`` recovers the
    unregularised optimum (at ``1e-10`` the objectives agree to ``FIT_RTOL``).

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    failures: list[str] = []
    spans = []
    for label, W, X, Xh, d in _fit_cases(problem, seed):
        C, Ch, Cx = _stats(X, Xh)
        n = X.shape[1]
        ref = _mse(W, X, X, np.zeros_like(W))
        f0 = residual_fit(W, Ch, Cx, rank=d, C=C, ridge=0.0)
        e0 = _mse(W, X, Xh, f0.weight())
        for rho in (1e-4, 1e-2, 1e-1):
            fe = residual_fit(W, Ch, Cx, rank=d, C=C, ridge=rho)
            eps = rho * float(np.trace(Ch)) / n
            diff = _mse(W, X, Xh, fe.weight()) - e0
            bound = eps * float(np.sum((W - f0.weight()) ** 2))
            spans.append(diff / max(bound, 1e-300))
            if not -FIT_RTOL * ref <= diff <= bound + FIT_RTOL * ref:
                failures.append(
                    f"{label} ridge {rho:g}: error change {diff:.3e} outside [0, {bound:.3e}]"
                )
        ft = residual_fit(W, Ch, Cx, rank=d, C=C, ridge=1e-10)
        if abs(_mse(W, X, Xh, ft.weight()) - e0) > 1e-6 * ref:
            failures.append(f"{label}: ridge 1e-10 does not recover the unregularised error")
    return _report(
        NAMES["ridge_limits"],
        failures,
        {"max_change_over_bound": max(spans)},
        {"fit_rtol": FIT_RTOL},
        "each fit is optimal for its own objective; errors good to ~1e-9 of E||W x||^2",
        f"largest change / bound {fmt(max(spans))}",
    )


# -- constrained refits ---------------------------------------------------------------


def _refit_samples(
    W: F64, W0: F64, X: F64, Xh: F64, target: str, mix: float, eps: float
) -> tuple[F64, F64]:
    """Inputs ``Z`` and targets ``Y`` (rows) whose mean squared error ``||Y - Z M^T||^2 / N``
    is a target's objective plus ``eps ||M - W0||_F^2`` (``N`` the real rows of ``X``).

    output: rows ``(x_hat_t, W x_t)``; local: ``(x_hat_t, W x_hat_t)``; joint:
    ``sqrt(mix) (x_t, W x_t)`` and ``sqrt(1 - mix) (x_hat_t, W x_t)``; the
    ridge: ``n`` virtual rows ``sqrt(N eps) (e_i, W0 e_i)``.
    """
    N, n = X.shape
    if target == "output":
        Z, Y = Xh, X @ W.T
    elif target == "local":
        Z, Y = Xh, Xh @ W.T
    else:
        a, b = math.sqrt(mix), math.sqrt(1.0 - mix)
        Z, Y = np.vstack([a * X, b * Xh]), np.vstack([a * X @ W.T, b * X @ W.T])
    if eps > 0:
        V = math.sqrt(N * eps) * np.eye(n)
        Z, Y = np.vstack([Z, V]), np.vstack([Y, V @ W0.T])
    return Z, Y


def _refit_brute(factor: str, Z: F64, Y: F64, A0: F64, B0: F64) -> F64:
    """The best map ``M`` of a refit variant by least squares on the rows (``lstsq``).

    left: ``Y ~ (Z B0^T) A^T``; right: ``vec(Y) ~ (A0 kron Z) vec(B^T)``;
    sigma: ``vec(Y) ~ sum_i g_i vec((Z b_i) a_i^T)``; both: reduced-rank
    regression (:func:`_rrr`'s projection of the least-squares map on the top
    right singular vectors of the fitted values).
    """
    d = A0.shape[1]
    if factor == "left":
        At = np.linalg.lstsq(Z @ B0.T, Y, rcond=None)[0]
        return np.asarray(At.T @ B0)
    if factor == "right":
        n = Z.shape[1]
        K = np.kron(A0, Z)  # vec_F(Z B^T A0^T) = (A0 kron Z) vec_F(B^T)
        v = np.linalg.lstsq(K, Y.reshape(-1, order="F"), rcond=None)[0]
        return np.asarray(A0 @ v.reshape(n, d, order="F").T)
    if factor == "sigma":
        cols = [np.outer(Z @ B0[i], A0[:, i]).reshape(-1, order="F") for i in range(d)]
        g = np.linalg.lstsq(np.stack(cols, axis=1), Y.reshape(-1, order="F"), rcond=None)[0]
        return np.asarray((A0 * g) @ B0)
    Gamma = np.linalg.lstsq(Z, Y, rcond=None)[0]
    _, _, Vt = np.linalg.svd(Z @ Gamma, full_matrices=False)
    Vd = Vt[:d].T
    return np.asarray((Gamma @ Vd @ Vd.T).T)


def _sample_objective(Z: F64, Y: F64, M: F64, N: int) -> float:
    R = Y - Z @ M.T
    return float(np.sum(R * R)) / N


def refit_variants_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """The refit variants of :func:`grassbundle.constrained_refit` against least squares.

    On shifted samples (the unrefit factors ``A0 = U``, the top-``d``
    eigenvectors of ``W C W^T`` by ``eigh``, and ``B0 = U^T W``):

    * every factor mode (left, right, both, sigma) and target (output, local,
      joint at ``mix`` 0.3), at ``ridge`` 0 and 0.1: the fit's objective plus
      ridge term equals the least-squares optimum on the rows (the ridge as
      ``n`` virtual rows ``sqrt(N eps)(e_i, W0 e_i)``, ``eps = ridge tr(G) /
      n``), and ``info["error"]`` is the empirical output error;
    * the ridge path (``ridge`` in 0, 0.01, 1, 100): the objective does not
      decrease and the distance ``||A B - W0||_F`` does not increase (exact
      minimisers of ``J + eps D``; objectives to ``FIT_RTOL``, distances to
      ``1e-9 ||W||_F``, both far above roundoff); no fit is worse than
      ``W0`` on ``J``;
    * ``ridge -> inf``: at ``ridge = 1e6`` the distance to ``W0`` is below
      ``1e-4 ||W0||_F`` and at least 100 times smaller than at ``1e3``
      (``O(1 / ridge)``);
    * left + local + ``ridge = 0`` is :func:`grassbundle.svd_llm_update` at
      ``ridge = 0``; both + output + ``ridge = 0`` is
      :func:`grassbundle.residual_fit` at ``ridge = 0`` (equal objectives);
      both + joint at ``mix = 1`` is ``P_U W`` (SVD-LLM's truncation, the
      bundle's activation corner), where the eigengap makes it unique.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    failures: list[str] = []
    worst = 0.0
    mix = 0.3
    for label, W, X, Xh, d in _fit_cases(problem, seed):
        C, Ch, Cx = _stats(X, Xh)
        N, n = X.shape
        U, mu = _top(W @ C @ W.T, d)
        A0, B0 = U, U.T @ W
        W0 = A0 @ B0
        ref = _mse(W, X, X, np.zeros_like(W)) + _mse(W, Xh, Xh, np.zeros_like(W))
        unique = len(mu) > d and mu[d - 1] - mu[d] > 1e-6 * mu[0]
        for factor in ("left", "right", "both", "sigma"):
            for target in ("output", "local", "joint"):
                tag = f"{label} {factor}/{target}"
                G = {
                    "output": Ch,
                    "local": Ch,
                    "joint": mix * C + (1 - mix) * Ch,
                }[target]
                path = []
                for rho in (0.0, 0.01, 0.1, 1.0, 100.0):
                    fit = constrained_refit(
                        W, C, Ch, Cx, left=A0, right=B0, factor=factor, target=target,
                        mix=mix, ridge=rho,
                    )  # fmt: skip
                    eps = rho * float(np.trace(G)) / n
                    Z, Y = _refit_samples(W, W0, X, Xh, target, mix, eps)
                    M = fit.weight()
                    if rho in (0.0, 0.1):
                        want = _sample_objective(Z, Y, _refit_brute(factor, Z, Y, A0, B0), N)
                        gap = (_sample_objective(Z, Y, M, N) - want) / ref
                        worst = max(worst, abs(gap))
                        if abs(gap) > FIT_RTOL:
                            failures.append(
                                f"{tag} ridge {rho:g}: off the lstsq optimum by {gap:.3e}"
                            )
                        emp = _mse(W, X, Xh, M)
                        if abs(fit.error - emp) > FIT_RTOL * ref:
                            failures.append(
                                f"{tag}: error {fit.error:.6g}, on the samples {emp:.6g}"
                            )
                    Z0, Y0 = _refit_samples(W, W0, X, Xh, target, mix, 0.0)
                    path.append(
                        (rho, _sample_objective(Z0, Y0, M, N), float(np.linalg.norm(M - W0)))
                    )
                base = _sample_objective(Z0, Y0, W0, N)
                for (r1, j1, d1), (r2, j2, d2) in itertools.pairwise(path):
                    if j2 < j1 - FIT_RTOL * ref or d2 > d1 + 1e-9 * float(np.linalg.norm(W)):
                        failures.append(
                            f"{tag}: ridge {r1:g} -> {r2:g} objective {j1:.6g} -> {j2:.6g}, "
                            f"distance {d1:.3e} -> {d2:.3e} (want up, down)"
                        )
                if max(j for _, j, _ in path) > base + FIT_RTOL * ref:
                    failures.append(f"{tag}: a refit is worse than the unrefit factors")
                far = []
                for rho in (1e3, 1e6):
                    fit = constrained_refit(
                        W, C, Ch, Cx, left=A0, right=B0, factor=factor, target=target,
                        mix=mix, ridge=rho,
                    )  # fmt: skip
                    far.append(float(np.linalg.norm(fit.weight() - W0)))
                scale = float(np.linalg.norm(W0))
                if far[1] > 1e-4 * scale or far[1] * 100 > far[0] + 1e-12 * scale:
                    failures.append(
                        f"{tag}: ridge 1e3, 1e6 leave {far[0]:.3e}, {far[1]:.3e} of W0 "
                        "(want O(1/ridge) -> 0)"
                    )
        # the special cases
        up = svd_llm_update(W, C, rank=d, C_update=Ch, ridge=0.0)
        lo = constrained_refit(W, C, Ch, Cx, left=A0, right=B0, factor="left", target="local")
        Zl, Yl = _refit_samples(W, W0, X, Xh, "local", mix, 0.0)
        gap = abs(
            _sample_objective(Zl, Yl, lo.weight(), N) - _sample_objective(Zl, Yl, up.weight(), N)
        )
        if unique and gap > FIT_RTOL * ref:
            failures.append(f"{label}: left/local/ridge 0 differs from svd_llm_update by {gap:.3e}")
        rf = residual_fit(W, Ch, Cx, rank=d, C=C, ridge=0.0)
        bo = constrained_refit(W, C, Ch, Cx, rank=d, factor="both", target="output")
        gap = abs(_mse(W, X, Xh, bo.weight()) - _mse(W, X, Xh, rf.weight()))
        if gap > FIT_RTOL * ref:
            failures.append(f"{label}: both/output/ridge 0 differs from residual_fit by {gap:.3e}")
        co = constrained_refit(W, C, Ch, Cx, rank=d, factor="both", target="joint", mix=1.0)
        if unique:
            dev = float(np.linalg.norm(co.weight() - W0)) / float(np.linalg.norm(W))
            if dev > 1e-7:
                failures.append(f"{label}: both/joint mix 1 is {dev:.3e} off P_U W")
    return _report(
        NAMES["refit_variants_statement"],
        failures,
        {"max_relative_gap_to_lstsq": worst},
        {"fit_rtol": FIT_RTOL, "ridge_inf_rtol": 1e-4, "subspace_atol": 1e-7},
        "objectives are differences of O(E||W x||^2) traces with conditioning <= 1e4: 1e-9",
        f"max gap to lstsq {fmt(worst)}",
    )


# -- factorise --------------------------------------------------------------------------


def _families(problem: BundleProblem, seed: int) -> list[tuple[str, F64, F64, int]]:
    """``(label, W, C, d)``: the problem, and seeded families with uneven groups and shapes."""
    rng = np.random.default_rng(seed + 7)
    out = [("problem", np.asarray(problem.W), _covariances(problem, rng), problem.rank)]
    for L, m, n, d in ((4, 9, 7, 3), (5, 5, 11, 2), (7, 8, 8, 3)):
        W = rng.standard_normal((L, m, n)) * np.exp(-0.2 * np.arange(n))[None, None, :]
        W = W * np.exp(rng.uniform(-1.0, 1.0, L))[:, None, None]
        G = rng.standard_normal((L, n, 2 * n))
        out.append((f"L={L} m={m} n={n}", W, G @ np.swapaxes(G, 1, 2) / (2 * n), d))
    return out


def _kyfan(K: F64, d: int) -> tuple[float, float]:
    """``(tr K - (mu_1 + ... + mu_d), tr K)`` from ``eigvalsh``."""
    mu = np.linalg.eigvalsh(0.5 * (K + K.T))
    return float(np.sum(mu[: len(mu) - d])), float(np.sum(mu))


def _check_factorisation(
    f: Factorisation,
    W: F64,
    C: F64,
    groups: list[list[int]],
    ranks: list[int],
    side: str,
    tag: str,
) -> list[str]:
    """Structure, parameters and reported errors of a factorisation, from the definitions."""
    L, m, n = W.shape
    out = []
    if len(f.shared) != len(groups):
        out.append(f"{tag}: {len(f.shared)} shared factors for {len(groups)} groups")
        return out
    want_groups = np.concatenate([[i] * len(g) for i, g in enumerate(groups)])
    if not np.array_equal(np.asarray(f.groups), want_groups):
        out.append(f"{tag}: groups {np.asarray(f.groups).tolist()}, want {want_groups.tolist()}")
    counted = sum(
        ranks[i] * ((m + len(g) * n) if side == "left" else (n + len(g) * m))
        for i, g in enumerate(groups)
    )
    if f.params_kept != counted or f.params_dense != L * m * n:
        out.append(
            f"{tag}: params_kept {f.params_kept} (dense {f.params_dense}); "
            f"counted {counted} ({L * m * n})"
        )
    for i, g in enumerate(groups):
        for l in g:
            if int(f.ranks[l]) != ranks[i]:
                out.append(f"{tag}: layer {l} at rank {int(f.ranks[l])}, want {ranks[i]}")
            Wl = f.weight(l)
            if side == "left":
                U = f.shared[i]
                if (
                    U.shape != (m, ranks[i])
                    or float(np.max(np.abs(U.T @ U - np.eye(U.shape[1])))) > 1e-10
                ):
                    out.append(
                        f"{tag}: group {i}'s basis is not an orthonormal m x {ranks[i]} frame"
                    )
                    continue
                dev = float(np.linalg.norm(Wl - U @ (U.T @ W[l]))) / float(np.linalg.norm(W[l]))
                if dev > 1e-10:
                    out.append(f"{tag}: layer {l} is not the section U_g U_g^T W_l ({dev:.3e})")
            E = W[l] - Wl
            fro, act = float(np.sum(E * E)), float(np.sum((E @ C[l]) * E))
            tot, atot = float(np.sum(W[l] * W[l])), float(np.sum((W[l] @ C[l]) * W[l]))
            if abs(float(f.frobenius_error[l]) - fro) > 1e-10 * tot:
                out.append(
                    f"{tag}: layer {l} reports Frobenius error "
                    f"{float(f.frobenius_error[l]):.6g}, is {fro:.6g}"
                )
            if (
                f.activation_error is not None
                and abs(float(f.activation_error[l]) - act) > 1e-10 * atot
            ):
                out.append(
                    f"{tag}: layer {l} reports activation error "
                    f"{float(f.activation_error[l]):.6g}, is {act:.6g}"
                )
    return out


def _check_reconstruction_errors(W: F64, C: F64, d: int, seed: int, label: str) -> list[str]:
    """``reconstruction_errors`` of seeded weights ``W + (rank d)``, against the samples.

    The weights are not an optimum of anything (where the activation error
    ``tr(E C E^T)`` could coincide with a wrong formula such as ``tr(E C
    W^T)``); each error is the mean over samples with the given statistics:
    ``||E x||^2``, and ``||W x - W' x_hat||^2`` for the output error.
    """
    rng = np.random.default_rng(seed + 17)
    L, m, n = W.shape
    Wc = W + rng.standard_normal((L, m, d)) @ rng.standard_normal((L, d, n)) / math.sqrt(n)
    samples = [_shifted_samples(C[l], rng) for l in range(L)]
    stats = [_stats(X, Xh) for X, Xh in samples]
    got = reconstruction_errors(
        W,
        Wc,
        np.stack([s[0] for s in stats]),
        C_hat=np.stack([s[1] for s in stats]),
        C_cross=np.stack([s[2] for s in stats]),
    )
    out = []
    for l, (X, Xh) in enumerate(samples):
        E = W[l] - Wc[l]
        ref = _mse(W[l], X, X, np.zeros_like(W[l]))
        want = {
            "frobenius_error": float(np.sum(E * E)),
            "activation_error": _mse(E, X, X, np.zeros_like(E)),
            "activation_total": ref,
            "output_error": _mse(W[l], X, Xh, Wc[l]),
        }
        for name, value in want.items():
            arr = getattr(got, name)
            scale = float(np.sum(W[l] * W[l])) if name == "frobenius_error" else ref
            if arr is None or abs(float(arr[l]) - value) > FIT_RTOL * scale:
                have = None if arr is None else float(arr[l])
                out.append(f"{label}: reconstruction_errors {name}[{l}] = {have}, is {value:.6g}")
    return out


def factorise_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Every method of :func:`grassbundle.factorise` is its definition, on uneven families.

    On the problem and on seeded families (``L = 4, 5, 7``; ``m > n``, thin
    ``m < n``, square), at every tying degree of
    :func:`grassbundle.theorems.check_tying_degrees` (short last groups
    included):

    * ``"svd"``: each layer attains ``tr N_l - (top d of N_l)`` (Eckart-Young);
    * ``"svd-llm"``, one rank or per-layer ranks: each layer attains the
      activation optimum ``tr M_l - (top d_l of M_l)``;
    * ``"bundle"`` at ``lam = 0`` (weight and activation metrics, one rank or
      per-group ranks): each group attains the Ky Fan optimum of ``sum_{l in
      g} omega_l E_l`` with ``omega_l = 1 / ||W_l||_F^2``;
    * ``"basis-sharing"``: each group attains ``sum_{i > d}`` of the
      eigenvalues of ``Y C_g Y^T`` (``Y`` the group's maps stacked, ``C_g``
      their summed Gram): the best shared input basis in the metric of
      ``C_g``;

    and every factorisation has one shared factor per group, the groups of
    consecutive layers, ``W'_l = U_g U_g^T W_l`` for the output side, the
    parameters ``sum_g d_g (m + |g| n)`` (``n + |g| m`` for the input side)
    and the errors it reports; and :func:`grassbundle.reconstruction_errors` of
    seeded weights ``W_l + (rank d)`` equals the errors on samples with the given
    statistics.  Energies to ``OPT_RTOL`` of the trace.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    failures: list[str] = []
    worst = 0.0
    ran = 0

    def energy_gap(K: F64, d: int, got: float, tag: str) -> None:
        nonlocal worst
        opt, tr = _kyfan(K, d)
        gap = (got - opt) / tr
        worst = max(worst, abs(gap))
        if abs(gap) > OPT_RTOL:
            failures.append(f"{tag}: energy {gap:.3e} of the trace off its optimum")

    for label, W, C, d in _families(problem, seed):
        L, m, n = W.shape
        omega = [1.0 / float(np.sum(W[l] * W[l])) for l in range(L)]
        single = [[l] for l in range(L)]
        for method in ("svd", "svd-llm"):
            f = factorise(W, C, method, d)
            ran += 1
            tag = f"{label} {method}"
            failures += _check_factorisation(f, W, C, single, [d] * L, "left", tag)
            for l in range(L):
                E = W[l] - f.weight(l)
                if method == "svd":
                    energy_gap(W[l] @ W[l].T, d, float(np.sum(E * E)), f"{tag} layer {l}")
                else:
                    energy_gap(
                        W[l] @ C[l] @ W[l].T, d, float(np.sum((E @ C[l]) * E)), f"{tag} layer {l}"
                    )
        per_layer = [max(1, min(d + (l % 3) - 1, m - 1, n)) for l in range(L)]
        f = factorise(W, C, "svd-llm", None, ranks=per_layer)
        ran += 1
        failures += _check_factorisation(
            f, W, C, single, per_layer, "left", f"{label} svd-llm ranks"
        )
        for l in range(L):
            E = W[l] - f.weight(l)
            energy_gap(
                W[l] @ C[l] @ W[l].T,
                per_layer[l],
                float(np.sum((E @ C[l]) * E)),
                f"{label} svd-llm ranks layer {l}",
            )
        for k in check_tying_degrees(L):
            groups = [list(range(s, min(s + k, L))) for s in range(0, L, k)]
            for metric in ("weight", "activation"):
                for varied in (False, True):
                    gr = [
                        max(1, min(d - (i % 2 if varied else 0), m - 1, n))
                        for i in range(len(groups))
                    ]
                    if varied:
                        ranks = [gr[i] for i, g in enumerate(groups) for _ in g]
                        f = factorise(W, C, "bundle", None, tying=k, metric=metric, ranks=ranks)
                    else:
                        f = factorise(W, C, "bundle", d, tying=k, metric=metric)
                    ran += 1
                    tag = f"{label} bundle k={k} {metric}{' per-group ranks' if varied else ''}"
                    failures += _check_factorisation(f, W, C, groups, gr, "left", tag)
                    for i, g in enumerate(groups):
                        K = np.zeros((m, m))
                        got = 0.0
                        for l in g:
                            En = W[l] @ W[l].T if metric == "weight" else W[l] @ C[l] @ W[l].T
                            K += omega[l] * En
                            E = W[l] - f.weight(l)
                            got += omega[l] * float(
                                np.sum(E * E) if metric == "weight" else np.sum((E @ C[l]) * E)
                            )
                        energy_gap(K, gr[i], got, f"{tag} group {i}")
            db = min(d, n)
            f = factorise(W, C, "basis-sharing", db, group_size=k)
            ran += 1
            tag = f"{label} basis-sharing k={k}"
            failures += _check_factorisation(f, W, C, groups, [db] * len(groups), "right", tag)
            for i, g in enumerate(groups):
                Y = np.concatenate([W[l] for l in g], axis=0)
                Cg = sum(C[l] for l in g)
                R = np.concatenate([W[l] - f.weight(l) for l in g], axis=0)
                energy_gap(Y @ Cg @ Y.T, db, float(np.sum((R @ Cg) * R)), f"{tag} group {i}")
        failures += _check_reconstruction_errors(W, C, d, seed, label)
    return _report(
        NAMES["factorise_statement"],
        failures,
        {"factorisations": ran, "max_relative_gap_to_optimum": worst},
        {"energy_rtol": OPT_RTOL, "structure_atol": 1e-10},
        "energies are differences of O(tr K) traces: roundoff ~m eps tr K; 1e-9 tr K",
        f"{ran} factorisations; max gap to optimum {fmt(worst)}",
    )


# -- distances and means ------------------------------------------------------------------


def _pair_with_angles(n: int, theta: F64, rng: np.random.Generator) -> tuple[F64, F64]:
    """Bases ``U, V`` of ``Gr(p, n)`` whose principal angles are exactly ``theta`` (``2p <= n``).

    ``U = Q [I; 0; 0]``, ``V = Q [diag(cos); diag(sin); 0]`` with a seeded
    orthogonal ``Q`` and a seeded rotation of ``V``'s columns.
    """
    p = len(theta)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    R = np.linalg.qr(rng.standard_normal((p, p)))[0]
    U0 = np.zeros((n, p))
    V0 = np.zeros((n, p))
    U0[:p] = np.eye(p)
    V0[:p] = np.diag(np.cos(theta))
    V0[p : 2 * p] = np.diag(np.sin(theta))
    return Q @ U0, Q @ V0 @ R


def distances_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """The distances of :mod:`grassbundle.distances` are their formulas in the principal angles.

    On pairs with prescribed angles ``theta`` (tiny, moderate, near
    ``pi/2``; in ``R^n`` for ``n`` = the problem's ``m`` and small ``n``):
    ``dist = ||theta||``, ``chordal = ||sin theta||``, ``projection =
    sqrt(2) ||sin theta||`` (``ord=2``: ``max sin theta``), ``procrustes =
    ||2 sin(theta/2)||``, ``binet_cauchy = sqrt(1 - prod cos^2)``,
    ``fubini_study = arccos(prod cos)`` (from ``sin`` and ``cos`` closed
    forms); and on random pairs the projector forms ``||P_U - P_V||_F``,
    ``||P_U - P_V||_2`` and ``min_Q ||U Q - V||_F`` (orthogonal Procrustes)
    from dense matrices.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed + 11)
    failures: list[str] = []
    worst = 0.0
    m = max(problem.m, 6)
    cases = [
        np.array([1e-9, 0.3, 1.2]),
        np.array([0.05, 0.7]),
        np.array([0.4, math.pi / 2 - 1e-3, 0.9, 0.2]),
        np.array([1.1]),
    ]
    for n in (6, 2 * 4 + 1, m):
        for theta in cases:
            if 2 * len(theta) > n:
                continue
            U, V = _pair_with_angles(n, theta, rng)
            c, s = np.cos(theta), np.sin(theta)
            prod_c = float(np.prod(c))
            want = {
                "dist": float(np.linalg.norm(theta)),
                "chordal_dist": float(np.linalg.norm(s)),
                "projection_dist": math.sqrt(2.0) * float(np.linalg.norm(s)),
                "projection_dist_2": float(np.max(s)),
                "procrustes_dist": float(np.linalg.norm(2.0 * np.sin(theta / 2))),
                "binet_cauchy_dist": math.sqrt(max(0.0, 1.0 - prod_c**2)),
                "fubini_study_dist": math.atan2(math.sqrt(max(0.0, 1.0 - prod_c**2)), prod_c),
            }
            if theta.min() < 1e-6:  # 1 - prod cos^2 cancels: from the angles instead
                want["binet_cauchy_dist"] = float(np.sqrt(-np.expm1(np.sum(np.log(c**2)))))
                want["fubini_study_dist"] = math.atan2(want["binet_cauchy_dist"], prod_c)
            for name, value in want.items():
                fn: Callable[..., Any] = getattr(_dist, name.removesuffix("_2"))
                got = float(fn(U, V, ord=2) if name.endswith("_2") else fn(U, V))
                err = abs(got - value) / max(value, 1e-300)
                worst = max(worst, err)
                if abs(got - value) > DIST_RTOL * value + 1e-15:
                    failures.append(
                        f"{name} at angles {np.round(theta, 4).tolist()}: {got:.12g}, "
                        f"want {value:.12g}"
                    )
    for _ in range(4):
        n, p = 7, int(rng.integers(1, 4))
        U = np.linalg.qr(rng.standard_normal((n, p)))[0]
        V = np.linalg.qr(rng.standard_normal((n, p)))[0]
        D = U @ U.T - V @ V.T
        Us, _, Vt = np.linalg.svd(U.T @ V)
        Qp = Us @ Vt
        want = {
            "chordal_dist": float(np.linalg.norm(D)) / math.sqrt(2.0),
            "projection_dist": float(np.linalg.norm(D)),
            "procrustes_dist": float(np.linalg.norm(U @ Qp - V)),
            "fubini_study_dist": math.acos(min(1.0, abs(float(np.linalg.det(U.T @ V))))),
        }
        for name, value in want.items():
            got = float(getattr(_dist, name)(U, V))
            worst = max(worst, abs(got - value) / value)
            if abs(got - value) > 1e-10 * value:
                failures.append(f"{name} on a random pair: {got:.12g}, projector form {value:.12g}")
        got2 = float(_dist.projection_dist(U, V, ord=2))
        if abs(got2 - float(np.linalg.norm(D, 2))) > 1e-10:
            failures.append(
                f"projection_dist ord=2: {got2:.12g}, "
                f"||P_U - P_V||_2 {float(np.linalg.norm(D, 2)):.12g}"
            )
    return _report(
        NAMES["distances_statement"],
        failures,
        {"max_relative_error": worst},
        {"dist_rtol": DIST_RTOL},
        "closed forms of exact angles and the package's, both a few eps relative: 1e-10",
        f"max relative error {fmt(worst)}",
    )


def _log_ref(U: F64, V: F64) -> F64:
    """``Log_U(V) = Q arctan(S) R^T`` from ``(I - U U^T) V (U^T V)^{-1} = Q S R^T`` (thin SVD)."""
    M = V - U @ (U.T @ V)
    A = np.linalg.solve((U.T @ V).T, M.T).T
    Q, S, Rt = np.linalg.svd(A, full_matrices=False)
    return np.asarray((Q * np.arctan(S)) @ Rt)


def _angles_ref(U: F64, V: F64) -> F64:
    """Principal angles ``arctan2(s, c)``: singular values of ``(I - U U^T) V`` and ``U^T V``."""
    c = np.linalg.svd(U.T @ V, compute_uv=False)  # descending
    s = np.linalg.svd(V - U @ (U.T @ V), compute_uv=False)[::-1]  # ascending
    return np.asarray(np.arctan2(s, np.clip(c, 0.0, 1.0)))


def means_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """The chordal mean is the top eigenspace of ``sum_i w_i P_i``; the Karcher mean is critical.

    For seeded clusters of points on ``Gr(p, m)`` (``m`` the problem's; and
    on the problem's own anchors, the top-``d`` eigenspaces of its ``M_l``)
    with seeded weights:

    * ``chordal_mean`` spans the top-``p`` eigenspace of ``sum_i w_i U_i
      U_i^T`` (``eigh``; sine ``<= 1e-8``) and returns its eigenvalues
      (normalised weights);
    * ``karcher_mean`` converges, and there ``sum_i w_i Log(U_i) = 0`` (the
      logarithm written out here; gradient norm ``<= 1e-8``), its cost
      ``(1/2) sum_i w_i ||theta_i||^2`` is no larger than at the chordal
      mean or at seeded perturbations of it.

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` (seeded covariances when it has none) and rank.
    seed : int, default 0
        Seed of the instances, samples and shifts drawn here.

    Returns
    -------
    TheoremReport
    """
    rng = np.random.default_rng(seed + 13)
    m = problem.m
    failures: list[str] = []
    worst_grad = 0.0
    clusters: list[tuple[F64, F64]] = []
    for p, k, spread in ((1, 5, 0.3), (2, 4, 0.2), (min(3, m // 2), 6, 0.1)):
        base = np.linalg.qr(rng.standard_normal((m, p)))[0]
        drawn = [np.linalg.qr(base + spread * rng.standard_normal((m, p)))[0] for _ in range(k)]
        clusters.append((np.stack(drawn), rng.uniform(0.2, 2.0, size=k)))
    C = _covariances(problem, rng)
    anchors = np.stack(
        [_top(problem.W[l] @ C[l] @ problem.W[l].T, problem.rank)[0] for l in range(problem.L)]
    )
    if problem.L >= 2:
        clusters.append((anchors, np.ones(problem.L)))
    for i, (pts, w) in enumerate(clusters):
        p = pts.shape[-1]
        wn = w / w.sum()
        S = sum(wn[j] * pts[j] @ pts[j].T for j in range(len(pts)))
        V, mu = _top(S, p)
        mean, ev = chordal_mean(pts, w, return_eigenvalues=True)
        gap = mu[p - 1] - mu[p] if len(mu) > p else 1.0
        sine = _resid_sine(V, mean)
        if sine > 1e-10 + 100 * EPS / max(gap, EPS):
            failures.append(
                f"cluster {i}: chordal mean is not the top-{p} eigenspace (sine {sine:.3e})"
            )
        kk = min(len(ev), len(mu))
        if float(np.max(np.abs(np.asarray(ev)[:kk] - mu[:kk]))) > 1e-12:
            failures.append(f"cluster {i}: chordal mean's eigenvalues are not those of sum w_i P_i")
        if i == len(clusters) - 1 and problem.L >= 2:
            continue  # the anchors can be spread beyond the Karcher mean's convexity radius
        res = karcher_mean(pts, w)
        U = res.point

        def cost(X: F64, pts: F64 = pts, wn: F64 = wn) -> float:
            return 0.5 * sum(
                float(wn[j] * np.sum(_angles_ref(X, pts[j]) ** 2)) for j in range(len(pts))
            )

        G = sum(wn[j] * _log_ref(U, pts[j]) for j in range(len(pts)))
        g = float(np.linalg.norm(G))
        worst_grad = max(worst_grad, g)
        if not bool(res.converged) or g > 1e-8:
            failures.append(
                f"cluster {i}: Karcher mean not critical (sum w Log = {g:.3e}, "
                f"converged {bool(res.converged)})"
            )
        f0 = cost(U)
        others = [mean] + [
            np.linalg.qr(U + 1e-2 * rng.standard_normal(U.shape))[0] for _ in range(3)
        ]
        if min(cost(X) for X in others) < f0 - 1e-12:
            failures.append(
                f"cluster {i}: a nearby point has a lower Karcher cost than karcher_mean"
            )
    return _report(
        NAMES["means_statement"],
        failures,
        {"clusters": len(clusters), "max_karcher_gradient": worst_grad},
        {"sine_atol": 1e-10, "gradient_atol": 1e-8},
        (
            "the chordal mean is one eigenspace by two routes (eps/gap); karcher_mean stops at "
            "a gradient of 1e-10, and the logarithm here is accurate to ~1e-12"
        ),
        f"{len(clusters)} clusters; max Karcher gradient {fmt(worst_grad)}",
    )


# -- soft coupling ------------------------------------------------------------------------


def coupling_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """Soft coupling: exact block steps, an energy that never increases, block optimality.

    For ``solve_coupled(problem, lam, mu)`` at ``lam`` in {0, 1} and ``mu`` in
    {0, 0.3}, with the energy ``J_{lam,mu} = sum_l omega_l E_l(U_l) + lam
    sum_l ||P_{U_l} - P_{A_l}||_F^2 / (2d) + mu sum_l ||P_{U_l} -
    P_{U_{l+1}}||_F^2 / (2d)`` recomputed here (``omega``, the energies and
    the anchors from the definitions, see :mod:`grassbundle.theorems`):

    * the reported energy is ``J`` of the returned bases, and its history
      never increases (to ``OPT_RTOL`` of the scale ``sum_l omega_l tr E_l +
      (lam + 2 mu) L``);
    * at convergence every layer is its own block's optimum: ``U_l`` attains
      the Ky Fan optimum of ``K_l = omega_l E_l + (lam/d) A_l A_l^T + (mu/d)
      (P_{U_{l-1}} + P_{U_{l+1}})`` (``eigvalsh``), to ``1e-8`` of the scale
      (the sweeps stop when one lowers ``J`` by less than ``1e-12`` of it);
    * at ``mu = 0`` it is the closed form: ``J`` equals ``sum_l`` of the Ky
      Fan optima of ``omega_l E_l + (lam/d) A_l A_l^T``;
    * coupling never costs: ``J_{lam,mu}`` of the result is at most that of
      the untied optimum (its starting point).

    Parameters
    ----------
    problem : BundleProblem
        Its ``W``, ``C`` and rank (seed unused: nothing is drawn).
    seed : int, default 0

    Returns
    -------
    TheoremReport
    """
    del seed
    ref = reference(problem)
    L, d, m = problem.L, problem.rank, problem.m
    kind = "N" if problem.metric == "weight" else "M"
    grams = [gram(problem, l, kind) for l in range(L)]
    failures: list[str] = []
    worst_block = 0.0
    worst_rise = 0.0

    def energy(U: F64, lam: float, mu: float) -> float:
        w = sum(ref.omega[l] * layer_energy(problem, l, U[l]) for l in range(L))
        a = sum(1.0 - float(np.sum((U[l].T @ ref.anchors[l]) ** 2)) / d for l in range(L))
        c = sum(1.0 - float(np.sum((U[l].T @ U[l + 1]) ** 2)) / d for l in range(L - 1))
        return w + lam * a + mu * c

    for lam in (0.0, 1.0):
        untied = None
        for mu in (0.0, 0.3):
            sec = solve_coupled(problem, lam, mu)
            U = np.asarray(sec.bases)
            scale = float(np.dot(ref.omega, ref.trace)) + (lam + 2 * mu) * L
            J = energy(U, lam, mu)
            tag = f"lam = {lam:g}, mu = {mu:g}"
            if abs(J - sec.energy) > OPT_RTOL * scale:
                failures.append(f"{tag}: reported energy {sec.energy:.12g}, recomputed {J:.12g}")
            rise = float(np.max(np.diff(sec.history), initial=0.0)) / scale
            worst_rise = max(worst_rise, rise)
            if rise > OPT_RTOL:
                failures.append(f"{tag}: the energy rose by {rise:.3e} of the scale in a sweep")
            for l in range(L):
                A = ref.anchors[l]
                K = ref.omega[l] * grams[l] + (lam / d) * (A @ A.T)
                for j in (l - 1, l + 1):
                    if 0 <= j < L:
                        K = K + (mu / d) * (U[j] @ U[j].T)
                top = float(np.sum(np.linalg.eigvalsh(0.5 * (K + K.T))[m - d :]))
                gap = (top - float(np.sum(U[l] * (K @ U[l])))) / scale
                worst_block = max(worst_block, abs(gap))
                if sec.converged and abs(gap) > 1e-8:
                    failures.append(f"{tag}: layer {l} misses its block optimum by {gap:.3e}")
            if not sec.converged:
                failures.append(f"{tag}: block-coordinate descent did not converge")
            if mu == 0.0:
                untied = U
                # min over U of omega E_l(U) + lam (1 - tr(U^T A A^T U) / d)
                #   = omega tr E_l + lam - (top d of K_l),  K_l = omega E_l + (lam/d) A A^T
                opt = 0.0
                for l in range(L):
                    A = ref.anchors[l]
                    K = ref.omega[l] * grams[l] + (lam / d) * (A @ A.T)
                    top_d = float(np.sum(np.linalg.eigvalsh(0.5 * (K + K.T))[m - d :]))
                    opt += ref.omega[l] * float(np.trace(grams[l])) + lam - top_d
                if abs(J - opt) > OPT_RTOL * scale:
                    failures.append(
                        f"{tag}: energy {J:.12g} is not the closed-form optimum {opt:.12g}"
                    )
            elif untied is not None and J > energy(untied, lam, mu) + OPT_RTOL * scale:
                failures.append(f"{tag}: coupling ends above its untied starting point")
    return _report(
        NAMES["coupling_statement"],
        failures,
        {"max_block_gap": worst_block, "max_sweep_rise": worst_rise},
        {"energy_rtol": OPT_RTOL, "block_rtol": 1e-8},
        (
            "energies are differences of O(scale) traces (~m eps scale); the block gap "
            "after convergence at 1e-12 per sweep stays far below 1e-8"
        ),
        f"max block gap {fmt(worst_block)}; max sweep rise {fmt(worst_rise)}",
    )


#: The checks of this module, in the order ``python -m grassbundle check`` runs them.
# -- loss-aware selection -----------------------------------------------------------


def _selection_options(
    s: F64, c: int, D: int | None, mode: str
) -> list[tuple[int, float, frozenset[int] | None]]:
    """Every option of one unit from the definitions: (cost, loss, kept set or None)."""
    import itertools

    R = s.size
    out: list[tuple[int, float, frozenset[int] | None]] = []
    for r in range(1, R + 1):
        if D is not None and r * c >= D:
            break
        sets = itertools.combinations(range(R), r) if mode == "components" else [range(r)]
        for K in sets:
            keep = frozenset(K)
            out.append((r * c, float(sum(s[i] for i in range(R) if i not in keep)), keep))
    if D is not None:
        out.append((D, 0.0, None))
    return out


def selection_statement(problem: BundleProblem, *, seed: int = 0) -> TheoremReport:
    """:func:`grassbundle.select_components`, ``activation_basis`` and ``removal_gradients``.

    On the problem's maps: the components' energies are the eigenvalues of
    ``W C W^T`` (``eigvalsh``) with an orthonormal basis that diagonalises it,
    and the removal gradient of each component is the directional derivative
    of a least-squares loss on explicit samples (central differences).  On
    seeded small instances (units of 2-4 components, some dense-capable):
    Everett's theorem (at a budget spent exactly by a multiplier's choice,
    computed here from the definitions, the selection equals the brute-force
    optimum), weak duality (``lower_bound <= optimum <= loss``) at random
    budgets, and break-even (no factored unit stores as much as its dense form).
    """
    from .selection import activation_basis, removal_gradients, select_components

    rng = np.random.default_rng(seed)
    failures: list[str] = []
    C = _covariances(problem, rng)
    W = np.asarray(problem.W, dtype=np.float64)
    worst = 0.0
    for l in range(min(W.shape[0], 3)):
        mu, U = activation_basis(W[l], C[l])
        M = W[l] @ C[l] @ W[l].T
        ref = np.sort(np.linalg.eigvalsh(M))[::-1][: mu.size]
        scale = max(float(np.abs(ref).max()), 1e-300)
        err = max(
            float(np.abs(mu - np.clip(ref, 0, None)).max()),
            float(np.abs((U * mu) @ U.T - M).max()),
        )
        worst = max(worst, err / scale)
        if err > FIT_RTOL * 10 * scale:
            failures.append(f"layer {l}: components are not the eigenpairs of W C W^T ({err:.3e})")
        X = rng.standard_normal((W.shape[2], 30))
        Y = rng.standard_normal((W.shape[1], 30))
        G = (W[l] @ X - Y) @ X.T
        g = removal_gradients(W[l], U, G)
        for i in range(min(U.shape[1], 4)):
            Dir = np.outer(U[:, i], U[:, i]) @ W[l]
            t = 1e-6
            lo = 0.5 * float(np.sum(((W[l] - t * Dir) @ X - Y) ** 2))
            hi = 0.5 * float(np.sum(((W[l] + t * Dir) @ X - Y) ** 2))
            fd = (lo - hi) / (2 * t)
            if abs(g[i] - fd) > 1e-5 * max(abs(fd), float(np.abs(G).max())):
                failures.append(f"layer {l} component {i}: removal gradient {g[i]:.6g} != {fd:.6g}")
    checked = 0
    for case in range(8):
        U_ = int(rng.integers(2, 4))
        scores = [rng.gamma(1.0, size=int(rng.integers(2, 5))) for _ in range(U_)]
        if case % 2:
            scores = [x - rng.uniform(0, 0.4, size=x.size) for x in scores]
        shapes = [(int(rng.integers(2, 6)), int(rng.integers(2, 6))) for _ in range(U_)]
        costs = [m + n for m, n in shapes]
        dense = [m * n if rng.random() < 0.7 else None for m, n in shapes]
        modes: tuple[Any, ...] = ("components", "rank")
        for mode in modes:
            opts = [
                _selection_options(x, c, D, mode)
                for x, c, D in zip(scores, costs, dense, strict=True)
            ]

            def brute(budget: int, opts: list[Any] = opts) -> float:
                best = math.inf
                import itertools

                for combo in itertools.product(*opts):
                    if sum(o[0] for o in combo) <= budget:
                        best = min(best, sum(o[1] for o in combo))
                return best

            beta = float(rng.uniform(0.0, 0.3))
            budget = sum(min(o, key=lambda q: (q[1] + beta * q[0], q[0]))[0] for o in opts)
            sel = select_components(scores, costs, budget, dense_costs=dense, mode=mode)
            opt = brute(budget)
            if abs(sel.loss - opt) > 1e-9:
                failures.append(
                    f"case {case} {mode}: {sel.loss:.6g} != optimum {opt:.6g} (multiplier's budget)"
                )
            top = sum(
                D if D is not None else x.size * c
                for x, c, D in zip(scores, costs, dense, strict=True)
            )
            other = int(rng.integers(sum(costs), top + 1))
            sel = select_components(scores, costs, other, dense_costs=dense, mode=mode)
            opt = brute(other)
            if not sel.lower_bound <= opt + 1e-9 <= sel.loss + 2e-9:
                failures.append(
                    f"case {case} {mode}: {sel.lower_bound:.6g} <= {opt:.6g} <= {sel.loss:.6g} fail"
                )
            if sel.cost > other:
                failures.append(f"case {case} {mode}: cost {sel.cost} over the budget {other}")
            for u, K in enumerate(sel.kept):
                Du = dense[u]
                if K is not None and Du is not None and K.size * costs[u] >= Du:
                    failures.append(f"case {case} {mode}: unit {u} factored at or above break-even")
            checked += 2
    return _report(
        NAMES["selection_statement"],
        failures,
        {"components_rel_err": worst, "instances": checked},
        {"FIT_RTOL x 10": FIT_RTOL * 10, "loss": 1e-9},
        "Everett's theorem, weak duality, break-even and the component scores hold",
        f"{checked} selections against brute force; components to {worst:.1e}",
    )


FIT_CHECKS: tuple[Callable[..., TheoremReport], ...] = (
    allocation_greedy_equal_costs,
    allocation_relaxation,
    allocation_dynamic_programme,
    allocation_costs_and_spectra,
    svd_llm_update_statement,
    residual_fit_theorem_4,
    residual_fit_theorem_5,
    ridge_limits,
    refit_variants_statement,
    factorise_statement,
    distances_statement,
    means_statement,
    coupling_statement,
    selection_statement,
)


def fit_checks(problem: BundleProblem, *, seed: int = 0) -> list[TheoremReport]:
    """Every check of this module on one problem.

    A check whose code under test raises is reported as failing (named after
    its function, the exception in ``failures``) instead of stopping the run.

    Parameters
    ----------
    problem : BundleProblem
    seed : int, default 0

    Returns
    -------
    list of TheoremReport
    """
    reports = []
    for check in FIT_CHECKS:
        try:
            reports.append(check(problem, seed=seed))
        except Exception as exc:  # a crash of the code under test fails its check
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            reports.append(
                _report(
                    NAMES[check.__name__],
                    [f"raised {msg}"],
                    {},
                    {},
                    "the check did not finish",
                    msg,
                )
            )
    return reports
