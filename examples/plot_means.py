r"""
Chordal versus Karcher mean
===========================

Two ways to average subspaces :math:`U_1, \dots, U_k \in \mathrm{Gr}(p, n)`:

* the **chordal mean** (:func:`grassbundle.chordal_mean`) minimises
  :math:`\sum_i \lVert P_U - P_{U_i} \rVert_F^2`, the squared distances of the
  projectors in the ambient space of symmetric matrices.  It is the
  top-:math:`p` eigenspace of :math:`\sum_i P_{U_i}`: one eigenproblem.  The L2
  core of a bundle group (Theorem A) is this mean of the group's anchors.
* the **Karcher mean** (:func:`grassbundle.karcher_mean`) minimises
  :math:`\sum_i \mathrm{dist}(U, U_i)^2` with the geodesic distance: the
  intrinsic centre of mass, found by Riemannian gradient steps.

They agree when the points are clustered and part ways as they spread.
"""

# %%
# Lines in the plane: Gr(1, 2)
# ----------------------------
# A line through the origin of R^2 is an angle phi modulo pi.  Its projector
# is determined by (cos 2 phi, sin 2 phi), so the chordal mean is half the
# angle of the average of the doubled-angle unit vectors, while the Karcher
# mean is the arithmetic mean of the angles (for clustered lines).  Five
# lines spread over 100 degrees make the difference visible.
import grassbundle as gb
import matplotlib.pyplot as plt
import numpy as np

phi = np.radians([0.0, 10.0, 20.0, 30.0, 100.0])
lines = np.stack([np.array([[np.cos(a)], [np.sin(a)]]) for a in phi])  # (5, 2, 1)
chordal = gb.chordal_mean(lines)
karcher = gb.karcher_mean(lines)


def angle(U):
    a = np.arctan2(U[1, 0], U[0, 0]) % np.pi
    return np.degrees(a)


print(f"chordal mean line: {angle(chordal):.3f} deg")
print(
    f"Karcher mean line: {angle(karcher.point):.3f} deg "
    f"(arithmetic mean of the angles: {np.degrees(phi).mean():.3f} deg; "
    f"converged={bool(karcher.converged)}, {int(karcher.iterations)} steps)"
)
doubled = np.degrees(np.angle(np.exp(2j * phi).mean())) / 2 % 180
print(f"half the angle of the mean doubled-angle vector: {doubled:.3f} deg")

fig, ax = plt.subplots(figsize=(5, 4))
for a in phi:
    ax.plot([-np.cos(a), np.cos(a)], [-np.sin(a), np.sin(a)], color="0.6", lw=1)
for U, name, color in ((chordal, "chordal mean", "C0"), (karcher.point, "Karcher mean", "C3")):
    ax.plot([-U[0, 0], U[0, 0]], [-U[1, 0], U[1, 0]], color=color, lw=2.5, label=name)
ax.set_aspect("equal")
ax.set_xlim(-1.1, 1.1)
ax.set_ylim(-0.3, 1.1)
ax.legend(loc="lower right")
ax.set_title("five lines in R^2 (grey) and their means")
plt.show()

# %%
# Each mean wins at its own game: the chordal mean has the smaller sum of
# squared chordal distances, the Karcher mean the smaller sum of squared
# geodesic distances.
for U, name in ((chordal, "chordal"), (karcher.point, "Karcher")):
    geo = np.sum(gb.dist(U, lines) ** 2)
    cho = np.sum(gb.chordal_dist(U, lines) ** 2)
    print(f"{name:8s} mean: sum dist^2 = {geo:.6f}   sum chordal_dist^2 = {cho:.6f}")

# %%
# How far apart are they? Gr(3, 10)
# ---------------------------------
# Draw 8 points around a centre at geodesic spread sigma (random tangent
# directions scaled to norm sigma) and measure the geodesic distance between
# the two means.  For clustered points the means agree to third order in
# sigma (the fitted slope is about 3); at a spread of a radian they differ by
# a sizeable fraction of the spread.
rng = np.random.default_rng(1)
n, p, k = 10, 3, 8
centre = gb.random_point(n, p, rng=rng)
sigmas = np.geomspace(1e-3, 1.0, 13)
gaps = []
for sigma in sigmas:
    Z = gb.project_tangent(centre, rng.standard_normal((k, n, p)))
    Z *= sigma / np.linalg.norm(Z, axis=(-2, -1), keepdims=True)
    pts = gb.exp(centre, Z)
    c = gb.chordal_mean(pts)
    kar = gb.karcher_mean(pts, tol=1e-12, max_iter=500)
    gaps.append(float(gb.dist(c, kar.point)))
gaps = np.array(gaps)
slope = np.polyfit(np.log(sigmas[:8]), np.log(gaps[:8]), 1)[0]
print(f"log-log slope of dist(chordal, Karcher) against the spread: {slope:.2f}")

fig, ax = plt.subplots(figsize=(5, 3.6))
ax.loglog(sigmas, gaps, "o-", label="dist(chordal mean, Karcher mean)")
ax.loglog(sigmas, sigmas, "k:", label="the spread itself")
ax.set_xlabel("geodesic spread of the points (rad)")
ax.set_ylabel("distance between the means")
ax.legend()
ax.set_title("Gr(3, 10), 8 points")
fig.tight_layout()
plt.show()
