r"""
Principal angles and geodesics on Gr(1, 3) and Gr(2, 4)
=======================================================

A point of the Grassmann manifold :math:`\mathrm{Gr}(p, n)` is a
:math:`p`-dimensional subspace of :math:`\mathbb{R}^n`, stored as an
:math:`n \times p` orthonormal basis.  This example draws the two smallest
interesting cases and checks, on the pictures, the facts the rest of the
package relies on:

* the geodesic distance is the 2-norm of the principal angles,
  :math:`\mathrm{dist}(U, V) = \lVert \theta \rVert_2`;
* along the geodesic from :math:`U` to :math:`V` every principal angle to
  :math:`U` grows linearly, :math:`\theta_i(t) = t\,\theta_i`;
* the chordal distance :math:`\lVert \sin\theta \rVert_2 = \lVert P_U -
  P_V \rVert_F / \sqrt 2` is shorter, and agrees to second order for small
  angles.
"""

# %%
# Gr(1, 3): lines through the origin of R^3
# -----------------------------------------
# A line is a unit vector up to sign, so Gr(1, 3) is the sphere with antipodal
# points identified.  Its geodesics are great-circle arcs and the principal
# angle between two lines is the (acute) angle between them.
import grassbundle as gb
import matplotlib.pyplot as plt
import numpy as np

U = np.array([[1.0], [0.0], [0.0]])
V = gb.as_point(np.array([[1.0], [1.0], [0.6]]), orthonormalize=True)
theta = gb.principal_angles(U, V)
print(f"principal angle  = {theta[0]:.6f} rad = {np.degrees(theta[0]):.2f} deg")
print(f"geodesic dist    = {gb.dist(U, V):.6f}  (= ||theta||_2)")
print(f"chordal dist     = {gb.chordal_dist(U, V):.6f}  (= ||sin theta||_2)")
print(
    f"||P_U - P_V||_F  = {np.linalg.norm(gb.projector(U) - gb.projector(V)):.6f}"
    f"  (= sqrt(2) * chordal = {np.sqrt(2) * gb.chordal_dist(U, V):.6f})"
)

# The same line in the other basis -V: nothing changes.
print(f"dist(U, -V)      = {gb.dist(U, -V):.6f}")

# %%
# The geodesic is the great-circle arc from U to the representative of V on
# U's side.  ``geodesic(U, V, t)`` samples it; its log-map velocity has norm
# equal to the distance.
t = np.linspace(0.0, 1.0, 41)
path = gb.geodesic(U, V, t)  # shape (41, 3, 1)
X = gb.log(U, V)
print(f"||log_U(V)||_F   = {np.linalg.norm(X):.6f}")
print(f"exp_U(log_U(V)) spans V: dist = {gb.dist(gb.exp(U, X), V):.2e}")

fig = plt.figure(figsize=(5.5, 5.0))
ax = fig.add_subplot(projection="3d")
u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.5)
for B, name, color in ((U, "U", "C0"), (V, "V", "C3")):
    b = B[:, 0]
    ax.plot(*np.stack([-b, b], axis=1), color=color, lw=2, label=f"line {name} (and its antipode)")
    ax.scatter(*b, color=color, s=30)
    ax.scatter(*(-b), color=color, s=30, marker="x")
ax.plot(path[:, 0, 0], path[:, 1, 0], path[:, 2, 0], color="k", lw=2.5, label="geodesic U -> V")
ax.set_box_aspect((1, 1, 1))
ax.set_axis_off()
ax.legend(loc="upper left", fontsize=8)
ax.set_title(f"Gr(1, 3): principal angle {np.degrees(theta[0]):.1f} deg")
plt.show()

# %%
# Gr(2, 4): planes in R^4 have two principal angles
# -------------------------------------------------
# Two generic planes in R^4 meet only at the origin and have two principal
# angles.  We build a pair with prescribed angles (0.4, 1.1): in the basis
# e_1..e_4, V is spanned by cos(theta_i) e_i + sin(theta_i) e_{i+2}.
angles = np.array([0.4, 1.1])
U2 = np.eye(4)[:, :2]
V2 = np.zeros((4, 2))
V2[[0, 1], [0, 1]] = np.cos(angles)
V2[[2, 3], [0, 1]] = np.sin(angles)
rot = gb.random_point(4, 4, rng=np.random.default_rng(0))  # a random rotation of R^4
U2, V2 = rot @ U2, rot @ V2
print("prescribed angles:", angles)
print("principal_angles :", gb.principal_angles(U2, V2))

# %%
# Along the geodesic both angles to U grow linearly in t, and the distance to
# U is t times the full distance.  The chordal distance bends below it.
t = np.linspace(0.0, 1.0, 51)
G = gb.geodesic(U2, V2, t)
th_t = gb.principal_angles(U2, G)  # shape (51, 2)
d_geo = gb.dist(U2, G)
d_chord = gb.chordal_dist(U2, G)
slope_err = np.max(np.abs(th_t - t[:, None] * angles[None, :]))
print(f"max |theta_i(t) - t theta_i| = {slope_err:.2e}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
for i in range(2):
    ax1.plot(t, th_t[:, i], label=f"theta_{i + 1}(t)")
    ax1.plot(t, t * angles[i], "k:", lw=1)
ax1.set_xlabel("t")
ax1.set_ylabel("principal angle to U (rad)")
ax1.set_title("angles grow linearly along the geodesic")
ax1.legend()
ax2.plot(t, d_geo, label="geodesic  ||theta||_2")
ax2.plot(t, d_chord, label="chordal  ||sin theta||_2")
ax2.plot(t, np.sqrt(2) * d_geo, "--", label="geomstats scale  sqrt(2)||theta||_2")
ax2.set_xlabel("t")
ax2.set_ylabel("distance from U")
ax2.set_title("three distance scales")
ax2.legend()
fig.tight_layout()
plt.show()

# %%
# Parallel transport along the geodesic keeps lengths, and carries the
# velocity log_U(V) to minus the velocity back: log_V(U).
X2 = gb.log(U2, V2)
Y2 = gb.parallel_transport(U2, V2, X2)
print(f"||X|| = {np.linalg.norm(X2):.6f},  ||transport(X)|| = {np.linalg.norm(Y2):.6f}")
print(f"|| transport(log_U V) + log_V U || = {np.linalg.norm(Y2 + gb.log(V2, U2)):.2e}")
