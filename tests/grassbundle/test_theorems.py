"""The corner theorems (``pytest -k theorems`` selects this file,
test_theorems_fits.py and the ``test_theorems_*`` tests of the other files).

Each check of :mod:`grassbundle.theorems` must hold for the closed-form solver
on Hypothesis-drawn random problems with controlled eigengaps and on seeded
regression cases, and must fail (``holds`` is False) on deliberately wrong
solvers: bottom-``d`` instead of top-``d``, the anchor term dropped, and
layers assigned to the wrong groups.  The anchor-dropped solver is identical
to the correct one at ``lam = 0``, so the ``lam = 0`` statements (Theorem B
and the principal-angle expansion) cannot and do not detect it; that is
asserted too, so the mutation matrix is explicit.

The checks must also fail when the *package* is wrong, not only the solver
handed to them: the ``test_theorems_mutation_of_the_package_*`` tests patch
the package (the checks' principal-angle sine taking the smallest angle,
``omega_l = 1``, the shared output basis built from ``N_l`` instead of ``M_l``,
Theorem A's constant halved, principal angles sorted descending) and expect
``python -m grassbundle check`` to exit 1 with the named checks failing on
every default problem and through both solver routes.  Since each of these
makes ``run_all_checks`` fail, the same edit made to the source also fails
``test_theorems_all_checks_hold_on_default_problems``, i.e. ``pytest -k
theorems``.
"""

from __future__ import annotations

import json
import math

import grassbundle as gb
import grassbundle.__main__ as cli
import grassbundle.bundle as bundle_mod
import grassbundle.theorems.anchor_corner as anchor_corner_mod
import grassbundle.theorems.references as references_mod
import numpy as np
import pytest
from grassbundle.bundle import BundleProblem, group_index
from grassbundle.theorems import (
    THEOREM_A_MAX_LOOSENESS,
    check_tying_degrees,
    default_problems,
    path_monotonicity,
    phase_diagram_solver,
    principal_angle_expansion,
    random_problem,
    run_all_checks,
    svd_llm_equivalence,
    theorem_a,
    theorem_b,
)
from grassbundle.theorems.references import proj_sine, sin_max
from hypothesis import given
from hypothesis import strategies as st

# the checks of grassbundle.theorems_fits, by name
FIT_NAMES = (
    "allocation_",
    "svd_llm_update[",
    "residual_fit_theorem_",
    "ridge_limits",
    "factorise[",
    "distances",
    "means",
    "coupling",
    "selection[",
)

# -- deliberately wrong solvers ------------------------------------------------------


def _dense_K(p: BundleProblem, layers, lam: float) -> np.ndarray:
    d = p.rank
    K = np.zeros((p.m, p.m))
    for l in layers:
        A = p.anchors[l]
        if math.isinf(lam):
            K += A @ A.T
        else:
            K += p.omega[l] * p.energy_matrix(l) + (lam / d) * (A @ A.T)
    return K


def bottom_d_solver(p: BundleProblem, lam: float, k: int) -> gb.Section:
    groups = group_index(p.L, k)
    bases = []
    for g in range(groups.max() + 1):
        _, V = np.linalg.eigh(_dense_K(p, np.flatnonzero(groups == g), lam))
        bases.append(V[:, : p.rank])  # the bottom-d eigenspace
    return gb.evaluate_section(p, np.stack(bases), groups, lam)


def anchor_dropped_solver(p: BundleProblem, lam: float, k: int) -> gb.Section:
    return gb.solve(p, 0.0, k)


def misassigned_solver(p: BundleProblem, lam: float, k: int) -> gb.Section:
    sec = gb.solve(p, lam, k)
    return gb.evaluate_section(p, sec.bases, np.roll(sec.groups, 1), lam)


MUTANTS = {
    "bottom_d": bottom_d_solver,
    "anchor_dropped": anchor_dropped_solver,
    "misassigned": misassigned_solver,
}


@pytest.fixture(scope="module")
def weight_problem() -> BundleProblem:
    return random_problem(6, 16, 14, 3, rng=np.random.default_rng(20260101))


@pytest.fixture(scope="module")
def activation_problem() -> BundleProblem:
    return random_problem(4, 12, 18, 3, rng=np.random.default_rng(7), metric="activation")


# -- seeded regression cases ------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_theorems_a_regression(weight_problem, k):
    r = theorem_a(weight_problem, k)
    assert r.holds, r.failures
    f = r.figures
    assert all(f["hypothesis_met"])
    assert f["max_violation"] <= 1e-10
    assert abs(f["loglog_slope"] + 1) <= 0.1
    assert f["k1_lam_inf_vs_anchor_sine"] <= 1e-8
    # the measured distance decays by about 10^4 over the 4-decade ladder
    assert f["measured_sin_theta_max"][-1] < 1e-3 * f["measured_sin_theta_max"][0]


def test_theorems_a_bound_is_the_stated_formula(weight_problem):
    """c_g = d ||N_g||_2 / delta_g and bound = c_g / (lam - c_g), recomputed here."""
    k, d = 2, weight_problem.rank
    r = theorem_a(weight_problem, k, lams=[1e3, 1e4])
    for j, layers in enumerate([[0, 1], [2, 3], [4, 5]]):
        N = sum(weight_problem.omega[l] * weight_problem.energy_matrix(l) for l in layers)
        S = sum(weight_problem.anchors[l] @ weight_problem.anchors[l].T for l in layers)
        mu = np.linalg.eigvalsh(S)[::-1]
        c = d * np.linalg.norm(N, 2) / (mu[d - 1] - mu[d])
        assert r.figures["c_g"][j] == pytest.approx(c, rel=1e-10)
    cmax = max(r.figures["c_g"])
    assert r.figures["bound_max"][1] == pytest.approx(min(1.0, cmax / (1e4 - cmax)), rel=1e-10)


@pytest.mark.parametrize("k", [1, 2, 6])
def test_theorems_b_regression(weight_problem, k):
    r = theorem_b(weight_problem, k)
    assert r.holds, r.failures
    f = r.figures
    assert max(f["relative_gap_to_ky_fan_min"]) <= 1e-12
    # omega differs between layers, so the shared output basis differs: strict gap
    assert min(f["sin_theta_shared_output_basis"]) > 1e-3
    assert all(
        g > lb > 0
        for g, lb in zip(
            f["relative_gap_shared_output_basis"],
            f["relative_lower_bound_shared_output_basis"],
            strict=True,
        )
    )
    if k == 1:
        assert min(f["frobenius_margin_vs_svd_llm"]) > 0


@pytest.mark.parametrize("k", [1, 2, 6])
def test_theorems_expansion_regression(weight_problem, k):
    r = principal_angle_expansion(weight_problem, k)
    assert r.holds, r.failures
    # the exact Theorem B gap: equality to about 1e-12 relative
    assert max(r.figures["theorem_b_gap_relative_error"]) < 1e-12
    assert r.figures["max_relative_error"] < 1e-9


def test_theorems_svd_llm_regression(weight_problem, activation_problem):
    for p in (weight_problem, activation_problem):
        r = svd_llm_equivalence(p)
        assert r.holds, r.failures
        assert r.figures["max_relative_difference_lam0_activation"] < 1e-10
        assert r.figures["max_relative_difference_lam_inf"] < 1e-10
        s = r.figures["singular"]
        assert s["cholesky_fails_without_jitter"] is True
        assert s["projection_gap_to_optimum_relative"] < 1e-12
        assert s["svd_llm_jittered_excess_relative"] >= -1e-12


def test_theorems_svd_llm_without_covariance_uses_synthetic_one():
    W = np.random.default_rng(2).standard_normal((3, 10, 8))
    r = svd_llm_equivalence(BundleProblem(W, rank=2))
    assert r.holds and r.figures["synthetic_covariance"] is True


@pytest.mark.parametrize("k", [1, 2, 6])
def test_theorems_monotonicity_regression(weight_problem, k):
    r = path_monotonicity(weight_problem, k)
    assert r.holds, r.failures
    F, D = r.figures["weight_term"], r.figures["anchor_distance_sum"]
    # not vacuous: the path moves from the tied frame towards the anchors
    assert F[-1] > F[0] and D[-1] < D[0]


def test_theorems_monotonicity_rejects_unsorted_ladder(weight_problem):
    with pytest.raises(ValueError, match="increasing"):
        path_monotonicity(weight_problem, 1, lams=[1.0, 0.5])


def test_theorems_all_checks_hold_on_default_problems():
    reports = run_all_checks()
    # 2 problems x (2 solver routes x (1 + 4 ks x 4 checks) + 14 checks of theorems_fits)
    assert len(reports) == 96
    assert all(r.holds for r in reports), [r.failures for r in reports if not r.holds]
    assert sum("via phase_diagram" in r.name for r in reports) == 34
    assert sum(r.name.startswith(FIT_NAMES) for r in reports) == 26
    # Theorem A's looseness is asserted on the default problems
    for r in reports:
        if r.name.startswith("theorem_a"):
            assert r.tolerance["max_looseness"] == THEOREM_A_MAX_LOOSENESS
            assert r.figures["exact_convergence"] or (
                r.figures["measured_over_bound_max"] >= 1 / THEOREM_A_MAX_LOOSENESS
            )


@pytest.mark.parametrize(
    ("L", "ks"),
    [
        (1, [1]),
        (2, [1, 2]),
        (3, [1, 2, 3]),
        (4, [1, 2, 3, 4]),
        (6, [1, 2, 4, 6]),
        (12, [1, 2, 5, 12]),
    ],
)
def test_theorems_tying_degrees_include_a_shorter_last_group(L, ks):
    assert check_tying_degrees(L) == ks
    if L > 2:
        assert any(L % k for k in ks)


def test_theorems_phase_diagram_solver_is_solve(activation_problem):
    """Same sections as solve, with the phase diagram's own energies (dense route: m <= n)."""
    p = activation_problem
    for k in (1, 3):
        for lam in (0.0, 0.7, math.inf):
            a, b = phase_diagram_solver(p, lam, k), gb.solve(p, lam, k)
            assert max(proj_sine(x, y) for x, y in zip(a.bases, b.bases, strict=True)) < 1e-10
            if math.isfinite(lam):
                assert a.objective == pytest.approx(b.objective, rel=1e-10)


def test_theorems_measured_sine_is_the_projector_2_norm():
    """The checks' distance ||(I - U U^T) V||_2 equals ||P_U - P_V||_2 formed densely,
    for large and for tiny angles (there the residual stays accurate)."""
    rng = np.random.default_rng(3)
    for m, d in [(7, 1), (9, 3), (12, 6)]:
        U = np.linalg.qr(rng.standard_normal((m, d)))[0]
        for scale in (1.0, 1e-3, 1e-9):
            V = np.linalg.qr(U + scale * rng.standard_normal((m, d)))[0]
            dense = np.linalg.norm(U @ U.T - V @ V.T, 2)
            assert proj_sine(U, V) == pytest.approx(dense, rel=1e-6, abs=1e-15)
            assert proj_sine(U, V) == pytest.approx(proj_sine(V, U), rel=1e-6, abs=1e-15)


def test_theorems_principal_angle_order_is_pinned(weight_problem):
    """The checks' formulas assume principal_angles ascending: the last one is
    the largest, whose sine is ||P_U - P_V||_2."""
    sec = gb.solve(weight_problem, 1.0, 2)
    core = gb.l2_core(weight_problem, 2)
    for l in range(weight_problem.L):
        theta = gb.principal_angles(sec.basis(l), core.basis(l))
        assert np.all(np.diff(theta) >= 0)
        assert theta[-1] - theta[0] > 1e-6  # distinct angles: the order matters here
        assert sin_max(sec.basis(l), core.basis(l)) == pytest.approx(
            proj_sine(sec.basis(l), core.basis(l)), abs=1e-13
        )


def test_theorems_activation_problem(activation_problem):
    for k in (1, 2, 4):
        for check in (theorem_a, theorem_b, principal_angle_expansion, path_monotonicity):
            r = check(activation_problem, k)
            assert r.holds, (r.name, r.failures)


# -- Hypothesis: random problems with controlled eigengaps ------------------------------

problems = st.builds(
    lambda seed, L, m, extra_n, d, gap, metric: random_problem(
        L, m, m - 2 + extra_n, d, rng=np.random.default_rng(seed), gap=gap, metric=metric
    ),
    seed=st.integers(0, 2**32 - 1),
    L=st.integers(2, 5),
    m=st.integers(8, 16),
    extra_n=st.integers(0, 6),
    d=st.integers(1, 4),
    gap=st.floats(0.2, 2.0),
    metric=st.sampled_from(["weight", "activation"]),
)


@given(p=problems, kfrac=st.floats(0.0, 1.0))
def test_theorems_a_hypothesis(p, kfrac):
    k = 1 + int(kfrac * (p.L - 1))
    r = theorem_a(p, k)
    assert r.holds, r.failures


@given(p=problems, kfrac=st.floats(0.0, 1.0))
def test_theorems_b_and_expansion_hypothesis(p, kfrac):
    k = 1 + int(kfrac * (p.L - 1))
    for r in (theorem_b(p, k), principal_angle_expansion(p, k)):
        assert r.holds, (r.name, r.failures)


@given(p=problems, kfrac=st.floats(0.0, 1.0))
def test_theorems_svd_llm_and_monotonicity_hypothesis(p, kfrac):
    k = 1 + int(kfrac * (p.L - 1))
    for r in (svd_llm_equivalence(p), path_monotonicity(p, k)):
        assert r.holds, (r.name, r.failures)


# -- mutations: each check fails on a wrong solver ---------------------------------------

# check -> (k used, mutants it must detect); lam = 0 statements cannot see a dropped anchor.
EXPECT = {
    "theorem_a": (2, {"bottom_d", "anchor_dropped", "misassigned"}),
    "theorem_a_k1": (1, {"bottom_d", "anchor_dropped", "misassigned"}),
    "theorem_b": (2, {"bottom_d", "misassigned"}),
    "expansion": (2, {"bottom_d", "misassigned"}),
    "svd_llm": (1, {"bottom_d", "anchor_dropped", "misassigned"}),
    "monotonicity": (2, {"bottom_d", "anchor_dropped", "misassigned"}),
}


def _run(check: str, p: BundleProblem, k: int, solver) -> gb.theorems.TheoremReport:
    if check.startswith("theorem_a"):
        return theorem_a(p, k, solver=solver)
    if check == "theorem_b":
        return theorem_b(p, k, solver=solver)
    if check == "expansion":
        return principal_angle_expansion(p, k, solver=solver)
    if check == "svd_llm":
        return svd_llm_equivalence(p, solver=solver)
    return path_monotonicity(p, k, solver=solver)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
@pytest.mark.parametrize("check", sorted(EXPECT))
def test_theorems_mutation(weight_problem, check, mutant):
    k, detects = EXPECT[check]
    assert _run(check, weight_problem, k, gb.solve).holds
    r = _run(check, weight_problem, k, MUTANTS[mutant])
    if mutant in detects:
        assert not r.holds, f"{check} did not detect the {mutant} solver"
        assert r.failures
    else:
        # the anchor-dropped solver equals the correct one at lam = 0
        assert r.holds, r.failures


def test_theorems_mutation_run_all_checks_fails():
    reports = run_all_checks(solver=bottom_d_solver)
    assert not any(r.holds for r in reports)


# -- mutations of the package: the checks must not agree with a wrong package ------------
#
# Each mutation patches the package the way an edit of its source would (every module
# that imported the patched name sees the mutant), then runs `python -m grassbundle
# check` (its `main`) and expects exit status 1 with the named checks failing on both
# default problems and through both solver routes.


def _mutate_sin_max_smallest(mutate) -> None:
    def smallest(U, V):
        return float(np.sin(gb.principal_angles(U, V)[0]))

    mutate.everywhere(references_mod.sin_max, smallest)


def _mutate_omega_one(mutate) -> None:
    init = BundleProblem.__init__

    def omega_one(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if kwargs.get("omega") is None:
            self.omega = np.ones(self.L)

    mutate.setattr(BundleProblem, "__init__", omega_one)


def _mutate_shared_output_basis_from_N(mutate) -> None:
    def from_N(problem, k):
        groups = bundle_mod._group_layers(problem.L, k)
        bases = np.stack(
            [
                bundle_mod.top_eigenspace_factor(
                    np.concatenate([problem.W[l] for l in g], axis=1), problem.rank
                )
                for g in groups
            ]
        )
        return bundle_mod._make_section(problem, bases, group_index(problem.L, k), 0.0, k)

    mutate.everywhere(bundle_mod.shared_output_basis, from_N)


def _mutate_theorem_a_constant_halved(mutate) -> None:
    const = anchor_corner_mod._theorem_a_constant
    mutate.setattr(anchor_corner_mod, "_theorem_a_constant", lambda *a: 0.5 * const(*a))


def _mutate_angles_descending(mutate) -> None:
    original = gb.principal_angles

    def descending(U, V, *, vectors=False):
        out = original(U, V, vectors=vectors)
        if vectors:
            return tuple(x[..., ::-1] for x in out)
        return out[..., ::-1]

    mutate.everywhere(original, descending)


# mutation -> the checks that must fail under it
PACKAGE_MUTATIONS = {
    "sin_max_takes_smallest_angle": (_mutate_sin_max_smallest, {"theorem_a", "theorem_b"}),
    "omega_is_one": (_mutate_omega_one, {"theorem_b", "path_monotonicity"}),
    "shared_output_basis_from_N": (_mutate_shared_output_basis_from_N, {"theorem_b"}),
    "theorem_a_constant_halved": (_mutate_theorem_a_constant_halved, {"theorem_a"}),
    "principal_angles_descending": (_mutate_angles_descending, {"theorem_a", "theorem_b"}),
}


@pytest.mark.parametrize("mutation", sorted(PACKAGE_MUTATIONS))
def test_theorems_mutation_of_the_package_fails_check(mutation, mutate, capsys):
    install, must_fail = PACKAGE_MUTATIONS[mutation]
    install(mutate)
    assert cli.main(["check", "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)
    failed = [r for r in reports if not r["holds"]]
    assert all(r["failures"] for r in failed)
    kinds = {r["name"].split("[")[0].split(" ")[0] for r in failed}
    assert must_fail <= kinds, (mutation, kinds)
    for label, _ in default_problems():
        for route in ("", "; via phase_diagram"):
            suffix = f"({label}{route})"
            assert any(r["name"].endswith(suffix) for r in failed), (mutation, suffix)


@pytest.mark.parametrize("mutation", sorted(PACKAGE_MUTATIONS))
def test_theorems_mutation_of_the_package_fails_the_check_functions(mutation, mutate):
    """The same mutations, through the check functions on a fresh problem."""
    install, must_fail = PACKAGE_MUTATIONS[mutation]
    install(mutate)
    p = random_problem(5, 14, 12, 3, rng=np.random.default_rng(20260102))
    checks = {
        "theorem_a": lambda: theorem_a(p, 2),
        "theorem_b": lambda: theorem_b(p, 2),
        "path_monotonicity": lambda: path_monotonicity(p, 2),
    }
    for name in must_fail:
        r = checks[name]()
        assert not r.holds and r.failures, (mutation, name)
