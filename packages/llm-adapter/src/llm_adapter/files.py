"""The one rule for writing a user's files: never lose what llm-adapter did not write.

Every command that writes (``compress``, ``export``, ``sweep``, ``report``, the
calibration cache) follows the same three rules:

* it replaces or deletes only what it wrote itself, and refuses anything else
  with the one message of :func:`refuse` (``... llm-adapter never overwrites or
  deletes what it did not write: <the fix>``);
* it writes to a hidden temporary beside the target, named
  ``.NAME.tmp-<host>-<pid>-<random>`` (:func:`temporary`), and renames it into
  place only when complete;
* the next write to the same target removes what a dead earlier write left
  (:func:`is_dead_leftover`: the host and process id in the name identify it;
  a live writer's files are left alone).

Content hashes (:func:`sha256_file`) let a reader check that a file is the one
that was written: the checkpoint manifest and the calibration cache record one.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import socket
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AdapterError, DataError

__all__ = [
    "CRASH_ENV",
    "RULE",
    "check_text_file",
    "check_writable_dir",
    "clean_file_leftovers",
    "crash_point",
    "is_dead_leftover",
    "load_arrays",
    "new_tag",
    "refuse",
    "save_arrays",
    "sha256_file",
    "temporary",
    "writable_ancestor",
    "write_atomic",
]

#: environment variable naming a point where the process kills itself with SIGKILL
#: (the crash-safety tests use it): ``save-partial``, ``save-swap``,
#: ``save-done``, ``export-partial``, ``cache-partial``, ``sweep-row``
CRASH_ENV = "LLM_ADAPTER_CRASH_AT"


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``$LLM_ADAPTER_CRASH_AT`` names ``name``.

    Parameters
    ----------
    name : str
        The point reached (e.g. ``"save-swap"``).
    """
    if os.environ.get(CRASH_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


#: the sentence every refusal to replace a user's file ends with
RULE = "llm-adapter never overwrites or deletes what it did not write"

_LEFTOVER = re.compile(r"(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}")


def refuse(path: str | os.PathLike[str], reason: str, fix: str) -> AdapterError:
    """The error for a target that llm-adapter would have to replace but did not write.

    Parameters
    ----------
    path : str or path
        The file or directory.
    reason : str
        Why it is not llm-adapter's (``"has no compression.json: it was not
        written by llm-adapter"``).
    fix : str
        What to do instead.

    Returns
    -------
    AdapterError
    """
    return AdapterError(f"{str(path)!r} {reason}; {RULE}: {fix}")


def host_tag() -> str:
    """Eight hex digits naming this host in temporary names."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def new_tag() -> str:
    """``<host>-<pid>-<random>``: the tail of a temporary's name."""
    return f"{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (another user's counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def leftover_kind(tail: str) -> str | None:
    """``"tmp"`` or ``"old"`` when ``tail`` (a name less its ``.NAME.`` prefix) is a
    temporary of a dead process of this host; None otherwise."""
    m = _LEFTOVER.fullmatch(tail)
    if m is None or m["host"] != host_tag() or pid_alive(int(m["pid"])):
        return None
    return m["kind"]


def is_dead_leftover(entry: Path, target: Path, suffix: str = "") -> bool:
    """Whether ``entry`` is a temporary of ``target`` left by a dead process of this host."""
    prefix = f".{target.name}."
    name = entry.name
    if not name.startswith(prefix) or not name.endswith(suffix):
        return False
    tail = name[len(prefix) : len(name) - len(suffix) if suffix else None]
    return leftover_kind(tail) == "tmp"


def temporary(target: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``target``: ``.NAME.tmp-<host>-<pid>-<random><suffix>``."""
    return target.parent / f".{target.name}.tmp-{new_tag()}{suffix}"


def clean_file_leftovers(target: Path, suffix: str = "") -> list[Path]:
    """Remove the temporary files a dead earlier write of ``target`` left beside it."""
    parent = target.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.is_file() and not entry.is_symlink() and is_dead_leftover(entry, target, suffix):
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


def write_atomic(target: Path, data: bytes | str) -> None:
    """Write ``data`` to ``target`` through a temporary renamed into place.

    A process killed at any point leaves the old file or the new one at
    ``target``; the next write of ``target`` removes its temporary.
    """
    clean_file_leftovers(target)
    tmp = temporary(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_text_file(path: str | os.PathLike[str], what: str) -> None:
    """Raise unless ``path`` is a UTF-8 text file with some text (read once, strictly).

    Parameters
    ----------
    path : str or path
    what : str
        How messages name it (``"calibration file"``, ``"[calibration] text"``).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist (or is not a file)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start} is not UTF-8); give a "
            "UTF-8 text file (convert one with iconv -t UTF-8)"
        ) from None
    except OSError as exc:
        raise DataError(f"{what} {str(path)!r} cannot be read ({exc.strerror})") from None
    if not text.strip() or "\x00" in text:
        kind = "binary data (NUL bytes)" if "\x00" in text else "no text"
        raise DataError(f"{what} {str(path)!r} holds {kind}; give a UTF-8 text file")


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Raise unless ``path`` is a directory, or can be created, and files can be written in it.

    Parameters
    ----------
    path : str or path
    what : str
        How messages name it (``mention("cache_dir")``, :func:`llm_adapter.errors.mention`).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise AdapterError(f"{what} {str(path)!r} exists and is not a directory; give a directory")
    writable_ancestor(p, f"{what} {str(path)!r}", "give a writable directory")


def writable_ancestor(start: Path, named: str, fix: str) -> Path:
    """The nearest existing directory at or above ``start``, checked writable.

    Every check that a path can be created uses it: ``start`` itself when it
    exists, else the first ancestor that does (a dangling symbolic link stops
    the walk); that ancestor must be a directory in which a directory can be
    created and removed (probed).

    Parameters
    ----------
    start : Path
    named : str
        How messages name the path being checked (``--out 'x'``).
    fix : str
        What the message tells the user to do when the probe fails.

    Raises
    ------
    AdapterError
        When the ancestor is not a directory or cannot be written.
    """
    ancestor = start
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdapterError(f"{named} cannot be created: {str(ancestor)!r} is not a directory")
    probe = ancestor / f".llm-adapter-probe.tmp-{new_tag()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise AdapterError(
            f"{named} cannot be written ({exc.strerror} in {str(ancestor)!r}); {fix}"
        ) from None
    return ancestor


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (read in 4 MiB blocks), as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _arrays_digest(arrays: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: Path, **arrays: Any) -> None:
    """Write ``arrays`` as an ``.npz`` file with their sha256, atomically.

    The file goes to a temporary beside ``path`` (:func:`temporary`) and is
    renamed into place when complete; what a dead earlier write of ``path``
    left is removed first.  :func:`load_arrays` checks the hash.
    """
    clean_file_leftovers(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, sha256=np.array(_arrays_digest(arrays)))
        crash_point("cache-partial")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of an ``.npz`` file written by :func:`save_arrays`, checked.

    Returns None when the file cannot be read (truncated, not an ``.npz``),
    lacks an array, or its arrays do not match the sha256 it records.  A file
    written before the hash was recorded is returned unchecked.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: np.array(z[name]) for name in z.files if name != "sha256"}
            digest = str(z["sha256"]) if "sha256" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if any(name not in arrays for name in names):
        return None
    if digest is not None and digest != _arrays_digest(arrays):
        return None
    return {name: arrays[name] for name in names}
