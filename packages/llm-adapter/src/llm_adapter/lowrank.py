"""The low-rank linear module that replaces a compressed map.

A compressed weight ``W' = L R`` (``L`` of shape ``(m, d)``, ``R`` of shape
``(d, n)``) is applied as ``y = L (R x) + b``: ``d (m + n)`` weights instead
of ``m n``.  For an output-side section ``W' = U (U^T W)``: ``L = U`` (the
basis, shared by a tied group) and ``R = U^T W``.  For input-side Basis
Sharing the shared factor is ``R``.

Tied layers hold the *same* ``nn.Parameter`` object as their shared factor,
so it exists once in memory, is counted once by ``model.parameters()``, and is
stored once by :func:`llm_adapter.save`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

__all__ = ["LowRankLinear", "count_unique_parameters", "effective_weights"]

Side = Literal["left", "right"]


class LowRankLinear(nn.Module):
    """``y = left @ (right @ x) + bias``.

    Parameters
    ----------
    left : torch.nn.Parameter, shape=[m, d]
    right : torch.nn.Parameter, shape=[d, n]
    bias : torch.nn.Parameter, shape=[m], optional
    shared : {"left", "right"} or None
        Which factor is (or may be) shared across a tied group; recorded so
        that a reloaded model rebuilds the tying.
    """

    def __init__(
        self,
        left: nn.Parameter,
        right: nn.Parameter,
        bias: nn.Parameter | None = None,
        shared: Side | None = None,
    ) -> None:
        super().__init__()
        if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
            raise ValueError(
                f"factors must have shapes (m, d) and (d, n); got {tuple(left.shape)} "
                f"and {tuple(right.shape)}"
            )
        if bias is not None and bias.shape != (left.shape[0],):
            raise ValueError(f"bias must have shape ({left.shape[0]},); got {tuple(bias.shape)}")
        self.left = left
        self.right = right
        self.bias = bias
        self.shared = shared

    @property
    def in_features(self) -> int:
        return int(self.right.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.left.shape[0])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @classmethod
    def empty(
        cls,
        out_features: int,
        in_features: int,
        rank: int,
        *,
        bias: bool,
        shared: Side | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LowRankLinear:
        """A module with uninitialised factors of the given shapes (to load into)."""
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        return cls(
            nn.Parameter(torch.empty(out_features, rank, **kw), requires_grad=False),
            nn.Parameter(torch.empty(rank, in_features, **kw), requires_grad=False),
            nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None,
            shared=shared,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.right), self.left, self.bias)

    def weight(self) -> torch.Tensor:
        """The dense ``(m, n)`` weight ``left @ right`` (for checks; not used in forward)."""
        return self.left @ self.right

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}, shared={self.shared}"
        )


def count_unique_parameters(module: nn.Module) -> int:
    """Number of parameter entries, each shared tensor counted once.

    Parameters
    ----------
    module : torch.nn.Module
        Any module; tied low-rank groups hold the same ``nn.Parameter``.

    Returns
    -------
    int
        The sum of ``numel()`` over distinct parameter objects (module's
        ``parameters()`` already yields each object once; the explicit set
        keeps the count right for callers that pass a module whose parameters
        are registered under several names).
    """
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def effective_weights(model: nn.Module, family: str) -> NDArray[np.float64]:
    """The maps of a family as dense float64 weights, low-rank ones multiplied out.

    Parameters
    ----------
    model : torch.nn.Module
    family : str

    Returns
    -------
    ndarray, shape=[L, m, n]
        ``W'_l = left @ right`` for :class:`LowRankLinear` layers, the weight
        of the others; on the CPU.
    """
    from .models import family_modules  # a lazy import: models is the layer below

    mats = []
    for module in family_modules(model, family):
        weight = (
            module.weight() if isinstance(module, LowRankLinear) else module.get_parameter("weight")
        )
        mats.append(weight.detach().to(device="cpu", dtype=torch.float64).numpy())
    return np.stack(mats)
