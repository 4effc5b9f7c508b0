"""Calibration statistics: the input covariances ``C_l`` of every targeted map.

Forward pre-hooks on the targeted modules accumulate ``sum_t x_t x_t^T`` in
float64 on the module's own device, and the token count; only the Grams of the
targeted families exist, one ``(n, n)`` matrix per distinct input: maps that
read the very same tensor (Llama's q, k and v; its gate and up; all five in a
parallel block such as Cohere's) share one Gram, accumulated once.  The
forward stops after the last transformer block, since no Gram needs the final
norm or the output head, so calibrating costs about one forward pass plus the
Gram updates (``benchmarks/bench_calibration.py`` measures the ratio).  The
statistics are cached on disk, keyed by the model's fingerprint, the exact
calibration token windows (which fixes the text, the tokenizer and the
sampling protocol), the family and, for detokenized WikiText, the text
variant and, for ``windows="disjoint"``, the sampling rule, so sweeps do not
recompute them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from .data import (
    WINDOW_MODES,
    detokenize_wikitext,
    load_text,
    resolve_detokenize,
    sample_windows,
    text_variant,
    tokenize_text,
)
from .errors import AdapterError, AdapterWarning, ConfigurationError, check_choice, mention
from .files import load_arrays, save_arrays
from .models import (
    check_finite,
    family_modules,
    model_device,
    model_identity,
    resolve_families,
)

__all__ = ["CalibrationStats", "calibrate"]

CACHE_VERSION = 1


@dataclass
class CalibrationStats:
    """Calibration covariances per family.

    Attributes
    ----------
    covariances : dict of str to ndarray, shape=[L, n, n]
        ``C_l = (1/N) sum_t x_t x_t^T`` of the inputs of each layer's map,
        float64, on the CPU.
    tokens : int
        ``N``, the number of calibration tokens.
    protocol : dict
        Data source, ``text_variant`` (``"raw"``, ``"tokenized"`` or
        ``"detokenized"``; None for token windows given directly), ``windows``
        and ``samples`` (the number of windows), ``seq_len``, ``tokens``, ``seed``,
        ``window_rule`` (only for ``windows="disjoint"``: ``"disjoint"``) and the
        windows' sha256 (for the manifest and results rows).
    seconds : float
        Wall time spent computing (0 when everything came from the cache).
    cached : bool
        Whether every family came from the on-disk cache.
    windows : torch.Tensor or None, shape=[N, T]
        The calibration token windows (the sequential methods run on them).
    """

    covariances: dict[str, NDArray[np.float64]]
    tokens: int
    protocol: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False
    windows: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.covariances)

    def covariance(self, family: str) -> NDArray[np.float64]:
        """``C`` of one family, shape ``(L, n, n)``."""
        if family not in self.covariances:
            raise AdapterError(
                f"no calibration statistics for family {family!r}; calibrated families: "
                f"{', '.join(self.covariances) or 'none'} (calibrate with that family)"
            )
        return self.covariances[family]


def _windows_key(
    identity: str,
    windows: torch.Tensor,
    family: str,
    variant: str | None = None,
    accumulate: str = "float64",
    rule: str = "random",
) -> str:
    """The cache key of ``family``'s covariances; ``identity`` is the model's
    :func:`~llm_adapter.models.model_identity` as sorted JSON, computed once per
    calibration (it sums every weight in float64: seven times that cost a sixth
    of an 8-window SmolLM2 calibration)."""
    h = hashlib.sha256()
    head: dict[str, Any] = {"v": CACHE_VERSION, "family": family}
    if variant == "detokenized":  # only then: keys of text used as it is stay as before
        head["text_variant"] = variant
    if accumulate != "float64":  # likewise: float64 keys stay as before
        head["accumulate"] = accumulate
    if rule != "random":  # likewise: keys of random windows stay as before
        head["window_rule"] = rule
    h.update(json.dumps(head).encode())
    h.update(identity.encode())
    h.update(np.ascontiguousarray(windows.cpu().numpy().astype(np.int64)).tobytes())
    h.update(str(tuple(windows.shape)).encode())
    return h.hexdigest()[:32]


class _SharedInputs:
    """One Gram per distinct input: maps fed the very same tensor share it.

    Attention's q, k and v maps (and a gated MLP's gate and up maps) are
    called on one tensor, so their covariances are equal; the first map to
    see a tensor accumulates its Gram, and any map that later sees the same
    object (checked by identity, ``is``) adds nothing and is recorded as an
    alias of the first.  The pairing is fixed on a map's first call and
    checked on every later one; the two most recent inputs are remembered,
    which covers maps called back to back and a parallel block whose MLP
    reads the attention's input.
    """

    def __init__(self, accumulate: str = "float64") -> None:
        self.accumulate = accumulate
        self.recent: list[tuple[torch.Tensor, int]] = []
        self.alias: dict[int, int | None] = {}  # map -> the map whose Gram it shares, or None
        #: a Gram is allocated on its map's first call, and only for a map that owns
        #: its input: an alias never allocates one (allocating every map's zeros up
        #: front cost about as much as a third of the forward pass on SmolLM2)
        self.grams: list[torch.Tensor | None] = []
        self.shapes: list[tuple[int, torch.device]] = []
        self.names: list[str] = []

    def add(self, name: str, n: int, device: torch.device) -> int:
        """Register a map with input width ``n`` whose Gram lives on ``device``; its index."""
        self.grams.append(None)
        self.shapes.append((n, device))
        self.names.append(name)
        return len(self.grams) - 1

    def gram(self, index: int) -> torch.Tensor:
        """Map ``index``'s own Gram, allocated (zeros) on first use."""
        gram = self.grams[index]
        if gram is None:
            n, device = self.shapes[index]
            gram = self.grams[index] = torch.zeros(n, n, dtype=torch.float64, device=device)
        return gram

    def hook(self, index: int) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            owner = next((i for t, i in self.recent if t is x), None)
            if index not in self.alias:
                self.alias[index] = owner
            elif self.alias[index] != owner:
                raise AdapterError(
                    f"calibration: {self.names[index]} shares its input with another map in "
                    "one batch and not in another; this model's forward varies its structure "
                    "between batches, which the shared-input Grams do not support"
                )
            if owner is not None:
                return
            _add_gram(self.gram(index), x.detach(), self.accumulate)
            self.recent = [(x, index), *self.recent[:1]]

        return pre_hook

    def new_batch(self) -> None:
        self.recent = []

    def finish(self) -> None:
        """Fill every Gram's lower block triangle (the updates write the upper one)."""
        for gram in self.grams:
            if gram is not None:
                _mirror(gram)

    def resolved(self, index: int) -> torch.Tensor:
        """The Gram of map ``index``, following its alias."""
        owner = self.alias.get(index)
        return self.gram(index if owner is None else owner)


#: Rows (tokens) of one single-precision block of a Gram update in the
#: ``"mixed"`` accumulation: each block's ``X^T X`` is a float32 product (its
#: inner sums run over at most this many tokens), and the blocks are summed
#: into the float64 Gram.
BLOCK_TOKENS = 4096

#: Width of the column blocks of a Gram update: ``G`` is updated block row by
#: block row, ``G[a:b, a:] += X[:, a:b]^T X[:, a:]``, its upper block triangle
#: only (``(p + 1) / 2p`` of the full product's multiply-adds with ``p =
#: n // GRAM_BLOCK`` blocks: 2/3 for SmolLM2's 1,536-wide MLP input), and the
#: lower blocks are copied from the upper ones once at the end.
GRAM_BLOCK = 512

ACCUMULATIONS = ("float64", "mixed")


def _block_edges(n: int) -> list[int]:
    p = max(1, n // GRAM_BLOCK)
    return [round(i * n / p) for i in range(p + 1)]


def _add_gram(gram: torch.Tensor, x: torch.Tensor, accumulate: str) -> None:
    """``gram += X^T X`` on its upper block triangle, for the rows ``X`` of ``x`` (``(..., n)``).

    ``gram`` is float64.  ``"float64"``: float64 products.  ``"mixed"``:
    float32 products over blocks of at most :data:`BLOCK_TOKENS` rows, each
    added to the float64 Gram (float64 inputs keep float64 products); float32
    inputs are exact in float32, so the only single-precision rounding is in
    each block's inner sums; the sum over blocks and the finishing ``(G +
    G^T) / 2 / N`` stay float64.  :func:`_mirror` fills the lower blocks.
    """
    x2 = x.reshape(-1, x.shape[-1]).to(gram.device)
    edges = _block_edges(x2.shape[1])
    if accumulate == "float64" or x2.dtype == torch.float64:
        x64 = x2.to(torch.float64)
        for a, b in itertools.pairwise(edges):
            gram[a:b, a:].addmm_(x64[:, a:b].T, x64[:, a:])
        return
    x32 = x2.to(torch.float32)
    for s in range(0, x32.shape[0], BLOCK_TOKENS):
        rows = x32[s : s + BLOCK_TOKENS]
        for a, b in itertools.pairwise(edges):
            gram[a:b, a:].add_(torch.mm(rows[:, a:b].T, rows[:, a:]))


def _mirror(gram: torch.Tensor) -> None:
    """Copy the upper off-diagonal blocks written by :func:`_add_gram` into the lower ones."""
    edges = _block_edges(gram.shape[0])
    for a, b in itertools.pairwise(edges[1:]):
        gram[a:b, :a] = gram[:a, a:b].T


def _symmetrised(c: torch.Tensor) -> torch.Tensor:
    """``c <- (c + c^T) / 2`` in place, for a ``c`` whose blocks off the diagonal are mirrored.

    :func:`_mirror` copies the upper off-diagonal blocks into the lower ones
    exactly, so there ``(c_ij + c_ji) / 2 = c_ij`` in floating point and only
    the diagonal blocks (products that BLAS need not return symmetric) change:
    the result is bit-identical to the whole-matrix expression at a fraction
    of its memory traffic.
    """
    for a, b in itertools.pairwise(_block_edges(c.shape[0])):
        block = c[a:b, a:b]
        block.copy_(block.add(block.T).mul_(0.5))
    return c


class _StopForward(Exception):
    """Raised after the last transformer block: the final norm and the head are not needed."""


def _non_finite_message(model: nn.Module, family: str) -> str:
    """Why the statistics of ``family`` are not finite: the tensor at fault, or overflow."""
    try:
        check_finite(dict(model.named_parameters()), "the model")
    except AdapterError as exc:
        return str(exc)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes & {torch.float16, torch.bfloat16}:
        return (
            f"non-finite calibration statistics for {family}: the half-precision forward pass "
            f"overflowed; load the model with {mention('dtype', 'float32')}"
        )
    return (
        f"non-finite calibration statistics for {family}, with finite weights in "
        f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}: the forward pass "
        "overflowed on these inputs; check the calibration text and the model"
    )


def _accumulate(
    model: nn.Module,
    families: Sequence[str],
    windows: torch.Tensor,
    batch_size: int,
    progress: bool,
    accumulate: str = "float64",
) -> tuple[dict[str, list[torch.Tensor]], int]:
    """Grams of every targeted map, and the number of maps whose Gram was shared."""
    from .models import layer_list

    shared = _SharedInputs(accumulate)
    handles = []
    index: dict[str, list[int]] = {}
    for family in families:
        index[family] = []
        for l, module in enumerate(family_modules(model, family)):
            n = int(module.in_features)  # type: ignore[arg-type]
            weight = next(module.parameters())
            dev = weight.device if weight.device.type != "meta" else model_device(model)
            i = shared.add(f"{family} of layer {l}", n, dev)
            index[family].append(i)
            handles.append(module.register_forward_pre_hook(shared.hook(i)))

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _StopForward

    handles.append(layer_list(model)[-1].register_forward_hook(stop))
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            starts = range(0, windows.shape[0], batch_size)
            for s in tqdm(starts, desc="calibration", unit="batch", disable=not progress):
                batch = windows[s : s + batch_size].to(device)
                shared.new_batch()
                try:
                    model(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        shared.new_batch()
    shared.finish()
    grams = {f: [shared.resolved(i) for i in idx] for f, idx in index.items()}
    n_shared = sum(1 for owner in shared.alias.values() if owner is not None)
    return grams, n_shared


class _Stop(Exception):
    """Raised by the catcher once the first block's inputs are captured."""


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_move(o, device) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def _accumulate_layerwise(
    model: nn.Module,
    families: Sequence[str],
    windows: torch.Tensor,
    batch_size: int,
    progress: bool,
    device: torch.device,
    accumulate: str = "float64",
) -> dict[str, list[torch.Tensor]]:
    """SVD-LLM's low-resource mode: one block at a time on ``device``.

    The inputs of the first block are captured once (embedding forward only),
    then each block in turn is moved to ``device``, run on every batch with
    hooks on its targeted maps, and moved back; its outputs are the next
    block's inputs.  Only one block's weights and Grams are on ``device`` at
    a time.
    """
    from .models import layer_list

    layers = layer_list(model)
    spec_paths = {f: family_modules(model, f) for f in families}
    captured: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]] = []
    first = layers[0]

    class Catcher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_type = getattr(first, "attention_type", None)

        def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            captured.append((hidden.to(device), _move(args, device), _move(kwargs, device)))
            raise _Stop

    layers[0] = Catcher()
    try:
        with torch.no_grad():
            for s in range(0, windows.shape[0], batch_size):
                batch = windows[s : s + batch_size].to(model_device(model))
                try:
                    model(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
    finally:
        layers[0] = first
    grams: dict[str, list[torch.Tensor]] = {f: [] for f in families}
    home = [next(layer.parameters()).device for layer in layers]
    for i in tqdm(
        range(len(layers)), desc="calibration (layer-wise)", unit="layer", disable=not progress
    ):
        layer = layers[i]
        layer.to(device)
        handles = []
        shared = _SharedInputs(accumulate)
        for f in families:
            module = spec_paths[f][i]
            n = int(module.in_features)
            k = shared.add(f"{f} of layer {i}", n, device)
            handles.append(module.register_forward_pre_hook(shared.hook(k)))
        try:
            with torch.no_grad():
                for j, (hidden, args, kwargs) in enumerate(captured):
                    shared.new_batch()
                    out = layer(hidden, *args, **kwargs)
                    captured[j] = (out[0] if isinstance(out, tuple) else out, args, kwargs)
        finally:
            for h in handles:
                h.remove()
            shared.new_batch()
            layer.to(home[i])
        shared.finish()
        for k, f in enumerate(families):
            grams[f].append(shared.resolved(k).cpu())
    return grams


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    families: str | Sequence[str] = ("attention.dense",),
    *,
    text_path: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    token_windows: torch.Tensor | NDArray[np.int64] | None = None,
    samples: int = 256,
    seq_len: int = 2048,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    layerwise: bool = False,
    device: str | torch.device | None = None,
    detokenize: bool | str = False,
    accumulate: str = "float64",
    windows: str = "random",
) -> CalibrationStats:
    """Input covariances of the targeted maps on calibration text.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    tokenizer : tokenizer, optional when ``token_windows`` is given
    families : str or sequence of str
        Family names, or ``"all"``.
    text_path : str or path, optional
        Local calibration text.
    dataset : str, optional
        Hub dataset ``NAME[:CONFIG[:SPLIT]]`` (needs ``datasets`` and internet).
    token_windows : array-like of int, shape=[N, T], optional
        Pre-tokenised windows, used as given (no sampling).
    samples, seq_len, seed : int
        ``samples`` windows of ``seq_len`` tokens, chosen by ``windows`` and
        ``seed`` (SVD-LLM's protocol by default: offsets drawn by
        ``numpy.random.default_rng(seed)``).
    cache_dir : str or path, optional
        Where to keep and look up statistics (one ``.npz`` per family).
    batch_size : int
        Windows per forward pass.
    progress : bool
        Show a tqdm progress bar.
    layerwise : bool, default False
        SVD-LLM's low-resource mode: run one transformer block at a time on
        ``device`` (the model may stay on the CPU), holding one block's
        weights and Grams there at a time.  Not with ``device_map`` models.
    device : str or torch.device, optional
        Where the layer-wise pass runs; default the model's device.
    detokenize : bool or "auto", default False
        Undo WikiText's spacing (:func:`llm_adapter.data.detokenize_wikitext`)
        before tokenising: True always, False never (the text as it is),
        ``"auto"`` when the text is WikiText's tokenized variant
        (:func:`llm_adapter.data.is_tokenized_wikitext`).  Recorded in the
        protocol as ``text_variant``.
    accumulate : {"float64", "mixed"}, default "float64"
        How the Grams ``sum_t x_t x_t^T`` are accumulated.  ``"float64"``:
        float64 products (PSD to float64 roundoff, which the solvers'
        1e-8 PSD tolerance assumes).  ``"mixed"``: a float32 product per
        block of at most :data:`BLOCK_TOKENS` tokens, the blocks summed in
        float64.  Faster on the CPU (half the bytes, twice the SIMD width);
        the covariances differ from float64 ones by about 4e-7 of ``||C||``
        on SmolLM2 (``benchmarks/bench_calibration.py`` measures the time,
        this error and its effect on SVD-LLM's factors), so a singular
        covariance (fewer tokens than inputs) can get eigenvalues below
        ``-1e-8`` of the largest, which the solvers reject.  Not the
        default for that reason.  The cache keeps the two apart.
    windows : {"random", "disjoint"}, default "random"
        How the text's windows are chosen (:func:`llm_adapter.data.sample_windows`'s
        ``mode``).  ``"random"``: SVD-LLM's seeded random offsets (windows may
        overlap, within a seed and across seeds).  ``"disjoint"``:
        non-overlapping slots of ``seq_len`` tokens, shuffled once by
        ``numpy.random.default_rng(0)`` whatever the seed, seed ``s`` taking
        slots ``s * samples`` to ``(s + 1) * samples - 1``: seeds 0, 1, 2, ...
        get pairwise disjoint windows, and seed ``s`` needs ``(s + 1) * samples
        <= n_tokens // seq_len`` (a :class:`~llm_adapter.DataError` otherwise,
        raised once the text is tokenised, before any forward pass).  Recorded
        in the protocol as ``window_rule`` and kept apart in the cache, both
        only for ``"disjoint"``.  Not with ``token_windows``.

    Returns
    -------
    CalibrationStats

    Warns
    -----
    UserWarning
        When there are fewer calibration tokens than a map's input dimension
        (its covariance is then singular; the projection form needs no inverse).
    """
    if not isinstance(detokenize, bool) and detokenize != "auto":
        resolve_detokenize(detokenize)  # the one-line error, before any work
    check_choice("windows", windows, WINDOW_MODES)
    if token_windows is not None and windows != "random":
        raise ConfigurationError(
            f"{mention('windows', windows)} chooses windows of a text; token_windows are "
            "used as given: drop one of them",
            key="windows",
            value=windows,
            reason="does not combine with token_windows",
        )
    fams = resolve_families(model, families)
    variant: str | None = None
    if token_windows is not None:
        chosen = torch.as_tensor(np.asarray(token_windows), dtype=torch.long)
        if chosen.ndim != 2 or chosen.numel() == 0:
            raise AdapterError(
                f"token_windows must have shape (N, T) with N, T >= 1; got {tuple(chosen.shape)}"
            )
        source: dict[str, Any] = {"token_windows": True}
        seq_len = int(chosen.shape[1])
        samples = int(chosen.shape[0])
    else:
        if text_path is None and dataset is None:
            raise AdapterError(
                f"no calibration data: give a text file ({mention('text_path')}) or a dataset "
                f"({mention('dataset')})"
            )
        text, source = load_text(text_path, dataset)
        if tokenizer is None:
            raise AdapterError("calibration text needs a tokenizer (or pass token_windows)")
        detokenized = resolve_detokenize(detokenize, text)
        variant = text_variant(text, detokenized)
        if detokenized:
            text = detokenize_wikitext(text)
        ids = tokenize_text(text, tokenizer)
        chosen = sample_windows(ids, samples, seq_len, seed, mode=windows)
        source["n_tokens"] = int(ids.size)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(chosen.max()) >= int(vocab):
        raise AdapterError(
            f"calibration token id {int(chosen.max())} is out of the model's vocabulary "
            f"({vocab}); the tokenizer does not match the model"
        )
    if batch_size < 1:
        raise AdapterError(f"batch size must be >= 1; got {batch_size}")
    if accumulate not in ACCUMULATIONS:
        raise AdapterError(
            f"accumulate must be one of {', '.join(ACCUMULATIONS)}; got {accumulate!r}"
        )
    tokens = int(chosen.numel())
    protocol = {
        **source,
        "text_variant": variant,
        "windows": samples,
        "samples": samples,
        "seq_len": seq_len,
        "seed": seed if token_windows is None else None,
        **({"window_rule": windows} if windows != "random" else {}),
        "tokens": tokens,
        "windows_sha256": hashlib.sha256(chosen.numpy().astype(np.int64).tobytes()).hexdigest(),
    }

    covariances: dict[str, NDArray[np.float64]] = {}
    identity = json.dumps(model_identity(model), sort_keys=True)
    keys = {f: _windows_key(identity, chosen, f, variant, accumulate, windows) for f in fams}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        for f in fams:
            file = cache / f"calib-{keys[f]}.npz"
            if file.is_file():
                entry = load_arrays(file, ("covariance",))
                if entry is None:  # truncated, or changed since written: computed again
                    warnings.warn(
                        f"calibration cache entry {str(file)!r} is damaged (unreadable, or "
                        "its content does not match its sha256); computing it again",
                        UserWarning,
                        stacklevel=2,
                    )
                    continue
                covariances[f] = np.asarray(entry["covariance"], dtype=np.float64)
    missing = [f for f in fams if f not in covariances]
    seconds = 0.0
    if missing:
        t0 = time.perf_counter()
        if layerwise:
            from .models import resolve_device

            run_on = resolve_device(device) if device is not None else model_device(model)
            if getattr(model, "hf_device_map", None):
                raise ConfigurationError(
                    f"layer-wise calibration does not combine with {mention('device_map')}",
                    key="device_map",
                    value=model.hf_device_map,
                    reason="does not combine with layer-wise calibration",
                )
            grams = _accumulate_layerwise(
                model, missing, chosen, batch_size, progress, run_on, accumulate
            )
        else:
            grams, _ = _accumulate(model, missing, chosen, batch_size, progress, accumulate)
        # C = (G + G^T) / 2 / tokens, once per distinct Gram (maps that share an input
        # share it), in place in torch: the same float64 operations as the numpy
        # expression, without its temporaries over every family's stack
        finished: dict[int, torch.Tensor] = {}
        for f in missing:
            mats = []
            for g in grams[f]:
                if id(g) not in finished:
                    c = _symmetrised(g.cpu().div_(tokens))
                    if not bool(torch.isfinite(c).all()):
                        raise AdapterError(_non_finite_message(model, f))
                    finished[id(g)] = c
                mats.append(finished[id(g)])
            covariances[f] = torch.stack(mats).numpy()
        seconds = time.perf_counter() - t0
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            for f in missing:
                file = cache / f"calib-{keys[f]}.npz"
                save_arrays(file, covariance=covariances[f], protocol=json.dumps(protocol))
    for f in fams:
        n = covariances[f].shape[-1]
        if tokens < n:
            warnings.warn(
                AdapterWarning(
                    f"{tokens} calibration tokens are fewer than the input dimension {n} of "
                    f"{f}: its covariance is singular (the projection form needs no inverse; "
                    f"use more {mention('samples')} or a longer {mention('seq_len')} for a "
                    "full-rank estimate)"
                ),
                stacklevel=2,
            )
    ordered = {f: covariances[f] for f in fams}
    return CalibrationStats(
        covariances=ordered,
        tokens=tokens,
        protocol=protocol,
        seconds=seconds,
        cached=not missing,
        windows=chosen,
    )
