"""GGUF files: dequantize once, then load a plain safetensors copy from a cache.

``transformers`` reads a GGUF file (it needs the ``gguf`` package) and
dequantizes every tensor, which takes tens of seconds; a model loaded that
way also refuses ``save_pretrained``.  :func:`dequantize_gguf` does that work
once per file and keeps the result as an ordinary Hugging Face directory
(``config.json`` without ``quantization_config``, ``model.safetensors`` in
float32, the tokenizer files, ``generation_config.json``) in a cache entry
named by the sha256 of the GGUF file's bytes::

    $LLM_ADAPTER_CACHE/gguf/<sha256>/          (when the variable is set)
    $XDG_CACHE_HOME/llm-adapter/gguf/<sha256>/ (else, when that one is set)
    ~/.cache/llm-adapter/gguf/<sha256>/        (else)

An entry is written into a temporary directory
(``.<sha256[:16]>.tmp-<host>-<pid>-<random>``, removed by the next write of
the entry when its process died) and renamed into place only when complete;
its last file, ``complete.json``, records the size and sha256 of every other
file.  An entry whose marker is missing, unreadable, or does not match the
files (a partial write, a truncated or edited file) is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdapterError, one_line
from .files import leftover_kind, new_tag
from .models import (
    ARCHITECTURES,
    check_tokenizer,
    dtype_kwargs,
    load_pretrained,
    resolve_dtype,
)

__all__ = [
    "CACHE_ENV",
    "cache_root",
    "dequantize_gguf",
    "describe_gguf",
    "is_gguf_file",
    "load_gguf",
]

#: The environment variable that overrides the cache root.
CACHE_ENV = "LLM_ADAPTER_CACHE"
ENTRY_VERSION = 1
MARKER = "complete.json"
_MAGIC = b"GGUF"


def cache_root() -> Path:
    """The adapter's cache root (GGUF entries live under its ``gguf/``).

    Returns
    -------
    Path
        ``$LLM_ADAPTER_CACHE`` when set, else ``$XDG_CACHE_HOME/llm-adapter``,
        else ``~/.cache/llm-adapter``.  Not created here.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llm-adapter"


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an existing file that starts with the GGUF magic bytes.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    bool
    """
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _clean_dead_writes(root: Path, sha: str) -> None:
    """Remove the temporaries of entry ``sha`` that a killed earlier write left in ``root``."""
    prefix = f".{sha[:16]}."
    for item in root.iterdir():
        if item.name.startswith(prefix) and item.is_dir() and not item.is_symlink():
            if leftover_kind(item.name[len(prefix) :]) is not None:
                shutil.rmtree(item, ignore_errors=True)


def _entry_is_complete(entry: Path, sha: str) -> bool:
    """Whether ``entry`` holds a finished, unmodified copy of the GGUF file ``sha``."""
    marker = entry / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("version") != ENTRY_VERSION:
        return False
    if data.get("source_sha256") != sha:
        return False
    files = data.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for name, info in files.items():
        file = entry / name
        try:
            if not file.is_file() or file.stat().st_size != info["size"]:
                return False
            if _sha256_file(file) != info["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _check_readable(src: Path) -> Any:
    """The config from the GGUF metadata, its architecture checked; nothing dequantized."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise AdapterError(
            f"{str(src)!r} is a GGUF file; reading it needs the gguf package "
            "(pip install 'llm-adapter[gguf]'; `make` installs it)"
        ) from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError...
        raise AdapterError(
            f"cannot read the GGUF file {str(src)!r} (unsupported architecture or damaged "
            f"metadata): {one_line(exc)}"
        ) from None
    if config.model_type not in ARCHITECTURES:
        raise AdapterError(
            f"the GGUF file {str(src)!r} holds architecture {config.model_type!r}, which "
            f"llm-adapter does not support; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return config


def _write_entry(src: Path, tmp: Path, sha: str, progress: bool) -> None:
    """Dequantize ``src`` into the empty directory ``tmp`` and write its marker last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(src.parent), src.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        raise AdapterError(
            f"cannot read the tokenizer of the GGUF file {str(src)!r}: {one_line(exc)}"
        ) from None
    check_tokenizer(tokenizer, repr(str(src)))
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, **dtype_kwargs(torch.float32)
        )
    except Exception as exc:
        raise AdapterError(
            f"cannot dequantize the GGUF file {str(src)!r}: {one_line(exc)}"
        ) from None
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    # transformers refuses save_pretrained on a GGUF-loaded model: copy the
    # weights into a fresh model built from the same config, less its
    # quantization_config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(src)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the fresh initialisation is overwritten; seeded anyway
        plain = AutoModelForCausalLM.from_config(config, **dtype_kwargs(torch.float32))
    result = plain.load_state_dict(quantized.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise AdapterError(f"GGUF weights of {str(src)!r} do not fit the model built from it")
    gen = getattr(quantized, "generation_config", None)
    if gen is not None:
        plain.generation_config = gen
    del quantized
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    files = {}
    for file in sorted(tmp.rglob("*")):
        if file.is_file():
            rel = file.relative_to(tmp).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": _sha256_file(file)}
    import transformers

    marker = {
        "version": ENTRY_VERSION,
        "source": str(src.resolve()),
        "source_sha256": sha,
        "source_bytes": src.stat().st_size,
        "transformers": transformers.__version__,
        "files": files,
    }
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def dequantize_gguf(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """A plain Hugging Face directory holding the dequantized GGUF model, cached.

    The first call for a given file (by content) reads and dequantizes it with
    ``transformers`` and writes the cache entry atomically; later calls check
    the entry (every file's size and sha256 against ``complete.json``) and
    return it.  A partial or corrupt entry is replaced by a fresh one.

    Parameters
    ----------
    path : str or path
        A ``.gguf`` file whose architecture is in
        :data:`llm_adapter.ARCHITECTURES`.
    cache_dir : str or path, optional
        The cache root; default :func:`cache_root` (``$LLM_ADAPTER_CACHE``,
        else ``~/.cache/llm-adapter``).  Entries go to ``<root>/gguf/<sha256>/``.
    progress : bool, default False
        Show transformers' dequantization progress bar.

    Returns
    -------
    Path
        The entry directory; ``llm_adapter.load`` reads it like any
        local checkpoint (float32 weights, the GGUF's own tokenizer).

    Raises
    ------
    AdapterError
        When the file is missing or not GGUF, the ``gguf`` package is absent,
        or its architecture or tokenizer cannot be read (checked from the
        metadata before any dequantizing).
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise AdapterError(f"GGUF file {str(path)!r} does not exist")
    if not is_gguf_file(src):
        raise AdapterError(
            f"{str(path)!r} is not a GGUF file (it does not start with the bytes 'GGUF')"
        )
    sha = _sha256_file(src)
    root = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / "gguf"
    entry = root / sha
    if _entry_is_complete(entry, sha):
        return entry
    _check_readable(src)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_dead_writes(root, sha)
        tmp = root / f".{sha[:16]}.tmp-{new_tag()}"
        tmp.mkdir()
    except OSError as exc:
        raise AdapterError(
            f"cannot write the GGUF cache under {str(root)!r} ({one_line(exc)}); "
            f"set {CACHE_ENV} to a writable directory"
        ) from None
    try:
        _write_entry(src, tmp, sha, progress)
        if entry.exists():  # partial or corrupt: move it aside, then drop it
            trash = root / f".{sha[:16]}.old-{new_tag()}"
            trash.mkdir()
            try:
                os.replace(entry, trash / "entry")
            except FileNotFoundError:  # another process removed it first
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process finished the same entry first: keep theirs if sound
            if not _entry_is_complete(entry, sha):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def describe_gguf(path: str | os.PathLike[str]) -> Path:
    """Print what a GGUF file is and where its dequantized copy lives (``info``).

    Parameters
    ----------
    path : str or path
        A ``.gguf`` file.

    Returns
    -------
    Path
        The cache entry (built now when absent), to be described as a plain
        checkpoint.
    """
    src = Path(path).expanduser()
    if not is_gguf_file(src):
        raise AdapterError(
            f"{str(path)!r} is not a GGUF file (it does not start with the bytes 'GGUF'); "
            "give a checkpoint directory or a .gguf file"
        )
    sha = _sha256_file(src)
    root = cache_root() / "gguf"
    cached = _entry_is_complete(root / sha, sha)
    entry = dequantize_gguf(src)
    print(f"GGUF file {src}: {src.stat().st_size} bytes, sha256 {sha}")
    print(f"  dequantized copy ({'cached' if cached else 'built now'}): {entry}")
    return entry


def load_gguf(
    path: Path,
    *,
    device: str | torch.device,
    dtype: str | torch.dtype | None,
    device_map: str | dict[str, Any] | None,
) -> tuple[nn.Module, Any]:
    """Load a GGUF file through its cached dequantized copy; the model keeps the file's name.

    Parameters
    ----------
    path : Path
        The ``.gguf`` file.
    device, dtype, device_map
        As for :func:`llm_adapter.models.load_pretrained`.

    Returns
    -------
    model : transformers.PreTrainedModel
    tokenizer : the tokenizer stored in the file
    """

    if not path.is_file():
        raise AdapterError(f"model file {str(path)!r} does not exist")
    if not is_gguf_file(path):
        raise AdapterError(
            f"model path {str(path)!r} is a file but not a GGUF file; give a GGUF file, a "
            "model directory or a hub id"
        )
    resolve_dtype(dtype)  # a bad dtype fails before any dequantizing
    entry = dequantize_gguf(path)
    model, tokenizer = load_pretrained(entry, device=device, dtype=dtype, device_map=device_map)
    config: Any = model.config
    config._name_or_path = str(path)
    return model, tokenizer
