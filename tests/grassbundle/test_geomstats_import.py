"""geomstats (a test and benchmark peer) imports with the pinned numpy.

geomstats 2.8.0 calls ``np.trapz``, which numpy 2.4 removed; requirements-dev.txt
pins ``numpy<2.4``.  This test fails if the pin is lost or geomstats breaks.
"""

from __future__ import annotations

import warnings

import numpy as np


def test_geomstats_imports_and_runs_with_the_pinned_numpy() -> None:
    major, minor = (int(x) for x in np.__version__.split(".")[:2])
    assert (major, minor) < (2, 4), f"numpy {np.__version__}: requirements-dev.txt pins <2.4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import geomstats
        from geomstats.geometry.grassmannian import Grassmannian
    assert geomstats.__version__ == "2.8.0"
    P = np.diag([1.0, 0.0, 0.0])
    assert abs(Grassmannian(3, 1).metric.dist(P, P)) < 1e-12
    assert hasattr(np, "trapz")  # what geomstats needs
