r"""
Theorem A: O(1/lambda) convergence to the L2 core
=================================================

As the anchor strength :math:`\lambda` grows, each group's frame
:math:`U_g(\lambda)` (the top-:math:`d` eigenspace of :math:`K_g(\lambda) =
\sum_{l \in g} [\omega_l N_l + (\lambda/d) P_{A_l}]`) converges to the
group's **L2 core**, the top-:math:`d` eigenspace of :math:`\sum_{l \in g}
P_{A_l}`.  Davis-Kahan gives

.. math::

   \lVert \sin\Theta(U_g(\lambda), \mathrm{core}_g) \rVert_2
   \le \frac{c_g}{\lambda - c_g}, \qquad
   c_g = \frac{d\, \lVert \sum_{l \in g} \omega_l N_l \rVert_2}{\delta_g},

(see :doc:`/theory/theorems`).  This example measures the distance on a
seeded random family, draws it against the bound, and fits the slope.
"""

# %%
# A seeded random family: L = 6 layers of 24 x 20 weights, rank d = 4.
import math

import grassbundle as gb
import matplotlib.pyplot as plt
import numpy as np
from grassbundle import theorems

problem = theorems.random_problem(6, 24, 20, 4, rng=np.random.default_rng(0))
print(problem)

# %%
# Measure by hand, with the public API: solve at each lambda, take the
# largest principal-angle sine to the core over the layers.
lams = np.geomspace(1e-2, 1e5, 36)
curves = {}
for k in (1, 3):
    core = gb.l2_core(problem, k)
    dist = []
    for lam in lams:
        sec = gb.solve(problem, float(lam), k)
        sines = [
            np.sin(gb.principal_angles(sec.basis(l), core.basis(l))[-1]) for l in range(problem.L)
        ]
        dist.append(max(sines))
    curves[k] = np.array(dist)

# %%
# The check in grassbundle.theorems computes the constant c_g and asserts the
# bound on its own ladder of lambdas; we reuse its constant for the bound line.
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, k in zip(axes, (1, 3), strict=True):
    report = theorems.theorem_a(problem, k)
    c = max(report.figures["c_g"])
    print(f"k={k}: {report.name} holds={report.holds}; {report.summary}")
    fit = lams > 20 * c
    slope = np.polyfit(np.log(lams[fit]), np.log(curves[k][fit]), 1)[0]
    print(f"   our fit on lambda > 20 c_g: slope {slope:.3f}")
    bound = np.where(lams > c, np.minimum(1.0, c / np.maximum(lams - c, 1e-300)), np.nan)
    ax.loglog(lams, curves[k], "o-", ms=3, label="measured  max_l ||sin Theta||_2")
    ax.loglog(lams, bound, "k--", label="Davis-Kahan bound c/(lam - c)")
    ax.loglog(lams, c / lams, "k:", lw=1, label="c / lam")
    ax.axvline(c, color="0.7", lw=1)
    ax.set_xlabel("anchor strength lambda")
    ax.set_title(f"k = {k}:  c_g = {c:.2f},  fitted slope {slope:.2f}")
axes[0].set_ylabel("distance to the L2 core")
axes[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()

# %%
# With k = 1 the L2 core is the anchor itself (SVD-LLM): at lambda = inf the
# solver returns it exactly.
inf_sec = gb.solve(problem, math.inf, 1)
anchor = gb.anchor_section(problem)
print(
    "k=1, lambda=inf vs SVD-LLM anchors: max sine =",
    max(np.sin(gb.principal_angles(inf_sec.basis(l), anchor.basis(l))[-1]) for l in range(6)),
)
