"""``llm-adapter export``: a compressed checkpoint as a plain dense one, or as ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import add_model, subcommand

__all__ = ["register", "run_export"]


def register(subparsers: Any) -> None:
    """Add the ``export`` subcommand."""
    p = subcommand(
        subparsers,
        "export",
        "Multiply out the low-rank factors (W' = L R) and write a checkpoint "
        "that AutoModelForCausalLM.from_pretrained loads without llm-adapter: the original "
        "model's size, the compressed model's outputs (to float tolerance). With --format "
        "onnx: one ONNX file (input_ids -> logits) whose low-rank maps stay two MatMuls, "
        "shared bases stored once, so it keeps the compressed size; runs with ONNX Runtime.",
    )
    add_model(p, "directory written by compress", metavar="CHECKPOINT")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the new directory (with --format onnx: a .onnx file)",
    )
    p.add_argument(
        "--format",
        default="safetensors",
        choices=["safetensors", "onnx"],
        help="safetensors: dense checkpoint (default); onnx: factors kept, for ONNX Runtime",
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (as stored), float32, bfloat16, float16, float64"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out, if llm-adapter wrote it and it holds nothing else",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="reload the export with AutoModelForCausalLM and print the largest logit "
        "difference to the compressed model on a few random token windows",
    )
    p.set_defaults(func=run_export)


def _verify(source: Path, out: Path) -> float:
    """Largest |logit difference| between ``load(source)`` and ``from_pretrained(out)``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..checkpoint import load

    compressed: Any
    compressed, _ = load(source, device="cpu")
    dense = AutoModelForCausalLM.from_pretrained(str(out))
    dense.eval()
    vocab = int(compressed.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 32), generator=gen)
    with torch.no_grad():
        a = compressed(input_ids=ids).logits.double()
        b = dense(input_ids=ids).logits.double()
    return float((a - b).abs().max())


def _run_onnx(args: argparse.Namespace) -> int:
    from ..deploy import export_onnx, onnx_initializer_bytes
    from ..errors import AdapterError

    if args.dtype != "auto":
        raise AdapterError(
            f"--dtype {args.dtype} does not apply to --format onnx (the ONNX file is float32); "
            "leave --dtype out"
        )
    out = export_onnx(args.model, args.out, overwrite=args.overwrite)
    print(f"ONNX export {out}")
    stored = onnx_initializer_bytes(out)
    print(f"  file: {out.stat().st_size:,} bytes; weights stored: {stored:,} bytes")
    if args.verify:
        import torch

        from ..checkpoint import load
        from ..deploy import onnx_logits

        model: Any
        model, _ = load(args.model, device="cpu")
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, int(model.config.vocab_size), (2, 32), generator=gen)
        with torch.no_grad():
            ref = model(input_ids=ids).logits.float().numpy()
        diff = float(abs(onnx_logits(out, ids) - ref).max())
        print(
            f"  max |logit difference| to the model (ONNX Runtime): {diff:.3g} "
            f"(largest |logit| {float(abs(ref).max()):.3g})"
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` subcommand."""
    source = args.model  # given once, positionally or as --model (checked by main)
    if args.format == "onnx":
        return _run_onnx(args)
    from ..atomic import clean_leftovers
    from ..export import checkpoint_summary, export_dense, format_summary

    for line in clean_leftovers(args.out):
        print(f"llm-adapter: {line}", file=sys.stderr)

    out = export_dense(source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    summary = checkpoint_summary(out)
    print(f"dense export {out}")
    for line in format_summary(summary):
        print(line)
    if args.verify:
        diff = _verify(Path(source), out)
        print(f"  max |logit difference| to the compressed model: {diff:.3g}")
    return 0
