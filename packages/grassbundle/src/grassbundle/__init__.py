"""grassbundle: Grassmann manifolds and the Grassmann-bundle formulation of
cross-layer low-rank compression.

Points of Gr(p, n) are ``n x p`` orthonormal bases with optional leading batch
axes ``(..., n, p)``.  The maths runs in float64 whatever the input dtype.
"""

from __future__ import annotations

from .angles import principal_angles

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "principal_angles",
]
