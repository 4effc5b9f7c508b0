"""The evaluation tasks, one registry: perplexity, HellaSwag, lm-evaluation-harness.

Each entry of :data:`EVAL_TASKS` is a task class (a frozen dataclass with a
``name`` and a ``run`` method, :class:`llm_adapter.evaluate.EvalTask`);
:func:`llm_adapter.evaluate.evaluate_model` runs a list of task objects.
docs/architecture.rst says how to add one.
"""

from __future__ import annotations

from typing import Any

from .errors import AdapterError
from .evaluate import EvalTask, HellaSwagTask, PerplexityTask
from .lmeval import HarnessTask

__all__ = ["EVAL_TASKS", "make_task"]

#: task name -> task class
EVAL_TASKS: dict[str, type[Any]] = {
    PerplexityTask.name: PerplexityTask,
    HellaSwagTask.name: HellaSwagTask,
    HarnessTask.name: HarnessTask,
}


def make_task(name: str, **settings: Any) -> EvalTask:
    """The task registered as ``name``, built from its settings (its dataclass fields).

    Parameters
    ----------
    name : str
        A key of :data:`EVAL_TASKS`.
    **settings
        The task's fields (``path``, ``seq_len``, ``limit``, ...).

    Returns
    -------
    EvalTask

    Raises
    ------
    AdapterError
        For a name that is not registered.
    """
    cls = EVAL_TASKS.get(name)
    if cls is None:
        raise AdapterError(
            f"no evaluation task {name!r}; registered: {', '.join(sorted(EVAL_TASKS))}"
        )
    task: EvalTask = cls(**settings)
    return task
