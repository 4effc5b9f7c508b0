"""The ``llm-adapter`` command line.

All argument parsing and printing of the package lives here: the library
modules below expose functions and dataclasses only.  Each subcommand has a
module of this package (``llm_adapter.cli.compress``, ...) with a
``register(subparsers)`` function that adds its parser and sets ``func``
(called with the parsed namespace, returning an exit status).

:func:`main` imports only the module of the subcommand it runs, and that
module imports the library (torch, transformers) only when the command runs,
never for ``--help`` or a misspelled command; every subcommand checks its
arguments before it loads a model.  Conventions shared by every subcommand:

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
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import AdapterError, AdapterWarning, Spelling, spelled
from ..hub import check_hub_dataset, check_hub_model

__all__ = [
    "FLAGS",
    "SUBCOMMANDS",
    "FlagSpelling",
    "add_model",
    "build_parser",
    "check_hub_dataset",
    "check_hub_model",
    "deprecated_alias",
    "flag",
    "main",
    "model_argument",
    "option_help",
    "subcommand",
]

#: subcommand -> (the module of this package that registers it, one-line help), in the
#: order ``--help`` lists them
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
#: subcommand -> {a setting as the library names it: the option's destination}, where the
#: library's keyword differs from the option (:func:`llm_adapter.calibrate`'s ``samples`` is
#: ``compress --calib-samples``)
ALIASES: dict[str, dict[str, str]] = {
    "compress": {
        "samples": "calib_samples",
        "seq_len": "calib_seq_len",
        "text_path": "calib_text",
        "dataset": "calib_dataset",
        "windows": "calib_windows",
    },
}


def flag(key: str) -> str:
    """The option of a setting: ``group_size`` -> ``--group-size``."""
    return "--" + key.replace("_", "-")


class FlagSpelling(Spelling):
    """The command line's spelling of the settings a library message mentions.

    ``rank_ratio`` is ``--rank-ratio`` and ``rank_ratio`` with the value 0.0 is
    ``--rank-ratio 0.0``; a true boolean is the bare option (``--overwrite``).
    With a parser, a setting is named by the option that sets its destination
    (``out`` of ``sweep`` is ``--results``); otherwise, and for a setting the
    parser lacks, by :func:`flag`.

    Parameters
    ----------
    parser : argparse.ArgumentParser, optional
        The subcommand's parser.
    aliases : dict, optional
        Library keyword -> the option's destination (:data:`ALIASES`).
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.options: dict[str, str] = {}
        for action in parser._actions if parser is not None else ():
            if action.option_strings and action.help is not argparse.SUPPRESS:
                self.options.setdefault(action.dest, action.option_strings[0])
        self.aliases = dict(aliases or {})

    def name(self, key: str) -> str:
        """The option of ``key``."""
        key = self.aliases.get(key, key)
        return self.options.get(key) or flag(key)

    def value(self, key: str, text: str, rep: str) -> str:
        """``--rank-ratio 0.0``; ``--overwrite`` for a true boolean."""
        return self.name(key) if rep == "True" else f"{self.name(key)} {text}"


#: options as :func:`flag` names them, without a parser (help texts)
FLAGS = FlagSpelling()


def option_help(text: str) -> str:
    """A help text of the library (:data:`llm_adapter.methods.PARAMS`) with its settings as
    options."""
    return spelled(text, FLAGS)


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
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="llm-adapter",
        description=(
            "Compress GPT-NeoX and Llama-family models with grassbundle, save, reload, evaluate."
        ),
    )
    parser.add_argument("--version", action="version", version=f"llm-adapter {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered: set[str] = set()
    for name, (module, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=help_text)
        elif module not in registered:
            importlib.import_module(f"{__name__}.{module}").register(subparsers)
            registered.add(module)
    _annotate_defaults(parser)
    return parser


def subcommand(subparsers: Any, name: str, description: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, with its one-line help from :data:`SUBCOMMANDS`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=SUBCOMMANDS[name][1], description=description
    )
    return parser


def add_model(parser: argparse.ArgumentParser, what: str, metavar: str = "MODEL") -> None:
    """The model as a positional argument or as ``--model`` (either form, not both)."""
    parser.add_argument("model_pos", nargs="?", metavar=metavar, help=f"{what} (or --model)")
    parser.add_argument("--model", metavar=metavar, help=f"{what}; either form")


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


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the subcommand; bad input exits 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _subcommand(args_list)
    parser = build_parser(only=command or "")
    args = parser.parse_args(args_list)
    spelling = _spelling(parser, args.command)
    try:
        if hasattr(args, "model_pos"):
            args.model = model_argument(args.model_pos, args.model)
            del args.model_pos
        with _progress_bars(not getattr(args, "no_progress", False)), _warnings(spelling):
            return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (``info --json | head -3``): stop quietly
        _stdout_to_devnull()
        return 141
    except AdapterError as exc:
        print(f"llm-adapter: error: {exc.spelled(spelling)}", file=sys.stderr)
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


def _spelling(parser: argparse.ArgumentParser, command: str) -> FlagSpelling:
    """The spelling of ``command``'s messages: its own options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return FlagSpelling(action.choices[command], ALIASES.get(command))
    return FlagSpelling()


@contextlib.contextmanager
def _warnings(spelling: FlagSpelling) -> Iterator[None]:
    """While the command runs, library warnings name settings as its options."""
    original = warnings.formatwarning

    def formatted(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if isinstance(message, AdapterWarning):
            message, category = message.spelled(spelling), UserWarning
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = formatted
    try:
        yield
    finally:
        warnings.formatwarning = original


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """With ``shown`` False, also silence the bars of transformers and the hub (loading,
    dequantizing, writing shards) while the command runs."""
    if shown:
        yield
        return
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    hub_was_off = are_progress_bars_disabled()
    hf_was_on = hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hf_was_on:
            hf_logging.enable_progress_bar()
        if not hub_was_off:
            enable_progress_bars()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (captured output)
        pass


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
