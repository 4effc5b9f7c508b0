"""The library's entry points: whole jobs, each taking one request object.

:func:`run_compress` checks a :class:`CompressRequest`, loads the model,
calibrates, compresses and saves; :func:`run_evaluate` does the same for an
:class:`EvaluateRequest` and returns the figures.  ``llm-adapter compress``
and ``llm-adapter evaluate`` build a request from their options and call
them; a sweep (:mod:`llm_adapter.experiment.sweep`) loads and calibrates
once and compresses each of its points with :func:`compress_loaded`, the
step :func:`run_compress` takes after calibrating.

Every setting is checked before the model is loaded.  A bad one is an
:class:`~llm_adapter.AdapterError` naming it by the request's field
(:func:`llm_adapter.errors.mention`), which the command line spells as its
option.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compress import CompressionConfig, CompressionReport
from .data import WINDOW_MODES
from .errors import ConfigurationError, DataError, check_choice, mention

if TYPE_CHECKING:
    from torch import nn

    from .calibrate import CalibrationStats

__all__ = [
    "CompressRequest",
    "EvaluateRequest",
    "check_compress",
    "compress_loaded",
    "run_compress",
    "run_evaluate",
]

#: how a request names the calibration's text treatment (``detokenize`` of
#: :func:`llm_adapter.calibrate`)
_DETOKENIZE: dict[str, bool | str] = {"yes": True, "no": False, "auto": "auto"}


def _at_least(key: str, value: int | None, low: int) -> None:
    """A setting's lower bound, as a :class:`ConfigurationError` naming it."""
    if value is not None and value < low:
        raise ConfigurationError(
            f"{mention(key)} must be >= {low}; got {mention(key, value)}",
            key=key,
            value=value,
            reason=f"must be >= {low}",
        )


@dataclass(frozen=True)
class CompressRequest:
    """One compression job: a model, how to compress it, its calibration, where to save.

    Parameters
    ----------
    model : str
        A local directory, a ``.gguf`` file or a hub id.
    out : str or path
        The output directory (a checkpoint with its ``compression.json``).
    config : CompressionConfig
        The method, its parameters, the budget and the families.
    calib_text, calib_dataset : str, optional
        The calibration data: a local text file, or a hub dataset
        ``NAME[:CONFIG[:SPLIT]]`` (at most one).
    calib_samples : int, default 256
        Calibration windows.
    calib_seq_len : int, optional
        Calibration window in tokens (default: the model's training context).
    calib_detokenize : {"no", "yes", "auto"}, default "no"
        Undo WikiText's spacing before tokenising (``"auto"``: when the text
        is WikiText's tokenized variant).
    calib_windows : {"random", "disjoint"}, default "random"
        How the calibration windows are chosen (``windows`` of
        :func:`llm_adapter.calibrate`): seeded random offsets, or
        non-overlapping windows disjoint across seeds.
    seed : int, default 0
        Seed of the calibration windows.
    batch_size : int, default 8
        Calibration windows per forward pass.
    cache_dir : str, optional
        Calibration statistics cache.
    layerwise : bool, default False
        Keep the model on the CPU and calibrate one block at a time on ``device``.
    device : str, default "auto"
    device_map : str, optional
        ``"auto"``: let accelerate place the model.
    dtype : str, optional
        Weight dtype (default: the checkpoint's).
    overwrite : bool, default False
        Replace an existing output directory that llm-adapter wrote.
    progress : bool, default True
        Progress bars (on stderr).
    """

    model: str
    out: str | os.PathLike[str]
    config: CompressionConfig
    calib_text: str | None = None
    calib_dataset: str | None = None
    calib_samples: int = 256
    calib_seq_len: int | None = None
    calib_detokenize: str = "no"
    calib_windows: str = "random"
    seed: int = 0
    batch_size: int = 8
    cache_dir: str | None = None
    layerwise: bool = False
    device: str = "auto"
    device_map: str | None = None
    dtype: str | None = None
    overwrite: bool = False
    progress: bool = True

    @property
    def has_data(self) -> bool:
        """Whether calibration data are given."""
        return self.calib_text is not None or self.calib_dataset is not None


def check_compress(request: CompressRequest, log: Callable[[str], None] | None = None) -> None:
    """Every check of a compression job that runs before the model is loaded.

    Removes what a dead earlier write to ``request.out`` left beside it (one
    line per action to ``log``), then checks the numbers, the device and
    dtype, the output directory, the calibration data, the cache directory,
    the hub (offline) and the model's weight files.

    Parameters
    ----------
    request : CompressRequest
    log : callable, optional
        Takes one line per leftover removed.

    Raises
    ------
    AdapterError
        Naming the request's field (:class:`ConfigurationError`,
        :class:`DataError`, :class:`CheckpointError`).
    """
    from .atomic import clean_leftovers
    from .files import check_text_file, check_writable_dir
    from .hub import check_hub_dataset, check_hub_model
    from .manifest import check_output_dir
    from .models import resolve_device, resolve_dtype
    from .safetensors_file import check_weight_files

    _at_least("calib_samples", request.calib_samples, 1)
    _at_least("batch_size", request.batch_size, 1)
    _at_least("calib_seq_len", request.calib_seq_len, 2)
    _at_least("seed", request.seed, 0)
    check_choice("calib_detokenize", request.calib_detokenize, _DETOKENIZE)
    check_choice("calib_windows", request.calib_windows, WINDOW_MODES)
    resolve_dtype(request.dtype)
    resolve_device(request.device)
    out = Path(request.out)
    for line in clean_leftovers(out):
        if log is not None:
            log(line)
    check_output_dir(out, overwrite=request.overwrite, sources=[request.model])
    if request.calib_text is not None and request.calib_dataset is not None:
        raise ConfigurationError(
            f"{mention('calib_text')} and {mention('calib_dataset')} are alternatives; "
            "give one of them",
            key="calib_dataset",
            value=request.calib_dataset,
            reason="given with calib_text",
        )
    if request.calib_text is not None:
        check_text_file(request.calib_text, "calibration file")
    if request.cache_dir is not None:
        check_writable_dir(request.cache_dir, mention("cache_dir"))
    config = request.config
    if config.needs_calibration and not request.has_data:
        raise DataError(
            f"method {config.method!r} needs calibration data: pass "
            f"{mention('calib_text')} PATH or {mention('calib_dataset')} NAME",
            key="calib_text",
            value=None,
            reason=f"method {config.method!r} needs calibration data",
        )
    if request.layerwise and request.device_map is not None:
        raise ConfigurationError(
            f"{mention('layerwise')} and {mention('device_map')} are alternatives; pass one "
            "of them",
            key="device_map",
            value=request.device_map,
            reason="does not combine with layerwise",
        )
    check_hub_model(request.model)
    if request.calib_dataset is not None:
        check_hub_dataset(request.calib_dataset.split(":")[0], f"{mention('calib_text')} PATH")
    check_weight_files(request.model)


def compress_loaded(
    model: nn.Module,
    parts: Sequence[CompressionConfig],
    stats: CalibrationStats | None,
    *,
    progress: bool = False,
    extras: Callable[[CompressionConfig], Mapping[str, Any]] | None = None,
) -> CompressionReport:
    """Compress a loaded (and calibrated) model in place; one report for all its parts.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    parts : sequence of CompressionConfig
        Compressed in order, each on its own families (a sweep point with
        ``private`` families has two); their reports are merged, the timings
        summed.
    stats : CalibrationStats, optional
        From :func:`llm_adapter.calibrate` (None for a method without calibration).
    progress : bool
        Progress bars.
    extras : callable, optional
        ``extras(config)``: keyword arguments of :func:`llm_adapter.compress_model`
        for that part (a sweep's components and gradient scores, computed
        once on the dense model).

    Returns
    -------
    CompressionReport
    """
    from .compress import compress_model

    report: CompressionReport | None = None
    for config in parts:
        kwargs = dict(extras(config)) if extras is not None else {}
        if progress:
            kwargs["progress"] = True
        part = compress_model(model, config, stats, **kwargs)
        if report is None:
            report = part
        else:
            report.families.update(part.families)
            for name, seconds in part.timings.items():
                report.timings[name] = report.timings.get(name, 0.0) + seconds
    if report is None:
        raise ConfigurationError(
            "nothing to compress: no configuration given", key="parts", value=[], reason="empty"
        )
    return report


def run_compress(
    request: CompressRequest, log: Callable[[str], None] | None = None
) -> CompressionReport:
    """The whole compression job: check, load, calibrate, compress, save.

    Parameters
    ----------
    request : CompressRequest
    log : callable, optional
        Takes one line per leftover of a dead earlier write removed.

    Returns
    -------
    CompressionReport
        As saved to ``request.out``, with the seconds the save took added to
        its ``timings`` (``"save"``).
    """
    from .calibrate import calibrate
    from .checkpoint import load, model_context, save
    from .compress import check_config
    from .models import check_finite, resolve_families

    check_compress(request, log)
    model, tokenizer = load(
        request.model,
        device="cpu" if request.layerwise else request.device,
        dtype=request.dtype,
        device_map=request.device_map,
    )
    check_finite(model.state_dict(), f"the model {str(request.model)!r}")
    config = request.config
    families: Sequence[str] = resolve_families(model, list(config.families))
    check_config(model, config, families)
    stats = None
    if request.has_data:
        seq_len = request.calib_seq_len or model_context(request.model, model.config) or 2048
        stats = calibrate(
            model,
            tokenizer,
            families,
            text_path=request.calib_text,
            dataset=request.calib_dataset,
            samples=request.calib_samples,
            seq_len=seq_len,
            seed=request.seed,
            cache_dir=request.cache_dir,
            batch_size=request.batch_size,
            progress=request.progress,
            layerwise=request.layerwise,
            device=request.device if request.layerwise else None,
            detokenize=_DETOKENIZE[request.calib_detokenize],
            windows=request.calib_windows,
        )
    report = compress_loaded(model, [config], stats, progress=request.progress)
    report.model = str(request.model)
    t0 = time.perf_counter()
    save(model, tokenizer, report, Path(request.out), overwrite=request.overwrite)
    report.timings["save"] = time.perf_counter() - t0
    return report


@dataclass(frozen=True)
class EvaluateRequest:
    """One evaluation job: a model and the tasks to score it on.

    With none of ``wikitext``, ``hellaswag`` and ``tasks`` given, both
    WikiText-2 and HellaSwag are read from the hub.

    Parameters
    ----------
    model : str
        A checkpoint directory, a ``.gguf`` file or a hub id.
    wikitext, hellaswag : str, optional
        A local file, or ``"hub"``.
    tasks : str, optional
        lm-evaluation-harness tasks, comma-separated.
    task_data : sequence of str, optional
        ``TASK=PATH`` entries: a harness task's data from a local file.
    num_fewshot : int, optional
        Few-shot examples per harness task.
    seq_len : int, optional
        Perplexity window in tokens (default: the model's training context).
    stride : int, optional
        Sliding-window stride.
    limit : int, optional
        HellaSwag items (and documents of each harness task) to score.
    max_windows : int, optional
        Perplexity windows to score.
    windows : {"first", "spread"}, default "first"
    window_seed : int, default 0
    batch_size : int, default 8
    device : str, default "auto"
    dtype : str, default "auto"
    progress : bool, default True
    """

    model: str
    wikitext: str | None = None
    hellaswag: str | None = None
    tasks: str | None = None
    task_data: Sequence[str] | None = None
    num_fewshot: int | None = None
    seq_len: int | None = None
    stride: int | None = None
    limit: int | None = None
    max_windows: int | None = None
    windows: str = "first"
    window_seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


def run_evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """The whole evaluation job: check, load, score every task.

    Parameters
    ----------
    request : EvaluateRequest

    Returns
    -------
    dict
        ``model``, ``device``, then the figures of each task
        (:func:`llm_adapter.evaluate.evaluate_model`).
    """
    from .checkpoint import load, model_context
    from .eval_tasks import make_task
    from .evaluate import (
        HUB_HELLASWAG,
        HUB_WIKITEXT,
        evaluate_model,
        prepare_for_eval,
        read_hellaswag,
        read_wikitext,
    )
    from .hub import check_hub_dataset, check_hub_model
    from .models import check_finite, model_device, resolve_device, resolve_dtype
    from .safetensors_file import check_weight_files

    r = request
    neither = r.wikitext is None and r.hellaswag is None and r.tasks is None
    hub_w = neither or r.wikitext == "hub"
    hub_h = neither or r.hellaswag == "hub"
    wikitext = None if r.wikitext in (None, "hub") else r.wikitext
    hellaswag = None if r.hellaswag in (None, "hub") else r.hellaswag
    for key, value in (("wikitext", wikitext), ("hellaswag", hellaswag)):
        if value is not None and not Path(value).is_file():
            raise DataError(
                f"{value} is not a file; give an existing path or 'hub'",
                key=key,
                value=value,
                reason="not a file",
            )
    _at_least("seq_len", r.seq_len, 2)
    _at_least("stride", r.stride, 1)
    _at_least("limit", r.limit, 1)
    _at_least("max_windows", r.max_windows, 1)
    _at_least("batch_size", r.batch_size, 1)
    _at_least("window_seed", r.window_seed, 0)
    if r.windows == "spread" and r.stride is not None:
        raise ConfigurationError(
            f"{mention('windows', 'spread')} chooses among non-overlapping windows; drop "
            f"{mention('stride')} or {mention('windows', 'spread')}",
            key="stride",
            value=r.stride,
            reason="does not combine with spread windows",
        )
    resolve_dtype(None if r.dtype == "auto" else r.dtype)
    resolve_device(r.device)
    items = read_hellaswag(hellaswag, limit=r.limit) if hellaswag is not None else None
    if wikitext is not None:
        read_wikitext(wikitext)  # a damaged file fails here, before the model loads
    manager: Any = None
    task_data: dict[str, str] = {}
    if r.tasks is not None:  # harness tasks: checked (offline, names, files) before loading
        from .lmeval import check_tasks, parse_task_data

        task_data = parse_task_data(r.task_data)
        manager = check_tasks(r.tasks, task_data)
    elif r.task_data or r.num_fewshot is not None:
        raise ConfigurationError(
            f"{mention('task_data')} and {mention('num_fewshot')} go with {mention('tasks')}; "
            f"add {mention('tasks')} NAMES",
            key="task_data" if r.task_data else "num_fewshot",
            value=r.task_data if r.task_data else r.num_fewshot,
            reason="needs tasks",
        )

    check_hub_model(r.model)
    if hub_w:
        check_hub_dataset(HUB_WIKITEXT[0], f"{mention('wikitext')} PATH")
    if hub_h:
        check_hub_dataset(HUB_HELLASWAG, f"{mention('hellaswag')} PATH")
    check_weight_files(r.model)
    model, tokenizer = load(r.model, device=r.device)
    check_finite(model.state_dict(), f"the model {str(r.model)!r}")
    model = prepare_for_eval(model, r.device, r.dtype)
    seq_len = r.seq_len or model_context(r.model, getattr(model, "config", None)) or 2048
    to_run = []
    if wikitext is not None or hub_w:
        to_run.append(
            make_task(
                "wikitext",
                path=wikitext,
                seq_len=seq_len,
                stride=r.stride,
                max_windows=r.max_windows,
                windows=r.windows,
                window_seed=r.window_seed,
            )
        )
    if hellaswag is not None or hub_h:
        to_run.append(make_task("hellaswag", path=hellaswag, items=items, limit=r.limit))
    if r.tasks is not None:
        to_run.append(
            make_task(
                "lm_eval",
                tasks=r.tasks,
                task_data=task_data,
                limit=r.limit,
                num_fewshot=r.num_fewshot,
                task_manager=manager,
            )
        )
    out = evaluate_model(model, tokenizer, to_run, batch_size=r.batch_size, progress=r.progress)
    return {"model": str(r.model), "device": str(model_device(model)), **out}
