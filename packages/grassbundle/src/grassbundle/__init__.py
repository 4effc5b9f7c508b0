"""grassbundle: Grassmann manifolds and the Grassmann-bundle formulation of
cross-layer low-rank compression.

Points of Gr(p, n) are ``n x p`` orthonormal bases with optional leading batch
axes ``(..., n, p)``.  The maths runs in float64 whatever the input dtype.
"""

from __future__ import annotations

from .allocation import Allocation, activation_spectrum, allocate_ranks, factor_cost
from .angles import principal_angles
from .baselines import InputSharing, basis_sharing_input
from .bundle import (
    BundleProblem,
    PhaseDiagram,
    Section,
    anchor_section,
    evaluate_section,
    group_index,
    l2_core,
    phase_diagram,
    shared_output_basis,
    solve,
)
from .coupling import CoupledSection, solve_coupled, solve_trust_regions
from .distances import (
    binet_cauchy_dist,
    chordal_dist,
    dist,
    fubini_study_dist,
    procrustes_dist,
    projection_dist,
)
from .factorise import (
    FACTORISERS,
    Factorisation,
    Factoriser,
    ReconstructionErrors,
    factorise,
    reconstruction_errors,
    register_factoriser,
)
from .grassmann import (
    as_point,
    exp,
    geodesic,
    log,
    parallel_transport,
    project_tangent,
    projector,
    random_point,
    retraction,
)
from .means import KarcherMeanResult, chordal_mean, karcher_mean
from .refit import (
    LowRankFit,
    ResidualFit,
    constrained_refit,
    constrained_refit_path,
    refit_left,
    residual_fit,
    svd_llm_update,
)
from .selection import Selection, activation_basis, removal_gradients, select_components

__version__ = "0.1.0"

__all__ = [
    "FACTORISERS",
    "Allocation",
    "BundleProblem",
    "CoupledSection",
    "Factorisation",
    "Factoriser",
    "InputSharing",
    "KarcherMeanResult",
    "LowRankFit",
    "PhaseDiagram",
    "ReconstructionErrors",
    "ResidualFit",
    "Section",
    "Selection",
    "__version__",
    "activation_basis",
    "activation_spectrum",
    "allocate_ranks",
    "anchor_section",
    "as_point",
    "basis_sharing_input",
    "binet_cauchy_dist",
    "chordal_dist",
    "chordal_mean",
    "constrained_refit",
    "constrained_refit_path",
    "dist",
    "evaluate_section",
    "exp",
    "factor_cost",
    "factorise",
    "fubini_study_dist",
    "geodesic",
    "group_index",
    "karcher_mean",
    "l2_core",
    "log",
    "parallel_transport",
    "phase_diagram",
    "principal_angles",
    "procrustes_dist",
    "project_tangent",
    "projection_dist",
    "projector",
    "random_point",
    "reconstruction_errors",
    "refit_left",
    "register_factoriser",
    "removal_gradients",
    "residual_fit",
    "retraction",
    "select_components",
    "shared_output_basis",
    "solve",
    "solve_coupled",
    "solve_trust_regions",
    "svd_llm_update",
]
