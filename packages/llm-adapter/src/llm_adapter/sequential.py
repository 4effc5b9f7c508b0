"""Sequential compression: each block refit on the already-compressed model's inputs.

One pass over the blocks in forward order, on the calibration windows. For
block ``i`` the adapter keeps two streams of hidden states: ``X`` (the
original model's input to block ``i``) and ``X_hat`` (the compressed model's,
every upstream block already compressed). For each targeted map of the block,
in forward order, it accumulates in float64, over the same tokens,

* ``C = E[x x^T]`` from the original block run on ``X``,
* ``C_hat = E[x_hat x_hat^T]`` and ``C_cross = E[x x_hat^T]`` from the block
  as compressed so far run on ``X_hat``,

hands them to grassbundle, and writes the factors back as a
:class:`~llm_adapter.lowrank.LowRankLinear`; then both streams advance one
block. Maps that read the same tensor (q, k and v; gate and up) are captured
in one pass and share its statistics; a capture pass on ``X_hat`` stops once
the maps it captures have seen their inputs. The fits (all maths in
:mod:`grassbundle.refit`):

``"update"``
    SVD-LLM with its authors' second step: the whitened truncation from ``C``,
    then the least-squares update of the left factor for the target
    ``W x_hat`` on ``C_hat`` (:func:`grassbundle.svd_llm_update`).
``"residual"``
    The residual-aware fit: the best rank-``d`` map from ``x_hat`` to the
    *original* output ``W x`` (:func:`grassbundle.residual_fit`, a
    reduced-rank regression), so each layer also corrects the error its
    compressed inputs carry.
``"refit"``
    A constrained refit of SVD-LLM's truncation
    (:func:`grassbundle.constrained_refit`): which factors (left, right,
    both, the kept singular values), which target (``W x``, ``W x_hat``, or
    both inputs together) and a ridge towards the unrefit factors.  With
    ``ridge="auto"`` or ``gate="heldout"`` the last :data:`HOLDOUT` of the
    calibration windows are held out: per map the ridge is the one of
    :data:`AUTO_RIDGES` (or the one given) whose fit on the other windows
    has the least output error ``E||W x - W' x_hat||^2`` on the held-out
    ones, and the refit, then fitted on all windows, is kept only where that
    error is below the unrefit truncation's (else the map keeps SVD-LLM's
    truncation, fitted on all windows).

The adapter only moves tensors: statistics in, factors out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from .errors import AdapterError, mention
from .lowrank import LowRankLinear
from .models import family_module_names, family_modules, model_device, set_module

if TYPE_CHECKING:
    from grassbundle import ReconstructionErrors

__all__ = ["AUTO_RIDGES", "HOLDOUT", "SequentialFit", "as_parameter", "compress_sequential"]

Fit = Literal["update", "residual", "refit"]
FITS: tuple[str, ...] = ("update", "residual", "refit")
#: Fraction of the calibration windows (the last ones, at least one) held out to
#: choose a refit's ridge and to gate it.
HOLDOUT = 0.25
#: The relative ridges ``ridge="auto"`` chooses from: 0 (the unregularised fit)
#: to 100 (within about 1% of the unrefit factors), a decade apart.
AUTO_RIDGES: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class SequentialFit:
    """What the sequential pass did to one family.

    Attributes
    ----------
    ranks : list of int
        Rank per layer.
    frobenius_error : list of float
        ``||W_l - W'_l||_F^2`` per layer.
    activation_error : list of float
        ``tr((W_l - W'_l) C_l (W_l - W'_l)^T)`` per layer, ``C_l`` from the
        original model's inputs (the SVD-LLM measure).
    activation_total : list of float
        ``tr(W_l C_l W_l^T)`` per layer.
    output_error : list of float
        ``E||W_l x - W'_l x_hat||^2`` per layer: the error the fit minimises
        (residual) or reports (update), original input against compressed input.
    output_total : list of float
        ``E||W_l x||^2`` per layer.
    frobenius_fraction : list of float
        ``||W_l - W'_l||_F^2 / ||W_l||_F^2`` per layer.
    activation_fraction : list of float
        ``activation_error / activation_total`` per layer (0 where the total is 0).
    refit_ridge : list of (float or None) or None
        ``"refit"`` only: the relative ridge per layer (chosen or given; None
        for a layer kept dense).
    refit_kept : list of bool or None
        ``"refit"`` only: whether the layer kept its refit (the gate).

    Every error is :func:`grassbundle.reconstruction_errors`' for the fitted weights.
    """

    ranks: list[int]
    frobenius_error: list[float]
    activation_error: list[float]
    activation_total: list[float]
    output_error: list[float]
    output_total: list[float]
    frobenius_fraction: list[float] = field(default_factory=list)
    activation_fraction: list[float] = field(default_factory=list)
    refit_ridge: list[float | None] | None = None
    refit_kept: list[bool] | None = None

    def add(self, rank: int, errors: ReconstructionErrors) -> None:
        """Append one layer: its rank and grassbundle's errors of its fit (one map).

        Parameters
        ----------
        rank : int
        errors : grassbundle.ReconstructionErrors
            Of one map, with the activation and output errors.
        """
        assert errors.activation_error is not None and errors.activation_total is not None
        assert errors.output_error is not None
        act_frac = errors.activation_fraction
        assert act_frac is not None
        self.ranks.append(int(rank))
        self.frobenius_error.append(float(errors.frobenius_error[0]))
        self.frobenius_fraction.append(float(errors.frobenius_fraction[0]))
        self.activation_error.append(float(errors.activation_error[0]))
        self.activation_total.append(float(errors.activation_total[0]))
        self.activation_fraction.append(float(act_frac[0]))
        self.output_error.append(float(errors.output_error[0]))
        self.output_total.append(float(errors.activation_total[0]))  # E||W x||^2 = tr(W C W^T)


class _Stop(Exception):
    pass


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _block_inputs(
    model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]]:
    """The first block's inputs (hidden states, positional args, keyword args) per batch."""
    captured: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]] = []
    first = layers[0]
    device = model_device(model)

    class Catcher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_type = getattr(first, "attention_type", None)

        def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            captured.append((hidden, args, kwargs))
            raise _Stop

    layers[0] = Catcher()
    try:
        with torch.no_grad():
            for s in range(0, windows.shape[0], batch_size):
                try:
                    model(input_ids=windows[s : s + batch_size].to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        layers[0] = first
    return captured


def _run(block: nn.Module, hidden: torch.Tensor, args: Any, kwargs: Any) -> torch.Tensor:
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _capture(
    block: nn.Module,
    modules: Sequence[nn.Module],
    batches: Sequence[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]],
    *,
    outputs: bool = False,
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Run ``block`` on every batch; the inputs of ``modules`` (tokens x n, float64, CPU).

    Without ``outputs``, each batch's forward pass stops as soon as every module
    of ``modules`` has seen its input (the rest of the block cannot change it).
    """
    seen: list[list[torch.Tensor]] = [[] for _ in modules]
    fired: set[int] = set()
    handles = []
    for j, module in enumerate(modules):

        def hook(mod: nn.Module, args: tuple[Any, ...], j: int = j) -> None:
            x = args[0].detach()
            seen[j].append(x.reshape(-1, x.shape[-1]).to("cpu", torch.float64))
            fired.add(j)
            if not outputs and len(fired) == len(modules):
                raise _Stop

        handles.append(module.register_forward_pre_hook(hook))
    outs: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for hidden, args, kwargs in batches:
                fired.clear()
                try:
                    out = _run(block, hidden, args, kwargs)
                except _Stop:
                    continue
                if outputs:
                    outs.append(out)
    finally:
        for h in handles:
            h.remove()
    return seen, outs


def _gram(a: list[torch.Tensor], b: list[torch.Tensor]) -> NDArray[np.float64]:
    total = sum(int(x.shape[0]) for x in a)
    acc = sum((x.T @ y for x, y in zip(a, b, strict=True)), torch.zeros(()))
    return np.asarray(acc.numpy() / total, dtype=np.float64)


def _fit_one(
    fit: str,
    W: NDArray[np.float64],
    C: NDArray[np.float64],
    C_hat: NDArray[np.float64],
    C_cross: NDArray[np.float64],
    rank: int,
    ridge: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    import grassbundle as gb

    try:
        if fit == "update":
            res = gb.svd_llm_update(W, C, rank=rank, C_update=C_hat, ridge=ridge)
            return res.left, res.right
        rf = gb.residual_fit(W, C_hat, C_cross, rank=rank, C=C, ridge=ridge)
        return rf.basis, rf.right[0]
    except ValueError as exc:
        raise AdapterError(f"grassbundle rejected the {fit} fit: {exc}") from None


def _refit_one(
    W: NDArray[np.float64],
    parts: Sequence[tuple[NDArray[np.float64], ...]],
    rank: int,
    opts: Mapping[str, Any],
) -> tuple[NDArray[np.float64], NDArray[np.float64], float, bool]:
    """A constrained refit of one map: ``(left, right, ridge, kept)``.

    ``parts``: the statistics ``(C, C_hat, C_cross)`` of all windows, then,
    when held out, of the fitting and the held-out windows.
    """
    import grassbundle as gb

    kw = {k: opts[k] for k in ("factor", "target", "mix")}
    ridge, gate = opts["ridge"], opts["gate"]
    try:
        if len(parts) == 1:  # a given ridge, no gate: one fit on all windows
            fit = gb.constrained_refit(W, *parts[0], rank=rank, ridge=float(ridge), **kw)
            return fit.left, fit.right, float(ridge), True
        everything, fitting, held = parts
        grid = AUTO_RIDGES if ridge == "auto" else (float(ridge),)

        def held_out(M: NDArray[np.float64]) -> float:
            e = gb.reconstruction_errors(W, M, held[0], C_hat=held[1], C_cross=held[2])
            assert e.output_error is not None
            return float(e.output_error[0])

        path = gb.constrained_refit_path(W, *fitting, rank=rank, ridges=grid, **kw)
        A0, B0 = path[0].info["left_before"], path[0].info["right_before"]
        best, chosen = held_out(path[0].weight()), grid[0]
        for rho, fit in zip(grid[1:], path[1:], strict=True):
            err = held_out(fit.weight())
            if err < best:
                best, chosen = err, rho
        kept = gate == "off" or best < held_out(A0 @ B0)
        fit = gb.constrained_refit(W, *everything, rank=rank, ridge=chosen, **kw)
    except ValueError as exc:
        raise AdapterError(f"grassbundle rejected the refit: {exc}") from None
    if kept:
        return fit.left, fit.right, chosen, True
    return fit.info["left_before"], fit.info["right_before"], chosen, False


def _moment(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``sum_t a_t b_t^T`` (float64) and the number of tokens."""
    total = sum(int(x.shape[0]) for x in a)
    return sum((x.T @ y for x, y in zip(a, b, strict=True)), torch.zeros(())), total


def _split_stats(
    x: list[torch.Tensor], xh: list[torch.Tensor], nb: int | None
) -> list[tuple[NDArray[np.float64], ...]]:
    """``(C, C_hat, C_cross)`` of all batches; then, unless ``nb`` is None, of the first
    ``nb`` and of the rest."""
    if nb is None:
        return [(_gram(x, x), _gram(xh, xh), _gram(x, xh))]
    out = []
    sums = []
    for sl in (slice(0, nb), slice(nb, None)):
        a, b = x[sl], xh[sl]
        sums.append([_moment(a, a), _moment(b, b), _moment(a, b)])
    for part in (None, 0, 1):
        stats = []
        for j in range(3):
            if part is None:
                acc = sums[0][j][0] + sums[1][j][0]
                total = sums[0][j][1] + sums[1][j][1]
            else:
                acc, total = sums[part][j]
            stats.append(np.asarray(acc.numpy() / total, dtype=np.float64))
        out.append(tuple(stats))
    return out


def compress_sequential(
    model: nn.Module,
    families: Sequence[str],
    ranks: Mapping[str, Sequence[int]],
    windows: torch.Tensor,
    *,
    fit: str = "residual",
    ridge: float | None = None,
    refit: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, SequentialFit]:
    """Compress ``families`` of ``model`` in place, block by block in forward order.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Dense in the targeted families.
    families : sequence of str
        Resolved family names (see :func:`llm_adapter.models.resolve_families`).
    ranks : dict of str to sequence of int
        Rank of every layer of every family; a layer of rank ``min(m, n)`` or
        more is left dense (its factors would cost more than the map).
    windows : torch.Tensor, shape=[N, T], int64
        Calibration token windows.
    fit : {"residual", "update", "refit"}
        See the module documentation.
    ridge : float, optional
        Relative ridge for grassbundle (default :data:`grassbundle.refit.RIDGE`);
        not for ``"refit"``, whose ridge is in ``refit``.
    refit : dict, optional
        ``fit="refit"`` only (and needed there): ``factor`` (left, right,
        both, sigma), ``target`` (output, local, joint), ``mix``, ``ridge``
        (a float >= 0 or ``"auto"``) and ``gate`` (heldout, off), as
        :class:`~llm_adapter.CompressionConfig` names them.
    batch_size : int
        Windows per forward pass.
    progress : bool
        A progress bar over blocks (stderr).

    Returns
    -------
    dict of str to SequentialFit
    """
    import copy

    import grassbundle as gb
    from grassbundle.refit import RIDGE

    from .models import layer_list

    if fit not in FITS:
        raise AdapterError(f"unknown sequential fit {fit!r}; valid: {', '.join(FITS)}")
    if (fit == "refit") != (refit is not None):
        raise AdapterError("compress_sequential: give refit= options exactly when fit='refit'")
    r = RIDGE if ridge is None else float(ridge)
    layers = layer_list(model)
    per_family = {f: family_modules(model, f) for f in families}
    names = {f: family_module_names(model, f) for f in families}
    for f in families:
        if len(ranks[f]) != len(layers):
            raise AdapterError(f"{f}: {len(ranks[f])} ranks for {len(layers)} layers")
    split = refit is not None and (refit["ridge"] == "auto" or refit["gate"] == "heldout")
    nb = 0  # batches of fitting windows; the rest are held out
    if split:
        N = int(windows.shape[0])
        if N < 2:
            raise AdapterError(
                f"a refit with {mention('ridge', 'auto')} or {mention('gate', 'heldout')} holds "
                f"out calibration windows; got {N} window: use {mention('calib_samples')} >= 2, "
                f"or a fixed {mention('ridge')} with {mention('gate', 'off')}"
            )
        held = max(1, round(HOLDOUT * N))
        orig_batches = _block_inputs(model, layers, windows[: N - held], batch_size)
        nb = len(orig_batches)
        orig_batches += _block_inputs(model, layers, windows[N - held :], batch_size)
    else:
        orig_batches = _block_inputs(model, layers, windows, batch_size)
    hat_batches = [(h.clone(), a, k) for h, a, k in orig_batches]
    out: dict[str, SequentialFit] = {f: SequentialFit([], [], [], [], [], []) for f in families}
    if refit is not None:
        for f in families:
            out[f].refit_ridge, out[f].refit_kept = [], []
    bar = tqdm(range(len(layers)), desc="sequential fit", unit="block", disable=not progress)
    for i in bar:
        block = layers[i]
        original = copy.deepcopy(block)  # dense: this block is not compressed yet
        mods_orig = [_find(original, block, per_family[f][i]) for f in families]
        xs, next_orig = _capture(original, mods_orig, orig_batches, outputs=True)
        done: set[str] = set()
        for f in families:
            if f in done:
                continue
            # every family reading the same tensor as f: captured in the same pass
            group = [g for g in families if g not in done and _same_input(xs, families, f, g)]
            mods_hat = [per_family[g][i] for g in group]
            xhs, _ = _capture(block, mods_hat, hat_batches)
            # the group's maps read the same tensor: their statistics are computed once
            shared: list[torch.Tensor] | None = None
            stats: list[tuple[NDArray[np.float64], ...]] | None = None
            for g, xh in zip(group, xhs, strict=True):
                x = xs[families.index(g)]
                if shared is None or not _equal(xh, shared):
                    shared = xh
                    stats = _split_stats(x, xh, nb if split else None)
                assert stats is not None
                old = per_family[g][i]
                assert isinstance(old, nn.Linear)
                W = old.weight.detach().to("cpu", torch.float64).numpy()
                if int(ranks[g][i]) >= min(W.shape):  # kept dense: nothing to fit
                    C, C_hat, C_cross = stats[0]
                    errors = gb.reconstruction_errors(W, W, C, C_hat=C_hat, C_cross=C_cross)
                    out[g].add(int(ranks[g][i]), errors)
                    if refit is not None:
                        ridges, gates = out[g].refit_ridge, out[g].refit_kept
                        assert ridges is not None and gates is not None
                        ridges.append(None)
                        gates.append(False)
                    done.add(g)
                    continue
                C, C_hat, C_cross = stats[0]
                if refit is None:
                    left, right = _fit_one(fit, W, C, C_hat, C_cross, int(ranks[g][i]), r)
                else:
                    left, right, rho, kept = _refit_one(W, stats, int(ranks[g][i]), refit)
                    ridges, gates = out[g].refit_ridge, out[g].refit_kept
                    assert ridges is not None and gates is not None
                    ridges.append(rho)
                    gates.append(kept)
                errors = gb.reconstruction_errors(W, left @ right, C, C_hat=C_hat, C_cross=C_cross)
                out[g].add(int(ranks[g][i]), errors)
                new = LowRankLinear(
                    as_parameter(left, old.weight),
                    as_parameter(right, old.weight),
                    old.bias,
                    "left",
                )
                set_module(model, names[g][i], new)
                per_family[g][i] = new
                done.add(g)
        with torch.no_grad():
            hat_batches = [(_run(block, h, a, k), a, k) for h, a, k in hat_batches]
        orig_batches = [(o, a, k) for o, (_, a, k) in zip(next_orig, orig_batches, strict=True)]
        del original
    bar.close()
    return out


def as_parameter(a: NDArray[np.float64], like: torch.Tensor) -> nn.Parameter:
    """``a`` as a frozen parameter with ``like``'s dtype and device (a fresh allocation).

    Parameters
    ----------
    a : ndarray
    like : torch.Tensor

    Returns
    -------
    torch.nn.Parameter
    """
    return nn.Parameter(
        torch.tensor(np.ascontiguousarray(a), dtype=like.dtype, device=like.device),
        requires_grad=False,
    )


def _find(copy_root: nn.Module, root: nn.Module, module: nn.Module) -> nn.Module:
    """The module of ``copy_root`` at the path ``module`` has inside ``root``."""
    for name, mod in root.named_modules():
        if mod is module:
            return copy_root.get_submodule(name)
    raise AdapterError("a family module is not inside its block; check the accessor table")


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)
    )


def _same_input(xs: list[list[torch.Tensor]], families: Sequence[str], f: str, g: str) -> bool:
    if f == g:
        return True
    return _equal(xs[families.index(f)], xs[families.index(g)])
