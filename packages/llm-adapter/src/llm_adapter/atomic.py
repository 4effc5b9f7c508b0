"""Atomic directory writes and their crash recovery (checkpoints and dense exports).

Writes never lose data:

* everything is written to ``.NAME.tmp-<host>-<pid>-<random>`` beside the
  target ``NAME`` and renamed into place only when complete
  (:func:`swap_into_place`);
* the replacement is one atomic exchange of the two directories
  (``renameat2(RENAME_EXCHANGE)`` on Linux); where the system lacks it, the
  old directory is first renamed to ``.NAME.old-<host>-<pid>-<random>``, and
  the next write to ``NAME`` puts it back if the process died before the new
  one was in place;
* the next write to ``NAME`` removes the leftovers of a dead earlier write
  (:func:`clean_leftovers`: the host and process id in their names identify
  them; a live writer's are left alone), and reading ``NAME`` when it is
  missing puts back an ``.old-`` directory first (:func:`recover`).

Which directories may be replaced at all is :func:`llm_adapter.manifest.check_output_dir`'s
rule; the naming of temporaries and leftovers lives in :mod:`llm_adapter.files`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path

from .files import crash_point, leftover_kind

__all__ = ["clean_leftovers", "normal_permissions", "recover", "swap_into_place"]


def clean_leftovers(out: str | os.PathLike[str]) -> list[str]:
    """Remove what a dead earlier write to ``out`` left beside it; restore its old directory.

    A write leaves ``.NAME.tmp-<host>-<pid>-<random>`` (a partial or a
    replaced checkpoint) or ``.NAME.old-...`` (the previous checkpoint, set
    aside during a replacement without an atomic exchange) only when its
    process dies.  Those of this host whose process is gone are removed, except
    that an ``.old-`` directory is renamed back to ``NAME`` when ``NAME`` is
    missing (the process died between the two renames).  Anything else is left
    alone.

    Parameters
    ----------
    out : str or path
        The target directory (it need not exist).

    Returns
    -------
    list of str
        One line per action taken.
    """
    target = Path(out)
    parent = target.parent
    if not parent.is_dir():
        return []
    prefix = f".{target.name}."
    found: list[tuple[str, Path]] = []
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir() or entry.is_symlink():
            continue
        kind = leftover_kind(entry.name[len(prefix) :])
        if kind is not None:
            found.append((kind, entry))
    done: list[str] = []
    for kind, entry in sorted(found, key=lambda e: e[0] != "old"):  # restore before removing
        if kind == "old" and not target.exists() and not target.is_symlink():
            try:
                os.rename(entry, target)
            except OSError:  # not ours to move after all (permissions): leave it
                continue
            done.append(f"restored {target} from {entry.name} (an earlier write died mid-swap)")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry} (left by an earlier write that died)")
    return done


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux") or os.environ.get("LLM_ADAPTER_NO_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_into_place(tmp: Path, out: Path, tag: str) -> None:
    """Put the complete directory ``tmp`` at ``out``; a crash leaves the old or the new one."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):  # out: new; tmp: the old checkpoint
        crash_point("save-swap")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{tag}"
    os.rename(out, old)
    crash_point("save-swap")
    os.rename(tmp, out)
    os.rename(old, tmp)  # from here on a leftover to remove, never to restore
    shutil.rmtree(tmp, ignore_errors=True)


def normal_permissions(root: Path) -> None:
    """Give the files the usual umask-based modes (as a plain ``mkdir`` would)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for file in root.rglob("*"):
        os.chmod(file, (0o777 if file.is_dir() else 0o666) & ~umask)


def recover(root: Path) -> None:
    """Put back a checkpoint that a write killed mid-replacement left aside (see
    :func:`clean_leftovers`), so that reading ``root`` finds it."""
    if not root.exists() and not root.is_symlink():
        clean_leftovers(root)
