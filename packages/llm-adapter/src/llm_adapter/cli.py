"""The ``llm-adapter`` command line.

Each subcommand lives in the module that implements it and registers itself
through a ``register(subparsers)`` function that adds its parser and sets
``func`` (called with the parsed namespace, returning an exit status).

:func:`main` imports only the module of the subcommand it runs (torch and
transformers are imported by that module, never for ``--help`` or a
misspelled command), and every subcommand checks its arguments before it
loads a model.  Conventions shared by every subcommand:

* the model is given positionally or as ``--model`` (either form);
* ``--out`` is always a directory, ``--seq-len`` always the evaluation window,
  ``--calib-seq-len`` the calibration window;
* every option's help says its default; sequence lengths default to the
  model's own training context (``llm_adapter.checkpoint.model_context``);
* progress bars go to stderr, so ``--json`` output on stdout is unaffected;
* bad input is one line, ``llm-adapter: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import AdapterError

__all__ = [
    "SUBCOMMANDS",
    "build_parser",
    "check_hub_dataset",
    "check_hub_model",
    "deprecated_alias",
    "main",
    "model_argument",
]

#: subcommand -> (module that registers it, one-line help), in the order ``--help`` lists them
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compress": ("compress", "calibrate and compress a model, then save it"),
    "info": ("checkpoint", "describe a saved checkpoint"),
    "evaluate": (
        "evaluate",
        "WikiText-2 perplexity and HellaSwag accuracy of a model or checkpoint",
    ),
    "sweep": ("sweep", "run a grid of compression points, one JSONL row each (resumable)"),
    "report": ("report", "Markdown table and figures from sweep results"),
    "export": ("export", "write a compressed checkpoint as a plain dense transformers checkpoint"),
}
#: the modules that register subcommands
SUBCOMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for m, _ in SUBCOMMANDS.values()))


def _annotate_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to every option's help that does not state its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _annotate_defaults(sub)
            continue
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        if action.nargs == 0 or "default" in str(action.help):
            continue  # flags, help, version; or the help says it already
        if action.default is None or action.default is argparse.SUPPRESS:
            continue  # the help must say what happens (checked by the tests)
        value = action.default
        shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        action.help = f"{action.help} (default: {shown.replace('%', '%%')})"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (also used to generate the CLI reference).

    Parameters
    ----------
    only : str, optional
        Build only this subcommand's full parser (the others get a name and a
        one-line help, enough for ``--help``); default: all of them.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="llm-adapter",
        description="Compress GPT-NeoX (Pythia) models with grassbundle, save, reload, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"llm-adapter {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered: set[str] = set()
    for name, (module, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=help_text)
        elif module not in registered:
            importlib.import_module(f"llm_adapter.{module}").register(subparsers)
            registered.add(module)
    _annotate_defaults(parser)
    return parser


def _subcommand(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def deprecated_alias(
    parser: argparse.ArgumentParser,
    old: str,
    new: str,
    *,
    dest: str | None = None,
    **kwargs: Any,
) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    old, new : str
        Option strings, e.g. ``"--seq-len"`` and ``"--calib-seq-len"``.
    dest : str, optional
        The attribute ``new`` sets; default: derived from ``new``.
    **kwargs
        ``type`` and the like, as for ``new``.
    """
    target: str = dest or new.lstrip("-").replace("-", "_")

    class _Deprecated(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            print(
                f"llm-adapter: warning: {old} is deprecated in '{parser.prog}'; use {new}",
                file=sys.stderr,
            )
            setattr(namespace, target, values)

    parser.add_argument(
        old, dest=target, action=_Deprecated, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
        **kwargs,
    )  # fmt: skip


def model_argument(positional: str | None, option: str | None) -> str:
    """The model of a subcommand given positionally or as ``--model`` (not both).

    Parameters
    ----------
    positional, option : str or None
        The two forms as parsed.

    Returns
    -------
    str
    """
    if positional is not None and option is not None and positional != option:
        raise AdapterError(
            f"the model is given twice ({positional!r} and --model {option!r}); give it once"
        )
    model = positional if positional is not None else option
    if model is None:
        raise AdapterError("no model given: pass a directory or hub id (MODEL or --model MODEL)")
    return model


# ---------------------------------------------------------------- the hub, offline

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_reachable: dict[str, bool] = {}


def _offline_env() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within ``timeout`` seconds."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _reachable:
        url = urlparse(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "huggingface.co", port), timeout).close()
            _reachable[endpoint] = True
        except OSError:
            _reachable[endpoint] = False
    return _reachable[endpoint]


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def _why_offline() -> str | None:
    var = _offline_env()
    if var is not None:
        return f"{var} is set"
    if not _hub_reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        return f"{host} cannot be reached"
    return None


def _is_local(name: str) -> bool:
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_hub_model(name: str, flag: str = "--model") -> None:
    """Fail at once when ``name`` is a hub id that cannot be fetched (offline, not cached).

    Parameters
    ----------
    name : str
        A local directory (left alone) or a hub id.
    flag : str
        The option that takes a local directory instead.
    """
    if _is_local(name):
        return
    if (_hub_cache() / f"models--{name.replace('/', '--')}").is_dir():
        return  # in the local cache: transformers reads it from there
    why = _why_offline()
    if why is not None:
        raise AdapterError(
            f"model {name!r} is a hub id, but {why} and it is not in the local cache "
            f"({_hub_cache()}); pass a local model directory with {flag} PATH"
        )


def check_hub_dataset(name: str, local_flag: str) -> None:
    """Fail at once when the hub dataset ``name`` is needed offline and not cached.

    Parameters
    ----------
    name : str
        Hub dataset name (``NAME``, ``OWNER/NAME``).
    local_flag : str
        The option that reads a local file instead (``--calib-text PATH``).
    """
    why = _why_offline()
    if why is None:
        return
    tail = name.split("/")[-1]
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    roots = [_hub_cache(), Path(os.environ.get("HF_DATASETS_CACHE", Path(home) / "datasets"))]
    for root in roots:
        if root.is_dir() and any(tail.lower() in p.name.lower() for p in root.iterdir()):
            return  # something of that name is cached: let `datasets` read it
    raise AdapterError(
        f"hub dataset {name!r} is needed, but {why} and it is not in the local cache; "
        f"pass a local file with {local_flag}"
    )


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the subcommand; bad input exits 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _subcommand(args_list)
    parser = build_parser(only=command or "")
    args = parser.parse_args(args_list)
    try:
        if hasattr(args, "model_pos"):
            args.model = model_argument(args.model_pos, args.model)
            del args.model_pos
        return int(args.func(args) or 0)
    except AdapterError as exc:
        print(f"llm-adapter: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"llm-adapter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm-adapter: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _known_failure(exc)
        if message is None:
            raise
        print(f"llm-adapter: error: {message}", file=sys.stderr)
        return 2


def _known_failure(exc: Exception) -> str | None:
    """A one-line message for failures of the libraries that mean bad input files."""
    import pickle

    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError):
        return (
            "a pickle-based checkpoint (pytorch_model.bin) cannot be loaded safely "
            f"({text[:160]}); convert it to model.safetensors where you trust the source"
        )
    safetensors = sys.modules.get("safetensors")
    error = getattr(safetensors, "SafetensorError", None)
    if error is not None and isinstance(exc, error):
        return f"cannot read a safetensors file ({text[:200]}); re-create or re-download it"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
