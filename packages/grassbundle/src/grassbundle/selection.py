"""Loss-aware selection of components under one parameter budget, dense maps allowed.

Setting
-------
A *unit* ``u`` is one ``m x n`` map ``W`` (``y = W x``) with an ordered list
of components ``i = 1 .. R`` (``R = min(m, n)``): for SVD-LLM's basis, the
eigenvectors ``u_i`` of ``M = W C W^T`` in decreasing order of eigenvalue
(:func:`activation_basis`).  Keeping a set ``K`` of components gives ``W' =
U_K U_K^T W``, stored as two factors of ``|K| (m + n)`` parameters; keeping
the map *dense* stores ``m n`` parameters and loses nothing.

Each component has a *score* ``s_i``: the estimated increase of the loss
when it is removed (its activation energy ``mu_i``; a first-order term
``|g_i|``; a Fisher term ``E_b[g_{b,i}^2] / 2``, see
:func:`removal_gradients`).  The loss of a choice is additive over removed
components, ``loss_u(K) = sum_{i not in K} s_i`` (the diagonal
approximation: cross terms between components are dropped), and the problem
is::

    minimise   sum_u loss_u
    subject to sum_u cost_u <= B,
               cost_u = |K_u| c_u  (factored, c_u = m + n)  or  D_u = m n  (dense).

Two ways to use the scores (``mode``):

``"components"``
    ``K_u`` is any set of ``r`` components; for a given ``r`` the best is the
    ``r`` highest scores (exchange argument: swapping a kept component for
    a removed one of higher score lowers the loss), so ``loss_u(r)`` is the
    sum of the ``R - r`` lowest scores, convex in ``r``.
``"rank"``
    ``K_u`` is the first ``r`` components of the given order (the scores only
    set each map's rank); ``loss_u(r)`` is the tail sum, convex only when the
    scores decrease along the order.

Break-even: rank ``r`` with ``r c_u >= D_u`` costs at least the dense map
and loses at least as much, so where dense is allowed such ranks are never
options (the *revert-to-dense* rule, exact here rather than a heuristic).

Solver
------
Lagrangian relaxation: for a multiplier ``beta >= 0`` every unit takes, on
its own, the option that minimises ``loss_u + beta cost_u`` (the cheapest
one at ties).  Everett's theorem: that choice ``x(beta)`` minimises the
total loss among *all* choices that cost no more than ``x(beta)`` does.  The
cost of ``x(beta)`` does not increase with ``beta``; bisection finds the
smallest ``beta`` whose choice fits the budget, and a greedy *fill* then
spends what is left (upgrades that fit, largest loss decrease first).  For
every ``beta``, ``g(beta) = sum_u min_o (loss + beta cost) - beta B`` is a
lower bound on the optimum (weak duality), reported as
:attr:`Selection.lower_bound`, so ``loss - lower_bound`` bounds the
distance to the optimum of every instance; the choice is optimal when the
multiplier's choice spends the budget exactly (Everett).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validate

__all__ = [
    "Selection",
    "activation_basis",
    "removal_gradients",
    "select_components",
]

F64 = NDArray[np.float64]
Mode = Literal["components", "rank"]

#: bisection steps on the multiplier: each halves the bracket, so 200 steps
#: reach the float64 resolution of any bracket (the loop stops earlier once
#: the bracket's ends are adjacent floats)
_BISECTION_STEPS = 200


@dataclass(frozen=True)
class Selection:
    """The components kept per unit, what they cost and what they lose.

    Attributes
    ----------
    kept : tuple of (ndarray of int or None), length U
        Indices of the kept components of each unit (into its score vector,
        ascending), or None where the unit stays dense.
    ranks : ndarray, shape=[U], int
        ``|K_u|`` per unit (the number of scores for a dense unit).
    dense : ndarray, shape=[U], bool
        Units kept dense.
    unit_loss : ndarray, shape=[U]
        Sum of the removed components' scores per unit (0 for dense).
    loss : float
        ``sum(unit_loss)``.
    unit_cost : ndarray, shape=[U], int
        Parameters per unit: ``ranks * costs`` or the dense cost.
    cost : int
        ``sum(unit_cost) <= budget``.
    budget : int
    multiplier : float
        The ``beta`` of the Lagrangian choice before the fill.
    lower_bound : float
        ``g(beta)``, a lower bound on the optimum's loss (weak duality).
    mode : str
        ``"components"`` or ``"rank"``.
    """

    kept: tuple[NDArray[np.intp] | None, ...]
    ranks: NDArray[np.intp]
    dense: NDArray[np.bool_]
    unit_loss: F64
    loss: float
    unit_cost: NDArray[np.int64]
    cost: int
    budget: int
    multiplier: float
    lower_bound: float
    mode: str


@dataclass
class _Unit:
    """One unit's options, in increasing cost: ranks lo..hi, then dense (if allowed)."""

    order: NDArray[np.intp]  # components by preference (kept first)
    ranks: NDArray[np.intp]  # rank of each option (R for dense)
    loss: F64
    cost: NDArray[np.int64]
    dense_option: bool  # the last option is dense

    def pick(self, beta: float) -> int:
        return int(np.argmin(self.loss + beta * self.cost))  # first minimum: cheapest


def _per_unit(values: Any, U: int, name: str, default: Any) -> list[Any]:
    if values is None:
        return [default] * U
    out = list(values)
    if len(out) != U:
        raise ValueError(f"{name} must have one entry per unit ({U}); got {len(out)}")
    return out


def _units(
    scores: Sequence[ArrayLike],
    costs: Sequence[int],
    dense_costs: Sequence[int | None] | None,
    mode: Mode,
    min_rank: Sequence[int] | None,
    max_rank: Sequence[int] | None,
    force_dense: Sequence[bool] | None,
) -> list[_Unit]:
    U = len(scores)
    if U == 0:
        raise ValueError("scores must hold at least one unit; got none")
    if len(costs) != U:
        raise ValueError(f"costs must have one entry per unit ({U}); got {len(costs)}")
    dcosts = _per_unit(dense_costs, U, "dense_costs", None)
    lows = _per_unit(min_rank, U, "min_rank", 1)
    highs = _per_unit(max_rank, U, "max_rank", None)
    forced = _per_unit(force_dense, U, "force_dense", False)
    units = []
    for u in range(U):
        s = np.asarray(scores[u], dtype=np.float64)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"scores[{u}] must be a non-empty vector; got shape {s.shape}")
        _validate.finite(s, f"scores[{u}]")
        c = costs[u]
        if not _validate.is_integer(c) or c < 1:
            raise ValueError(f"costs[{u}] must be an integer >= 1; got {c!r}")
        D = dcosts[u]
        if D is not None and (not _validate.is_integer(D) or D < 1):
            raise ValueError(f"dense_costs[{u}] must be an integer >= 1 or None; got {D!r}")
        R = s.size
        if bool(forced[u]):
            if D is None:
                raise ValueError(f"unit {u} is forced dense but has no dense cost; give one")
            units.append(_Unit(np.arange(R), np.array([R]), np.zeros(1),
                               np.array([D], dtype=np.int64), True))  # fmt: skip
            continue
        lo, hi = lows[u], R if highs[u] is None else highs[u]
        if not (_validate.is_integer(lo) and _validate.is_integer(hi) and 1 <= lo <= hi <= R):
            raise ValueError(
                f"unit {u} needs 1 <= min_rank <= max_rank <= {R} (its components); "
                f"got min_rank = {lo!r}, max_rank = {hi!r}"
            )
        if D is not None:  # ranks at or above break-even are dominated by the dense map
            hi = min(hi, (int(D) - 1) // int(c))
        order = np.argsort(-s, kind="stable") if mode == "components" else np.arange(R)
        # tail[r] = sum of the scores after the first r in preference order: the
        # removed scores summed directly (no difference of large sums)
        tail = np.append(np.cumsum(s[order][::-1])[::-1], 0.0)
        ranks = np.arange(lo, hi + 1)
        loss = tail[ranks]
        cost = ranks.astype(np.int64) * int(c)
        if D is not None:
            ranks = np.append(ranks, R)
            loss = np.append(loss, 0.0)
            cost = np.append(cost, np.int64(D))
        if ranks.size == 0:
            raise ValueError(
                f"unit {u} has no option: min_rank = {lo} is at or above its break-even "
                f"rank and dense is not allowed; lower min_rank or allow dense"
            )
        units.append(_Unit(order, ranks, loss.astype(np.float64), cost, D is not None))
    return units


def _total_cost(units: list[_Unit], beta: float) -> int:
    return int(sum(int(u.cost[u.pick(beta)]) for u in units))


def select_components(
    scores: Sequence[ArrayLike],
    costs: Sequence[int],
    budget: int,
    *,
    dense_costs: Sequence[int | None] | None = None,
    mode: Mode = "components",
    min_rank: Sequence[int] | None = None,
    max_rank: Sequence[int] | None = None,
    force_dense: Sequence[bool] | None = None,
) -> Selection:
    """Choose which components (or ranks) every unit keeps under one parameter budget.

    See the module docstring for the problem and the solver.

    Parameters
    ----------
    scores : sequence of 1-D arrays
        Per unit, the loss increase of removing each component, in the
        unit's component order (any sign; finite).
    costs : sequence of int
        Parameters per kept component (``m + n``).
    budget : int
        Parameters available for all units together.
    dense_costs : sequence of (int or None), optional
        Parameters of each unit kept dense (``m n``); None (for a unit or
        for all) where the unit may not stay dense.
    mode : {"components", "rank"}
        Keep the highest-scoring components, or a prefix of the given order.
    min_rank, max_rank : sequence of int, optional
        Bounds on each unit's factored rank (default 1 and the number of
        components); ranks at or above break-even are dropped where dense is
        allowed.
    force_dense : sequence of bool, optional
        Units that stay dense whatever the scores (need a dense cost).

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        For malformed scores, costs or bounds, or a budget below the
        cheapest choice.
    """
    if mode not in ("components", "rank"):
        raise ValueError(f"mode must be 'components' or 'rank'; got mode = {mode!r}")
    if not _validate.is_integer(budget) or budget < 0:
        raise ValueError(f"budget must be an integer >= 0; got budget = {budget!r}")
    units = _units(scores, costs, dense_costs, mode, min_rank, max_rank, force_dense)
    cheapest = sum(int(u.cost[0]) for u in units)
    if cheapest > budget:
        raise ValueError(
            f"budget = {budget} is below the cheapest choice ({cheapest} parameters at the "
            "smallest ranks); raise the budget or lower the rank floors"
        )
    if _total_cost(units, 0.0) <= budget:
        beta = 0.0
    else:  # smallest beta whose choice fits: bracket, then bisect
        lo, hi = 0.0, 1.0
        scale = max(float(np.max(np.abs(u.loss))) for u in units) or 1.0
        hi = scale
        while _total_cost(units, hi) > budget:
            lo, hi = hi, hi * 2.0
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            if _total_cost(units, mid) > budget:
                lo = mid
            else:
                hi = mid
        beta = hi
    picks = [u.pick(beta) for u in units]
    lower = sum(float(np.min(u.loss + beta * u.cost)) for u in units) - beta * budget
    left = budget - sum(int(u.cost[p]) for u, p in zip(units, picks, strict=True))
    while left > 0:  # fill: the upgrade that fits and lowers the loss most
        best = None
        for i, (u, p) in enumerate(zip(units, picks, strict=True)):
            extra = u.cost - u.cost[p]
            gain = u.loss[p] - u.loss
            ok = (extra > 0) & (extra <= left) & (gain > 0)
            if np.any(ok):
                j = int(np.flatnonzero(ok)[np.argmax(gain[ok])])
                if best is None or gain[j] > best[0]:
                    best = (float(gain[j]), i, j)
        if best is None:
            break
        _, i, j = best
        left -= int(units[i].cost[j] - units[i].cost[picks[i]])
        picks[i] = j
    kept: list[NDArray[np.intp] | None] = []
    dense = np.zeros(len(units), dtype=bool)
    for i, (u, p) in enumerate(zip(units, picks, strict=True)):
        if u.dense_option and p == len(u.cost) - 1:
            dense[i] = True
            kept.append(None)
        else:
            kept.append(np.sort(u.order[: u.ranks[p]]).astype(np.intp))
    unit_loss = np.array([u.loss[p] for u, p in zip(units, picks, strict=True)])
    unit_cost = np.array([u.cost[p] for u, p in zip(units, picks, strict=True)], dtype=np.int64)
    return Selection(
        kept=tuple(kept),
        ranks=np.array([u.ranks[p] for u, p in zip(units, picks, strict=True)], dtype=np.intp),
        dense=dense,
        unit_loss=unit_loss,
        loss=float(unit_loss.sum()),
        unit_cost=unit_cost,
        cost=int(unit_cost.sum()),
        budget=int(budget),
        multiplier=float(beta),
        lower_bound=float(min(lower, float(unit_loss.sum()))),
        mode=mode,
    )


def activation_basis(W: ArrayLike, C: ArrayLike) -> tuple[F64, F64]:
    """SVD-LLM's components of one map: the eigenpairs of ``M = W C W^T``, largest first.

    Parameters
    ----------
    W : array-like, shape=[m, n]
    C : array-like, shape=[n, n]
        Symmetric positive semi-definite input covariance.

    Returns
    -------
    mu : ndarray, shape=[R]
        The ``R = min(m, n)`` largest eigenvalues of ``M`` (clipped at 0),
        decreasing: the activation energy each component carries.
    U : ndarray, shape=[m, R]
        Orthonormal eigenvectors, column ``i`` for ``mu[i]``.  Keeping the
        first ``r`` columns is SVD-LLM at rank ``r``: ``W' = U_r U_r^T W``.
    """
    W64 = _validate.weight_stack(W)[0]
    m, n = W64.shape
    C64 = _validate.covariance_stack(C, 1, n, "C", psd=True)[0]
    R = min(m, n)
    if m > n:  # a tall map: the SVD of W S (m x n, S S^T = C) costs m n^2, not m^3
        S = _validate.sqrt_factor(C64, "C")
        U, sigma, _ = np.linalg.svd(W64 @ S, full_matrices=False)
        mu = np.zeros(R)
        k = min(R, sigma.size)
        mu[:k] = sigma[:k] ** 2
        if U.shape[1] < R:  # C singular: complete U with an orthonormal basis of the rest
            Q, _ = np.linalg.qr(np.hstack([U, np.eye(m)[:, :R]]))
            U = np.hstack([U, Q[:, U.shape[1] : R]])
        return mu, np.ascontiguousarray(U[:, :R])
    M = W64 @ C64 @ W64.T
    M = 0.5 * (M + M.T)
    mu, V = np.linalg.eigh(M)
    idx = np.argsort(mu)[::-1][:R]
    return np.clip(mu[idx], 0.0, None), np.ascontiguousarray(V[:, idx])


def removal_gradients(W: ArrayLike, U: ArrayLike, G: ArrayLike) -> F64:
    """First-order loss change of removing each component: ``-u_i^T G W^T u_i``.

    Removing component ``i`` from ``W' = U U^T W`` moves the weight by
    ``-u_i u_i^T W``; to first order the loss changes by ``<G, -u_i u_i^T W> =
    -u_i^T G W^T u_i`` where ``G = dL/dW``.  In SVD-LLM's whitened
    coordinates (``W S = U Sigma V^T``, ``S S^T = C``) this is Zero Sum SVD's
    ``-sigma_i u_i^T G S^{-T} v_i``: the two agree because ``sigma_i v_i =
    S^T W^T u_i``; this form needs no inverse.

    Parameters
    ----------
    W : array-like, shape=[m, n]
    U : array-like, shape=[m, R]
        The components (columns; orthonormal for the statement above).
    G : array-like, shape=[m, n]
        The loss gradient with respect to ``W`` (or a stack ``[B, m, n]``
        of per-window gradients, giving one row per window).

    Returns
    -------
    ndarray, shape=[R] (or [B, R])
    """
    W64 = np.asarray(W, dtype=np.float64)
    U64 = np.asarray(U, dtype=np.float64)
    G64 = np.asarray(G, dtype=np.float64)
    if W64.ndim != 2 or U64.ndim != 2 or U64.shape[0] != W64.shape[0]:
        raise ValueError(f"W must be (m, n) and U (m, R); got shapes {W64.shape} and {U64.shape}")
    if G64.shape[-2:] != W64.shape or G64.ndim not in (2, 3):
        raise ValueError(f"G must have the shape of W, {W64.shape} (or [B, m, n]); got {G64.shape}")
    UW = U64.T @ W64  # (R, n)
    UG = np.einsum("mr,...mn->...rn", U64, G64)
    return -np.einsum("...rn,rn->...r", UG, UW)
