"""The errors the adapter raises for bad input: one base, three kinds, each carrying its data."""

from __future__ import annotations

from typing import Any

__all__ = ["AdapterError", "CheckpointError", "ConfigurationError", "DataError", "one_line"]


class AdapterError(ValueError):
    """Bad input to the adapter: the message names the value and the fix.

    The command line prints it as one line (``llm-adapter: error: ...``) and
    exits with status 2, without a traceback.

    Parameters
    ----------
    message : str
        The whole message, as the caller spelled the value.
    key : str, optional
        The offending setting as the library names it (a keyword of
        :class:`llm_adapter.CompressionConfig`, ``"method"``, ...).
    value : Any, optional
        The offending value.
    reason : str, optional
        What is wrong with it, without naming the setting (``"must be >= 1"``).

    Attributes
    ----------
    key, value, reason
        As given (None where the error is not about one setting).
    """

    def __init__(
        self, message: str = "", *, key: str | None = None, value: Any = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.reason = reason


class ConfigurationError(AdapterError):
    """A setting of a method, a budget, a family or a sweep point is wrong.

    Parameters
    ----------
    message, key, value, reason
        As :class:`AdapterError`'s.
    """


class CheckpointError(AdapterError):
    """A checkpoint (its files, its manifest) is missing, damaged or of another model.

    Parameters
    ----------
    message, key, value, reason
        As :class:`AdapterError`'s.
    """


class DataError(AdapterError):
    """Calibration or evaluation data are missing, too short or unreadable.

    Parameters
    ----------
    message, key, value, reason
        As :class:`AdapterError`'s.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")
