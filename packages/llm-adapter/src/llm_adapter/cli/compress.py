"""``llm-adapter compress``: calibrate, compress one method's families, save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from ..methods import (
    DEFAULT_FAMILIES,
    DEFAULT_RANK_RATIO,
    METHOD_TABLE,
    METHODS,
    PARAMS,
    split_families,
)
from . import add_model, deprecated_alias, flag, option_help, subcommand

__all__ = ["add_method_params", "method_params", "register", "run_compress"]


def add_method_params(p: argparse.ArgumentParser) -> None:
    """One flag per parameter of :data:`llm_adapter.methods.PARAMS` (unset: ``None``)."""
    for key, param in PARAMS.items():
        if param.kind is bool:
            p.add_argument(
                flag(key), action="store_true", default=None, help=option_help(param.help)
            )
            continue
        p.add_argument(
            flag(key),
            type=str if param.kind is float else param.kind,
            choices=param.choices or None,
            default=None,
            help=f"{option_help(param.help)} (default {param.default})",
        )


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method parameters given on the command line (checked by the registry)."""
    return {key: getattr(args, key) for key in PARAMS if getattr(args, key, None) is not None}


def register(subparsers: Any) -> None:
    """Add the ``compress`` subcommand."""
    p = subcommand(
        subparsers,
        "compress",
        "Calibrate, compress the chosen families with one method, and save the "
        "compressed model with a compression.json manifest. Every argument is checked "
        "before the model is loaded.",
    )
    add_model(p, "local directory, .gguf file or hub id (e.g. EleutherAI/pythia-70m)")
    p.add_argument("--method", required=True, choices=METHODS)
    rank = p.add_mutually_exclusive_group()
    rank.add_argument(
        "--rank-ratio",
        type=float,
        default=None,
        help=f"d/D, D = output dimension (default {DEFAULT_RANK_RATIO})",
    )
    rank.add_argument(
        "--param-ratio",
        type=float,
        default=None,
        help="fraction of the family's weights kept (default: none, --rank-ratio decides)",
    )
    p.add_argument(
        "--families",
        type=split_families,
        default=DEFAULT_FAMILIES,
        help="comma-separated families, or 'all'",
    )
    add_method_params(p)
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--calib-text", default=None, help="calibration text file (default: none)")
    calib.add_argument(
        "--calib-dataset",
        default=None,
        help="hub dataset NAME[:CONFIG[:SPLIT]] (default: none; needs network or the cache)",
    )
    p.add_argument("--calib-samples", type=int, default=256, help="calibration windows")
    p.add_argument(
        "--calib-detokenize",
        choices=["auto", "yes", "no"],
        default="no",
        help="undo WikiText's spacing (' @-@ ' -> '-', ' , ' -> ', ', ...) by "
        "lm-evaluation-harness's rules before tokenising: yes, no, or auto (when the text is "
        "WikiText's tokenized variant, with <unk>) (default: no, the text as it is)",
    )
    p.add_argument(
        "--calib-windows",
        choices=["random", "disjoint"],
        default="random",
        help="how the calibration windows are chosen: random (seeded random offsets, "
        "windows may overlap) or disjoint (non-overlapping windows, disjoint across --seed "
        "0, 1, 2, ...; seed s needs (s + 1) x --calib-samples of them in the text) "
        "(default: random)",
    )
    p.add_argument(
        "--calib-seq-len",
        type=int,
        default=None,
        help="calibration window in tokens (default: the model's training context, from its "
        "TRAINING.json or max_position_embeddings)",
    )
    deprecated_alias(p, "--seq-len", "--calib-seq-len", type=int)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--cache-dir", default=None, help="calibration statistics cache (default: none)")
    p.add_argument(
        "--layerwise",
        action="store_true",
        help="low-resource mode: keep the model on the CPU and calibrate one block at a "
        "time on --device",
    )
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda (auto takes the GPU when there is one)"
    )
    p.add_argument(
        "--device-map",
        default=None,
        choices=["auto"],
        help="let accelerate place the model (default: none, --device decides)",
    )
    p.add_argument(
        "--dtype", default=None, help="float32 | float16 | bfloat16 (default: the checkpoint's)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output directory, if llm-adapter wrote it and it holds "
        "nothing else",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    p.set_defaults(func=run_compress)


def run_compress(args: argparse.Namespace) -> int:
    """The ``compress`` subcommand: every argument is checked before the model is loaded."""
    from ..compress import CompressionConfig
    from ..jobs import CompressRequest
    from ..jobs import run_compress as compress_job

    for key in method_params(args):  # given explicitly, even at its default value
        takers = [m.name for m in METHOD_TABLE.values() if key in m.params]
        if key not in METHOD_TABLE[args.method].params:
            raise AdapterError(
                f"{flag(key)} applies to --method {' or '.join(takers)}"
                f"{' only' if len(takers) == 1 else ''}; got --method {args.method} "
                f"(drop {flag(key)}, or choose a method that takes it)"
            )
    config = CompressionConfig(
        method=args.method,
        rank_ratio=args.rank_ratio if args.rank_ratio is not None else DEFAULT_RANK_RATIO,
        param_ratio=args.param_ratio,
        families=args.families,
        **method_params(args),
    )
    request = CompressRequest(
        model=args.model,
        out=args.out,
        config=config,
        calib_text=args.calib_text,
        calib_dataset=args.calib_dataset,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        calib_detokenize=args.calib_detokenize,
        calib_windows=args.calib_windows,
        seed=args.seed,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        layerwise=args.layerwise,
        device=args.device,
        device_map=args.device_map,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    report = compress_job(request, log=lambda line: print(f"llm-adapter: {line}", file=sys.stderr))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(report.summary_table())
        print(f"saved to {Path(request.out)}")
    return 0
