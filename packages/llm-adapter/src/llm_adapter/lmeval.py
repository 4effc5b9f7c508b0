"""lm-evaluation-harness tasks on a loaded (compressed or plain) model.

:class:`HarnessTask` is the harness as one evaluation task
(:func:`llm_adapter.evaluate.evaluate_model`); :func:`run_tasks` hands the
model that :func:`llm_adapter.load` returned, low-rank modules and all, to
the harness's Python API (``lm_eval.models.huggingface.HFLM(pretrained=model,
tokenizer=...)`` and ``lm_eval.simple_evaluate``): no export, no second copy
of the weights.  The
figures are the harness's own (its metrics and its stderr), returned as one
JSON-ready dict.  The harness is the optional extra ``llm-adapter[eval]``
(``lm-eval``); ``make`` installs it.

**Local data.**  The harness reads its datasets from the hub.  Any task can
read local files instead: ``task_data={"arc_easy": "ARC-Easy-Test.jsonl"}``
(``--task-data arc_easy=PATH`` on the command line) loads the task's own
configuration (prompt, choices, metrics, ``process_docs``) and replaces only
its dataset by the file (``.jsonl``/``.json``, ``.csv`` or ``.parquet``),
which must have the columns of the hub dataset; it serves as the split the
task evaluates (its ``test_split``, else its ``validation_split``).
HellaSwag also reads the six-lines-per-item text of ``../shared/data/hellaswag``:
each item becomes an original-format record (``activity_label``, ``ctx_a``,
``ctx_b``, ``endings``, ``label``) whose whole context is ``ctx_a`` (the file
has ``ctx_a`` and ``ctx_b`` already joined; the capital that ``ctx_b`` gets in
the harness is restored as :func:`llm_adapter.evaluate.read_hellaswag`
restores it), and the harness's own ``process_docs`` and scoring run
unchanged.

**Offline.**  A task without local data needs its hub dataset.  When the hub
cannot be reached (no network, or ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
set) and the dataset is not in the local cache, :func:`check_tasks` fails at
once with one line naming the task, its dataset and ``--task-data``, before a
model is loaded.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from .errors import AdapterError, mention
from .evaluate import (
    hellaswag_jsonl,
    hellaswag_text_blocks,
    is_jsonl,
    read_text_file,
    split_lines,
)

__all__ = [
    "HARNESS_EXTRA",
    "HarnessTask",
    "check_tasks",
    "harness_version",
    "hellaswag_records",
    "parse_task_data",
    "parse_tasks",
    "run_tasks",
]

#: how to install the harness
HARNESS_EXTRA = "pip install 'llm-adapter[eval]' (lm-eval)"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def harness_version() -> str:
    """The installed lm-evaluation-harness version.

    Returns
    -------
    str

    Raises
    ------
    AdapterError
        When the harness is not installed (the message says how to install it).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise AdapterError(
            f"{mention('tasks')} needs lm-evaluation-harness, which is not installed; "
            f"{HARNESS_EXTRA}"
        ) from None


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from ``"hellaswag,arc_easy"`` or a sequence, without duplicates.

    Parameters
    ----------
    tasks : str or sequence of str

    Returns
    -------
    list of str
    """
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not out:
        raise AdapterError(
            f"{mention('tasks')} is empty; give task names such as hellaswag,arc_easy"
        )
    return out


def parse_task_data(values: Sequence[str] | None) -> dict[str, str]:
    """``["hellaswag=PATH", ...]`` (``--task-data``, repeatable) as a dict.

    Parameters
    ----------
    values : sequence of str or None

    Returns
    -------
    dict of str to str
        Task name -> local file.
    """
    out: dict[str, str] = {}
    for value in values or ():
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AdapterError(
                f"{mention('task_data')} {value!r}: expected TASK=PATH, e.g. hellaswag=val.jsonl"
            )
        if not Path(path.strip()).is_file():
            raise AdapterError(f"{mention('task_data')} {value!r}: {path.strip()} is not a file")
        out[name.strip()] = path.strip()
    return out


# ------------------------------------------------------------------ HellaSwag data


def hellaswag_records(
    path: str | os.PathLike[str], *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Original-format HellaSwag records from the six-line text or a jsonl file.

    Parameters
    ----------
    path : str or path
        ``*.txt[.bz2|.gz]`` (six lines per item: ``activity_label: ctx``, the
        gold label, four endings) or ``*.jsonl[.gz|.bz2]`` with the original
        fields (read as they are).
    limit : int, optional
        The first ``limit`` items.

    Returns
    -------
    list of dict
        ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``: what
        the harness's ``hellaswag`` ``process_docs`` expects.  From the text
        format ``ctx_b`` is empty and ``ctx_a`` holds the whole context with
        ``ctx_b``'s capital restored, so the harness builds the same query as
        :func:`llm_adapter.evaluate.read_hellaswag`.
    """
    p = Path(path)
    text = read_text_file(p)
    if is_jsonl(p):
        return list(hellaswag_jsonl(p, text, limit))
    records: list[dict[str, Any]] = []
    for context, label, endings in hellaswag_text_blocks(split_lines(text), str(p)):
        head, sep, ctx = context.partition(": ")
        if not sep:
            head, ctx = "", context
        records.append(
            {"activity_label": head, "ctx_a": ctx, "ctx_b": "", "endings": endings, "label": label}
        )
        if limit is not None and len(records) >= limit:
            break
    return records


# ------------------------------------------------------------------ task configs


@functools.cache
def _task_manager(include_defaults: bool) -> Any:
    """The harness's task index (built once per process: indexing reads every task YAML)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _harness_yaml(name: str) -> Path:
    """The harness's own YAML of a built-in single-file task (hellaswag)."""
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / name / f"{name}.yaml"


def _local_config(cfg: dict[str, Any], data: Path, name: str) -> dict[str, Any]:
    """The task's own config with its dataset replaced by one local file."""
    suffixes = [s for s in data.suffixes if s not in {".gz", ".bz2", ".xz", ".zst"}]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise AdapterError(
            f"{mention('task_data')} {name}={data}: unknown file type; give .jsonl, .json, "
            ".csv or .parquet "
            "with the columns of the task's hub dataset"
        )
    split = cfg.get("test_split") or cfg.get("validation_split")
    if not split:
        raise AdapterError(
            f"task {name!r} names neither a test nor a validation split; "
            "it cannot be pointed at one local file"
        )
    out = dict(cfg)
    out.update(
        task=name,
        dataset_path=fmt,
        dataset_name=None,
        dataset_kwargs={"data_files": {str(split): str(data)}},
    )
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if out.get(key) not in (None, split):
            out[key] = None
    return out


def _why_offline() -> str | None:
    """Why the hub cannot be used, or None: an offline variable, or no TCP connection in 3 s."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or 443), timeout=3.0).close()
    except OSError:
        return f"{host} cannot be reached"
    return None


def _dataset_cached(dataset: str) -> bool:
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    roots = [
        Path(os.environ.get("HF_HUB_CACHE") or home / "hub"),
        Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets"),
    ]
    keys = {dataset.replace("/", "--").lower(), dataset.replace("/", "___").lower()}
    for root in roots:
        if root.is_dir() and any(any(k in p.name.lower() for k in keys) for p in root.iterdir()):
            return True
    return False


def _hub_manager(names: Sequence[str]) -> Any:
    """The full task index; unknown names and unreachable hub datasets fail at once."""
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = _task_manager(include_defaults=True)
    index = manager.task_index
    why: str | None = None
    checked = False
    for name in names:
        entry = index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AdapterError(f"unknown lm-evaluation-harness task {name!r}{hint}")
        dataset = None
        if entry.yaml_path is not None:
            dataset = load_yaml(entry.yaml_path, resolve_func=False).get("dataset_path")
        if dataset is not None and _dataset_cached(str(dataset)):
            continue
        if not checked:
            why, checked = _why_offline(), True
        if why is not None:
            what = f"hub dataset {dataset!r}" if dataset else "hub datasets"
            raise AdapterError(
                f"task {name!r} reads {what}, but {why} and it is not in the local cache; "
                f"give local files with {mention('task_data')} {name}=PATH (jsonl/csv/parquet "
                "with the "
                "hub dataset's columns)"
            )
    return manager


def check_tasks(
    tasks: str | Sequence[str], task_data: Mapping[str, str | os.PathLike[str]] | None = None
) -> Any:
    """Check task names and data before any model is loaded; fail in one line.

    Parameters
    ----------
    tasks : str or sequence of str
    task_data : mapping of str to path, optional

    Returns
    -------
    lm_eval.tasks.TaskManager
        The harness's task index, for :func:`run_tasks`.

    Raises
    ------
    AdapterError
        The harness is not installed, a task is unknown, a ``task_data``
        entry names a task not asked for or a missing file, or a task needs a
        hub dataset that cannot be had (offline and not cached).
    """
    harness_version()
    names = parse_tasks(tasks)
    local = dict(task_data or {})
    for name, path in local.items():
        if name not in names:
            raise AdapterError(
                f"{mention('task_data')} names {name!r}, which is not in {mention('tasks')} {names}"
            )
        if not Path(path).is_file():
            raise AdapterError(f"{mention('task_data')} {name}={path}: not a file")
    hub = [n for n in names if n not in local]
    if hub:
        return _hub_manager(hub)
    return _task_manager(include_defaults=False)


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str],
    *,
    task_data: Mapping[str, str | os.PathLike[str]] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    bootstrap_iters: int = 1000,
    seed: int = 0,
    samples: bool = False,
    task_manager: Any = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness tasks on an already-loaded model.

    Parameters
    ----------
    model : transformers causal LM
        As :func:`llm_adapter.load` returns it (compressed or plain), on its device.
    tokenizer : transformers tokenizer
    tasks : str or sequence of str
        Harness task names (``"hellaswag,arc_easy"``).
    task_data : mapping of str to path, optional
        Task -> local file replacing its hub dataset (see the module notes).
    limit : int, optional
        The first ``limit`` documents of each task.
    num_fewshot : int, optional
        Default: each task's own (0 for hellaswag).
    batch_size : int
        Requests per forward pass.
    bootstrap_iters : int
        Bootstrap resamples for the stderrs the harness bootstraps (acc and
        acc_norm use the closed-form binomial stderr).
    seed : int
        The harness's random, numpy, torch and few-shot seeds.
    samples : bool
        Also return the harness's per-document records (``"samples"``).
    task_manager : lm_eval.tasks.TaskManager, optional
        What :func:`check_tasks` returned for the same tasks (saves indexing
        the harness's tasks twice); default: checked here.

    Returns
    -------
    dict
        ``harness`` (its version), ``tasks``: task -> ``{metric: value,
        metric_stderr: value, "n": documents, "source": "local PATH" or "hub"}``,
        ``num_fewshot``, ``limit``, and with ``samples`` the per-document records.
    """
    version = harness_version()
    names = parse_tasks(tasks)
    local = {k: Path(v) for k, v in (task_data or {}).items()}
    if limit is not None and limit < 1:
        raise AdapterError(f"limit={limit} must be >= 1 or None")
    if batch_size < 1:
        raise AdapterError(f"batch_size={batch_size} must be >= 1")
    manager = task_manager if task_manager is not None else check_tasks(names, local)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks._yaml_loader import load_yaml

    specs: list[Any] = [n for n in names if n not in local]
    with tempfile.TemporaryDirectory(prefix="llm-adapter-lmeval-") as tmp:
        for name, path in local.items():
            if name == "hellaswag":
                file = Path(tmp) / "hellaswag_validation.jsonl"
                with open(file, "w", encoding="utf-8") as fh:
                    for rec in hellaswag_records(path, limit=limit):
                        fh.write(json.dumps(rec) + "\n")
                cfg = load_yaml(_harness_yaml("hellaswag"), resolve_func=True)
                specs.append(_local_config(cfg, file, name))
                continue
            index = manager.task_index if manager is not None else {}
            entry = index.get(name) or _task_manager(include_defaults=True).task_index.get(name)
            if entry is None or entry.yaml_path is None:
                raise AdapterError(
                    f"{mention('task_data')} {name}=...: {name!r} is not a harness task with "
                    "one YAML "
                    "configuration (a group takes local data per subtask)"
                )
            specs.append(_local_config(load_yaml(entry.yaml_path, resolve_func=True), path, name))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=specs,
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=samples,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except (ConnectionError, OSError) as exc:
            text = " ".join(str(exc).split())[:200]
            raise AdapterError(
                f"lm-evaluation-harness could not read a dataset ({text}); give local files "
                f"with {mention('task_data')} TASK=PATH"
            ) from None
    if res is None:
        raise AdapterError("lm-evaluation-harness returned no results")
    out_tasks: dict[str, dict[str, Any]] = {}
    for task, metrics in res["results"].items():
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            if "," not in key:
                continue
            metric, _, filt = key.partition(",")
            row[metric if filt == "none" else key] = None if value == "N/A" else value
        counts = res.get("n-samples", {}).get(task, {})
        row["n"] = counts.get("effective")
        row["source"] = f"local {local[task]}" if task in local else "hub"
        out_tasks[task] = row
    out: dict[str, Any] = {
        "harness": f"lm-eval {version}",
        "tasks": out_tasks,
        "num_fewshot": res.get("n-shot", {}),
        "limit": limit,
    }
    if samples:
        out["samples"] = res.get("samples", {})
    return out


@dataclass(frozen=True)
class HarnessTask:
    """lm-evaluation-harness tasks (see :func:`run_tasks`) as one evaluation task.

    Its figures go under one key, ``lm_eval``.

    Attributes
    ----------
    tasks : str or sequence of str
        Harness task names (``"hellaswag,arc_easy"``).
    task_data : mapping of str to path
        Task -> local file replacing its hub dataset.
    limit : int, optional
        The first ``limit`` documents of each task.
    num_fewshot : int, optional
        Default: each task's own.
    task_manager : lm_eval.tasks.TaskManager, optional
        What :func:`check_tasks` returned for the same tasks.
    """

    name: ClassVar[str] = "lm_eval"
    tasks: str | Sequence[str] = ()
    task_data: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    limit: int | None = None
    num_fewshot: int | None = None
    task_manager: Any = None

    def run(
        self, model: Any, tokenizer: Any, *, batch_size: int, progress: bool, per_item: bool
    ) -> dict[str, Any]:
        """``{"lm_eval": run_tasks(...)}`` (``progress`` and ``per_item`` are not used)."""
        return {
            "lm_eval": run_tasks(
                model,
                tokenizer,
                self.tasks,
                task_data=self.task_data,
                limit=self.limit,
                num_fewshot=self.num_fewshot,
                batch_size=batch_size,
                task_manager=self.task_manager,
            )
        }
