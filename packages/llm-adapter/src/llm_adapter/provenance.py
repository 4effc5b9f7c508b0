"""Where results come from: the versions of the code that computed them.

:func:`package_versions` names the packages whose numerics a result depends
on; :func:`source_revision` the git commit of this repository that the
packages run from (when they do).  Compression manifests record the first,
sweep rows both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["package_versions", "source_revision"]


def package_versions() -> dict[str, str]:
    """The versions of this package, grassbundle and the libraries whose numerics they use."""
    import grassbundle
    import scipy
    import transformers

    from . import __version__

    return {
        "llm_adapter": __version__,
        "grassbundle": grassbundle.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def source_revision() -> dict[str, Any] | None:
    """The git commit the packages run from, when they run from a checkout of this repository.

    Returns
    -------
    dict or None
        ``{"commit": <40 hex digits>, "modified": bool}``, ``modified`` telling
        whether the files under ``packages/`` differ from that commit (untracked
        files are not counted); None when this module is not inside a git
        checkout of the repository (an installed wheel) or git cannot be run.
    """
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=20, check=True
        )
        return done.stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top / "packages" / "llm-adapter" / "src" / "llm_adapter" != here:
            return None  # some other repository encloses an installed copy
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no", "--", str(top / "packages"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": bool(status)}
