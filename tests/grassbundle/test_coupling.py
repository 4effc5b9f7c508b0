"""Soft coupling of adjacent layers and the trust-region cross-check of the closed form."""

from __future__ import annotations

import math

import grassbundle as gb
import numpy as np
import pytest
from grassbundle.bundle import BundleProblem
from grassbundle.coupling import coupled_energy
from grassbundle.theorems import random_problem

pytest.importorskip("pymanopt")

# Two solvers reaching the same minimum: the energy difference is
# (eigenvector error)^2 * ||K||; trust regions stop at gradient norm 1e-9 and
# block coordinate descent at a sweep decrease below 1e-12 * scale, so the
# energies agree to far better than 1e-8 relative.
ENERGY_RTOL = 1e-8


@pytest.fixture(scope="module")
def prob() -> BundleProblem:
    return random_problem(5, 14, 12, 3, rng=np.random.default_rng(31))


def test_coupled_energy_matches_definition(prob):
    rng = np.random.default_rng(0)
    U = np.stack([np.linalg.qr(rng.standard_normal((14, 3)))[0] for _ in range(5)])
    J, w, a, c = coupled_energy(prob, U, 0.4, 1.3)
    P = U @ np.swapaxes(U, -1, -2)
    coup = sum(np.linalg.norm(P[l] - P[l + 1]) ** 2 / 6 for l in range(4))
    assert c == pytest.approx(1.3 * coup, rel=1e-10)
    sec = gb.evaluate_section(prob, U, np.arange(5), 0.4)
    assert w == pytest.approx(sec.weight_term, rel=1e-12)
    assert a == pytest.approx(sec.anchor_term, rel=1e-12)
    assert J == pytest.approx(w + a + c, rel=1e-14)


def test_block_coordinate_at_mu_zero_is_the_closed_form(prob):
    res = gb.solve_coupled(prob, 0.7, 0.0)
    assert res.energy == pytest.approx(gb.solve(prob, 0.7, 1).objective, rel=1e-12)
    assert res.converged and res.iterations <= 2


@pytest.mark.parametrize("mu", [0.3, 3.0])
def test_block_coordinate_never_increases_and_matches_trust_regions(prob, mu):
    bc = gb.solve_coupled(prob, 0.5, mu)
    h = np.array(bc.history)
    assert np.all(np.diff(h) <= 1e-11 * bc.info["scale"])
    assert h[-1] < h[0]  # coupling moves the section away from the mu = 0 optimum
    tr = gb.solve_trust_regions(prob, 0.5, 1, mu, seed=4)
    assert tr.energy == pytest.approx(bc.energy, rel=ENERGY_RTOL)
    assert bc.coupling_term > 0


def test_block_coordinate_from_random_start_is_monotone(prob):
    rng = np.random.default_rng(5)
    init = rng.standard_normal((5, 14, 3))
    bc = gb.solve_coupled(prob, 1.0, 1.0, init=init, max_sweeps=50)
    assert np.all(np.diff(bc.history) <= 1e-11 * bc.info["scale"])
    assert bc.history[-1] < bc.history[0]


def test_block_coordinate_raises_on_an_increasing_step(prob, monkeypatch):
    """The energy guard is live: a solver step that returns a worse frame raises."""
    import grassbundle.coupling as cmod

    def worst(F, d):
        _, V = np.linalg.eigh(F @ F.T)
        return V[:, :d]

    monkeypatch.setattr(cmod, "top_eigenspace_factor", worst)
    with pytest.raises(RuntimeError, match="raised the energy"):
        gb.solve_coupled(prob, 0.5, 1.0)


@pytest.mark.parametrize(("lam", "k"), [(0.0, 1), (0.8, 2), (5.0, 5)])
def test_trust_regions_reach_the_closed_form(prob, lam, k):
    tr = gb.solve_trust_regions(prob, lam, k, seed=k)
    sec = gb.solve(prob, lam, k)
    assert tr.energy == pytest.approx(sec.objective, rel=ENERGY_RTOL)
    assert tr.info["group_bases"].shape == sec.bases.shape


def test_coupling_validates(prob):
    with pytest.raises(ValueError, match="mu"):
        gb.solve_coupled(prob, 0.0, -1.0)
    with pytest.raises(ValueError, match="mu"):
        gb.solve_coupled(prob, 0.0, math.inf)
    with pytest.raises(ValueError, match="lam"):
        gb.solve_coupled(prob, math.inf, 1.0)
    with pytest.raises(ValueError, match="init"):
        gb.solve_coupled(prob, 0.0, 1.0, init=np.zeros((2, 14, 3)))
    with pytest.raises(ValueError, match="lam"):
        gb.solve_trust_regions(prob, math.inf)
    with pytest.raises(ValueError, match="k"):
        gb.solve_trust_regions(prob, 0.0, 9)
