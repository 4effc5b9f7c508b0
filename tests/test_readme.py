"""Every command the README and the hand-written docs pages show is exercised.

* Python code blocks (```` ```python ```` in README.md, ``.. code-block::
  python`` in docs/*.rst and docs/theory/*.rst) run to completion, each in a
  fresh interpreter.
* Shell code blocks (and, in reStructuredText, ``::`` literal blocks that
  start with a command): ``llm-adapter ...`` and ``python -m grassbundle ...``
  lines must parse with the real argument parsers, ``make <target>`` lines
  must name a target of the Makefile, ``python <script>`` lines must name a
  file that exists.  A shell line of any other kind fails the test, so that
  nothing is shown that is not checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "_ext"))

import argparse_doc  # noqa: E402  (docs/_ext, put on the path above)

README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.rst")) + sorted((REPO / "docs" / "theory").glob("*.rst"))

_MD_BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_RST_BLOCK = re.compile(
    r"^\.\. code-block:: (\w+)[^\n]*\n((?:[ \t]*\n|[ \t]+[^\n]*\n)+)", re.MULTILINE
)


def _dedent(block: str) -> str:
    lines = block.splitlines()
    indents = [
        len(x) - len(x.lstrip()) for x in lines if x.strip() and not x.lstrip().startswith(":")
    ]
    cut = min(indents) if indents else 0
    return "\n".join(x[cut:] for x in lines if not x.lstrip().startswith(":")).strip("\n") + "\n"


_SHELL_START = ("llm-adapter", ".venv/bin/", "python ", "python3 ", "make ", "grassbundle ")


def _rst_literal_blocks(text: str) -> list[str]:
    """Literal blocks introduced by a paragraph ending in ``::`` (not directives)."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::") or re.match(r"\s*\.\. ", line):
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        body = []
        while j < len(lines) and (not lines[j].strip() or lines[j][:1] in " \t"):
            body.append(lines[j])
            j += 1
        if body:
            blocks.append(_dedent("\n".join(body)))
    return blocks


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """``[(language, code)]`` of one Markdown or reStructuredText file.

    In reStructuredText a plain literal block (after ``::``) whose first line
    is a command (``llm-adapter``, ``make``, ``python``, ...) counts as shell.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return [(lang, code) for lang, code in _MD_BLOCK.findall(text)]
    blocks = [(lang, _dedent(code)) for lang, code in _RST_BLOCK.findall(text)]
    for code in _rst_literal_blocks(text):
        if code.lstrip().startswith(_SHELL_START):
            blocks.append(("bash", code))
    return blocks


def _logical_lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append(pending + stripped)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _blocks(lang: set[str]) -> list[tuple[str, str]]:
    out = []
    for path in [README, *DOC_PAGES]:
        for i, (language, code) in enumerate(code_blocks(path)):
            if language in lang:
                out.append((f"{path.relative_to(REPO)}#{i}", code))
    return out


PYTHON_BLOCKS = _blocks({"python", "pycon"})
SHELL_BLOCKS = _blocks({"bash", "sh", "console", "shell"})


def test_readme_has_the_sections() -> None:
    text = README.read_text(encoding="utf-8")
    assert "## Two commands" in text
    assert any(key.startswith("README.md") for key, _ in PYTHON_BLOCKS), "README shows no Python"
    assert any(key.startswith("README.md") for key, _ in SHELL_BLOCKS), "README shows no commands"


def test_two_commands_are_kept() -> None:
    # the two commands of the README are the project's contract
    text = README.read_text(encoding="utf-8")
    assert "make demo   # set up, then compress SmolLM2-135M-Instruct" in text
    assert "make test   # set up, then run ruff, mypy and the whole test suite" in text


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[k for k, _ in PYTHON_BLOCKS])
def test_python_block_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{where} failed:\n{code}\n{proc.stdout}\n{proc.stderr}"


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _parses(parser_spec: str, argv: list[str]) -> None:
    # the same loader the CLI reference page uses (docs/_ext/argparse_doc.py)
    parser = argparse_doc.load_parser(parser_spec)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            raise AssertionError(f"{argv} does not parse: {err.getvalue()}") from None


def check_shell_line(line: str) -> None:
    """Raise AssertionError unless the command line is one the checks cover."""
    argv = shlex.split(line, comments=True)
    if not argv:
        return
    # VAR=value prefixes
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        argv = argv[1:]
    head = argv[0].removeprefix(".venv/bin/")
    argv = [head, *argv[1:]]
    if head == "make":
        targets = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
        unknown = set(targets) - _makefile_targets()
        assert not unknown, f"{line!r}: no Makefile target {sorted(unknown)}"
    elif head == "llm-adapter":
        _parses("llm_adapter.cli:build_parser", argv[1:])
        # configuration files of the repository that a line names must exist
        for arg in argv[1:]:
            if arg.endswith(".toml") and not arg.startswith("-"):
                assert (REPO / arg).is_file(), f"{line!r}: {arg} does not exist"
    elif head in ("grassbundle",) or argv[:3] in (["python", "-m", "grassbundle"],):
        rest = argv[1:] if head == "grassbundle" else argv[3:]
        _parses("grassbundle.__main__:main", rest)
    elif head in ("python", "python3") and len(argv) >= 2 and argv[1].endswith(".py"):
        assert (REPO / argv[1]).is_file(), f"{line!r}: {argv[1]} does not exist"
    else:
        raise AssertionError(f"{line!r}: a shell command the docs tests do not check")


@pytest.mark.parametrize(("where", "code"), SHELL_BLOCKS, ids=[k for k, _ in SHELL_BLOCKS])
def test_shell_block_parses(where: str, code: str) -> None:
    for line in _logical_lines(code):
        check_shell_line(line)


def test_shell_check_can_fail() -> None:
    with pytest.raises(AssertionError):
        check_shell_line("make no-such-target")
    with pytest.raises(AssertionError):
        check_shell_line("llm-adapter no-such-subcommand")
    with pytest.raises(AssertionError):
        check_shell_line("rm -rf /")


def test_make_docs_uses_warnings_as_errors() -> None:
    text = (REPO / "docs" / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"SPHINXOPTS\s*\?=.*-W", text) and "--keep-going" in text


def test_cli_help_runs() -> None:
    # the entry point the README's CLI lines use is installed and answers
    proc = subprocess.run(
        [sys.executable, "-m", "llm_adapter.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: llm-adapter" in proc.stdout
