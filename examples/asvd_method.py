"""
Adding a compression method: activation-scaled SVD
===================================================

The worked example of ``docs/architecture.rst`` ("Adding a method"): a whole
new method in this one file, and one line that registers it.

ASVD-style scaling: each input channel ``j`` of ``W_l`` is weighted by its
calibration root mean square ``s_j = sqrt(C_l[j, j])``, and the kept basis is
the top-``d`` left singular vectors ``U_l`` of ``W_l diag(s)``; the layer
becomes ``W'_l = U_l (U_l^T W_l)``, the output-side layout every method but
Basis Sharing writes back (one shared factor per layer, untied).

Two registrations make it a method everywhere (``compress``, sweeps, reports,
manifests, the contract tests of ``tests/llm_adapter/test_method_contract.py``):

* :func:`grassbundle.register_factoriser` adds the mathematics to
  :func:`grassbundle.factorise` (``factorise(W, C, "asvd", d)``);
* :func:`llm_adapter.methods.register_method` adds the adapter's entry: its
  label, that it needs calibration, its parameters (none beyond the rank),
  the factoriser it calls; and gives it its parameter dataclass,
  ``METHOD.Params`` (here ``AsvdParams``, with no field).

To ship it, put this file in ``llm_adapter`` and import it at the end of
``llm_adapter/methods.py`` (the registration line)::

    from . import asvd  # noqa: E402,F401  (registers the method)

This script registers it at run time and compresses a random model with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grassbundle as gb
import numpy as np
from llm_adapter.methods import Method, register_method
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def asvd(
    W: F64, C: F64 | None, rank: int | None, ranks: Any, options: Mapping[str, Any]
) -> gb.Factorisation:
    """The factoriser: ``W`` (``L x m x n``) and ``C`` (``L x n x n``) checked by factorise."""
    assert C is not None and rank is not None  # needs_covariance, no per-layer ranks
    L, m, n = W.shape
    bases, own = [], []
    for l in range(L):
        scale = np.sqrt(np.clip(np.diag(C[l]), 0.0, None))
        U = np.linalg.svd(W[l] * scale, full_matrices=False)[0][:, :rank]
        bases.append(U)
        own.append(U.T @ W[l])
    errors = gb.reconstruction_errors(
        W, np.stack([b @ r for b, r in zip(bases, own, strict=True)]), C
    )
    return gb.Factorisation(
        method="asvd",
        side="left",  # the output-side basis is the shared factor (one per layer here)
        shared=tuple(bases),
        layer_factors=tuple(own),
        groups=np.arange(L, dtype=np.intp),
        ranks=np.full(L, rank, dtype=np.intp),
        frobenius_error=errors.frobenius_error,
        frobenius_fraction=errors.frobenius_fraction,
        activation_error=errors.activation_error,
        activation_fraction=errors.activation_fraction,
        params_kept=L * rank * (m + n),
        params_dense=L * m * n,
    )


FACTORISER = gb.Factoriser("asvd", {}, lambda options: True, asvd)
METHOD = Method(
    "asvd",
    "ASVD",
    (),  # no parameter beyond the rank or the budget
    "activation-scaled SVD: columns weighted by their calibration RMS",
    lambda params: True,  # needs the calibration covariances
    factoriser="asvd",
    marker="v",
)


def register() -> None:
    """The registration line(s): grassbundle's factoriser, then the adapter's method."""
    gb.register_factoriser(FACTORISER)
    register_method(METHOD)


if __name__ == "__main__":
    import llm_adapter as la
    import torch
    from llm_adapter.testing import random_neox

    register()
    print(METHOD.Params())  # AsvdParams(): no parameter beyond the rank or the budget
    model = random_neox(num_hidden_layers=2, seed=0)
    windows = torch.randint(
        0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0)
    )
    stats = la.calibrate(model, None, "attention.dense", token_windows=windows)
    report = la.compress_model(model, la.CompressionConfig("asvd", param_ratio=0.5), stats)
    print(report.summary_table())
