"""Render an :class:`argparse.ArgumentParser` as reference documentation.

Usage in a page::

    .. argparse:: llm_adapter.cli:build_parser
       :prog: llm-adapter

The directive imports ``module:function``, calls the function (no arguments)
to get the parser, and writes its usage, description and arguments, then one
sub-section per subcommand, recursively.  The page therefore always matches
the parser the command line actually uses.
"""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id


class _Captured(Exception):
    """Carries the parser out of a ``main(argv)`` that builds it inline."""


def _capture_parser(main: Any) -> argparse.ArgumentParser:
    """Call ``main([])`` and return the first parser whose parse is attempted.

    For command lines that build their parser inside ``main`` rather than in a
    ``build_parser()`` function: nothing runs past the parse.
    """
    original = argparse.ArgumentParser.parse_known_args

    def intercept(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = intercept  # type: ignore[method-assign]
    try:
        main([])
    except _Captured as captured:
        return captured.args[0]  # type: ignore[no-any-return]
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]
    raise TypeError(f"{main!r} returned without parsing its arguments")


def load_parser(spec: str) -> argparse.ArgumentParser:
    """The parser named by ``module:attr``.

    ``attr`` is an :class:`argparse.ArgumentParser`, a function returning one
    (``build_parser``), or an entry point ``main(argv)`` that builds its
    parser inline (the parser is captured when ``main`` parses).
    """
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"argparse directive needs 'module:function'; got {spec!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    if isinstance(obj, argparse.ArgumentParser):
        return obj
    if attr == "main" or attr.endswith("_main"):
        return _capture_parser(obj)
    parser = obj()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} did not give an argparse.ArgumentParser (got {type(parser)})")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: (a.help or "") for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # aliases
                    continue
                seen.add(id(sub))
                out.append((name, sub, helps.get(name, "")))
    return out


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._format_action_invocation(action)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.help == argparse.SUPPRESS:
        return ""
    if not action.help:
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        return f"(default: {action.default})" if shown else ""
    formatter = parser._get_formatter()
    text = formatter._expand_help(action)
    show_default = (
        "%(default)" not in action.help
        and "default" not in action.help.lower()
        and action.default is not None
        and action.default is not argparse.SUPPRESS
        and action.default is not False
        and action.option_strings
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    )
    if show_default:
        text += f" (default: {action.default})"
    return text


def _paragraph(text: str) -> nodes.paragraph:
    """A paragraph of plain text in which ````code```` spans become literals."""
    para = nodes.paragraph()
    for i, part in enumerate(re.split(r"``(.+?)``", text)):
        if i % 2:
            para += nodes.literal(text=part)
        elif part:
            para += nodes.Text(part)
    return para


def _argument_list(
    parser: argparse.ArgumentParser, title: str, positional: bool
) -> list[nodes.Node]:
    items = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if bool(action.option_strings) == positional:
            continue
        if action.help == argparse.SUPPRESS:
            continue
        term = nodes.term("", "")
        term += nodes.literal(text=_invocation(parser, action))
        definition = nodes.definition()
        definition += _paragraph(_help(parser, action) or "")
        item = nodes.definition_list_item("", term, definition)
        items.append(item)
    if not items:
        return []
    return [nodes.rubric(text=title), nodes.definition_list("", *items)]


class ArgparseDirective(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {
        "prog": directives.unchanged,
        "nosubcommands": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        try:
            parser = load_parser(self.arguments[0])
        except Exception as exc:  # report as a build warning (an error under -W)
            return [
                self.state.document.reporter.warning(
                    f"argparse: cannot build the parser {self.arguments[0]}: {exc}",
                    line=self.lineno,
                )
            ]
        if "prog" in self.options:
            parser.prog = self.options["prog"]
        return self._render(parser, top=True)

    def _render(self, parser: argparse.ArgumentParser, top: bool) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        usage = parser.format_usage().strip()
        out.append(nodes.literal_block(usage, usage, language="text"))
        if parser.description:
            out.append(_paragraph(parser.description))
        out += _argument_list(parser, "Positional arguments", positional=True)
        out += _argument_list(parser, "Options", positional=False)
        if parser.epilog:
            out.append(_paragraph(parser.epilog))
        if "nosubcommands" in self.options:
            return out
        for _name, sub, help_text in _subparsers(parser):
            title = sub.prog
            section = nodes.section(ids=[make_id(self.env, self.state.document, "cli", title)])
            section += nodes.title(text=title)
            if help_text and not sub.description:
                section += _paragraph(help_text)
            for node in self._render(sub, top=False):
                section += node
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("argparse", ArgparseDirective)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
