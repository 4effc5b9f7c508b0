"""Soft coupling of adjacent layers, and trust regions on ``Gr(d, m)^G``.

The coupled energy of per-layer bases ``U_1..U_L`` (docs/theory/formulation.rst,
"Beyond the paper"), exactly as :func:`coupled_energy` computes it::

    J_{lam,mu}(U) = sum_l omega_l E_l(U_l)
                    + lam * sum_l      ||P_{U_l} - P_{A_l}||_F^2     / (2d)
                    + mu  * sum_{l<L}  ||P_{U_l} - P_{U_{l+1}}||_F^2 / (2d)

(the last sum is the discrete Dirichlet energy of the section).  It has no
closed form for ``mu > 0``.  Two solvers:

* :func:`solve_coupled`: block-coordinate descent.  With the other layers
  fixed, the terms that involve ``U_l`` are ``tr(K_l) - tr(U_l^T K_l U_l)``
  plus a constant, with ``K_l = omega_l E_l + (lam/d) P_{A_l} + (mu/d)
  (P_{U_{l-1}} + P_{U_{l+1}})``, so the exact block minimiser is the top-``d``
  eigenspace of ``K_l`` (Ky Fan).  Every step is exact, so the energy never
  increases; the solver verifies this at every step and raises if roundoff
  were ever exceeded.
* :func:`solve_trust_regions`: pymanopt's Riemannian trust regions on the
  product manifold ``Gr(d, m)^G`` (one factor per tying group), with exact
  Euclidean gradient and Hessian.  With ``mu = 0`` it is an independent
  cross-check of the closed form :func:`grassbundle.solve`.  pymanopt is
  imported only inside the function (an optional dependency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validate
from .bundle import (
    BundleProblem,
    check_k,
    check_lam,
    group_index,
    solve,
    top_eigenspace_factor,
)

__all__ = ["CoupledSection", "coupled_energy", "solve_coupled", "solve_trust_regions"]

F64 = NDArray[np.float64]

#: A block step may raise the energy only by roundoff: the energy is a sum of
#: terms of size ``scale = sum omega_l tr E_l + (lam + 2 mu) L``, each computed
#: with absolute error about ``m eps scale``; 1e-11 * scale is far above that
#: and far below any real increase.
INCREASE_RTOL = 1e-11


@dataclass(frozen=True)
class CoupledSection:
    """A per-layer section of the coupled problem and its energy terms.

    Attributes
    ----------
    bases : ndarray, shape=[L, m, d]
        Per-layer orthonormal bases.
    lam, mu : float
        Anchor and coupling strengths.
    energy : float
        ``J_{lam,mu}`` (see the module docstring).
    weight_term, anchor_term, coupling_term : float
        Its three terms.
    history : list of float
        The energy after initialisation and after each sweep (block
        coordinate) or the final energy (trust regions).
    iterations : int
        Sweeps or trust-region iterations.
    converged : bool
    info : dict
        Solver details (stopping criterion, gradient norm, ...).
    """

    bases: F64
    lam: float
    mu: float
    energy: float
    weight_term: float
    anchor_term: float
    coupling_term: float
    history: list[float]
    iterations: int
    converged: bool
    info: dict[str, Any] = field(default_factory=dict, compare=False)


def _check_mu(mu: Any) -> float:
    want = "a finite number >= 0"
    return _validate.nonnegative(mu, "mu", allow_inf=False, want=want, bad=want)


def _evaluated(
    problem: BundleProblem,
    bases: F64,
    lam: float,
    mu: float,
    *,
    history: list[float] | None,
    iterations: int,
    converged: bool,
    info: dict[str, Any],
) -> CoupledSection:
    """A :class:`CoupledSection` of ``bases`` with its energy terms (history ``[J]`` if None)."""
    J, w, a, c = coupled_energy(problem, bases, lam, mu)
    return CoupledSection(
        bases=bases,
        lam=lam,
        mu=mu,
        energy=J,
        weight_term=w,
        anchor_term=a,
        coupling_term=c,
        history=[J] if history is None else history,
        iterations=iterations,
        converged=converged,
        info=info,
    )


def coupled_energy(
    problem: BundleProblem, bases: ArrayLike, lam: float, mu: float
) -> tuple[float, float, float, float]:
    """The coupled energy ``J_{lam,mu}`` of per-layer bases and its three terms.

    Parameters
    ----------
    problem : BundleProblem
    bases : array-like, shape=[L, m, d]
        Per-layer orthonormal bases.
    lam : float
        Anchor strength, finite and ``>= 0``.
    mu : float
        Coupling strength, finite and ``>= 0``.

    Returns
    -------
    energy, weight_term, anchor_term, coupling_term : float
    """
    lam = check_lam(lam)
    if math.isinf(lam):
        raise ValueError("lam must be finite for the coupled energy; got lam = inf")
    mu = _check_mu(mu)
    U = np.asarray(bases, dtype=np.float64)
    if U.shape != (problem.L, problem.m, problem.rank):
        raise ValueError(
            f"bases must have shape (L, m, d) = {(problem.L, problem.m, problem.rank)}; "
            f"got shape {U.shape}"
        )
    e = problem.layer_energies(U)
    metric, adist = e["metric"], e["anchor_distance"]
    assert metric is not None and adist is not None
    w = float(np.dot(problem.omega, metric))
    a = lam * float(np.sum(adist))
    G = np.swapaxes(U[:-1], -1, -2) @ U[1:]
    c = mu * float(np.sum(1.0 - np.einsum("lij,lij->l", G, G) / problem.rank))
    return w + a + c, w, a, c


def _local_energy(
    problem: BundleProblem, U: F64, l: int, nbrs: list[F64], lam: float, mu: float
) -> float:
    d = problem.rank
    X = problem.energy_factor(l)
    P = U.T @ X
    w = problem.omega[l] * (float(np.sum(X * X)) - float(np.sum(P * P)))
    G = U.T @ problem.anchors[l]
    val = w + lam * (1.0 - float(np.sum(G * G)) / d)
    for V in nbrs:
        H = U.T @ V
        val += mu * (1.0 - float(np.sum(H * H)) / d)
    return val


def solve_coupled(
    problem: BundleProblem,
    lam: float,
    mu: float,
    *,
    init: ArrayLike | None = None,
    max_sweeps: int = 500,
    tol: float = 1e-12,
) -> CoupledSection:
    """Block-coordinate descent on ``J_{lam,mu}``: each step an exact eigen-step.

    Layer by layer (forward sweeps), ``U_l`` is replaced by the top-``d``
    eigenspace of ``K_l = omega_l E_l + (lam/d) A_l A_l^T + (mu/d)(U_{l-1}
    U_{l-1}^T + U_{l+1} U_{l+1}^T)``, the exact minimiser over ``U_l`` with
    the others fixed; it is computed from the factor ``[sqrt(omega_l) X_l,
    sqrt(lam/d) A_l, sqrt(mu/d) U_{l-1}, sqrt(mu/d) U_{l+1}]`` (thin Gram when
    narrower than ``m``).  The energy never increases: each step's local
    energy is compared before and after, and a rise above
    ``INCREASE_RTOL * scale`` raises ``RuntimeError``.

    Parameters
    ----------
    problem : BundleProblem
    lam : float
        Anchor strength, finite, ``>= 0``.
    mu : float
        Coupling strength, finite, ``>= 0``.
    init : array-like, shape=[L, m, d], optional
        Starting bases; default the ``mu = 0`` optimum ``solve(problem, lam, 1)``.
    max_sweeps : int, default 500
    tol : float, default 1e-12
        Stop when a sweep lowers the energy by less than ``tol * scale``.

    Returns
    -------
    CoupledSection
    """
    lam = check_lam(lam)
    if math.isinf(lam):
        raise ValueError("lam must be finite for soft coupling; got lam = inf")
    mu = _check_mu(mu)
    L, d = problem.L, problem.rank
    if init is None:
        U = solve(problem, lam, 1).layer_bases.copy()
    else:
        U = np.array(init, dtype=np.float64)
        if U.shape != (L, problem.m, d):
            raise ValueError(f"init must have shape (L, m, d) = {(L, problem.m, d)}; got {U.shape}")
        U = np.stack([np.linalg.qr(u)[0] for u in U])
    scale = float(np.dot(problem.omega, problem.energy_trace())) + (lam + 2 * mu) * L
    history = [coupled_energy(problem, U, lam, mu)[0]]
    converged = False
    sweeps = 0
    max_rise = 0.0
    for sweeps in range(1, max_sweeps + 1):
        for l in range(L):
            nbrs = [U[j] for j in (l - 1, l + 1) if 0 <= j < L]
            before = _local_energy(problem, U[l], l, nbrs, lam, mu)
            parts = [math.sqrt(problem.omega[l]) * problem.energy_factor(l)]
            if lam > 0:
                parts.append(math.sqrt(lam / d) * problem.anchors[l])
            if mu > 0:
                parts += [math.sqrt(mu / d) * V for V in nbrs]
            new = top_eigenspace_factor(np.concatenate(parts, axis=1), d)
            after = _local_energy(problem, new, l, nbrs, lam, mu)
            rise = after - before
            max_rise = max(max_rise, rise)
            if rise > INCREASE_RTOL * scale:
                raise RuntimeError(
                    f"block step on layer {l} raised the energy by {rise:.3e} "
                    f"(> {INCREASE_RTOL:g} * scale = {INCREASE_RTOL * scale:.3e})"
                )
            if rise < 0:
                U[l] = new
        history.append(coupled_energy(problem, U, lam, mu)[0])
        if history[-1] > history[-2] + INCREASE_RTOL * scale:
            raise RuntimeError(
                f"sweep {sweeps} raised the energy from {history[-2]:.12e} to {history[-1]:.12e}"
            )
        if history[-2] - history[-1] <= tol * scale:
            converged = True
            break
    return _evaluated(
        problem,
        U,
        lam,
        mu,
        history=history,
        iterations=sweeps,
        converged=converged,
        info={"max_step_rise": max_rise, "scale": scale},
    )


def solve_trust_regions(
    problem: BundleProblem,
    lam: float,
    k: int = 1,
    mu: float = 0.0,
    *,
    init: ArrayLike | None = None,
    seed: int = 0,
    max_iterations: int = 200,
    min_gradient_norm: float = 1e-9,
    verbosity: int = 0,
) -> CoupledSection:
    """Riemannian trust regions (pymanopt) for ``J_{lam,mu}`` tied in groups of ``k``.

    One factor of ``Gr(d, m)^G`` per group; with ``K_g = sum_{l in g}
    [omega_l E_l + (lam/d) A_l A_l^T]`` (``m x m``, formed once) the cost is
    ``sum_g [tr K_g - tr(X_g^T K_g X_g)] + mu * sum_b (1 - ||X_b^T
    X_{b+1}||_F^2 / d)`` over adjacent groups ``b, b+1`` (adjacent layers in
    one group contribute 0), with exact Euclidean gradient and Hessian.
    For ``mu = 0`` the minimum is the closed form of :func:`grassbundle.solve`.

    Parameters
    ----------
    problem : BundleProblem
    lam : float
        Finite anchor strength ``>= 0``.
    k : int, default 1
        Tying degree.
    mu : float, default 0.0
        Coupling strength between adjacent groups.
    init : array-like, shape=[G, m, d], optional
        Starting frames; default seeded Haar-random frames.
    seed : int, default 0
    max_iterations : int, default 200
    min_gradient_norm : float, default 1e-9
    verbosity : int, default 0
        pymanopt's verbosity.

    Returns
    -------
    CoupledSection
        ``bases`` per layer (shape ``[L, m, d]``); ``info["group_bases"]``
        the ``G`` frames; ``info`` also holds pymanopt's stopping criterion,
        gradient norm and time.
    """
    try:
        import pymanopt
        from pymanopt.manifolds import Grassmann
        from pymanopt.optimizers import TrustRegions
    except ImportError as exc:  # pragma: no cover - environment dependent
        raise ImportError(
            "solve_trust_regions needs pymanopt: pip install 'grassbundle[peers]'"
        ) from exc
    lam = check_lam(lam)
    if math.isinf(lam):
        raise ValueError("lam must be finite for trust regions; got lam = inf")
    mu = _check_mu(mu)
    k = check_k(k, problem.L)
    L, m, d = problem.L, problem.m, problem.rank
    gmap = group_index(L, k)
    G = int(gmap[-1]) + 1
    Ks = np.zeros((G, m, m))
    for l in range(L):
        X = problem.energy_factor(l)
        A = problem.anchors[l]
        Ks[gmap[l]] += problem.omega[l] * (X @ X.T) + (lam / d) * (A @ A.T)
    trK = float(np.trace(Ks, axis1=1, axis2=2).sum())
    single = G == 1
    manifold = Grassmann(m, d, k=G)

    def stack(X: F64) -> F64:
        return X[None] if single else X

    def unstack(X: F64) -> F64:
        return X[0] if single else X

    @pymanopt.function.numpy(manifold)
    def cost(X: F64) -> float:
        Xs = stack(X)
        val = trK - float(np.einsum("gij,gij->", Xs, Ks @ Xs))
        if mu > 0 and G > 1:
            H = np.swapaxes(Xs[:-1], -1, -2) @ Xs[1:]
            val += mu * float(np.sum(1.0 - np.einsum("gij,gij->g", H, H) / d))
        return val

    @pymanopt.function.numpy(manifold)
    def egrad(X: F64) -> F64:
        Xs = stack(X)
        g = -2.0 * (Ks @ Xs)
        if mu > 0 and G > 1:
            P = Xs @ np.swapaxes(Xs, -1, -2)
            g[:-1] -= (2 * mu / d) * (P[1:] @ Xs[:-1])
            g[1:] -= (2 * mu / d) * (P[:-1] @ Xs[1:])
        return unstack(g)

    @pymanopt.function.numpy(manifold)
    def ehess(X: F64, V: F64) -> F64:
        Xs, Vs = stack(X), stack(V)
        h = -2.0 * (Ks @ Vs)
        if mu > 0 and G > 1:
            Xt, Vt = np.swapaxes(Xs, -1, -2), np.swapaxes(Vs, -1, -2)
            P = Xs @ Xt
            dP = Vs @ Xt + Xs @ Vt
            h[:-1] -= (2 * mu / d) * (P[1:] @ Vs[:-1] + dP[1:] @ Xs[:-1])
            h[1:] -= (2 * mu / d) * (P[:-1] @ Vs[1:] + dP[:-1] @ Xs[1:])
        return unstack(h)

    prob = pymanopt.Problem(manifold, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)
    if init is None:
        rng = np.random.default_rng(seed)
        X0 = np.stack([np.linalg.qr(rng.standard_normal((m, d)))[0] for _ in range(G)])
    else:
        X0 = np.array(init, dtype=np.float64)
        if X0.shape != (G, m, d):
            raise ValueError(f"init must have shape (G, m, d) = {(G, m, d)}; got {X0.shape}")
    opt = TrustRegions(
        verbosity=verbosity, max_iterations=max_iterations, min_gradient_norm=min_gradient_norm
    )
    res = opt.run(prob, initial_point=unstack(X0))
    frames = stack(np.asarray(res.point))
    frames = np.stack([np.linalg.qr(f)[0] for f in frames])
    bases = frames[gmap]
    return _evaluated(
        problem,
        bases,
        lam,
        mu,
        history=None,
        iterations=int(res.iterations),
        converged=res.gradient_norm is not None and res.gradient_norm <= min_gradient_norm,
        info={
            "group_bases": frames,
            "stopping_criterion": res.stopping_criterion,
            "gradient_norm": res.gradient_norm,
            "time": res.time,
            "k": k,
        },
    )
