"""The statements of the allocation page and the Grassmann maths as checks
(:mod:`grassbundle.theorems_fits`), and the tolerances that guard a rate or a
ceiling, tested from both sides.  ``pytest -k theorems`` selects this file.

* every check holds on seeded problems of uneven shapes: ``m < n`` (a
  k/v-like thin map), ``m > n``, no covariances, ``L`` with a short last
  group at every tying degree the checks use;
* every check fails when the package is wrong: each mutation below patches
  the package in-process the way an edit of its source would (every module
  that holds the patched object sees the mutant) and expects the named checks
  to fail, through the check functions and through ``python -m grassbundle
  check`` on both default problems;
* Theorem A's rate fails for a solver converging as ``1/sqrt(lam)`` (or as
  ``1/lam^2``) while staying inside the bound, and a float16 basis 2% off
  orthonormal is rejected while a float16 copy of an orthonormal one is not.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import grassbundle as gb
import grassbundle.__main__ as cli
import grassbundle.refit as refit_mod
import grassbundle.theorems.anchor_corner as anchor_corner_mod
import numpy as np
import pytest
from grassbundle import theorems_fits as tf
from grassbundle.bundle import BundleProblem, group_index
from grassbundle.theorems import SLOPE_ATOL, default_problems, random_problem, theorem_a

# the module (grassbundle.factorise, the attribute, is the function)
factorise_mod = importlib.import_module("grassbundle.factorise")

# -- every check holds on uneven shapes ---------------------------------------------------

SHAPES = {
    # thin k/v-like maps (m < n), activation metric, L = 5: k = 2 and 3 leave short groups
    "thin L=5 m=8 n=14 d=2": dict(L=5, m=8, n=14, rank=2, metric="activation"),
    # m > n, no covariances (the checks draw seeded ones), L = 3
    "wide L=3 m=12 n=7 d=3 no C": dict(L=3, m=12, n=7, rank=3, covariance=False),
    # square, L = 4 (k = 3 leaves a last group of one)
    "square L=4 m=9 n=9 d=2": dict(L=4, m=9, n=9, rank=2),
}


@pytest.fixture(scope="module")
def problems() -> dict[str, BundleProblem]:
    rng = np.random.default_rng(20261206)
    out = {}
    for label, kw in SHAPES.items():
        kw = dict(kw)
        out[label] = random_problem(
            kw.pop("L"), kw.pop("m"), kw.pop("n"), kw.pop("rank"), rng=rng, **kw
        )
    return out


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("check", tf.FIT_CHECKS, ids=lambda c: c.__name__)
def test_theorems_fits_hold_on_uneven_shapes(problems, shape, check) -> None:
    r = check(problems[shape], seed=3)
    assert r.holds, (r.name, r.failures)
    assert r.failures == [] and r.why and r.tolerance
    json.dumps(r.to_dict())  # serialisable for --json


def test_theorems_fits_brute_force_and_relaxation_are_exact_on_the_docs_example() -> None:
    """The references themselves: the docs' knapsack example by hand."""
    spectra = [np.array([10.0]), np.array([6.0, 6.0])]
    assert tf._brute_force(spectra, [3, 2], 4) == 10.0  # B twice: 22 - 12
    # the relaxation: A whole (ratio 10/3), then half of one B block: 22 - 10 - 3
    assert tf._relaxation(spectra, [3, 2], 4, lo=0) == pytest.approx(9.0, abs=1e-9)


def test_theorems_fits_samples_carry_the_statistics() -> None:
    """The samples the refit checks use have the covariance they were built from."""
    rng = np.random.default_rng(4)
    G = rng.standard_normal((6, 12))
    C = G @ G.T / 12
    X, Xh = tf._shifted_samples(C, rng)
    C2, Ch, Cx = tf._stats(X, Xh)
    np.testing.assert_allclose(C2, C, rtol=0, atol=1e-12 * np.abs(C).max())
    assert np.linalg.norm(Ch - C) > 0.1 * np.linalg.norm(C)  # a real shift
    assert np.linalg.norm(Cx - C) > 0.1 * np.linalg.norm(C)


# -- mutations of the package --------------------------------------------------------------


def _cost_swapped(mutate) -> None:
    orig = gb.factor_cost

    def swapped(m, n, k=1, *, shared="output"):
        return orig(n, m, k, shared=shared)

    mutate.everywhere(orig, swapped)


def _spectrum_singular_values(mutate) -> None:
    orig = gb.activation_spectrum

    def singular_values(W, C=None, *, omega=None):
        return np.sqrt(orig(W, C, omega=omega))

    mutate.everywhere(orig, singular_values)


def _auto_never_dp(mutate) -> None:
    orig = gb.allocate_ranks

    def greedy_only(spectra, costs, budget, **kw):
        if kw.get("method", "auto") == "auto":
            kw["method"] = "greedy"
        return orig(spectra, costs, budget, **kw)

    mutate.everywhere(orig, greedy_only)


def _lower_bound_critical_whole(mutate) -> None:
    """The relaxation's critical increment taken whole: a bound below the relaxation's."""
    orig = gb.allocate_ranks

    def loose(spectra, costs, budget, **kw):
        a = orig(spectra, costs, budget, **kw)
        if a.exact:
            return a
        return dataclasses.replace(a, lower_bound=a.lower_bound - 0.5 * (a.energy - a.lower_bound))

    mutate.everywhere(orig, loose)


def _ridge_sign(mutate) -> None:
    orig = refit_mod._eps
    mutate.setattr(refit_mod, "_eps", lambda C_hat, ridge, name: -orig(C_hat, ridge, name))


def _joint_mix_swapped(mutate) -> None:
    """The joint target weighs the compressed inputs by ``mix`` instead of ``1 - mix``."""
    orig = refit_mod._refit_statistics
    mutate.setattr(
        refit_mod, "_refit_statistics", lambda C, Ch, Cx, t, mix: orig(C, Ch, Cx, t, 1.0 - mix)
    )


def _update_is_plain_svd(mutate) -> None:
    """SVD-LLM's truncation without the whitening (plain SVD), then the update."""
    orig = gb.svd_llm_update

    def plain(W, C, *, rank, C_update=None, ridge=refit_mod.RIDGE):
        n = np.shape(W)[1]
        Cu = C if C_update is None else C_update
        return orig(W, np.eye(n) * np.trace(C) / n, rank=rank, C_update=Cu, ridge=ridge)

    mutate.everywhere(orig, plain)


def _residual_fit_without_cross(mutate) -> None:
    """The residual fit with the cross-covariance replaced by C_hat (target W x_hat)."""
    orig = gb.residual_fit

    def local(W, C_hat, C_cross=None, *, rank, C=None, omega=None, ridge=refit_mod.RIDGE):
        return orig(W, C_hat, C_hat, rank=rank, C=C, omega=omega, ridge=ridge)

    mutate.everywhere(orig, local)


def _svd_llm_is_svd(mutate) -> None:
    orig = gb.factorise

    def svd_instead(W, C, method, rank, **kw):
        if method == "svd-llm" and kw.get("ranks") is None:
            return dataclasses.replace(orig(W, C, "svd", rank), method="svd-llm")
        return orig(W, C, method, rank, **kw)

    mutate.everywhere(orig, svd_instead)


def _short_last_group_untied(mutate) -> None:
    """Per-group ranks: a family with a short last group gets a basis per layer."""
    orig = factorise_mod._per_group_bundle

    def buggy(W, C, ranks, tying, metric):
        if len(W) % int(tying):
            return orig(W, C, ranks, 1, metric)
        return orig(W, C, ranks, tying, metric)

    mutate.setattr(factorise_mod, "_per_group_bundle", buggy)


def _procrustes_is_chordal(mutate) -> None:
    orig = gb.procrustes_dist
    mutate.everywhere(orig, lambda U, V: gb.chordal_dist(U, V))


def _karcher_unweighted(mutate) -> None:
    orig = gb.karcher_mean

    def unweighted(points, weights=None, **kw):
        return orig(points, None, **kw)

    mutate.everywhere(orig, unweighted)


def _coupling_at_twice_mu(mutate) -> None:
    """solve_coupled minimising J at 2 mu while reporting mu."""
    orig = gb.solve_coupled

    def doubled(problem, lam, mu, **kw):
        return dataclasses.replace(orig(problem, lam, 2.0 * mu, **kw), mu=mu)

    mutate.everywhere(orig, doubled)


def _chordal_mean_bottom(mutate) -> None:
    orig = gb.chordal_mean

    def bottom(points, weights=None, *, return_eigenvalues=False):
        mean, ev = orig(points, weights, return_eigenvalues=True)
        P = np.asarray(points)
        S = sum(P[i] @ P[i].T for i in range(P.shape[0]))
        V = np.linalg.eigh(S)[1][:, : mean.shape[-1]]  # the bottom eigenspace
        return (V, ev) if return_eigenvalues else V

    mutate.everywhere(orig, bottom)


def _removal_gradient_sign(mutate) -> None:
    orig = gb.removal_gradients
    mutate.everywhere(orig, lambda W, U, G: -orig(W, U, G))


def _basis_ignores_covariance(mutate) -> None:
    """The components of W W^T (plain SVD) in place of W C W^T."""
    orig = gb.activation_basis
    mutate.everywhere(orig, lambda W, C: orig(W, np.eye(np.shape(W)[1])))


def _selection_over_budget(mutate) -> None:
    """The selection run at a budget 10% above the one asked for."""
    orig = gb.select_components

    def loose(scores, costs, budget, **kw):
        return dataclasses.replace(orig(scores, costs, int(budget * 1.1), **kw), budget=budget)

    mutate.everywhere(orig, loose)


# mutation -> (install, the checks that must fail under it)
FIT_MUTATIONS = {
    "factor_cost_swaps_m_and_n": (_cost_swapped, {"allocation_costs_and_spectra"}),
    "spectrum_singular_values": (_spectrum_singular_values, {"allocation_costs_and_spectra"}),
    "auto_never_dp": (_auto_never_dp, {"allocation_dp"}),
    "lower_bound_too_low": (_lower_bound_critical_whole, {"allocation_theorem_2"}),
    "ridge_wrong_sign": (_ridge_sign, {"residual_fit_theorem_4", "svd_llm_update", "ridge_limits"}),
    "svd_llm_update_plain_svd": (_update_is_plain_svd, {"svd_llm_update"}),
    "joint_mix_swapped": (_joint_mix_swapped, {"refit_variants"}),
    "residual_fit_ignores_cross": (_residual_fit_without_cross, {"residual_fit_theorem_4"}),
    "factorise_svd_llm_is_svd": (_svd_llm_is_svd, {"factorise"}),
    "short_last_group_untied": (_short_last_group_untied, {"factorise"}),
    "procrustes_is_chordal": (_procrustes_is_chordal, {"distances"}),
    "karcher_unweighted": (_karcher_unweighted, {"means"}),
    "chordal_mean_bottom": (_chordal_mean_bottom, {"means"}),
    "coupling_at_twice_mu": (_coupling_at_twice_mu, {"coupling"}),
    "removal_gradient_sign": (_removal_gradient_sign, {"selection"}),
    "basis_ignores_covariance": (_basis_ignores_covariance, {"selection"}),
    "selection_over_budget": (_selection_over_budget, {"selection"}),
}


# report name -> the function of theorems_fits that produces it
CHECK_OF = {
    "allocation_theorem_1": "allocation_greedy_equal_costs",
    "allocation_theorem_2": "allocation_relaxation",
    "allocation_dp": "allocation_dynamic_programme",
    "allocation_costs_and_spectra": "allocation_costs_and_spectra",
    "svd_llm_update": "svd_llm_update_statement",
    "residual_fit_theorem_4": "residual_fit_theorem_4",
    "residual_fit_theorem_5": "residual_fit_theorem_5",
    "ridge_limits": "ridge_limits",
    "refit_variants": "refit_variants_statement",
    "factorise": "factorise_statement",
    "distances": "distances_statement",
    "means": "means_statement",
    "coupling": "coupling_statement",
    "selection": "selection_statement",
}


def test_theorems_fits_report_names(problems) -> None:
    p = problems["square L=4 m=9 n=9 d=2"]
    names = {_kind(check(p).name): check.__name__ for check in tf.FIT_CHECKS}
    assert names == CHECK_OF


def _kind(name: str) -> str:
    return name.split("[")[0].split(" ")[0]


@pytest.mark.parametrize("mutation", sorted(FIT_MUTATIONS))
def test_theorems_fits_mutation_of_the_package_fails_the_checks(mutation, mutate, problems):
    """On a thin, uneven problem (the unpatched checks hold there: see above)."""
    install, must_fail = FIT_MUTATIONS[mutation]
    p = problems["thin L=5 m=8 n=14 d=2"]
    install(mutate)
    for check in tf.FIT_CHECKS:
        if check.__name__ in {CHECK_OF[name] for name in must_fail}:
            r = check(p, seed=3)
            assert not r.holds and r.failures, (mutation, r.name)


@pytest.mark.parametrize("mutation", sorted(FIT_MUTATIONS))
def test_theorems_fits_mutation_of_the_package_fails_check(mutation, mutate, capsys):
    install, must_fail = FIT_MUTATIONS[mutation]
    install(mutate)
    assert cli.main(["check", "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)
    failed = [r for r in reports if not r["holds"]]
    for label, _ in default_problems():
        kinds = {_kind(r["name"]) for r in failed if r["name"].endswith(f"({label})")}
        assert must_fail <= kinds, (mutation, label, kinds)


def test_theorems_fits_mutation_short_last_group_only_shows_on_short_groups(mutate):
    """The bug of per-group ranks on a short last group is invisible when k divides L:
    the check must run (and does run) a family with a short last group."""
    rng = np.random.default_rng(9)
    W = rng.standard_normal((4, 6, 5))
    _short_last_group_untied(mutate)
    even = gb.factorise(W, None, "bundle", None, tying=2, ranks=[2, 2, 3, 3])
    assert len(even.shared) == 2
    short = gb.factorise(W, None, "bundle", None, tying=3, ranks=[2, 2, 2, 3])
    assert len(short.shared) == 4  # one basis per layer instead of 2 groups


# -- Theorem A's rate, from both sides ---------------------------------------------------


def _rotated_core_solver(p: BundleProblem, rate, scale: float):
    """A solver whose groups sit at sine ``scale * rate(lam)`` from the L2 core (tied).

    Each group's frame is ``cos(t) core + sin(t) Q`` with ``Q`` orthonormal,
    orthogonal to the core: the principal angles to the core are all ``t``.
    ``lam = inf`` returns the package's anchor section.
    """

    def solver(problem, lam, k):
        if math.isinf(lam):
            return gb.solve(problem, lam, k)
        core = gb.l2_core(problem, k)
        bases = []
        for B in core.bases:
            d = B.shape[1]
            Q = np.linalg.qr(np.random.default_rng(0).standard_normal(B.shape))[0]
            Q = np.linalg.qr(Q - B @ (B.T @ Q))[0][:, :d]
            t = math.asin(min(1.0, scale * rate(lam)))
            bases.append(math.cos(t) * B + math.sin(t) * Q)
        return gb.evaluate_section(problem, np.stack(bases), group_index(problem.L, k), lam)

    return solver


@pytest.fixture(scope="module")
def rate_problem() -> BundleProblem:
    return random_problem(4, 12, 10, 2, rng=np.random.default_rng(31))


@pytest.mark.parametrize(
    ("rate", "slope"), [(lambda lam: lam**-0.5, -0.5), (lambda lam: lam**-2.0, -2.0)]
)
def test_theorems_a_rate_rejects_a_slow_or_fast_solver(rate_problem, rate, slope) -> None:
    """Inside the bound at every rung, but not O(1/lam): only the slope can catch it."""
    p, k = rate_problem, 2
    good = theorem_a(p, k)
    assert good.holds and abs(good.figures["loglog_slope"] + 1.0) <= 0.02  # the other side
    lams = good.figures["lams"]
    c = min(good.figures["c_g"])
    # below the sharp bound c/lam on every rung (the largest lam binds for slope -0.5,
    # the smallest for slope -2): the solver's distance is sine scale * rate(lam)
    scale = 0.5 * min(c / lam / rate(lam) for lam in lams)
    r = theorem_a(p, k, solver=_rotated_core_solver(p, rate, scale))
    assert not r.holds
    assert r.figures["max_violation_sharp"] <= 0 and r.figures["max_violation"] <= 0
    assert r.figures["loglog_slope"] == pytest.approx(slope, abs=0.02)
    assert r.failures == [
        f"log-log slope {r.figures['loglog_slope']:.3f} not within {SLOPE_ATOL:g} of -1"
    ]
    assert SLOPE_ATOL < abs(slope + 1.0)


def test_theorems_a_rate_tolerance_is_what_the_check_uses(rate_problem, monkeypatch) -> None:
    """Raising the slope tolerance to 1.0 lets the 1/sqrt(lam) solver through."""
    p = rate_problem
    good = theorem_a(p, 2)
    c = min(good.figures["c_g"])
    scale = 0.5 * min(c / lam * lam**0.5 for lam in good.figures["lams"])
    slow = _rotated_core_solver(p, lambda lam: lam**-0.5, scale)
    monkeypatch.setattr(anchor_corner_mod, "SLOPE_ATOL", 1.0)
    assert theorem_a(p, 2, solver=slow).holds


# -- the float16 orthonormality ceiling, from both sides ----------------------------------


@pytest.mark.parametrize("n", [8, 64, 4096])
def test_theorems_orthonormality_ceiling_float16_two_sided(n) -> None:
    """A float16 copy of an orthonormal basis passes; one 2% off orthonormal does not.

    Rounding to float16 moves ``U^T U`` by at most ``2u + u^2 = 9.8e-4`` at
    any ``n``, under the ceiling 1e-2; ``sqrt(1.02) U`` has ``U^T U - I = 0.02
    I`` (plus that rounding), over it, so a ceiling loosened to 2.1e-2 or more
    would accept it.
    """
    rng = np.random.default_rng(n)
    U = np.linalg.qr(rng.standard_normal((n, 2)))[0]
    copy16 = U.astype(np.float16)
    off16 = (math.sqrt(1.02) * U).astype(np.float16)
    dev = lambda X: float(np.max(np.abs(X.astype(np.float64).T @ X.astype(np.float64) - np.eye(2))))  # noqa: E731
    assert dev(copy16) <= 9.8e-4
    assert 0.0190 <= dev(off16) <= 0.0210
    gb.as_point(copy16)
    gb.dist(copy16, U)
    with pytest.raises(ValueError, match="not an orthonormal basis"):
        gb.as_point(off16)
    with pytest.raises(ValueError, match="not an orthonormal basis"):
        gb.dist(off16, U)


def test_theorems_fits_a_crash_is_a_failing_check(mutate, problems) -> None:
    """Code under test that raises fails its check, with the exception, and the rest run."""

    def broken(*args, **kwargs):
        raise IndexError("index 3 is out of bounds")

    mutate.everywhere(gb.factor_cost, broken)
    reports = tf.fit_checks(problems["square L=4 m=9 n=9 d=2"])
    assert len(reports) == len(tf.FIT_CHECKS)
    failed = {r.name: r.failures for r in reports if not r.holds}
    assert set(failed) == {tf.NAMES["allocation_costs_and_spectra"]}
    assert failed[tf.NAMES["allocation_costs_and_spectra"]] == [
        "raised IndexError: index 3 is out of bounds"
    ]


def test_theorems_orthonormality_ceiling_is_what_rejects(monkeypatch) -> None:
    """The mutation the test above exists for: a ceiling loosened tenfold accepts
    the basis 2% off orthonormal (so the rejection above is the ceiling's)."""
    checks_mod = importlib.import_module("grassbundle._checks")
    U = np.linalg.qr(np.random.default_rng(64).standard_normal((64, 2)))[0]
    off16 = (math.sqrt(1.02) * U).astype(np.float16)
    monkeypatch.setattr(checks_mod, "ORTHONORMALITY_CEILING", 1e-1)
    gb.as_point(off16)
