"""Benchmark: the closed-form (lambda, k) phase diagram against pymanopt trust regions.

Two synthetic families shaped like Pythia's ``attention.dense`` weights, with
decaying spectra and anisotropic calibration covariances:

* 70M-shaped: 6 matrices 512 x 512, d = 128;
* 1.4B-shaped: 24 matrices 2048 x 2048, d = 512 (``--reduced``: 24 x 1024 x 1024,
  d = 256, for machines where the full size does not fit the time).

For each family, in one run: the full phase diagram (10 values of lambda,
including 0 and inf, times k in {1, 2, 3, 4, 6, 8, 12, 24}, k > L skipped),
then pymanopt's trust regions on Gr(d, m)^G at a sample of grid points
(started from seeded random frames), the objective values compared, and
the per-point times compared.  The table, as printed, is written to
``benchmarks/results/bundle.md``.

Usage::

    python benchmarks/bench_bundle.py [--family 70m|1.4b|all] [--reduced] [--tr-points N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import grassbundle as gb
import numpy as np
import scipy

HERE = Path(__file__).resolve().parent
LAMS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, math.inf]
KS = [1, 2, 3, 4, 6, 8, 12, 24]
# (k, lam) grid points solved with trust regions: few groups, so that each
# point is one Riemannian problem of moderate size.
TR_POINTS = [(24, 1.0), (12, 0.1), (8, 10.0), (6, 1.0), (3, 0.1), (2, 10.0)]


def haar(n: int, rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diagonal(R))


def family(L: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``W_l = P diag(s) Q^T``, ``s_i = (1 + i)^-0.6`` times a layer scale; ``C_l = V diag(c) V^T``.

    ``c_j = (1 + j)^-1``; ``P, Q, V`` Haar-random.
    """
    W = np.empty((L, m, m))
    C = np.empty((L, m, m))
    idx = np.arange(m)
    for l in range(L):
        s = (1.0 + idx) ** -0.6 * np.exp(rng.uniform(-0.5, 0.5))
        P, Q, V = haar(m, rng), haar(m, rng), haar(m, rng)
        W[l] = (P * s) @ Q.T
        C[l] = (V * (1.0 + idx) ** -1.0) @ V.T
        C[l] = 0.5 * (C[l] + C[l].T)
    return W, C


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 0.1 else f"{1e3 * x:.1f} ms"


def dense_eigenproblems(problem: gb.BundleProblem, ks: list[int]) -> int:
    """How many ``m x m`` eigenproblems the phase diagram solves densely.

    A group's finite-``lam`` problem is dense when its factor ``[sqrt(omega_l) X_l,
    sqrt(lam / d) A_l]`` is at least ``m`` wide (``phase_diagram``'s rule); ``lam = inf``
    always takes the thin factor of the anchors.
    """
    m, d = problem.m, problem.rank
    count = 0
    for k in ks:
        for s in range(0, problem.L, k):
            layers = range(s, min(s + k, problem.L))
            width = sum(problem.energy_factor(l).shape[1] for l in layers)
            for lam in LAMS:
                if math.isfinite(lam) and width + (len(layers) * d if lam > 0 else 0) >= m:
                    count += 1
    return count


def time_dense_eigensolve(problem: gb.BundleProblem) -> float:
    """Best of 3 timings of one dense top-``d`` eigensolve (layer 0, ``k = 1``, ``lam = 1``)."""
    m, d = problem.m, problem.rank
    X = problem.energy_factor(0)
    A = problem.anchors[0]
    K = problem.omega[0] * (X @ X.T) + (1.0 / d) * (A @ A.T)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        scipy.linalg.eigh(K, subset_by_index=[m - d, m - 1], driver="evr")
        best = min(best, time.perf_counter() - t0)
    return best


def run_family(
    name: str, L: int, m: int, d: int, tr_points: int, out: list[str], device: str | None = None
) -> None:
    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    rng = np.random.default_rng(1405 if L == 24 else 70)
    t0 = time.perf_counter()
    W, C = family(L, m, rng)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    problem = gb.BundleProblem(W, C, rank=d)
    problem.anchors  # noqa: B018  SVD-LLM anchors: one m x m eigh per layer
    t_setup = time.perf_counter() - t0
    ks = [k for k in KS if k <= L]
    t0 = time.perf_counter()
    pd = gb.phase_diagram(problem, LAMS, ks, return_bases=False, device=device)
    t_pd = time.perf_counter() - t0
    npts = len(LAMS) * len(ks)
    ngroups = sum(math.ceil(L / k) for k in ks)
    say(f"## {name}: L = {L}, m = n = {m}, d = {d}, metric = weight, C given")
    say()
    say(f"- family generated in {fmt_s(t_gen)} (not timed below)")
    say(f"- problem set-up (covariance factors + {L} SVD-LLM anchors): {fmt_s(t_setup)}")
    say(
        f"- phase diagram: {len(LAMS)} lambdas x {len(ks)} k = {npts} grid points "
        f"({ngroups * len(LAMS)} group eigenproblems, device {device or 'numpy'}): "
        f"**{fmt_s(t_pd)}** "
        f"({fmt_s(t_pd / npts)} per grid point)"
    )
    n_dense = dense_eigenproblems(problem, ks)
    t_eig = time_dense_eigensolve(problem)
    say(
        f"- of which dense {m} x {m} eigenproblems: {n_dense}; one of them (top {d} "
        f"eigenpairs, LAPACK's MRRR driver, float64, best of 3 in this run) takes "
        f"{fmt_s(t_eig)}, so they account for about {fmt_s(n_dense * t_eig)} "
        f"({100 * n_dense * t_eig / t_pd:.0f}% of the phase diagram): the floor of any exact "
        "route that solves each (k, lambda, group) on its own"
    )
    say()
    say("Frobenius error fraction ||W - P_U W||_F^2 / ||W||_F^2, mean over layers:")
    say()
    say("| k \\ lambda | " + " | ".join(f"{x:g}" for x in LAMS) + " |")
    say("|---|" + "---|" * len(LAMS))
    for qi, k in enumerate(ks):
        row = " | ".join(f"{v:.4f}" for v in pd.frobenius_error[qi].mean(axis=1))
        say(f"| {k} | {row} |")
    say()
    assert pd.activation_error is not None
    say("Activation error fraction A_l / tr M_l, mean over layers:")
    say()
    say("| k \\ lambda | " + " | ".join(f"{x:g}" for x in LAMS) + " |")
    say("|---|" + "---|" * len(LAMS))
    for qi, k in enumerate(ks):
        row = " | ".join(f"{v:.4f}" for v in pd.activation_error[qi].mean(axis=1))
        say(f"| {k} | {row} |")
    say()
    # trust regions at sample points, and the closed form solved per point
    pts = [(k, lam) for k, lam in TR_POINTS if k <= L][:tr_points]
    say(
        "Trust regions (pymanopt, exact Euclidean gradient and Hessian, random start) "
        "at sample points:"
    )
    say()
    say(
        "| k | lambda | groups | J closed form | J trust regions | relative difference "
        "| TR time | TR iterations | solve() time | phase-diagram time per point |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|")
    tr_times = []
    rel_diffs = []
    for k, lam in pts:
        qi, pi = ks.index(k), LAMS.index(lam)
        J = pd.objective[qi, pi]
        t0 = time.perf_counter()
        sec = gb.solve(problem, lam, k)
        t_solve = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr = gb.solve_trust_regions(
            problem, lam, k, seed=k, max_iterations=100, min_gradient_norm=1e-8
        )
        t_tr = time.perf_counter() - t0
        tr_times.append(t_tr)
        rel = (tr.energy - J) / abs(J)
        rel_diffs.append(rel)
        assert abs(sec.objective - J) <= 1e-10 * abs(J), (sec.objective, J)
        say(
            f"| {k} | {lam:g} | {math.ceil(L / k)} | {J:.12f} | {tr.energy:.12f} | {rel:.2e} "
            f"| {fmt_s(t_tr)} | {tr.iterations} | {fmt_s(t_solve)} | {fmt_s(t_pd / npts)} |"
        )
    say()
    if tr_times:
        ratio = float(np.mean(tr_times)) / (t_pd / npts)
        say(
            f"- per grid point: phase diagram {fmt_s(t_pd / npts)}, trust regions "
            f"{fmt_s(float(np.mean(tr_times)))} (mean of {len(tr_times)}): "
            f"**{ratio:.0f}x** faster"
        )
        say(
            f"- objectives: max |J_TR - J_closed| / |J_closed| = "
            f"{max(abs(r) for r in rel_diffs):.2e} (target 1e-8); "
            f"min (J_TR - J_closed) / |J_closed| = {min(rel_diffs):.2e} (>= 0 up to roundoff: "
            "the closed form is the global minimum)"
        )
    say()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["70m", "1.4b", "all"], default="all")
    ap.add_argument(
        "--reduced",
        action="store_true",
        default=os.environ.get("GRASSBUNDLE_BENCH_REDUCED") == "1",
        help="1.4B-shaped family at 1024 x 1024, d = 256 (or GRASSBUNDLE_BENCH_REDUCED=1)",
    )
    ap.add_argument("--tr-points", type=int, default=3)
    ap.add_argument("--device", default=None, help="torch device for the eigensolves, e.g. cuda")
    ap.add_argument("--out", default=str(HERE / "results" / "bundle.md"))
    args = ap.parse_args(argv)
    out: list[str] = []
    out.append("# Bundle phase diagram vs pymanopt trust regions")
    out.append("")
    out.append(f"Command: `python benchmarks/bench_bundle.py {' '.join(argv or sys.argv[1:])}`")
    out.append("")
    load = os.getloadavg()
    out.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average at start "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min; the cores are shared); "
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}. "
        + (
            f"Eigensolves on torch device {args.device}."
            if args.device
            else "No GPU used: the `device=` torch path of `phase_diagram` is not measured here."
        )
    )
    out.append("")
    for line in out:
        print(line, flush=True)
    t_all = time.perf_counter()
    if args.family in ("70m", "all"):
        run_family("70M-shaped", 6, 512, 128, args.tr_points, out, args.device)
    if args.family in ("1.4b", "all"):
        if args.reduced:
            run_family(
                "1.4B-shaped, reduced to 1024", 24, 1024, 256, args.tr_points, out, args.device
            )
        else:
            run_family("1.4B-shaped", 24, 2048, 512, args.tr_points, out, args.device)
    load = os.getloadavg()
    tail = (
        f"Total {fmt_s(time.perf_counter() - t_all)}; load average at end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}."
    )
    print(tail)
    out.append(tail)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
