"""Fail fast on the Hugging Face hub when it cannot be reached.

Offline, transformers and datasets fail slowly or silently (an empty
tokenizer; a thirty-second wait).  These checks run before any loading, at
every boundary that takes a hub id (the command line, sweep configurations):
a hub id that is neither reachable nor in the local cache is a one-line
:class:`~llm_adapter.AdapterError` naming the local alternative.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import AdapterError, mention

__all__ = ["check_hub_dataset", "check_hub_model", "is_local"]


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_reachable: dict[str, bool] = {}


def _offline_env() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within ``timeout`` seconds."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _reachable:
        url = urlparse(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "huggingface.co", port), timeout).close()
            _reachable[endpoint] = True
        except OSError:
            _reachable[endpoint] = False
    return _reachable[endpoint]


def hub_cache() -> Path:
    """The hub's cache folder (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def why_offline() -> str | None:
    """Why the hub cannot be used (an offline variable, no route), or None when it can."""
    var = _offline_env()
    if var is not None:
        return f"{var} is set"
    if not _hub_reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        return f"{host} cannot be reached"
    return None


def is_local(name: str) -> bool:
    """Whether ``name`` reads as a local path (existing, or spelled as one), not a hub id."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_hub_model(name: str, key: str = "model") -> None:
    """Fail at once when ``name`` is a hub id that cannot be fetched (offline, not cached).

    Parameters
    ----------
    name : str
        A local directory (left alone) or a hub id.
    key : str
        The setting that takes a local directory instead (named with
        :func:`llm_adapter.errors.mention`).
    """
    if is_local(name):
        return
    if (hub_cache() / f"models--{name.replace('/', '--')}").is_dir():
        return  # in the local cache: transformers reads it from there
    why = why_offline()
    if why is not None:
        raise AdapterError(
            f"model {name!r} is a hub id, but {why} and it is not in the local cache "
            f"({hub_cache()}); pass a local model directory with {mention(key)} PATH"
        )


def check_hub_dataset(name: str, local: str) -> None:
    """Fail at once when the hub dataset ``name`` is needed offline and not cached.

    Parameters
    ----------
    name : str
        Hub dataset name (``NAME``, ``OWNER/NAME``).
    local : str
        What reads a local file instead, as the message names it (settings
        marked with :func:`llm_adapter.errors.mention`).
    """
    why = why_offline()
    if why is None:
        return
    tail = name.split("/")[-1]
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    roots = [hub_cache(), Path(os.environ.get("HF_DATASETS_CACHE", Path(home) / "datasets"))]
    for root in roots:
        if root.is_dir() and any(tail.lower() in p.name.lower() for p in root.iterdir()):
            return  # something of that name is cached: let `datasets` read it
    raise AdapterError(
        f"hub dataset {name!r} is needed, but {why} and it is not in the local cache; "
        f"pass a local file with {local}"
    )
