"""``llm-adapter info``: describe a checkpoint (compressed, plain or GGUF)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from . import add_model, model_argument, subcommand

__all__ = ["register", "run_info"]


def register(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    p = subcommand(
        subparsers,
        "info",
        "Describe a checkpoint written by llm-adapter compress: method, ranks, "
        "parameters and per-family errors (or a plain Hugging Face checkpoint's shape).",
    )
    add_model(p, "checkpoint directory or .gguf file")
    p.add_argument("--json", action="store_true", help="print compression.json as is")
    p.set_defaults(func=run_info)


def _info_plain(root: Path) -> int:
    """Describe a plain Hugging Face checkpoint (no compression manifest)."""
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{str(root / 'config.json')!r} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{str(root / 'config.json')!r} is not a JSON object")
    from ..safetensors_file import check_weight_files

    check_weight_files(root)
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin"))
    print(f"checkpoint {root}")
    print("  plain Hugging Face checkpoint (no compression.json)")
    print(
        f"  model_type: {config.get('model_type')}, layers: {config.get('num_hidden_layers')}, "
        f"hidden: {config.get('hidden_size')}, intermediate: {config.get('intermediate_size')}"
    )
    for file in files:
        print(f"  {file.name}: {file.stat().st_size} bytes")
    from ..export import checkpoint_summary, format_summary

    print("\n".join(format_summary(checkpoint_summary(root))))
    return 0


def run_info(args: argparse.Namespace) -> int:
    """The ``info`` subcommand."""
    from ..compress import CompressionReport
    from ..manifest import MANIFEST, WEIGHTS, check_schema, read_manifest

    path = model_argument(getattr(args, "model_pos", None), args.model)
    root = Path(path)
    if root.is_file():  # a .gguf file: describe its dequantized (cached) copy
        from ..gguf_cache import describe_gguf

        return _info_plain(describe_gguf(root))
    if root.is_dir() and not (root / MANIFEST).is_file() and (root / "config.json").is_file():
        return _info_plain(root)
    manifest = read_manifest(path)
    ck = check_schema(root, manifest)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    weights = root / ck.get("weights", WEIGHTS)
    size = weights.stat().st_size if weights.is_file() else 0
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    report = None
    if manifest.get("method") is not None:
        try:
            report = CompressionReport.from_dict(manifest)
            table = report.summary_table()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AdapterError(
                f"{str(root / MANIFEST)!r} does not describe a compression ({exc!r}); {fix}"
            ) from None
    print(f"checkpoint {path}")
    print(f"  model: {manifest.get('model') or '?'}")
    print(f"  parameters: {ck.get('parameters')}  ({', '.join(map(str, ck.get('dtype', [])))})")
    print(f"  {weights.name}: {size} bytes")
    print(
        f"  low-rank modules: {len(ck.get('lowrank_modules', {}))}, "
        f"shared tensors stored once: {len(ck.get('aliases', {}))}"
    )
    cal = manifest.get("calibration")
    if isinstance(cal, dict) and cal:
        src = cal.get("text_path") or cal.get("dataset") or "token windows"
        print(
            f"  calibration: {src}, {cal.get('samples')} x {cal.get('seq_len')} tokens, "
            f"seed {cal.get('seed')}"
        )
    if report is None:
        print("  plain (uncompressed) checkpoint")
        return 0
    timings = manifest.get("timings", {})
    if isinstance(timings, dict) and timings:
        print("  timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    print(table)
    from ..export import checkpoint_summary, format_summary

    print("\n".join(format_summary(checkpoint_summary(root))))
    return 0
