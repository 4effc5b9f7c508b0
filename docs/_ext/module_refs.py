"""Docstring fixes before numpydoc parses them.

1. Let a docstring cite a reference that its module's docstring defines.

The package's modules list their references once, in the module docstring
(``.. [EAS98] ...``), and the functions cite them (``[EAS98]_``).  autodoc
renders a function without its module docstring, so the citation would dangle.
This extension copies each cited-but-undefined entry from the module
docstring into the function's ``References`` section before numpydoc parses
it (numpydoc then makes the label unique per docstring, as it does for every
reference).

2. Escape the unpacking star in shape specifications (``shape=[*batch, n,
p]``), which reStructuredText would otherwise read as the start of emphasis.

3. Show hand-aligned ASCII formulas preformatted (see
:func:`preformat_aligned_displays`).
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from sphinx.application import Sphinx

_CITE = re.compile(r"\[([A-Za-z][\w-]*)\]_")
_DEF = re.compile(r"^\.\. \[([A-Za-z][\w-]*)\]")


def _module_definitions(module_doc: str) -> dict[str, list[str]]:
    """``{label: [lines of the definition]}`` from a module docstring."""
    lines = inspect.cleandoc(module_doc).splitlines()
    defs: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        m = _DEF.match(lines[i])
        if not m:
            i += 1
            continue
        block = [lines[i]]
        i += 1
        while i < len(lines) and (lines[i].startswith("   ") or not lines[i].strip()):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].startswith("   ")):
                break
            block.append(lines[i])
            i += 1
        defs[m.group(1)] = block
    return defs


_SHAPE_STAR = re.compile(r"(shape=\[[^\]]*?)(?<!\\)\*(\w)")


def escape_shape_stars(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Show ``shape=[*batch, n, p]`` literally: the star is Python's, not emphasis."""
    for i, line in enumerate(lines):
        if "shape=[" in line and "*" in line:
            previous = None
            while previous != line:
                previous, line = line, _SHAPE_STAR.sub(r"\1\\*\2", line)
            lines[i] = line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def preformat_aligned_displays(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Show ASCII formulas aligned by indentation as written (a literal block).

    A display block (indented under a paragraph, after a blank line) whose
    lines start at different indentations is aligned by hand, e.g.::

        ||x|| <= a / b
              = c

    reStructuredText would read it as a definition list and complain; the
    only faithful rendering is preformatted, so the paragraph before it gets
    a ``::`` (written `` ::``, which prints nothing).  Blocks with one
    indentation, or with reST markup (````code````, directives), are left as
    they are.
    """
    i = 1
    while i < len(lines):
        start = i
        if lines[i - 1].strip() or not lines[i].strip():
            i += 1
            continue
        # the paragraph line above the blank line
        p = i - 2
        while p >= 0 and not lines[p].strip():
            p -= 1
        if p < 0 or lines[p].rstrip().endswith("::") or lines[p].lstrip().startswith(".. "):
            i += 1
            continue
        base = _indent(lines[p])
        j = start
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        block = [x for x in lines[start:j] if x.strip()]
        indents = {_indent(x) for x in block}
        aligned = len(block) >= 2 and len(indents) >= 2 and min(indents) > base
        markup = any("``" in x or x.lstrip().startswith((".. ", ">>>", "- ", "* ")) for x in block)
        if aligned and not markup:
            lines[p] = lines[p].rstrip() + " ::"
        i = max(j, start + 1)


def add_module_references(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    text = "\n".join(lines)
    cited = dict.fromkeys(_CITE.findall(text))
    defined = {m.group(1) for m in (_DEF.match(x.strip()) for x in lines) if m}
    wanted = [c for c in cited if c not in defined]
    if not wanted:
        return
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None or not module.__doc__:
        return
    defs = _module_definitions(module.__doc__)
    extra: list[str] = []
    for label in wanted:
        if label in defs:
            extra += [*defs[label]]
    if not extra:
        return
    for i, line in enumerate(lines):
        if (
            line.strip() == "References"
            and i + 1 < len(lines)
            and set(lines[i + 1].strip()) == {"-"}
        ):
            lines[i + 2 : i + 2] = [*extra, ""]
            return
    while lines and not lines[-1].strip():
        lines.pop()
    lines += ["", "References", "----------", *extra, ""]


def setup(app: Sphinx) -> dict[str, Any]:
    # before numpydoc (priority 500), which parses the References section
    app.connect("autodoc-process-docstring", add_module_references, priority=400)
    app.connect("autodoc-process-docstring", escape_shape_stars, priority=400)
    app.connect("autodoc-process-docstring", preformat_aligned_displays, priority=400)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
