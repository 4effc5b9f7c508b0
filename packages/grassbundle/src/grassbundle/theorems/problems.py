"""What the checks run on: seeded random problems and the tying degrees."""

from __future__ import annotations

import numpy as np

from ..bundle import BundleProblem

__all__ = ["check_tying_degrees", "default_problems", "random_problem"]


def random_problem(
    L: int,
    m: int,
    n: int,
    rank: int,
    *,
    rng: np.random.Generator,
    decay: float = 0.15,
    gap: float = 0.5,
    covariance: bool = True,
    metric: str = "weight",
) -> BundleProblem:
    """A seeded random family with decaying spectra and a controlled eigengap at ``rank``.

    ``W_l = P_l diag(s) Q_l^T`` with Haar-random ``P_l, Q_l`` and
    ``s_i = exp(-decay * i) * (1 + gap)`` for ``i < rank``, ``exp(-decay * i)``
    after, times a per-layer scale ``exp(u_l)``, ``u_l ~ U(-1, 1)`` (so that the
    default weights ``omega_l`` differ between layers); covariances
    ``C_l = X X^T / (2n)`` with Gaussian ``X`` (n x 2n), its rows scaled by
    ``exp(-decay * j)`` so that they are anisotropic.

    Parameters
    ----------
    L, m, n, rank : int
        Family size, shape and rank.
    rng : numpy.random.Generator
        Source of randomness.
    decay : float, default 0.15
        Exponential decay rate of the singular values.
    gap : float, default 0.5
        Relative jump of the singular values after index ``rank``.
    covariance : bool, default True
        Draw covariances ``C``.
    metric : {"weight", "activation"}, default "weight"

    Returns
    -------
    BundleProblem
    """
    r = min(m, n)
    s = np.exp(-decay * np.arange(r))
    s[:rank] *= 1.0 + gap
    W = np.empty((L, m, n))
    for l in range(L):
        P = np.linalg.qr(rng.standard_normal((m, r)))[0]
        Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
        W[l] = (P * (s * np.exp(rng.uniform(-1.0, 1.0)))) @ Q.T
    C = None
    if covariance:
        X = rng.standard_normal((L, n, 2 * n)) * np.exp(-decay * np.arange(n))[None, :, None]
        C = X @ np.swapaxes(X, -1, -2) / (2 * n)
    return BundleProblem(W, C, rank=rank, metric=metric)  # type: ignore[arg-type]


def check_tying_degrees(L: int) -> list[int]:
    """The tying degrees the checks run at: ``1``, ``2``, ``L`` and one with a shorter last group.

    The last is the smallest ``k >= 2`` that does not divide ``L`` (groups
    of ``k`` and a last one of ``L mod k`` layers); there is none for ``L <=
    2``, and for odd ``L`` it is ``2`` itself.

    Parameters
    ----------
    L : int
        Number of layers.

    Returns
    -------
    list of int
        Sorted, without repeats.
    """
    ks = {1, min(2, L), L}
    short = next((k for k in range(2, L) if L % k), None)
    if short is not None:
        ks.add(short)
    return sorted(ks)


def default_problems(seed: int = 0) -> list[tuple[str, BundleProblem]]:
    """The seeded random problems ``python -m grassbundle check`` runs on.

    Parameters
    ----------
    seed : int, default 0

    Returns
    -------
    list of (str, BundleProblem)
    """
    rng = np.random.default_rng(seed)
    return [
        ("weight L=6 m=24 n=20 d=4", random_problem(6, 24, 20, 4, rng=rng)),
        (
            "activation L=4 m=16 n=24 d=3",
            random_problem(4, 16, 24, 3, rng=rng, metric="activation"),
        ),
    ]
