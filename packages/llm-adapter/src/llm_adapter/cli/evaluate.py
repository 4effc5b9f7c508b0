"""``llm-adapter evaluate``: perplexity, HellaSwag and harness tasks of a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from . import add_model, check_hub_dataset, check_hub_model, subcommand

__all__ = ["register", "run_cli"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers`` (``func`` = :func:`run_cli`)."""
    p = subcommand(
        subparsers,
        "evaluate",
        (
            "Evaluate a model: WikiText-2 perplexity (SVD-LLM protocol: non-overlapping "
            "windows of --seq-len tokens, or a sliding window with --stride) and HellaSwag "
            "acc/acc_norm (lm-evaluation-harness preprocessing and length normalisation). "
            "With neither --wikitext nor --hellaswag both are read from the hub "
            "(needs the 'datasets' package); 'hub' as a value reads that one from the hub."
        ),
    )
    add_model(p, "checkpoint folder, .gguf file or hub name")
    p.add_argument(
        "--wikitext",
        metavar="PATH",
        help="WikiText-2 test text file, or 'hub' (default: none; 'hub' when no other "
        "benchmark is given)",
    )
    p.add_argument(
        "--hellaswag",
        metavar="PATH",
        help="HellaSwag .txt[.bz2] or .jsonl, or 'hub' (default: none; 'hub' when no other "
        "benchmark is given)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length in tokens (default: the model's training context, from its "
        "TRAINING.json, a compressed checkpoint's record, or max_position_embeddings)",
    )
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: none)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N HellaSwag items (and documents of each --tasks task) "
        "(default: all)",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=None,
        help="score only N perplexity windows (default: all)",
    )
    p.add_argument(
        "--windows",
        choices=["first", "spread"],
        default="first",
        help="which --max-windows windows: the first N, or N spread over the whole text "
        "(numpy default_rng(--window-seed).choice without replacement, sorted) (default: first)",
    )
    p.add_argument(
        "--window-seed",
        type=int,
        default=0,
        help="seed of --windows spread (default: 0)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows per pass (HellaSwag: 4x)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on CUDA), float32, ...")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    _add_harness_arguments(p)
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Run ``llm-adapter evaluate`` from parsed arguments; returns the exit status."""
    from ..checkpoint import load, model_context
    from ..eval_tasks import make_task
    from ..evaluate import (
        HUB_HELLASWAG,
        HUB_WIKITEXT,
        evaluate_model,
        prepare_for_eval,
        read_hellaswag,
        read_wikitext,
    )
    from ..models import check_finite, model_device, resolve_device, resolve_dtype
    from ..safetensors_file import check_weight_files

    tasks = getattr(args, "tasks", None)
    neither = args.wikitext is None and args.hellaswag is None and tasks is None
    hub_w = neither or args.wikitext == "hub"
    hub_h = neither or args.hellaswag == "hub"
    wikitext = None if args.wikitext in (None, "hub") else args.wikitext
    hellaswag = None if args.hellaswag in (None, "hub") else args.hellaswag
    for value in (wikitext, hellaswag):
        if value is not None and not Path(value).is_file():
            raise AdapterError(f"{value} is not a file; give an existing path or 'hub'")
    for flag, number, low in (
        ("--seq-len", args.seq_len, 2),
        ("--stride", args.stride, 1),
        ("--limit", args.limit, 1),
        ("--max-windows", args.max_windows, 1),
        ("--batch-size", args.batch_size, 1),
        ("--window-seed", args.window_seed, 0),
    ):
        if number is not None and number < low:
            raise AdapterError(f"{flag} must be >= {low}; got {flag} {number}")
    if args.windows == "spread" and args.stride is not None:
        raise AdapterError(
            "--windows spread chooses among non-overlapping windows; drop --stride or "
            "--windows spread"
        )
    resolve_dtype(None if args.dtype == "auto" else args.dtype)
    resolve_device(args.device)
    items = read_hellaswag(hellaswag, limit=args.limit) if hellaswag is not None else None
    if wikitext is not None:
        read_wikitext(wikitext)  # a damaged file fails here, before the model loads
    manager: Any = None
    task_data: dict[str, str] = {}
    if tasks is not None:  # harness tasks: checked (offline, names, files) before loading
        from ..lmeval import check_tasks, parse_task_data

        task_data = parse_task_data(getattr(args, "task_data", None))
        manager = check_tasks(tasks, task_data)
    elif getattr(args, "task_data", None) or getattr(args, "num_fewshot", None) is not None:
        raise AdapterError("--task-data and --num-fewshot go with --tasks; add --tasks NAMES")

    check_hub_model(args.model)
    if hub_w:
        check_hub_dataset(HUB_WIKITEXT[0], "--wikitext PATH")
    if hub_h:
        check_hub_dataset(HUB_HELLASWAG, "--hellaswag PATH")
    check_weight_files(args.model)
    model, tokenizer = load(args.model, device=args.device)
    check_finite(model.state_dict(), f"the model {str(args.model)!r}")
    model = prepare_for_eval(model, args.device, args.dtype)
    seq_len = args.seq_len or model_context(args.model, getattr(model, "config", None)) or 2048
    to_run = []
    if wikitext is not None or hub_w:
        to_run.append(
            make_task(
                "wikitext",
                path=wikitext,
                seq_len=seq_len,
                stride=args.stride,
                max_windows=args.max_windows,
                windows=args.windows,
                window_seed=args.window_seed,
            )
        )
    if hellaswag is not None or hub_h:
        to_run.append(make_task("hellaswag", path=hellaswag, items=items, limit=args.limit))
    if tasks is not None:
        to_run.append(
            make_task(
                "lm_eval",
                tasks=tasks,
                task_data=task_data,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                task_manager=manager,
            )
        )
    out = evaluate_model(
        model, tokenizer, to_run, batch_size=args.batch_size, progress=not args.no_progress
    )
    out = {"model": str(args.model), "device": str(model_device(model)), **out}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        harness = out.pop("lm_eval", None)
        for key, value in out.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value
            print(f"{key:28s} {shown}")
        if harness is not None:
            print(f"{'harness':28s} {harness['harness']}")
            for task, row in harness["tasks"].items():
                for key, value in row.items():
                    shown = f"{value:.6g}" if isinstance(value, float) else value
                    print(f"{task + ' ' + key:28s} {shown}")
    sys.stdout.flush()
    return 0


def _add_harness_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--tasks``, ``--task-data`` and ``--num-fewshot`` to the ``evaluate`` parser.

    Parameters
    ----------
    p : argparse.ArgumentParser
    """
    p.add_argument(
        "--tasks",
        metavar="T1,T2",
        help="lm-evaluation-harness tasks, e.g. hellaswag,arc_easy,piqa (needs "
        "llm-adapter[eval]); their metrics and stderr go in the output (default: none)",
    )
    p.add_argument(
        "--task-data",
        action="append",
        metavar="TASK=PATH",
        help="read TASK's data from a local file instead of the hub (repeatable); hellaswag "
        "also takes the six-line text of ../shared/data/hellaswag (default: the hub)",
    )
    p.add_argument(
        "--num-fewshot",
        type=int,
        metavar="K",
        help="few-shot examples per --tasks task (default: each task's own)",
    )
