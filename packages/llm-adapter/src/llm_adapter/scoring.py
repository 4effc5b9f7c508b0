"""Loss-aware scores of every map's components: one backward pass per calibration window.

The components of a map ``W`` (``m x n``) are SVD-LLM's: the eigenvectors
``u_i`` of ``M = W C W^T`` (:func:`grassbundle.activation_basis`).  Removing
component ``i`` moves the weight by ``-u_i u_i^T W``; to first order the
calibration loss changes by ``g_i = -u_i^T G W^T u_i`` with ``G = dL/dW``
(:func:`grassbundle.removal_gradients`, equal to Zero Sum SVD's whitened
score).  :func:`gradient_scores` runs the dense model on each calibration
window, takes the gradient of that window's mean next-token cross-entropy
with respect to the targeted weights only (every other parameter is frozen,
so no gradient buffers exist for them and there is no second copy of the
model), and accumulates per component, over the ``B`` windows,

* ``first = (1/B) sum_b g_{b,i}`` (the first-order change on the whole
  calibration set), and
* ``second = (1/B) sum_b g_{b,i}^2`` (the diagonal of the empirical Fisher
  in the direction of the removal, per window).

The projection ``U^T G`` runs in the model's dtype (float32 on the CPU):
it is the dominant cost after the backward pass, and its relative roundoff
(about ``1e-6``) is far below the spread of the scores; the products with
``U^T W`` and every accumulation are float64.  Scores are cached on disk,
keyed by the model's fingerprint, the calibration windows (which fix the
covariances and so the bases), the scoring windows and the family.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from .calibrate import CalibrationStats
from .errors import AdapterError, mention
from .models import family_modules, family_weights, model_device, model_identity

__all__ = [
    "SENSITIVITY_FRACTIONS",
    "ComponentBases",
    "GradientScores",
    "SensitivityScores",
    "component_bases",
    "gradient_scores",
    "sensitivity_scores",
]

#: the ranks at which the perplexity-sensitivity probe truncates each map, as
#: fractions of its break-even rank ``m n / (m + n)`` (ASVD's search probes parameter
#: ratios 0.1 ... 0.9; four points keep SmolLM2's 210 maps at 840 short evaluations)
SENSITIVITY_FRACTIONS = (0.2, 0.4, 0.6, 0.8)

CACHE_VERSION = 1
F64 = NDArray[np.float64]


@dataclass
class ComponentBases:
    """SVD-LLM's components of every layer of every family.

    Attributes
    ----------
    energies : dict of str to list of ndarray
        Per family and layer, the eigenvalues ``mu_i`` of ``W C W^T``
        (decreasing), shape ``[min(m, n)]``.
    bases : dict of str to list of ndarray
        Per family and layer, the eigenvectors ``U`` (``m x min(m, n)``).
    seconds : float
        Wall time of the eigendecompositions.
    """

    energies: dict[str, list[F64]]
    bases: dict[str, list[F64]]
    seconds: float = 0.0


def component_bases(
    model: torch.nn.Module, families: Sequence[str], stats: CalibrationStats
) -> ComponentBases:
    """The components of every targeted map (:func:`grassbundle.activation_basis`)."""
    import grassbundle as gb

    t0 = time.perf_counter()
    energies: dict[str, list[F64]] = {}
    bases: dict[str, list[F64]] = {}
    for f in families:
        W, C = family_weights(model, f), stats.covariance(f)
        if C.shape != (W.shape[0], W.shape[2], W.shape[2]):
            raise AdapterError(
                f"calibration statistics of {f} have shape {C.shape}, the model needs "
                f"{(W.shape[0], W.shape[2], W.shape[2])}: they belong to another model"
            )
        pairs = [gb.activation_basis(W[l], C[l]) for l in range(W.shape[0])]
        energies[f] = [mu for mu, _ in pairs]
        bases[f] = [U for _, U in pairs]
    return ComponentBases(energies, bases, time.perf_counter() - t0)


@dataclass
class GradientScores:
    """Per-component gradient statistics of every family (see the module docstring).

    Attributes
    ----------
    first : dict of str to ndarray, shape=[L, R]
        ``(1/B) sum_b g_{b,i}``, the first-order loss change of removing
        each component.
    second : dict of str to ndarray, shape=[L, R]
        ``(1/B) sum_b g_{b,i}^2``.
    windows : int
        ``B``.
    tokens : int
        Tokens scored.
    seconds : float
        Wall time (0 when everything came from the cache).
    protocol : dict
        What the scores were computed on (for the manifest).
    """

    first: dict[str, F64]
    second: dict[str, F64]
    windows: int
    tokens: int
    seconds: float = 0.0
    protocol: dict[str, Any] = field(default_factory=dict)


def _key(model: torch.nn.Module, stats: CalibrationStats, windows: torch.Tensor, f: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "family": f, "kind": "gradient"}).encode())
    h.update(json.dumps(model_identity(model), sort_keys=True).encode())
    h.update(str(stats.protocol.get("windows_sha256", "")).encode())
    h.update(str(stats.tokens).encode())
    h.update(np.ascontiguousarray(windows.cpu().numpy().astype(np.int64)).tobytes())
    return h.hexdigest()[:32]


def gradient_scores(
    model: torch.nn.Module,
    families: Sequence[str],
    stats: CalibrationStats,
    bases: ComponentBases,
    windows: torch.Tensor | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> GradientScores:
    """First- and second-order component scores from one backward pass per window.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Dense in the targeted families (the scores are taken at the original
        weights).
    families : sequence of str
    stats : CalibrationStats
        The covariances the bases came from (their windows key the cache).
    bases : ComponentBases
        From :func:`component_bases` on the same model and statistics.
    windows : torch.Tensor, shape=[B, T], optional
        Token windows to score on; default ``stats.windows``.
    cache_dir : str or path, optional
        Where to keep and look up the scores (one ``.npz`` per family).
    progress : bool

    Returns
    -------
    GradientScores
    """
    if windows is None:
        windows = stats.windows
    if windows is None or windows.ndim != 2 or windows.shape[0] < 1:
        raise AdapterError(
            "gradient scores need calibration token windows (calibrate from a text or dataset)"
        )
    B, T = int(windows.shape[0]), int(windows.shape[1])
    protocol = {
        "windows": B,
        "seq_len": T,
        "tokens": B * T,
        "windows_sha256": hashlib.sha256(
            np.ascontiguousarray(windows.cpu().numpy().astype(np.int64)).tobytes()
        ).hexdigest(),
        "calibration_windows_sha256": stats.protocol.get("windows_sha256"),
    }
    first: dict[str, F64] = {}
    second: dict[str, F64] = {}
    keys = {f: _key(model, stats, windows, f) for f in families}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        for f in families:
            file = cache / f"grad-{keys[f]}.npz"
            if file.is_file():
                try:
                    with np.load(file) as z:
                        first[f] = np.array(z["first"], dtype=np.float64)
                        second[f] = np.array(z["second"], dtype=np.float64)
                except (OSError, ValueError, KeyError):
                    first.pop(f, None)  # unreadable (a dead run's partial file): recompute
                    second.pop(f, None)
    missing = [f for f in families if f not in first]
    seconds = 0.0
    if missing:
        t0 = time.perf_counter()
        got = _accumulate(model, missing, bases, windows, progress)
        seconds = time.perf_counter() - t0
        for f in missing:
            first[f], second[f] = got[f]
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            for f in missing:
                tmp = cache / f".grad-{keys[f]}.{os.getpid()}.tmp.npz"
                np.savez(tmp, first=first[f], second=second[f], protocol=json.dumps(protocol))
                os.replace(tmp, cache / f"grad-{keys[f]}.npz")
    return GradientScores(
        first={f: first[f] for f in families},
        second={f: second[f] for f in families},
        windows=B,
        tokens=B * T,
        seconds=seconds,
        protocol=protocol,
    )


def _accumulate(
    model: torch.nn.Module,
    families: Sequence[str],
    bases: ComponentBases,
    windows: torch.Tensor,
    progress: bool,
) -> dict[str, tuple[F64, F64]]:
    """Run forward and backward per window; sum g and g^2 per component in float64."""
    device = model_device(model)
    modules = {f: family_modules(model, f) for f in families}
    weights = {f: family_weights(model, f) for f in families}
    for f in families:
        for module in modules[f]:
            if not isinstance(module, torch.nn.Linear):
                raise AdapterError(
                    f"{f} holds {type(module).__name__}, not a dense nn.Linear: score the "
                    "uncompressed model"
                )
    first_linear = modules[families[0]][0]
    assert isinstance(first_linear, torch.nn.Linear)
    dtype = first_linear.weight.dtype
    proj: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for f in families:
        pairs = []
        for l, U in enumerate(bases.bases[f]):
            Ut = torch.from_numpy(np.ascontiguousarray(U.T)).to(device=device, dtype=dtype)
            UW = torch.from_numpy(U.T @ weights[f][l]).to(device=device)  # float64 (R, n)
            pairs.append((Ut, UW))
        proj[f] = pairs
    sums = {f: np.zeros((len(proj[f]), proj[f][0][0].shape[0])) for f in families}
    squares = {f: np.zeros_like(sums[f]) for f in families}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    targets = [m.get_parameter("weight") for f in families for m in modules[f]]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for w in targets:
            w.requires_grad_(True)
        model.eval()
        for b in tqdm(range(windows.shape[0]), desc="gradient scores", unit="window",
                      disable=not progress):  # fmt: skip
            ids = windows[b : b + 1].to(device)
            with torch.enable_grad():
                out = model(input_ids=ids, labels=ids, use_cache=False)
                loss = out.loss
                if not bool(torch.isfinite(loss)):
                    raise AdapterError(
                        f"the calibration loss of window {b} is not finite; the model or its "
                        f"dtype cannot be scored (try {mention('dtype', 'float32')})"
                    )
                loss.backward()
            with torch.no_grad():
                for f in families:
                    for l, module in enumerate(modules[f]):
                        G = module.weight.grad
                        assert isinstance(G, torch.Tensor)
                        Ut, UW = proj[f][l]
                        g = -((Ut @ G).double() * UW).sum(dim=1).cpu().numpy()
                        sums[f][l] += g
                        squares[f][l] += g * g
                        module.weight.grad = None
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    B = float(windows.shape[0])
    return {f: (sums[f] / B, squares[f] / B) for f in families}


@dataclass
class SensitivityScores:
    """The calibration loss with one map truncated at a time (ASVD's sensitivity).

    Attributes
    ----------
    ranks : dict of str to ndarray, shape=[K], int
        The probed ranks of each family (increasing).
    losses : dict of str to ndarray, shape=[L, K]
        Mean next-token cross-entropy on the probe windows with layer ``l``
        alone truncated to SVD-LLM's rank ``ranks[k]``, minus the dense
        model's.
    dense_nll : float
        The dense model's mean cross-entropy on the probe windows.
    windows : int
    tokens : int
    seconds : float
        Wall time (0 when everything came from the cache).
    """

    ranks: dict[str, NDArray[np.intp]]
    losses: dict[str, F64]
    dense_nll: float
    windows: int
    tokens: int
    seconds: float = 0.0


def _mean_nll(model: torch.nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    device = model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, windows.shape[0], batch_size):
            ids = windows[s : s + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].double()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += int(ids[:, 1:].numel())
    return total / count


def sensitivity_scores(
    model: torch.nn.Module,
    families: Sequence[str],
    stats: CalibrationStats,
    bases: ComponentBases,
    windows: torch.Tensor,
    *,
    fractions: Sequence[float] = SENSITIVITY_FRACTIONS,
    batch_size: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> SensitivityScores:
    """ASVD-style sensitivity: the loss with each map alone truncated at a few ranks.

    For every map and every probed rank ``r = round(f m n / (m + n))`` (``f``
    in ``fractions``, clipped to ``[1, min(m, n)]``), the map's weight is
    replaced in place by SVD-LLM's truncation ``U_r U_r^T W``, the mean
    cross-entropy over ``windows`` is measured, and the weight is restored
    (bit for bit).  Cost: ``len(fractions)`` forward passes over ``windows``
    per map.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Dense in the targeted families.
    families : sequence of str
    stats : CalibrationStats
        The statistics the bases came from (they key the cache).
    bases : ComponentBases
    windows : torch.Tensor, shape=[B, T]
        The probe windows (a few calibration windows).
    fractions : sequence of float
        Probed ranks as fractions of each map's break-even rank.
    batch_size : int
    cache_dir : str or path, optional
    progress : bool

    Returns
    -------
    SensitivityScores
    """
    if windows.ndim != 2 or windows.shape[0] < 1:
        raise AdapterError("the sensitivity probe needs at least one token window")
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f < 1 for f in fr):
        raise AdapterError(f"sensitivity fractions must lie in (0, 1); got {fr}")
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "kind": "sensitivity", "fractions": fr}).encode())
    h.update(json.dumps(model_identity(model), sort_keys=True).encode())
    h.update(str(stats.protocol.get("windows_sha256", "")).encode())
    h.update(np.ascontiguousarray(windows.cpu().numpy().astype(np.int64)).tobytes())
    base_key = h.hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else None
    ranks: dict[str, NDArray[np.intp]] = {}
    losses: dict[str, F64] = {}
    t0 = time.perf_counter()
    dense = _mean_nll(model, windows, batch_size)
    computed = False
    for f in families:
        mods = family_modules(model, f)
        first = mods[0]
        if not isinstance(first, torch.nn.Linear):
            raise AdapterError(f"{f} is not a dense nn.Linear: probe the uncompressed model")
        m, n = first.out_features, first.in_features
        even = m * n / (m + n)
        rs = np.unique(np.clip(np.rint(np.array(fr) * even), 1, min(m, n)).astype(np.intp))
        ranks[f] = rs
        file = cache / f"sens-{base_key}-{f}.npz" if cache is not None else None
        if file is not None and file.is_file():
            try:
                with np.load(file) as z:
                    losses[f] = np.array(z["losses"], dtype=np.float64)
                if losses[f].shape == (len(mods), rs.size):
                    continue
            except (OSError, ValueError, KeyError):
                pass
        computed = True
        W = family_weights(model, f)
        out = np.zeros((len(mods), rs.size))
        for l, module in enumerate(tqdm(mods, desc=f"sensitivity {f}", disable=not progress)):
            assert isinstance(module, torch.nn.Linear)
            saved = module.weight.data.clone()
            U = bases.bases[f][l]
            try:
                for k, r in enumerate(rs):
                    Ur = U[:, :r]
                    trunc = torch.from_numpy(Ur @ (Ur.T @ W[l]))
                    module.weight.data.copy_(trunc.to(dtype=saved.dtype, device=saved.device))
                    out[l, k] = _mean_nll(model, windows, batch_size) - dense
            finally:
                module.weight.data.copy_(saved)
        losses[f] = out
        if file is not None:
            assert cache is not None
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".sens-{base_key}-{f}.{os.getpid()}.tmp.npz"
            np.savez(tmp, losses=out)
            os.replace(tmp, file)
    return SensitivityScores(
        ranks=ranks,
        losses=losses,
        dense_nll=dense,
        windows=int(windows.shape[0]),
        tokens=int(windows.numel()),
        seconds=time.perf_counter() - t0 if computed else 0.0,
    )


def sensitivity_component_scores(
    losses: NDArray[np.float64], ranks: NDArray[np.intp], R: int
) -> NDArray[np.float64]:
    """Per-component scores whose tail sums interpolate a probed loss curve.

    With the loss ``losses[k]`` at rank ``ranks[k]`` and 0 at full rank
    ``R``, component ``i`` (1-based) in ``(ranks[k], ranks[k+1]]`` scores the
    segment's slope ``(losses[k] - losses[k+1]) / (ranks[k+1] - ranks[k])``, so
    that ``sum_{i > r} s_i`` is the piecewise-linear interpolation of the
    curve at every rank ``r >= ranks[0]``; components up to ``ranks[0]``
    score the first segment's slope (the selection's rank floor is
    ``ranks[0]``, so they are never removed).
    """
    r = np.append(np.asarray(ranks, dtype=np.intp), R)
    ell = np.append(np.asarray(losses, dtype=np.float64), 0.0)
    if r[-2] == R:  # the largest probe is full rank already
        r, ell = r[:-1], ell[:-1]
    s = np.zeros(R)
    for k in range(r.size - 1):
        slope = (ell[k] - ell[k + 1]) / (r[k + 1] - r[k])
        s[r[k] : r[k + 1]] = slope
    s[: r[0]] = s[r[0]] if r[0] < R else 0.0
    return s
