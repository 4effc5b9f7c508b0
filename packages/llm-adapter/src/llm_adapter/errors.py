"""The one error type the adapter raises for bad input."""

from __future__ import annotations

__all__ = ["AdapterError", "one_line"]


class AdapterError(ValueError):
    """Bad input to the adapter: the message names the value and the fix.

    The command line prints it as one line (``llm-adapter: error: ...``) and
    exits with status 2, without a traceback.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")
