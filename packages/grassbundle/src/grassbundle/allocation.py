"""Budget-aware rank allocation: integer ranks per unit under one parameter budget.

A *unit* is one compressed map (a layer) or one tied group of layers that
shares an output basis.  Unit ``u`` has a *spectrum* ``mu_u`` (the eigenvalues
of its energy matrix, e.g. ``M_l = W_l C_l W_l^T`` for a layer or
``K_g = sum_{l in g} omega_l M_l`` for a tied group, in any order; they are
sorted descending here) and a *cost per rank* ``c_u`` (parameters one more
rank stores: ``m + n`` for an untied ``m x n`` map, ``m + k n`` for a group
of ``k`` maps sharing an ``m x d`` output basis; see :func:`factor_cost`).
At rank ``d`` the unit's energy is the tail sum (Ky Fan)::

    E_u(d) = w_u * sum_{i > d} mu_{u,i}          (plain sum)
    E_u(d) = w_u * sum_{i > d} mu_{u,i} / tr_u    (normalise=True, tr_u = sum_i mu_{u,i})

which is convex and non-increasing in ``d``: its marginal gain
``E_u(d-1) - E_u(d) = w_u mu_{u,d}`` does not increase with ``d``.  The
problem is::

    minimise   sum_u E_u(d_u)
    subject to sum_u c_u d_u <= budget,  d_u in {min_u, ..., max_u},  step | d_u.

* With equal costs the greedy allocation by marginal gain is exactly optimal
  (exchange argument, ``docs/theory/allocation.rst``).
* With unequal costs it is a knapsack problem (NP-hard in general).  Greedy by
  gain per parameter, with the units' increments in decreasing order of that
  ratio, solves the continuous relaxation exactly; the integer greedy
  allocation is within one critical increment of the optimum.  The exact
  optimum comes from dynamic programming over the budget in units of the
  ``gcd`` of the increments' costs, used when its work fits ``max_dp_work``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validate
from ._validate import PSD_RTOL

__all__ = [
    "MAX_DP_WORK",
    "Allocation",
    "activation_spectrum",
    "allocate_ranks",
    "factor_cost",
]

F64 = NDArray[np.float64]
Method = Literal["auto", "greedy", "dp"]

#: Largest dynamic programme :func:`allocate_ranks` runs by itself
#: (``method="auto"``): the number of (budget cell, rank choice) pairs it
#: visits, ``sum_u (J_u + 1) * (cells + 1)``.  2e7 takes well under a second
#: of vectorised numpy on one core (6e7 took 0.2 s in
#: ``benchmarks/bench_allocation.py``), and bounds the back-tracking table
#: (``U * (cells + 1)`` int32, at most 80 MB).
MAX_DP_WORK = 20_000_000


@dataclass(frozen=True)
class Allocation:
    """The ranks chosen by :func:`allocate_ranks` and what they spend and leave.

    Attributes
    ----------
    ranks : ndarray, shape=[U], int
        ``d_u`` per unit.
    energy : float
        ``sum_u E_u(d_u)``, the objective (weighted, normalised if asked).
    unit_energy : ndarray, shape=[U]
        ``E_u(d_u)`` per unit, each computed as a tail sum of the sorted
        spectrum (not as a difference of large numbers).
    cost : int
        Parameters spent, ``sum_u c_u d_u``.
    budget : int
        The budget given.
    method : str
        ``"greedy"`` or ``"dp"``: the algorithm that produced ``ranks``.
    exact : bool
        True when ``ranks`` is provably optimal: dynamic programming, or the
        greedy allocation when every increment costs the same or when the
        continuous relaxation's solution is integral.
    lower_bound : float
        The optimum of the continuous relaxation (fractional increments), a
        lower bound on every integer allocation's energy: ``lower_bound <=``
        optimum ``<= energy``.  Equal to ``energy`` (to roundoff) when the
        relaxation's solution is integral.
    """

    ranks: NDArray[np.intp]
    energy: float
    unit_energy: F64
    cost: int
    budget: int
    method: str
    exact: bool
    lower_bound: float


def factor_cost(
    m: int, n: int, k: int = 1, *, shared: Literal["output", "input"] = "output"
) -> int:
    """Parameters one rank of a (tied) low-rank factorisation stores.

    Parameters
    ----------
    m, n : int
        Shape of each map (``y = W x``, ``W`` is ``m x n``).
    k : int, default 1
        Number of maps that share one basis (``1``: untied).
    shared : {"output", "input"}, default "output"
        Which factor the ``k`` maps share: the ``m x d`` output basis (the
        bundle's sections, cost ``m + k n``) or the ``d x n`` input basis
        (Basis Sharing as its authors build it, cost ``n + k m``).

    Returns
    -------
    int
        The cost per rank ``c``: a unit at rank ``d`` stores ``c d`` numbers.
        A factorisation saves parameters only while ``c d < k m n``.
    """
    for name, v in (("m", m), ("n", n), ("k", k)):
        if not _validate.is_integer(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {name} = {v!r}")
    if shared == "output":
        return int(m) + int(k) * int(n)
    if shared == "input":
        return int(n) + int(k) * int(m)
    raise ValueError(f"shared must be 'output' or 'input'; got shared = {shared!r}")


def activation_spectrum(
    W: ArrayLike,
    C: ArrayLike | None = None,
    *,
    omega: ArrayLike | Literal["frobenius"] | None = None,
) -> F64:
    """Eigenvalues, descending, of ``sum_l omega_l W_l C_l W_l^T`` (``W_l W_l^T`` without ``C``).

    For one layer this is the spectrum of ``M = W C W^T``, whose tail sums
    are SVD-LLM's truncation energies; for a tied group it is the spectrum of
    the group's energy matrix, whose tail sums are the energies of the
    group's best shared output basis (the tied activation corner).

    Parameters
    ----------
    W : array-like, shape=[m, n] or [k, m, n]
        One map or a group of ``k`` maps.
    C : array-like, shape=[n, n] or [k, n, n], optional
        Input covariances, symmetric positive semi-definite (eigenvalues
        below ``-1e-8 * lambda_max`` are an error; the rest are clipped at 0).
    omega : array-like, shape=[k], or "frobenius", optional
        Positive layer weights; default all ones (absolute energies, so that
        units can be compared and summed).  ``"frobenius"``: ``1 /
        ||W_l||_F^2``, the bundle's default weights
        (:class:`grassbundle.BundleProblem`), so that the tail sums are the
        tied corner's own objective.

    Returns
    -------
    ndarray, shape=[m], float64
        The ``m`` eigenvalues, descending (zeros padded where the rank is
        below ``m``), computed as squared singular values of the factor
        ``[sqrt(omega_l) W_l R_l]`` with ``R_l R_l^T = C_l`` (Cholesky, or
        the eigendecomposition when ``C_l`` is singular).
    """
    W64 = _validate.weight_stack(W)
    k, m, n = W64.shape
    if isinstance(omega, str):
        if omega != "frobenius":
            raise ValueError(f"omega must be weights or 'frobenius'; got omega = {omega!r}")
        omega = 1.0 / np.einsum("lij,lij->l", W64, W64)
    om = _weights(omega, k, "omega")
    parts = []
    for l in range(k):
        if C is None:
            parts.append(math.sqrt(om[l]) * W64[l])
            continue
        R = _validate.sqrt_factor(_cov(C, k, n, l, "C"), f"C[{l}]")
        parts.append(math.sqrt(om[l]) * (W64[l] @ R))
    F = np.concatenate(parts, axis=1)
    s = np.linalg.svd(F, compute_uv=False)
    out = np.zeros(m)
    out[: s.size] = s * s
    return out


def _cov(C: ArrayLike, k: int, n: int, l: int, name: str) -> F64:
    C64 = np.asarray(C, dtype=np.float64)
    if C64.ndim == 2:
        C64 = C64[None]
    if C64.shape != (k, n, n):
        raise ValueError(
            f"{name} must have shape (n, n) or (k, n, n) = ({k}, {n}, {n}); got {np.shape(C)}"
        )
    Cl = C64[l]
    if not np.all(np.isfinite(Cl)):
        raise ValueError(f"{name}[{l}] must have finite entries; found NaN or inf")
    return Cl


def _weights(w: ArrayLike | None, k: int, name: str) -> F64:
    if w is None:
        return np.ones(k)
    arr = np.asarray(w, dtype=np.float64).reshape(-1)
    if arr.shape != (k,):
        raise ValueError(f"{name} must have shape ({k},); got shape {np.shape(w)}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite; got {name} = {arr}")
    return arr


def _int_array(x: Any, U: int, name: str, default: int | None = None) -> NDArray[np.intp]:
    if x is None:
        assert default is not None
        return np.full(U, default, dtype=np.intp)
    arr = np.asarray(x)
    if arr.ndim == 0:
        arr = np.full(U, arr)
    if arr.shape != (U,) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must be an integer or {U} integers (one per unit); got {x!r}")
    if arr.dtype == bool:
        raise ValueError(f"{name} must be integers, not booleans; got {x!r}")
    return arr.astype(np.intp)


def _tails(mu: F64) -> F64:
    """``t[d] = sum_{i >= d} mu[i]`` for ``d = 0..len(mu)`` (summed from the small end)."""
    t = np.zeros(mu.size + 1)
    t[:-1] = np.cumsum(mu[::-1])[::-1]
    return t


def allocate_ranks(
    spectra: Sequence[ArrayLike],
    costs: ArrayLike,
    budget: int,
    *,
    normalise: bool = False,
    weights: ArrayLike | None = None,
    min_rank: int | ArrayLike = 1,
    max_rank: int | ArrayLike | None = None,
    step: int = 1,
    method: Method = "auto",
    max_dp_work: int = MAX_DP_WORK,
) -> Allocation:
    """Integer ranks minimising the summed truncation energy under a parameter budget.

    Unit ``u`` at rank ``d`` has energy ``E_u(d) = w_u * sum_{i > d} mu_{u,i}``
    (divided by ``tr_u = sum_i mu_{u,i}`` when ``normalise``) and costs
    ``c_u d`` parameters; the ranks minimise ``sum_u E_u(d_u)`` subject to
    ``sum_u c_u d_u <= budget``, ``min_rank_u <= d_u <= max_rank_u`` and
    ``d_u`` a multiple of ``step``.  See the module docstring and
    ``docs/theory/allocation.rst`` for what each method guarantees.

    A family that must keep one rank for all its ``L`` layers is one unit
    whose spectrum is the elementwise sum of its layers' descending spectra
    and whose cost is ``L`` times the layer cost.

    Parameters
    ----------
    spectra : sequence of array-like, each shape=[R_u]
        Per unit, the eigenvalues of its energy matrix (any order; sorted
        descending here), e.g. from :func:`activation_spectrum`.  The full
        spectrum is needed for ``normalise`` (its sum is the trace); tiny
        negative values (above ``-1e-8 * max``) are clipped to zero.
    costs : array-like of int, shape=[U]
        Parameters per rank of each unit, ``>= 1`` (see :func:`factor_cost`).
    budget : int
        Parameters available for all units' factors together.
    normalise : bool, default False
        Relative energies ``E_u(d) / tr_u`` (every unit's error fraction
        counts equally) instead of absolute ones.
    weights : array-like, shape=[U], optional
        Positive weights ``w_u`` on the units' energies (default ones).
    min_rank : int or array-like of int, default 1
        Smallest allowed rank per unit (``0`` allows dropping a unit).
    max_rank : int or array-like of int, optional
        Largest allowed rank per unit; default ``R_u``.  Cap it below the
        break-even rank ``k m n / c_u`` so that no factorisation stores more
        than the dense maps.
    step : int, default 1
        Ranks are multiples of ``step`` (e.g. 8 or 32 for hardware-friendly
        shapes; it also shrinks the dynamic programme by ``step ** 2``).
    method : {"auto", "greedy", "dp"}, default "auto"
        ``"greedy"``: by gain per parameter (exact when all increments cost
        the same).  ``"dp"``: exact dynamic programming (an error when its
        work exceeds ``max_dp_work``).  ``"auto"``: greedy when it is exact,
        else dynamic programming when its work is at most ``max_dp_work``,
        else greedy (``exact=False``, with the relaxation's lower bound).
    max_dp_work : int, default :data:`MAX_DP_WORK`
        Largest number of (budget cell, rank choice) pairs the dynamic
        programme may visit.

    Returns
    -------
    Allocation

    Raises
    ------
    ValueError
        For malformed spectra, costs or bounds, an empty allowed rank set, or
        a budget below the cost of the smallest allowed ranks.
    """
    if isinstance(spectra, np.ndarray) and spectra.ndim == 2:
        spectra = list(spectra)
    if not isinstance(spectra, Sequence) or len(spectra) == 0:
        raise ValueError("spectra must be a non-empty sequence of 1-D arrays (one per unit)")
    U = len(spectra)
    mus: list[F64] = []
    for u, s in enumerate(spectra):
        mu = np.asarray(s, dtype=np.float64)
        if mu.ndim != 1 or mu.size == 0:
            raise ValueError(f"spectra[{u}] must be a non-empty 1-D array; got shape {mu.shape}")
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"spectra[{u}] must be finite; found NaN or inf")
        top = max(float(mu.max()), 0.0)
        if mu.min() < -PSD_RTOL * top or (top == 0.0 and mu.min() < 0):
            raise ValueError(
                f"spectra[{u}] must be non-negative (eigenvalues of a PSD matrix); "
                f"smallest {mu.min():.3e} < -{PSD_RTOL:g} * largest ({top:.3e})"
            )
        mus.append(np.sort(np.maximum(mu, 0.0))[::-1].copy())
    c = np.asarray(costs)
    if c.shape != (U,) or not np.issubdtype(c.dtype, np.integer) or c.dtype == bool:
        raise ValueError(f"costs must be {U} integers (one per unit); got {costs!r}")
    c = c.astype(np.int64)
    if np.any(c < 1):
        raise ValueError(f"costs must be >= 1; got costs = {c.tolist()}")
    if not _validate.is_integer(budget) or budget < 0:
        raise ValueError(f"budget must be a non-negative integer; got budget = {budget!r}")
    budget = int(budget)
    if not _validate.is_integer(step) or step < 1:
        raise ValueError(f"step must be a positive integer; got step = {step!r}")
    step = int(step)
    if method not in ("auto", "greedy", "dp"):
        raise ValueError(f"method must be 'auto', 'greedy' or 'dp'; got method = {method!r}")
    w = _weights(weights, U, "weights")
    if normalise:
        tr = np.array([float(mu.sum()) for mu in mus])
        if np.any(tr <= 0):
            raise ValueError(
                f"normalise=True needs a positive trace for every unit; units "
                f"{np.flatnonzero(tr <= 0).tolist()} have an all-zero spectrum"
            )
        w = w / tr
    sizes = np.array([mu.size for mu in mus], dtype=np.intp)
    lo = _int_array(min_rank, U, "min_rank")
    hi = _int_array(max_rank, U, "max_rank") if max_rank is not None else sizes.copy()
    for u in range(U):
        if not 0 <= lo[u] <= hi[u] <= sizes[u]:
            raise ValueError(
                f"unit {u}: need 0 <= min_rank <= max_rank <= len(spectrum) = {sizes[u]}; "
                f"got min_rank = {lo[u]}, max_rank = {hi[u]}"
            )
    first = -(-lo // step) * step  # smallest allowed rank: a multiple of step
    last = (hi // step) * step
    empty = np.flatnonzero(first > last)
    if empty.size:
        u = int(empty[0])
        raise ValueError(
            f"unit {u}: no multiple of step = {step} lies in [min_rank, max_rank] = "
            f"[{lo[u]}, {hi[u]}]; widen the bounds or use a smaller step"
        )
    base = int(np.dot(c, first))
    if base > budget:
        raise ValueError(
            f"budget = {budget} is below the cost of the smallest allowed ranks "
            f"(sum_u c_u * min_rank_u = {base}); raise the budget or lower min_rank"
        )
    tails = [w[u] * _tails(mus[u]) for u in range(U)]
    nblocks = (last - first) // step
    # gains of each unit's rank blocks [first + j step, first + (j+1) step): block
    # sums of a descending sequence, so non-increasing in j (rounded addition is
    # monotone, so this holds in floating point too).
    gains = [w[u] * mus[u][first[u] : last[u]].reshape(-1, step).sum(axis=1) for u in range(U)]
    block_cost = c * step
    spare = budget - base
    equal_costs = bool(np.all(block_cost == block_cost[0]))

    g_ranks, g_exact, lower = _greedy(gains, block_cost, spare, equal_costs)
    ranks_g = first + step * g_ranks
    cells = spare // _gcd(block_cost)
    work = int(np.sum(nblocks + 1)) * (cells + 1)
    if method == "greedy" or (method == "auto" and (g_exact or work > max_dp_work)):
        ranks, used, exact = ranks_g, "greedy", g_exact
    else:
        if work > max_dp_work:
            raise ValueError(
                f"the dynamic programme would visit {work} (cell, rank) pairs > max_dp_work = "
                f"{max_dp_work}; use method='greedy' or 'auto', a larger step, or raise max_dp_work"
            )
        steps = [tails[u][first[u] : last[u] + 1 : step] for u in range(U)]
        ranks = first + step * _dp(steps, block_cost // _gcd(block_cost), cells)
        used, exact = "dp", True
    unit_energy = np.array([tails[u][ranks[u]] for u in range(U)])
    energy = float(unit_energy.sum())
    lb = float(sum(t[f] for t, f in zip(tails, first, strict=True))) - lower
    return Allocation(
        ranks=ranks.astype(np.intp),
        energy=energy,
        unit_energy=unit_energy,
        cost=int(np.dot(c, ranks)),
        budget=budget,
        method=used,
        exact=exact,
        lower_bound=float(min(lb, energy)),
    )


def _gcd(costs: NDArray[np.int64]) -> int:
    return int(np.gcd.reduce(costs))


def _greedy(
    gains: list[F64], block_cost: NDArray[np.int64], spare: int, equal_costs: bool
) -> tuple[NDArray[np.intp], bool, float]:
    """Greedy by gain per parameter; returns blocks taken per unit, exactness, LP gain.

    The increments of all units are taken in decreasing order of
    ``gain / cost`` (ties: by unit, then by block, so every unit's blocks are
    taken in order).  The longest prefix that fits is the integral part of
    the continuous relaxation's solution; its fractional part is the next
    block, scaled by the budget left.  After the prefix the greedy allocation
    keeps going and takes every later block that still fits (a block of a
    unit whose earlier block did not fit never fits either: same cost, less
    budget).  Blocks of zero gain are never taken.
    """
    U = len(gains)
    taken = np.zeros(U, dtype=np.intp)
    owner = np.concatenate([np.full(g.size, u, dtype=np.intp) for u, g in enumerate(gains)])
    if owner.size == 0:
        return taken, True, 0.0
    index = np.concatenate([np.arange(g.size, dtype=np.intp) for g in gains])
    gain = np.concatenate(gains)
    cost = block_cost[owner].astype(np.float64)
    ratio = gain / cost
    order = np.lexsort((index, owner, -ratio))
    order = order[gain[order] > 0]
    spent = np.cumsum(block_cost[owner[order]])
    p = int(np.searchsorted(spent, spare, side="right"))  # the prefix that fits
    prefix = order[:p]
    np.add.at(taken, owner[prefix], 1)
    lp_gain = float(gain[prefix].sum())
    left = spare - (int(spent[p - 1]) if p else 0)
    integral = p == order.size or left == 0
    if not integral:
        crit = order[p]
        lp_gain += gain[crit] * left / cost[crit]
        for b in order[p:]:
            cb = int(block_cost[owner[b]])
            if cb <= left:
                taken[owner[b]] += 1
                left -= cb
            if left < int(block_cost.min()):
                break
    return taken, bool(equal_costs or integral), lp_gain


def _dp(steps: list[F64], q: NDArray[np.int64], cells: int) -> NDArray[np.intp]:
    """Exact allocation by dynamic programming over the budget.

    ``steps[u][j]`` is unit ``u``'s energy with ``j`` blocks taken, ``q[u]``
    a block's cost in budget cells, ``cells`` the spare budget in cells.
    ``best[b]`` is the least energy of the units seen so far within ``b``
    cells; a unit's choice at each ``b`` is the ``j`` of least energy (the
    smallest ``j`` among equal energies, i.e. the cheaper one).
    """
    U = len(steps)
    best = np.zeros(cells + 1)
    choice = np.zeros((U, cells + 1), dtype=np.int32)
    for u in range(U):
        e, qu = steps[u], int(q[u])
        new = np.full(cells + 1, np.inf)
        arg = choice[u]
        for j in range(e.size):
            s = j * qu
            if s > cells:
                break
            cand = best[: cells + 1 - s] + e[j]
            better = cand < new[s:]
            new[s:][better] = cand[better]
            arg[s:][better] = j
        best = new
    out = np.zeros(U, dtype=np.intp)
    b = cells
    for u in range(U - 1, -1, -1):
        j = int(choice[u, b])
        out[u] = j
        b -= j * int(q[u])
    return out
