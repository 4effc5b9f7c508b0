"""The errors the adapter raises for bad input: one base, three kinds, each carrying its data.

A message names the settings it is about with :func:`mention`; each surface
spells them its own way when it shows the message
(:meth:`AdapterError.spelled`): the Python API as keyword names
(``rank_ratio=0.0``, the default, ``str(exc)``), ``llm-adapter`` as its
command-line options, a sweep as the keys of its configuration
(``points[2].rank_ratio = 0.0``).  No library module spells an option of the
command line.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

__all__ = [
    "KEYWORDS",
    "AdapterError",
    "AdapterWarning",
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "Mentions",
    "Spelling",
    "check_choice",
    "mention",
    "one_line",
    "spelled",
]

#: the marks around a mention inside a message (ASCII unit and record separators)
_OPEN = "\x1f"
_SEP = "\x1e"
_MENTION = re.compile("\x1f([^\x1e\x1f]+)(?:\x1e([^\x1e\x1f]*)\x1e([^\x1e\x1f]*))?\x1f")
_NAME_ONLY = object()


def mention(key: str, value: Any = _NAME_ONLY) -> str:
    """A setting named in a message, spelled by the surface that shows the message.

    Parameters
    ----------
    key : str
        The setting as the library names it (a keyword of
        :class:`llm_adapter.CompressionConfig` or of a request, ``"method"``, ...).
    value : Any, optional
        Its value, when the message names the value too.

    Returns
    -------
    str
        A marked piece of text; :func:`spelled` writes it out.
    """
    if value is _NAME_ONLY:
        return f"{_OPEN}{key}{_OPEN}"
    text = str(value).replace(_OPEN, " ").replace(_SEP, " ")
    rep = repr(value).replace(_OPEN, " ").replace(_SEP, " ")
    return f"{_OPEN}{key}{_SEP}{text}{_SEP}{rep}{_OPEN}"


class Spelling:
    """How a surface writes the settings a message mentions: here as keyword names.

    ``name("rank_ratio")`` is ``rank_ratio`` and ``value("rank_ratio", "0.0",
    "0.0")`` is ``rank_ratio=0.0``; the command line and the sweeps subclass it.
    """

    def name(self, key: str) -> str:
        """The setting ``key`` by name."""
        return key

    def value(self, key: str, text: str, rep: str) -> str:
        """The setting ``key`` with its value, as ``str`` (``text``) and ``repr`` (``rep``)."""
        return f"{self.name(key)}={rep}"


#: the Python API's spelling: keyword names (``rank_ratio=0.0``)
KEYWORDS = Spelling()


def spelled(text: str, spelling: Spelling = KEYWORDS) -> str:
    """``text`` with every :func:`mention` written out by ``spelling``."""

    def one(match: re.Match[str]) -> str:
        key, shown, rep = match.groups()
        return spelling.name(key) if shown is None else spelling.value(key, shown, rep)

    return _MENTION.sub(one, text)


class Mentions:
    """What the method table's checks name settings with: :func:`mention`, by name or value.

    ``name(key)`` and ``value(key, value)`` are marked text, written out by
    the surface that shows the error.
    """

    def name(self, key: str) -> str:
        """``key`` by name."""
        return mention(key)

    def value(self, key: str, value: Any) -> str:
        """``key`` with ``value``."""
        return mention(key, value)


class _Spelled:
    """A message (``args[0]``) that names settings with :func:`mention`."""

    args: tuple[Any, ...]

    @property
    def template(self) -> str:
        """The message with its mentions still marked (to wrap it in another message)."""
        return str(self.args[0]) if self.args else ""

    def spelled(self, spelling: Spelling = KEYWORDS) -> str:
        """The message, the settings it mentions written by ``spelling``."""
        return spelled(self.template, spelling)

    def __str__(self) -> str:
        return self.spelled(KEYWORDS)


class AdapterError(_Spelled, ValueError):
    """Bad input to the adapter: the message names the value and the fix.

    The command line prints it as one line (``llm-adapter: error: ...``),
    the settings it mentions spelled as options, and exits with status 2,
    without a traceback.

    Parameters
    ----------
    message : str
        The whole message; settings in it marked with :func:`mention`.
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


def check_choice(key: str, value: Any, choices: Collection[str]) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is one of ``choices``.

    The message names the setting by :func:`mention` (``--calib-windows x is
    not one of random, disjoint`` on the command line), with ``key``, ``value``
    and the reason as its data.
    """
    if value not in choices:
        raise ConfigurationError(
            f"{mention(key, value)} is not one of {', '.join(choices)}",
            key=key,
            value=value,
            reason=f"not one of {', '.join(choices)}",
        )


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


class AdapterWarning(_Spelled, UserWarning):
    """A warning whose message names settings with :func:`mention`.

    ``str(warning)`` spells them as keyword names; the command line shows
    them as its options (:meth:`spelled`).
    """
