"""``llm-adapter evaluate``: perplexity, HellaSwag and harness tasks of a model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import add_model, subcommand

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
    from ..jobs import EvaluateRequest, run_evaluate

    request = EvaluateRequest(
        model=args.model,
        wikitext=args.wikitext,
        hellaswag=args.hellaswag,
        tasks=getattr(args, "tasks", None),
        task_data=getattr(args, "task_data", None),
        num_fewshot=getattr(args, "num_fewshot", None),
        seq_len=args.seq_len,
        stride=args.stride,
        limit=args.limit,
        max_windows=args.max_windows,
        windows=args.windows,
        window_seed=args.window_seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    out = run_evaluate(request)
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
