"""``llm-adapter sweep``: run a sweep configuration, with flags overriding it."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from ..errors import AdapterError, ConfigurationError
from ..methods import METHOD_TABLE, PARAMS, parse_float
from . import FLAGS, deprecated_alias, flag, option_help, subcommand

__all__ = ["apply_overrides", "register", "run_cli"]

#: how a comma-separated value of a method parameter's flag is read
_GRID_TYPES: dict[type, Any] = {
    float: parse_float,
    int: int,
    str: str,
    bool: lambda v: {"true": True, "false": False}[v.strip().lower()],
}

#: flag -> (configuration path, converter)
_OVERRIDES: dict[str, tuple[tuple[str, ...], Any]] = {
    "model": (("model",), str),
    "out": (("out",), str),
    "device": (("device",), str),
    "dtype": (("dtype",), str),
    "families": (("families",), lambda v: [s for s in v.split(";") if s]),
    "rank_ratios": (("rank_ratios",), lambda v: [float(x) for x in v.split(",")]),
    "checkpoints": (("checkpoints",), str),
    "cache_dir": (("cache_dir",), str),
    "calib_text": (("calibration", "text"), str),
    "calib_samples": (("calibration", "samples"), int),
    "calib_seq_len": (("calibration", "seq_len"), int),
    "calib_windows": (("calibration", "windows"), str),
    "wikitext": (("evaluation", "wikitext"), str),
    "hellaswag": (("evaluation", "hellaswag"), str),
    "seq_len": (("evaluation", "seq_len"), int),
    "max_windows": (("evaluation", "max_windows"), int),
    "limit": (("evaluation", "limit"), int),
    "batch_size": (("evaluation", "batch_size"), int),
}


#: the option that sets a namespace attribute, where it is not ``--`` + the attribute
_FLAG_NAMES = {"out": "--results", "rank_ratios": "--rank-ratio", "methods": "--method"}


def _flag(dest: str) -> str:
    return _FLAG_NAMES.get(dest, flag(dest))


def _convert(dest: str, conv: Any, value: Any) -> Any:
    """``conv(value)``, a conversion failure as a one-line error naming the flag."""
    try:
        return conv(value)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{_flag(dest)} {value!r} is not valid: {exc}") from None


def _grid_value(key: str, text: str) -> Any:
    """One comma-separated value of a method parameter's flag: a word the parameter takes
    (``--ridge auto``) as it is, else converted to the parameter's type."""
    word = text.strip().lower()
    if word in PARAMS[key].words:
        return word
    if PARAMS[key].kind is float:
        try:
            return parse_float(text, key)
        except ConfigurationError as exc:  # named as the option it came from
            raise ConfigurationError(
                exc.spelled(FLAGS), key=exc.key, value=exc.value, reason=exc.reason
            ) from None
    return _convert(key, _GRID_TYPES[PARAMS[key].kind], text)


def apply_overrides(config: dict[str, Any], args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Copy of ``config`` with every flag that was given applied; each override is printed."""
    config = copy.deepcopy(config)
    for dest, (path, conv) in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        old = node.get(path[-1], "<unset>")
        new = _convert(dest, conv, value)
        node[path[-1]] = new
        print(f"sweep: {_flag(dest)} {value} overrides {'.'.join(path)} = {old!r}", file=log)
        if dest == "calib_text" and "dataset" in node:  # a file instead of the named dataset
            print(f"sweep: {_flag(dest)} replaces calibration.dataset = {node.pop('dataset')!r}",
                  file=log)  # fmt: skip
    grid = {k: getattr(args, k) for k in ("methods", *PARAMS) if getattr(args, k, None) is not None}
    if grid:
        if "methods" not in grid:
            raise AdapterError(f"{'/'.join(map(flag, PARAMS))} need --method")
        methods = [m.strip() for m in grid["methods"].split(",")]
        for k in grid:
            takers = [m.name for m in METHOD_TABLE.values() if k in m.params]
            if k != "methods" and not any(m in takers for m in methods):
                raise AdapterError(
                    f"{flag(k)} applies to --method {' or '.join(takers)}"
                    f"{' only' if len(takers) == 1 else ''}; got --method {','.join(methods)} "
                    f"(drop {flag(k)}, or choose a method that takes it)"
                )
        tables = []
        for method in grid["methods"].split(","):
            table: dict[str, Any] = {"method": method.strip()}
            entry = METHOD_TABLE.get(method.strip())
            for k in entry.params if entry is not None else ():
                if k in grid:
                    table[k] = [_grid_value(k, x) for x in str(grid[k]).split(",")]
            tables.append(table)
        if "points" in config:
            print(f"sweep: --method replaces the {len(config['points'])} point tables", file=log)
        config["points"] = tables
    if args.no_hellaswag:
        config.setdefault("evaluation", {}).pop("hellaswag", None)
        print("sweep: --no-hellaswag drops evaluation.hellaswag", file=log)
    if args.no_baseline:
        config["baseline"] = False
    return config


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``subparsers``."""
    p = subcommand(
        subparsers,
        "sweep",
        (
            "Compress and evaluate every point of a sweep configuration (TOML or YAML), "
            "appending one JSON line per point to the results file. Rerunning skips done "
            "points. Flags override the configuration only where given, and say so."
        ),
    )
    p.add_argument("config", metavar="CONFIG", nargs="?", help="sweep configuration .toml/.yaml")
    p.add_argument("--model", help="model directory or hub id")
    p.add_argument("--results", dest="out", metavar="FILE", help="results JSONL file")
    deprecated_alias(p, "--out", "--results", dest="out")
    p.add_argument("--device", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", help="evaluation weight dtype (auto: bf16/fp16 on CUDA)")
    p.add_argument("--families", help="family sets separated by ';', each 'a,b' or 'all'")
    p.add_argument(
        "--rank-ratio", "--rank-ratios", dest="rank_ratios", help="comma-separated d/D values"
    )
    p.add_argument(
        "--method",
        "--methods",
        dest="methods",
        help="comma-separated methods (replaces the point tables)",
    )
    for key, param in PARAMS.items():
        p.add_argument(flag(key), help=f"comma-separated values; {option_help(param.help)}")
    p.add_argument("--calib-text", help="calibration text file")
    p.add_argument("--calib-samples", type=int, help="calibration windows")
    p.add_argument(
        "--calib-seq-len",
        type=int,
        help="calibration window in tokens (default: the configuration's, else the model's "
        "training context)",
    )
    p.add_argument(
        "--calib-windows",
        choices=["random", "disjoint"],
        help="how the calibration windows are chosen: random (seeded random offsets) or "
        "disjoint (non-overlapping, disjoint across calibration seeds)",
    )
    p.add_argument("--wikitext", help="perplexity text file")
    p.add_argument("--hellaswag", help="HellaSwag file")
    p.add_argument(
        "--seq-len",
        type=int,
        help="perplexity (evaluation) window in tokens (default: the configuration's, else "
        "the model's training context)",
    )
    p.add_argument("--max-windows", type=int, help="perplexity windows to score")
    p.add_argument("--limit", type=int, help="HellaSwag items to score")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--checkpoints", help="save compressed models here and reuse them")
    p.add_argument("--cache-dir", help="calibration statistics cache")
    p.add_argument("--only", help="run only these methods (comma-separated)")
    p.add_argument("--no-hellaswag", action="store_true", help="skip HellaSwag")
    p.add_argument("--no-baseline", action="store_true", help="skip the uncompressed model")
    p.add_argument("--dry-run", action="store_true", help="list the points and their status")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    for action in p._actions:
        if action.option_strings and action.default is None and action.help:
            if "default" not in action.help and action.help is not argparse.SUPPRESS:
                action.help += " (default: the configuration's)"
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Run ``llm-adapter sweep`` from parsed arguments."""
    from ..experiment.sweep import load_config, run_sweep

    config = load_config(args.config) if args.config else {}
    config = apply_overrides(config, args, sys.stderr)
    if not config.get("points") and not config.get("baseline", True):
        raise AdapterError("no points: give a configuration with [[points]] or --methods")
    only = [m.strip() for m in args.only.split(",")] if args.only else None
    run_sweep(config, only_methods=only, dry_run=args.dry_run, progress=not args.no_progress)
    return 0
