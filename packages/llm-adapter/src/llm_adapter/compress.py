"""Compression: extract a family's weights, call grassbundle, write low-rank modules back.

Methods (``CompressionConfig.method``):

``svd``
    Plain truncated SVD: the top-``d`` eigenspace of ``N_l = W_l W_l^T`` per
    layer (Eckart-Young), i.e. ``grassbundle.solve`` at ``lam = 0``, ``k = 1``
    with the weight metric.
``svd-llm``
    SVD-LLM: the anchor section, the top-``d`` eigenspace of
    ``M_l = W_l C_l W_l^T``, applied as ``P_U W_l`` (equal to SVD-LLM's whitened
    truncation, with no inverse of the whitening).
``basis-sharing``
    Basis Sharing as its authors build it: a shared *input-side* basis per
    group of ``group_size`` consecutive layers in the space whitened by the
    group's summed Gram (:func:`grassbundle.basis_sharing_input`).
``bundle``
    The Grassmann-bundle section ``grassbundle.solve(problem, lam, k)`` with
    ``metric`` ``weight`` or ``activation``; with ``coupling > 0`` the
    soft-tied section of ``grassbundle.coupling``.
``residual``
    Residual-aware sequential compression (:mod:`llm_adapter.sequential`):
    blocks in forward order, each map refit in closed form to reproduce the
    original output ``W x`` from the compressed model's input ``x_hat``
    (:func:`grassbundle.residual_fit`).

Options: ``update=True`` (``svd-llm`` only) adds SVD-LLM's second step, the
least-squares update of the left factor on the compressed model's inputs,
computed sequentially (:func:`grassbundle.svd_llm_update`). ``refit``
(``svd-llm`` only, with ``target``, ``mix``, ``ridge`` and ``gate``) refits
the left, right, both factors or the kept singular values of the truncation
sequentially, a ridge towards the unrefit factors chosen per map on held-out
calibration windows and the refit kept only where it lowers the held-out
output error (:func:`grassbundle.constrained_refit`). ``allocate``
(``svd-llm`` and ``residual``) replaces the uniform rank by per-layer ranks
that minimise the summed activation truncation energy (``"sum"``) or the
summed per-layer fractions (``"normalised"``) under the same parameter budget
as the uniform ranks (:func:`grassbundle.select_components`, over every layer
of every compressed family, ``m + n`` per kept rank and ``m n`` for a map kept
dense, which it may be); with ``bundle`` at the tied activation corner
(``metric="activation"``, ``lam = 0``) it allocates one rank per tied group,
minimising the corner's own objective (see :func:`layer_ranks`).
The loss-aware allocations (``svd-llm`` without ``update``: ``"fisher"``,
``"gradient"``, ``"sensitivity"``, ``"type"``) score SVD-LLM's components
of every map by the calibration loss (:mod:`llm_adapter.scoring`), choose
them under the uniform ranks' budget with
:func:`grassbundle.select_components`, and leave a map dense where that is
cheaper than its factors; ``select``, ``protect``, ``rank_floor`` and
``max_deviation`` shape that choice (:doc:`/theory/selection`).

Every output-side method writes ``W'_l = U_l (U_l^T W_l)``: factor ``U_l``
(``m x d``, one ``nn.Parameter`` per tied group) and ``U_l^T W_l``
(``d x n``), bias kept.

Rank: ``rank_ratio`` is ``d / D`` with ``D = m`` (the fiber dimension, the
output dimension of the map), ``d = floor(rank_ratio * D + 1/2)`` (round half
up).  ``param_ratio`` is the fraction of the family's weight entries kept
(biases are kept and not counted): SVD-LLM's ``d = floor(p m n / (m + n))``
for untied layers; for groups of ``k`` layers sharing one factor, the shared
factor is counted once: ``d = floor(p k m n / (m + k n))`` (shared ``U``) or
``floor(p k m n / (n + k m))`` (shared input-side basis).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from .calibrate import CalibrationStats
from .errors import AdapterError, ConfigurationError, mention
from .lowrank import LowRankLinear
from .methods import (
    DEFAULT_FAMILIES,
    DEFAULT_RANK_RATIO,
    ENERGY_ALLOCATIONS,
    GRADIENT_ALLOCATIONS,
    LOSS_AWARE,
    METHOD_TABLE,
    METHODS,
    METRICS,
    PARAMS,
    Method,
    MethodParams,
    check_params,
    split_families,
)
from .models import (
    family_module_names,
    family_modules,
    family_weights,
    get_arch,
    known_family_names,
    resolve_families,
    set_module,
)
from .provenance import package_versions

if TYPE_CHECKING:
    from grassbundle import Factorisation, ReconstructionErrors

    from .scoring import ComponentBases, GradientScores, SensitivityScores
    from .sequential import SequentialFit

__all__ = [
    "METHODS",
    "METRICS",
    "CompressionConfig",
    "CompressionReport",
    "FamilyReport",
    "check_config",
    "compress_model",
    "rank_for",
    "refit_counts",
]

ALL_FAMILIES = known_family_names()  # every architecture's families, then neutral names


@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how.

    Parameters
    ----------
    method : {"svd", "svd-llm", "basis-sharing", "bundle"}
    rank_ratio : float, default 0.25
        ``d / D`` in (0, 1); ignored when ``param_ratio`` is given.
    param_ratio : float, optional
        Fraction of the family's weight entries kept, in (0, 1).
    families : tuple of str or "all", default ("attention.dense",)
    lam : float, default 0.0
        Anchor strength of the bundle (``inf`` allowed).
    tying : int, default 1
        Section-tying degree ``k`` of the bundle (consecutive groups).
    metric : {"weight", "activation"}, default "weight"
        The bundle's energy.
    coupling : float, default 0.0
        Soft coupling ``mu`` of adjacent layers (bundle only, untied).
    group_size : int, default 2
        Layers per group for ``basis-sharing``.
    update : bool, default False
        ``svd-llm`` only: SVD-LLM's second step (sequential least-squares
        update of the left factor); needs calibration windows.
    allocate : {"none", "sum", "normalised", "fisher", "gradient", "type", "sensitivity"}
        ``svd-llm`` and ``residual``: per-layer ranks under the uniform ranks'
        parameter budget; ``bundle`` (tied activation corner only): one rank
        per tied group under that budget.  The loss-aware allocations
        (``svd-llm`` without ``update``) choose components globally under
        that budget and may keep maps dense (see the module docstring).
    select : {"rank", "components"}, default "rank"
        Loss-aware allocations: keep each map's top components at the chosen
        rank, or its highest-scoring components.
    protect : int, default 0
        Loss-aware allocations: the first and last ``protect`` layers of
        every family stay dense.
    rank_floor : float, default 0.0
        Loss-aware allocations: smallest factored rank, as a fraction of the
        map's break-even rank ``m n / (m + n)``.
    probe_windows : int, default 2
        ``allocate="sensitivity"``: calibration windows each probe evaluates.
    stages : int, default 1
        ``allocate="fisher"`` or ``"gradient"`` with ``select="rank"``: the
        budget is reached in this many stages (equal steps of parameters
        from the dense model's), the gradient scores taken again on the model
        the previous stage compressed; a map's rank never grows back.
    max_deviation : float, default inf
        Loss-aware allocations: each map keeps a fraction of its parameters
        within this distance of the uniform fraction (dense only where the
        bound reaches 1).
    refit : {"none", "left", "right", "both", "sigma"}, default "none"
        ``svd-llm`` only: refit factors of SVD-LLM's truncation block by block
        on the compressed model's inputs (:func:`grassbundle.constrained_refit`,
        :mod:`llm_adapter.sequential`); needs calibration windows.
    target : {"output", "local", "joint"}, default "output"
        With ``refit``: the output fitted.
    mix : float, default 0.5
        With ``refit`` and ``target="joint"``: weight of the original inputs.
    ridge : float or "auto", default "auto"
        With ``refit``: the ridge towards the unrefit factors (relative to
        the mean input variance), or chosen per map on held-out windows.
    gate : {"heldout", "off"}, default "heldout"
        With ``refit``: keep a map's refit only where it lowers the held-out
        output error, or always.

    Every method parameter is checked by :func:`llm_adapter.methods.check_params`
    (the method table): a parameter the method does not take must keep its default.
    :attr:`method_params` gives the method's own parameters as its dataclass
    (:attr:`llm_adapter.methods.Method.Params`).
    """

    method: str = "svd-llm"
    rank_ratio: float = DEFAULT_RANK_RATIO
    param_ratio: float | None = None
    families: tuple[str, ...] | str = DEFAULT_FAMILIES
    lam: float = 0.0
    tying: int = 1
    metric: str = "weight"
    coupling: float = 0.0
    group_size: int = 2
    update: bool = False
    allocate: str = "none"
    select: str = "rank"
    protect: int = 0
    rank_floor: float = 0.0
    max_deviation: float = math.inf
    probe_windows: int = 2
    stages: int = 1
    refit: str = "none"
    target: str = "output"
    mix: float = 0.5
    ridge: float | str = "auto"
    gate: str = "heldout"

    def __post_init__(self) -> None:
        given = {key: getattr(self, key) for key in PARAMS}
        for key, value in check_params(self.method, given).items():
            object.__setattr__(self, key, value)
        if self.param_ratio is None:
            if not (isinstance(self.rank_ratio, int | float) and 0 < self.rank_ratio < 1):
                raise ConfigurationError(
                    f"rank ratio must be in (0, 1); got {mention('rank_ratio', self.rank_ratio)}",
                    key="rank_ratio",
                    value=self.rank_ratio,
                    reason="must be in (0, 1)",
                )
        elif not (isinstance(self.param_ratio, int | float) and 0 < self.param_ratio < 1):
            raise ConfigurationError(
                "parameter ratio must be in (0, 1); got "
                f"{mention('param_ratio', self.param_ratio)}",
                key="param_ratio",
                value=self.param_ratio,
                reason="must be in (0, 1)",
            )
        object.__setattr__(self, "families", split_families(self.families))
        for f in self.families:
            if f != "all" and f not in ALL_FAMILIES:
                raise ConfigurationError(
                    f"unknown family {f!r}; valid families: {', '.join(ALL_FAMILIES)} (or 'all')",
                    key="families",
                    value=f,
                    reason="not a family of any known architecture",
                )
        if not len(self.families):
            raise ConfigurationError(
                f"no family given; valid families: {', '.join(ALL_FAMILIES)} (or 'all')",
                key="families",
                value=self.families,
                reason="names no family",
            )

    @property
    def entry(self) -> Method:
        """The method's entry of :data:`llm_adapter.methods.METHOD_TABLE`."""
        return METHOD_TABLE[self.method]

    @property
    def params(self) -> dict[str, Any]:
        """Every method parameter's value (the keys of :data:`llm_adapter.methods.PARAMS`)."""
        return {key: getattr(self, key) for key in PARAMS}

    @property
    def method_params(self) -> MethodParams:
        """The method's own parameters: an instance of its dataclass (``entry.Params``,
        e.g. ``SvdLlmParams``), the parameters it does not take left out."""
        return self.entry.Params(**{key: getattr(self, key) for key in self.entry.params})

    @property
    def needs_calibration(self) -> bool:
        """Whether the method needs the covariances ``C_l`` (``svd`` does not)."""
        return self.entry.needs_calibration(self.params)

    @property
    def sequential(self) -> bool:
        """Whether the method fits block by block on calibration windows."""
        return self.entry.sequential(self.params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, param in PARAMS.items():
            if param.optional and d[key] == param.default:
                del d[key]  # manifests of methods without them read as before
        d["families"] = list(self.families)
        d["lam"] = "inf" if math.isinf(self.lam) else self.lam
        return d


@dataclass
class FamilyReport:
    """What happened to one family.

    Errors are per layer: ``frobenius_error[l] = ||W_l - W'_l||_F^2`` and
    ``activation_error[l] = tr((W_l - W'_l) C_l (W_l - W'_l)^T)`` (absolute
    energies, as grassbundle computes them), and their fractions of
    ``||W_l||_F^2`` and ``tr(W_l C_l W_l^T)``.

    Attributes
    ----------
    family : str
        Family name, e.g. ``"attention.dense"``.
    layers : int
        Number of layers L in the family.
    m, n : int
        Output and input dimension of each map (``W_l`` is ``m x n``).
    rank : int
        The rank d kept.
    D : int
        The fiber dimension the rank ratio refers to (``m``).
    rank_ratio : float
        ``d / D``.
    shared : str
        ``"left"`` (the output-side basis U is shared by a tied group) or
        ``"right"`` (input-side basis, Basis Sharing as its authors build it).
    groups : list of int
        Layer-to-group map (tying groups).
    params_dense : int
        Parameters of the family's dense weights.
    params_kept : int
        Parameters of the factors, shared bases counted once.
    param_ratio : float
        ``params_kept / params_dense``.
    frobenius_error : list of float
        Per layer ``||W_l - W'_l||_F^2``.
    frobenius_fraction : list of float
        Per layer ``||W_l - W'_l||_F^2 / ||W_l||_F^2``.
    activation_error : list of float or None
        Per layer ``tr((W_l - W'_l) C_l (W_l - W'_l)^T)``; None without calibration.
    activation_fraction : list of float or None
        Per layer activation error over ``tr(W_l C_l W_l^T)``.
    modules : list of str
        Qualified names of the replaced modules.
    seconds_factorise : float
        Wall time of the factorisation.
    seconds_write_back : float
        Wall time of the write-back.
    ranks : list of int or None
        Per-layer ranks where they differ between layers (``allocate``); then
        ``rank`` is the largest.
    dense : list of bool or None
        Layers left dense by an allocation (their ``ranks`` entry is ``min(m,
        n)`` and their errors are 0); None when every layer is factored.
    refit_ridge : list of (float or None) or None
        With ``refit``: per layer, the relative ridge of the refit (chosen on
        held-out windows with ``ridge="auto"``; None for a layer left dense);
        None without a refit.
    refit_kept : list of bool or None
        With ``refit``: per layer, whether the refit was kept (the gate);
        None without a refit.
    """

    family: str
    layers: int
    m: int
    n: int
    rank: int
    D: int
    rank_ratio: float
    shared: str  # "left" (output-side basis U) or "right" (input-side basis)
    groups: list[int]
    params_dense: int
    params_kept: int
    param_ratio: float
    frobenius_error: list[float]
    frobenius_fraction: list[float]
    activation_error: list[float] | None
    activation_fraction: list[float] | None
    modules: list[str] = field(default_factory=list)
    seconds_factorise: float = 0.0
    seconds_write_back: float = 0.0
    ranks: list[int] | None = None
    dense: list[bool] | None = None
    refit_ridge: list[float | None] | None = None
    refit_kept: list[bool] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # optional fields, absent when unused: manifests without them read as before
        for key in ("ranks", "dense", "refit_ridge", "refit_kept"):
            if d[key] is None:
                del d[key]
        return d


@dataclass
class CompressionReport:
    """Result of :func:`compress_model`; ``to_dict`` is the ``compression.json`` body.

    Attributes
    ----------
    method : str
        The compression method.
    config : dict
        The :class:`CompressionConfig` as a dictionary.
    families : dict of str to FamilyReport
        One report per compressed family.
    calibration : dict or None
        The calibration protocol (text, samples, sequence length, seed, tokens).
    timings : dict of str to float
        Seconds spent in calibration, factorisation and write-back.
    versions : dict of str to str
        Versions of the packages involved.
    model : str
        The model name or path.
    """

    method: str
    config: dict[str, Any]
    families: dict[str, FamilyReport]
    calibration: dict[str, Any] | None
    timings: dict[str, float]
    versions: dict[str, str]
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": self.config,
            "model": self.model,
            "families": {k: v.to_dict() for k, v in self.families.items()},
            "calibration": self.calibration,
            "timings": self.timings,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionReport:
        return cls(
            method=data["method"],
            config=data["config"],
            families={k: FamilyReport(**v) for k, v in data["families"].items()},
            calibration=data.get("calibration"),
            timings=data.get("timings", {}),
            versions=data.get("versions", {}),
            model=data.get("model", ""),
        )

    def summary_table(self) -> str:
        """One row per family: rank, d/D, parameters kept, mean error fractions."""
        head = (
            f"{'family':<28} {'rank':>5} {'d/D':>6} {'params kept':>19} "
            f"{'frob err':>9} {'act err':>9}"
        )
        lines = [
            f"method {self.method}  ({json.dumps(_short_config(self.config))})",
            head,
            "-" * len(head),
        ]
        for r in self.families.values():
            act = (
                f"{np.mean(r.activation_fraction):9.4f}"
                if r.activation_fraction is not None
                else f"{'-':>9}"
            )
            kept = f"{r.params_kept}/{r.params_dense} ({r.param_ratio:.3f})"
            lines.append(
                f"{r.family:<28} {r.rank:>5} {r.rank_ratio:>6.3f} {kept:>19} "
                f"{np.mean(r.frobenius_fraction):9.4f} {act}"
            )
        n_kept, factored, dense = refit_counts(
            (r.refit_kept or [], r.refit_ridge) for r in self.families.values()
        )
        if factored or dense:
            lines.append(
                f"refit kept by {n_kept} of {factored} factored maps (lower held-out "
                "output error)" + (f"; {dense} kept dense, nothing to refit" if dense else "")
            )
        lines.append(
            "errors: mean over layers of ||W-W'||_F^2/||W||_F^2 (frob) and "
            "tr((W-W')C(W-W')^T)/tr(WCW^T) (act)"
        )
        return "\n".join(lines)


def _short_config(config: dict[str, Any]) -> dict[str, Any]:
    entry = METHOD_TABLE.get(str(config.get("method")))
    keep = ["rank_ratio"] if config.get("param_ratio") is None else ["param_ratio"]
    if entry is not None:
        keep += list(entry.options)
    return {k: config[k] for k in keep if k in config}


def refit_counts(
    families: Iterable[tuple[Sequence[bool], Sequence[float | None] | None]],
) -> tuple[int, int, int]:
    """How many maps kept their refit, how many were factored, how many kept dense.

    Parameters
    ----------
    families : iterable of (sequence of bool, sequence of float or None, or None)
        Per family, the per-layer gate (``refit_kept``) and chosen ridge
        (``refit_ridge``; None for the whole family when not recorded).  A
        layer whose ridge is None was kept dense by the allocation: it had
        nothing to refit, so it counts as dense, not as a refit the gate dropped.

    Returns
    -------
    tuple of int
        ``(kept, factored, dense)``.
    """
    kept = factored = dense = 0
    for gates, ridges in families:
        for gate, ridge in zip(gates, ridges or [0.0] * len(gates), strict=True):
            if ridge is None:
                dense += 1
            else:
                factored += 1
                kept += bool(gate)
    return kept, factored, dense


def rank_for(config: CompressionConfig, m: int, n: int, layers: int) -> int:
    """The rank ``d`` for a family of ``layers`` maps of shape ``(m, n)`` (see module doc).

    Parameters
    ----------
    config : CompressionConfig
    m, n : int
        Output and input dimension of the maps.
    layers : int
        Number of layers ``L`` (caps the group size).

    Returns
    -------
    int
        ``d`` with ``1 <= d < D = m``.
    """
    D = m
    if config.param_ratio is None:
        d = math.floor(config.rank_ratio * D + 0.5)
        key, value = "rank_ratio", config.rank_ratio
    else:
        # the shared factor of a group counted once (Method.rank_for_params)
        d, D = config.entry.rank_for_params(config.param_ratio, m, n, layers, config.params)
        key, value = "param_ratio", config.param_ratio
    if d <= 0 or d >= D:
        raise ConfigurationError(
            f"{mention(key, value)} gives rank d = {d} for maps of shape {m}x{n}; "
            f"need 1 <= d < D = {D}",
            key=key,
            value=value,
            reason=f"gives rank d = {d} for maps of shape {m}x{n}; need 1 <= d < D = {D}",
        )
    return d


def _factorise(
    config: CompressionConfig,
    family: str,
    W: NDArray[np.float64],
    C: NDArray[np.float64] | None,
    d: int | None,
    ranks: Sequence[int] | None = None,
) -> Factorisation:
    """The family's factorisation by ``config.method`` (all maths in grassbundle).

    At rank ``d``, or with per-layer ``ranks`` (SVD-LLM's truncation layer by
    layer, the allocated case).
    """
    import grassbundle as gb

    entry = config.entry
    assert entry.factoriser is not None, f"{entry.name} has no factoriser"
    options = entry.factorise_options(config.params)
    if ranks is not None:
        options["ranks"] = ranks
    try:
        return gb.factorise(W, C, entry.factoriser, d, **options)
    except ValueError as exc:
        raise AdapterError(f"grassbundle rejected the factorisation of {family}: {exc}") from None


def _write_back(model: nn.Module, family: str, fact: Factorisation) -> list[str]:
    """Replace the family's modules by :class:`LowRankLinear` (one parameter per shared factor).

    Returns the qualified names of the replaced modules.
    """
    from .sequential import as_parameter

    names = family_module_names(model, family)
    shared: dict[int, nn.Parameter] = {}
    for l, (name, old) in enumerate(zip(names, family_modules(model, family), strict=True)):
        assert isinstance(old, nn.Linear)
        g = int(fact.groups[l])
        if g not in shared:
            shared[g] = as_parameter(fact.shared[g], old.weight)
        own = as_parameter(fact.layer_factors[l], old.weight)
        left, right = (shared[g], own) if fact.side == "left" else (own, shared[g])
        set_module(model, name, LowRankLinear(left, right, old.bias, shared=fact.side))
    return names


def _family_report(
    family: str,
    shape: tuple[int, ...],
    modules: list[str],
    *,
    shared: str,
    groups: Sequence[int],
    ranks: Sequence[int],
    params_kept: int,
    errors: Factorisation | SequentialFit | ReconstructionErrors,
) -> FamilyReport:
    """A :class:`FamilyReport` from the factor layout and grassbundle's per-layer errors."""
    L, m, n = shape
    d = int(max(ranks))
    return FamilyReport(
        family=family, layers=L, m=m, n=n, rank=d, D=m, rank_ratio=d / m, shared=shared,
        groups=[int(g) for g in groups], params_dense=L * m * n, params_kept=int(params_kept),
        param_ratio=params_kept / (L * m * n),
        frobenius_error=[float(x) for x in errors.frobenius_error],
        frobenius_fraction=[float(x) for x in errors.frobenius_fraction],
        activation_error=_floats(errors.activation_error),
        activation_fraction=_floats(errors.activation_fraction),
        modules=modules,
        ranks=[int(r) for r in ranks] if len(set(ranks)) > 1 else None,
    )  # fmt: skip


def _report_of(family: str, fact: Factorisation, modules: list[str]) -> FamilyReport:
    L = len(fact.layer_factors)
    m, n = fact.left(0).shape[0], fact.right(0).shape[1]
    return _family_report(
        family, (L, m, n), modules, shared=fact.side, groups=fact.groups.tolist(),
        ranks=fact.ranks.tolist(), params_kept=fact.params_kept, errors=fact,
    )  # fmt: skip


def check_config(
    model: nn.Module, config: CompressionConfig, families: Sequence[str]
) -> dict[str, int]:
    """Check ``config`` against the model's families before any work; return the ranks.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    config : CompressionConfig
    families : sequence of str
        Validated family names.

    Returns
    -------
    dict of str to int
        The rank ``d`` of each family.

    Raises
    ------
    AdapterError
        For a tying degree or group size above the number of layers, a rank
        out of range, or a family already compressed.
    """
    ranks = {}
    for family in families:
        modules = family_modules(model, family)
        L = len(modules)
        first = modules[0]
        if not isinstance(first, nn.Linear):
            raise AdapterError(
                f"{family} is {type(first).__name__}, not a dense nn.Linear (already "
                "compressed?); load the uncompressed model"
            )
        m, n = first.out_features, first.in_features
        group = config.entry.group
        if group is not None and getattr(config, group) > L:
            raise ConfigurationError(
                f"{PARAMS[group].what} {getattr(config, group)} exceeds the number of layers "
                f"L = {L}; use {mention(group)} <= {L}",
                key=group,
                value=getattr(config, group),
                reason=f"exceeds the number of layers L = {L}",
            )
        d = rank_for(config, m, n, L)
        if d > n:  # W_l has rank <= n: a larger d has no unique best subspace
            raise AdapterError(
                f"rank d = {d} exceeds the input dimension n = {n} of {family} ({m}x{n}): "
                "a rank-d factorisation needs d <= n; use a smaller ratio"
            )
        ranks[family] = d
    return ranks


def layer_ranks(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    ranks: dict[str, int],
    stats: CalibrationStats,
) -> dict[str, list[int]]:
    """Per-layer ranks: uniform, or allocated under the uniform ranks' parameter budget.

    Untied, the units of :func:`grassbundle.select_components` (rank mode)
    are the layers of every family: cost ``m + n`` per rank, the spectrum
    of ``M_l = W_l C_l W_l^T`` as the components' energies (divided by its
    trace for ``"normalised"``), and ``m n`` for a layer kept dense, whose
    rank is then ``min(m, n)`` (the sequential fits leave such a layer as
    it is).  For the bundle's tied activation corner the units of
    :func:`grassbundle.allocate_ranks` are the groups of
    ``k`` consecutive layers (cost ``m + k n``, the spectrum of ``sum_{l in
    g} omega_l M_l`` with the bundle's ``omega_l = 1 / ||W_l||_F^2``, so
    that ``"sum"`` minimises the corner's own objective); all from
    :func:`grassbundle.activation_spectrum`.  Ranks stay within the maps'
    dimensions and below the break-even where the factors stop saving
    parameters.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    config : CompressionConfig
    families : sequence of str
    ranks : dict of str to int
        The uniform rank of each family (from :func:`check_config`).
    stats : CalibrationStats

    Returns
    -------
    dict of str to list of int
        One rank per layer (equal within a tied group).
    """
    import grassbundle as gb

    shapes = {f: family_weights(model, f) for f in families}
    if config.allocate == "none":
        return {f: [ranks[f]] * shapes[f].shape[0] for f in families}
    tied = config.entry.allocates_groups
    if not tied:
        return _untied_energy_ranks(model, config, families, ranks, stats, shapes)
    spectra, costs, caps, owners = [], [], [], []
    budget = 0
    for f in families:
        W = shapes[f]
        C = stats.covariance(f)
        L, m, n = W.shape
        k = config.entry.group_layers(config.params, L) if tied else 1
        for s in range(0, L, k):
            g = slice(s, min(s + k, L))
            kg = g.stop - s
            budget += ranks[f] * (m + kg * n)
            omega = "frobenius" if tied else None
            spectra.append(gb.activation_spectrum(W[g], C[g], omega=omega))
            costs.append(gb.factor_cost(m, n, kg))
            top = min(m - 1, kg * n) if tied else min(m, n)
            caps.append(max(1, min(top, (kg * m * n - 1) // (m + kg * n))))
            owners.append((f, kg))
    try:
        alloc = gb.allocate_ranks(
            spectra, costs, budget, normalise=config.allocate == "normalised", max_rank=caps
        )
    except ValueError as exc:
        raise AdapterError(f"rank allocation failed: {exc}") from None
    out: dict[str, list[int]] = {f: [] for f in families}
    for (f, kg), d in zip(owners, alloc.ranks, strict=True):
        out[f] += [int(d)] * kg
    return out


def _untied_energy_ranks(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    ranks: dict[str, int],
    stats: CalibrationStats,
    shapes: dict[str, NDArray[np.float64]],
) -> dict[str, list[int]]:
    """Per-layer ranks by activation energy, maps allowed to stay dense (rank ``min(m, n)``)."""
    import grassbundle as gb

    scores, costs, dense, owners = [], [], [], []
    budget = 0
    for f in families:
        W, C = shapes[f], stats.covariance(f)
        L, m, n = W.shape
        budget += L * ranks[f] * (m + n)
        for l in range(L):
            mu = gb.activation_spectrum(W[l], C[l])[: min(m, n)]  # descending, >= 0
            if config.allocate == "normalised" and mu.sum() > 0:
                mu = mu / mu.sum()
            scores.append(mu)
            costs.append(m + n)
            dense.append(m * n)
            owners.append((f, min(m, n)))
    try:
        sel = gb.select_components(scores, costs, budget, dense_costs=dense, mode="rank")
    except ValueError as exc:
        raise AdapterError(f"rank allocation failed: {exc}") from None
    out: dict[str, list[int]] = {f: [] for f in families}
    for (f, full), K in zip(owners, sel.kept, strict=True):
        out[f].append(full if K is None else int(K.size))
    return out


def _per_layer_families(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    ranks: dict[str, int],
    stats: CalibrationStats,
    windows: torch.Tensor | None,
    progress: bool,
) -> dict[str, FamilyReport]:
    """Factorisations with per-layer ranks: allocated (SVD-LLM's truncation per layer, or the
    bundle's tied corner per group) and/or sequential."""
    per_layer = layer_ranks(model, config, families, ranks, stats)
    reports = {}
    if not config.sequential:  # one factorisation per family, at the allocated ranks
        for f in families:
            W, C = family_weights(model, f), stats.covariance(f)
            fact = _factorise(config, f, W, C, None, ranks=per_layer[f])
            reports[f] = _report_of(f, fact, _write_back(model, f, fact))
        return reports
    return _sequential_families(model, config, families, per_layer, windows, progress)


def _sequential_families(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    per_layer: dict[str, list[int]],
    windows: torch.Tensor | None,
    progress: bool,
) -> dict[str, FamilyReport]:
    """The sequential fits (residual, SVD-LLM's update, the refits) at the given per-layer
    ranks, block by block; a layer of rank ``min(m, n)`` is left dense."""
    from .sequential import compress_sequential

    assert windows is not None
    names = {f: family_module_names(model, f) for f in families}
    shapes = {}
    for f in families:
        first = family_modules(model, f)[0]
        assert isinstance(first, nn.Linear)
        shapes[f] = (len(names[f]), first.out_features, first.in_features)
    fit = config.entry.fit(config.params)
    assert fit is not None
    refit = None
    if fit == "refit":
        p = config.method_params  # svd-llm's: the refit is its own
        refit = {"target": p.target, "mix": p.mix, "ridge": p.ridge, "gate": p.gate,
                 "factor": p.refit}  # fmt: skip
    fits = compress_sequential(
        model, list(families), per_layer, windows, fit=fit, refit=refit, progress=progress,
    )  # fmt: skip
    reports = {}
    for f in families:  # untied: every layer stores its own m x d_l and d_l x n factors
        L, m, n = shapes[f]
        dense = [d >= min(m, n) for d in fits[f].ranks]  # left as they were
        params = sum(m * n if k else d * (m + n) for d, k in zip(fits[f].ranks, dense, strict=True))
        replaced = [name for name, k in zip(names[f], dense, strict=True) if not k]
        reports[f] = _family_report(
            f, shapes[f], replaced, shared="left", groups=range(L), ranks=fits[f].ranks,
            params_kept=params, errors=fits[f],
        )  # fmt: skip
        if reports[f].ranks is None and len(set(fits[f].ranks)) == 1 and any(dense):
            reports[f].ranks = list(fits[f].ranks)
        reports[f].dense = dense if any(dense) else None
        reports[f].refit_ridge = fits[f].refit_ridge
        reports[f].refit_kept = fits[f].refit_kept
    return reports


def _unit_scores(
    config: CompressionConfig,
    bases: ComponentBases,
    scores: GradientScores | None,
    family: str,
    layer: int,
    sensitivity: SensitivityScores | None = None,
) -> NDArray[np.float64]:
    """The loss increase of removing each component of one map, by ``config.allocate``."""
    if config.allocate == "fisher":
        assert scores is not None
        return 0.5 * scores.second[family][layer]  # the empirical Fisher's diagonal term
    if config.allocate == "gradient":
        assert scores is not None
        return np.abs(scores.first[family][layer])
    if config.allocate == "sensitivity":
        from .scoring import sensitivity_component_scores

        assert sensitivity is not None
        R = bases.energies[family][layer].size
        return sensitivity_component_scores(
            sensitivity.losses[family][layer], sensitivity.ranks[family], R
        )
    energies = bases.energies[family][layer]
    if config.allocate == "normalised":  # the unit's relative truncation energy
        total = float(energies.sum())
        return energies / total if total > 0 else energies
    return energies  # "sum" and "type" (the latter compared within a family only)


def selects_components(config: CompressionConfig) -> bool:
    """Whether ``config``'s allocation runs through :func:`grassbundle.select_components`.

    Every loss-aware allocation does, and the energy allocations (``"sum"``,
    ``"normalised"``) of a method that selects SVD-LLM's components (one that
    accepts the loss-aware allocations) without a sequential step: one
    budget over every map, ``m + n`` per kept component, ``m n`` for a map
    kept dense.
    """
    if config.allocate in LOSS_AWARE:
        return True
    return (
        config.allocate in ENERGY_ALLOCATIONS
        and set(LOSS_AWARE) <= set(config.entry.allocations)
        and not config.sequential
    )


def _staged_selection(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    stats: CalibrationStats,
    bases: ComponentBases,
    windows: torch.Tensor | None,
    progress: bool,
    plan: list[tuple[str, int]],
    args: dict[str, list[Any]],
    target: int,
    weights: dict[str, NDArray[np.float64]],
) -> dict[tuple[str, int], NDArray[np.intp] | None]:
    """Zero Sum SVD's schedule: ``config.stages`` selections at budgets stepping from the
    dense model's parameters down to ``target``, each on gradient scores taken at the model
    the previous stage left (its maps projected on their kept components, in place), each
    map's rank capped at its previous one and a map once factored never dense again.  The
    model's original weights are put back at the end, so that the write-back and the
    sequential fits start from them."""
    import grassbundle as gb

    from .scoring import gradient_scores

    stages = int(config.method_params.stages)
    dense_total = int(sum(args["dense"]))
    hi = list(args["hi"])
    may_be_dense = [True] * len(plan)
    scores = list(args["scores"])
    modules = {f: family_modules(model, f) for f in families}
    kept: dict[tuple[str, int], NDArray[np.intp] | None] = {}
    for s in range(1, stages + 1):
        step = dense_total - (dense_total - target) * s // stages
        budget = target if s == stages else max(target, step)
        try:
            sel = gb.select_components(
                scores, args["costs"], budget,
                dense_costs=[d if ok else None
                             for d, ok in zip(args["dense"], may_be_dense, strict=True)],
                mode="rank", min_rank=[min(lo, h) for lo, h in zip(args["lo"], hi, strict=True)],
                max_rank=hi, force_dense=args["force"],
            )  # fmt: skip
        except ValueError as exc:
            raise AdapterError(f"loss-aware allocation failed at stage {s}: {exc}") from None
        kept = dict(zip(plan, sel.kept, strict=True))
        if s == stages:
            break
        for i, (f, l) in enumerate(plan):
            K = sel.kept[i]
            if K is None:
                continue
            hi[i], may_be_dense[i] = int(K.size), False
            U = bases.bases[f][l][:, K]
            projected = torch.from_numpy(U @ (U.T @ weights[f][l]))
            module = modules[f][l]
            assert isinstance(module, nn.Linear)
            with torch.no_grad():
                module.weight.copy_(projected.to(module.weight.dtype))
        again = gradient_scores(model, families, stats, bases, windows, progress=progress)
        scores = [_unit_scores(config, bases, again, f, l) for f, l in plan]
    for f, l in plan:  # the original weights back: the write-back and the fits start from them
        module = modules[f][l]
        assert isinstance(module, nn.Linear)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weights[f][l]).to(module.weight.dtype))
    return kept


def _loss_aware_families(
    model: nn.Module,
    config: CompressionConfig,
    families: Sequence[str],
    ranks: dict[str, int],
    stats: CalibrationStats,
    bases: ComponentBases | None,
    scores: GradientScores | None,
    windows: torch.Tensor | None,
    progress: bool,
    sensitivity: SensitivityScores | None = None,
) -> dict[str, FamilyReport]:
    """Loss-aware allocation: components chosen under the uniform ranks' budget, dense allowed.

    The units of :func:`grassbundle.select_components` are the layers of
    every family: SVD-LLM's components (:func:`llm_adapter.scoring.component_bases`)
    with the scores of ``config.allocate``, cost ``m + n`` per component and
    ``m n`` dense.  The budget is what the uniform ranks spend, over all
    families at once (``fisher``, ``gradient``, ``sensitivity``) or per
    family (``type``, whose energies are compared within one kind of map
    only).  Each factored
    map is written back as ``U_K (U_K^T W)``; dense maps stay ``nn.Linear``.
    With a sequential step (``update`` or ``refit``, ``select="rank"``) the
    selected ranks go to the sequential fits instead (SVD-LLM's truncation at
    that rank, then the update or refit, block by block; dense maps untouched).
    """
    import grassbundle as gb

    from .scoring import component_bases, gradient_scores, sensitivity_scores
    from .sequential import as_parameter

    params = config.method_params  # svd-llm's: the loss-aware allocations are its own
    if bases is None:
        bases = component_bases(model, families, stats)
    if config.allocate in GRADIENT_ALLOCATIONS and scores is None:
        scores = gradient_scores(model, families, stats, bases, windows, progress=progress)
    if config.allocate == "sensitivity" and sensitivity is None:
        probe = windows if windows is not None else stats.windows
        assert probe is not None
        sensitivity = sensitivity_scores(
            model, families, stats, bases, probe[: int(params.probe_windows)], progress=progress
        )
    weights = {f: family_weights(model, f) for f in families}
    plan: list[tuple[str, int]] = []
    args: dict[str, list[Any]] = {k: [] for k in ("scores", "costs", "dense", "lo", "hi", "force")}
    budgets: dict[str, int] = {}
    for f in families:
        L, m, n = weights[f].shape
        budgets[f] = L * ranks[f] * (m + n)
        even = m * n / (m + n)  # break-even rank: a map's kept fraction is rank / even
        uniform = ranks[f] / even
        delta = float(params.max_deviation)
        for l in range(L):
            s = _unit_scores(config, bases, scores, f, l, sensitivity)
            R = s.size
            lo = max(1, math.ceil(float(params.rank_floor) * even))
            if sensitivity is not None:  # the loss curve is measured from its first probe on
                lo = max(lo, int(sensitivity.ranks[f][0]))
            hi, dense = R, True
            if math.isfinite(delta):
                lo = max(lo, math.ceil((uniform - delta) * even))
                hi = min(R, math.floor((uniform + delta) * even))
                dense = uniform + delta >= 1.0
            protect = int(params.protect)
            forced = protect > 0 and (l < protect or l >= L - protect)
            if not forced and not dense and not 1 <= min(lo, R) <= hi:
                raise AdapterError(
                    f"the bounds leave {f} layer {l} no rank (from {lo} to {hi}): raise "
                    f"{mention('max_deviation', params.max_deviation)} or lower "
                    f"{mention('rank_floor')}"
                )
            plan.append((f, l))
            args["scores"].append(s)
            args["costs"].append(m + n)
            args["dense"].append(m * n)
            args["lo"].append(min(lo, R))
            args["hi"].append(max(min(lo, R), hi))
            args["force"].append(forced)
    global_ = config.allocate != "type"  # "type" compares energies within a family only
    groups = [list(families)] if global_ else [[f] for f in families]
    kept: dict[tuple[str, int], NDArray[np.intp] | None] = {}
    if int(params.stages) > 1:  # global, rank mode (the method table's checks)
        kept = _staged_selection(
            model, config, families, stats, bases, windows, progress, plan, args,
            sum(budgets.values()), weights,
        )  # fmt: skip
        groups = []
    for group in groups:
        idx = [i for i, (f, _) in enumerate(plan) if f in group]
        try:
            sel = gb.select_components(
                [args["scores"][i] for i in idx], [args["costs"][i] for i in idx],
                sum(budgets[f] for f in group), dense_costs=[args["dense"][i] for i in idx],
                mode="components" if params.select == "components" else "rank",
                min_rank=[args["lo"][i] for i in idx], max_rank=[args["hi"][i] for i in idx],
                force_dense=[args["force"][i] for i in idx],
            )  # fmt: skip
        except ValueError as exc:
            raise AdapterError(f"loss-aware allocation failed: {exc}") from None
        for i, K in zip(idx, sel.kept, strict=True):
            kept[plan[i]] = K
    if config.sequential:  # rank mode: K is the prefix of SVD-LLM's components
        per_layer = {
            f: [min(weights[f].shape[1:]) if kept[(f, l)] is None else int(kept[(f, l)].size)  # type: ignore[union-attr]
                for l in range(weights[f].shape[0])]
            for f in families
        }  # fmt: skip
        return _sequential_families(model, config, families, per_layer, windows, progress)
    reports = {}
    for f in families:
        W = weights[f]
        L, m, n = W.shape
        W_hat = W.copy()
        names = family_module_names(model, f)
        replaced, layer_ranks_, dense_ = [], [], []
        for l, (name, old) in enumerate(zip(names, family_modules(model, f), strict=True)):
            K = kept[(f, l)]
            if K is None:
                layer_ranks_.append(min(m, n))
                dense_.append(True)
                continue
            assert isinstance(old, nn.Linear)
            U = bases.bases[f][l][:, K]
            right = U.T @ W[l]
            W_hat[l] = U @ right
            left_p, right_p = as_parameter(U, old.weight), as_parameter(right, old.weight)
            set_module(model, name, LowRankLinear(left_p, right_p, old.bias, shared="left"))
            replaced.append(name)
            layer_ranks_.append(int(K.size))
            dense_.append(False)
        errors = gb.reconstruction_errors(W, W_hat, stats.covariance(f))
        params = sum(m * n if d else r * (m + n) for r, d in zip(layer_ranks_, dense_, strict=True))
        report = _family_report(
            f, (L, m, n), replaced, shared="left", groups=range(L), ranks=layer_ranks_,
            params_kept=params, errors=errors,
        )  # fmt: skip
        if report.ranks is None and len(set(layer_ranks_)) == 1:
            report.ranks = list(layer_ranks_)
        report.dense = dense_ if any(dense_) else None
        reports[f] = report
    return reports


def _floats(a: Sequence[float] | NDArray[np.float64] | None) -> list[float] | None:
    return None if a is None else [float(x) for x in a]


def compress_model(
    model: nn.Module,
    config: CompressionConfig,
    stats: CalibrationStats | None = None,
    *,
    progress: bool = False,
    windows: torch.Tensor | None = None,
    bases: ComponentBases | None = None,
    scores: GradientScores | None = None,
    sensitivity: SensitivityScores | None = None,
) -> CompressionReport:
    """Compress ``model`` in place and report what was done.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Dense (uncompressed) in the targeted families.
    config : CompressionConfig
    stats : CalibrationStats, optional
        Needed by every method but ``svd`` (and by the bundle at ``lam = 0``
        with the weight metric); with it, activation errors are reported for
        every method.
    progress : bool
        Show a tqdm progress bar over families.
    windows : torch.Tensor, shape=[N, T], optional
        The calibration token windows, for the sequential methods
        (``residual``, ``svd-llm`` with ``update``) and the gradient scores;
        default ``stats.windows``.
    bases : llm_adapter.scoring.ComponentBases, optional
        The loss-aware allocations' components (computed when not given;
        a sweep computes them once for all its points).
    scores : llm_adapter.scoring.GradientScores, optional
        The ``fisher`` and ``gradient`` allocations' scores (computed on
        ``windows`` when not given).
    sensitivity : llm_adapter.scoring.SensitivityScores, optional
        The ``sensitivity`` allocation's probes (computed on the first
        ``probe_windows`` of ``windows`` when not given).

    Returns
    -------
    CompressionReport
    """
    get_arch(model)
    families = resolve_families(model, config.families if config.families != ("all",) else "all")
    if config.needs_calibration and stats is None:
        raise AdapterError(
            f"method {config.method!r} needs calibration statistics: pass stats from "
            f"llm_adapter.calibrate (or {mention('calib_text')} / {mention('calib_dataset')})"
        )
    ranks = check_config(model, config, families)
    if windows is None and stats is not None:
        windows = stats.windows
    if config.sequential and windows is None:
        raise AdapterError(
            f"method {config.method!r}{' ' + mention('update') if config.update else ''} fits "
            "block by block on calibration windows: pass windows= (the CLI and sweeps do)"
        )
    reports: dict[str, FamilyReport] = {}
    t_fact = 0.0
    t_write = 0.0
    if selects_components(config):
        assert stats is not None
        t0 = time.perf_counter()
        reports = _loss_aware_families(
            model, config, families, ranks, stats, bases, scores, windows, progress, sensitivity
        )
        t_fact = time.perf_counter() - t0
    elif config.sequential or config.allocate != "none":
        assert stats is not None
        t0 = time.perf_counter()
        reports = _per_layer_families(model, config, families, ranks, stats, windows, progress)
        t_fact = time.perf_counter() - t0
    done = bool(reports)  # the per-layer path has compressed every family already
    for family in tqdm(
        () if done else families, desc="compression", unit="family", disable=not progress or done
    ):
        t0 = time.perf_counter()
        W = family_weights(model, family)
        L, m, n = W.shape
        d = ranks[family]
        if stats is None:
            C = None
        elif config.needs_calibration:
            C = stats.covariance(family)
        else:  # optional: only for reporting activation errors
            C = stats.covariances.get(family)
        if C is not None and C.shape != (L, n, n):
            raise AdapterError(
                f"calibration statistics of {family} have shape {C.shape}, the model needs "
                f"{(L, n, n)}: they belong to another model"
            )
        fact = _factorise(config, family, W, C, d)
        if fact.params_kept >= fact.params_dense:
            warnings.warn(
                f"rank d = {d} keeps {fact.params_kept} of {L * m * n} weights of {family} "
                f"({m}x{n}): the factors are no smaller than the dense maps; use a smaller ratio",
                UserWarning,
                stacklevel=2,
            )
        t1 = time.perf_counter()
        names = _write_back(model, family, fact)
        t2 = time.perf_counter()
        reports[family] = _report_of(family, fact, names)
        reports[family].seconds_factorise = t1 - t0
        reports[family].seconds_write_back = t2 - t1
        t_fact += t1 - t0
        t_write += t2 - t1
    timings = {
        "calibration": float(stats.seconds) if stats is not None else 0.0,
        "factorisation": t_fact,
        "write_back": t_write,
    }
    config_dict = config.to_dict()
    config_dict["families"] = list(reports)
    return CompressionReport(
        method=config.method,
        config=config_dict,
        families=reports,
        calibration=stats.protocol if stats is not None else None,
        timings=timings,
        versions=package_versions(),
        model=str(getattr(getattr(model, "config", None), "_name_or_path", "")),
    )
