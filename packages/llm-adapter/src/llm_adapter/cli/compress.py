"""``llm-adapter compress``: calibrate, compress one method's families, save."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from ..methods import (
    DEFAULT_FAMILIES,
    DEFAULT_RANK_RATIO,
    METHOD_TABLE,
    METHODS,
    PARAMS,
    flag,
    split_families,
)
from . import add_model, check_hub_dataset, check_hub_model, deprecated_alias, subcommand

__all__ = ["add_method_params", "method_params", "register", "run_compress"]


def add_method_params(p: argparse.ArgumentParser) -> None:
    """One flag per parameter of :data:`llm_adapter.methods.PARAMS` (unset: ``None``)."""
    for key, param in PARAMS.items():
        if param.kind is bool:
            p.add_argument(flag(key), action="store_true", default=None, help=param.help)
            continue
        p.add_argument(
            flag(key),
            type=str if param.kind is float else param.kind,
            choices=param.choices or None,
            default=None,
            help=f"{param.help} (default {param.default})",
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
    from ..atomic import clean_leftovers
    from ..calibrate import calibrate
    from ..checkpoint import load, model_context, save
    from ..compress import CompressionConfig, check_config, compress_model
    from ..files import check_text_file, check_writable_dir
    from ..manifest import check_output_dir
    from ..models import check_finite, resolve_device, resolve_dtype, resolve_families
    from ..safetensors_file import check_weight_files

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
    for option, value, low in (
        ("--calib-samples", args.calib_samples, 1),
        ("--batch-size", args.batch_size, 1),
        ("--calib-seq-len", args.calib_seq_len, 2),
        ("--seed", args.seed, 0),
    ):
        if value is not None and value < low:
            raise AdapterError(f"{option} must be >= {low}; got {option} {value}")
    resolve_dtype(args.dtype)
    resolve_device(args.device)
    out = Path(args.out)
    for line in clean_leftovers(out):
        print(f"llm-adapter: {line}", file=sys.stderr)
    check_output_dir(out, overwrite=args.overwrite, sources=[args.model])
    if args.calib_text is not None:
        check_text_file(args.calib_text, "calibration file")
    if args.cache_dir is not None:
        check_writable_dir(args.cache_dir, "--cache-dir")
    has_data = args.calib_text is not None or args.calib_dataset is not None
    if config.needs_calibration and not has_data:
        raise AdapterError(
            f"method {config.method!r} needs calibration data: pass --calib-text PATH "
            "or --calib-dataset NAME"
        )
    if args.layerwise and args.device_map is not None:
        raise AdapterError("--layerwise and --device-map are alternatives; pass one of them")
    check_hub_model(args.model)
    if args.calib_dataset is not None:
        check_hub_dataset(args.calib_dataset.split(":")[0], "--calib-text PATH")
    check_weight_files(args.model)
    model, tokenizer = load(
        args.model,
        device="cpu" if args.layerwise else args.device,
        dtype=args.dtype,
        device_map=args.device_map,
    )
    check_finite(model.state_dict(), f"the model {str(args.model)!r}")
    families: Sequence[str] = resolve_families(model, list(config.families))
    check_config(model, config, families)
    progress = not args.no_progress
    stats = None
    if has_data:
        seq_len = args.calib_seq_len or model_context(args.model, model.config) or 2048
        stats = calibrate(
            model,
            tokenizer,
            families,
            text_path=args.calib_text,
            dataset=args.calib_dataset,
            samples=args.calib_samples,
            seq_len=seq_len,
            seed=args.seed,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            progress=progress,
            layerwise=args.layerwise,
            device=args.device if args.layerwise else None,
            detokenize={"yes": True, "no": False}.get(args.calib_detokenize, "auto"),
        )
    report = compress_model(model, config, stats, progress=progress)
    report.model = str(args.model)
    t0 = time.perf_counter()
    save(model, tokenizer, report, out, overwrite=args.overwrite)
    report.timings["save"] = time.perf_counter() - t0
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(report.summary_table())
        print(f"saved to {out}")
    return 0
