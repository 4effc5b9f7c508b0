"""The one error type the adapter raises for bad input."""

from __future__ import annotations

__all__ = ["AdapterError"]


class AdapterError(ValueError):
    """Bad input to the adapter: the message names the value and the fix.

    The command line prints it as one line (``llm-adapter: error: ...``) and
    exits with status 2, without a traceback.
    """
