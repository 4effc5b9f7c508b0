"""The checkpoint manifest (``compression.json``): its schema, reading and checking it.

The manifest holds the :class:`~llm_adapter.CompressionReport` plus a
``checkpoint`` section: format version, the weights file and its sha256
(``weights_sha256``), the low-rank modules, the *aliases* -- state-dict keys
that name the same tensor as another key -- and the names of the files
written.  :func:`check_schema` checks that section before anything is read;
:func:`check_weights_hash` compares the weights file with the recorded hash
(checkpoints written before the hash existed load unchecked);
:func:`verify` checks a checkpoint without loading a model.

A directory is llm-adapter's when its manifest (or a dense export's
``llm_adapter_export.json``) says so and it holds no other file:
:func:`check_output_dir` replaces nothing else (``overwrite``), never the
model being saved nor a directory containing it.  The rule and its one
message live in :mod:`llm_adapter.files`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import recover
from .errors import AdapterError, CheckpointError, mention
from .files import refuse, sha256_file, writable_ancestor
from .safetensors_file import read_safetensors_header

__all__ = [
    "EXPORT_MANIFEST",
    "FORMAT_VERSION",
    "MANIFEST",
    "WEIGHTS",
    "check_output_dir",
    "check_schema",
    "check_weights_hash",
    "read_manifest",
    "verify",
]


FORMAT_VERSION = 1
MANIFEST = "compression.json"
WEIGHTS = "model.safetensors"
#: the manifest of a dense export (:func:`llm_adapter.export.export_dense`)
EXPORT_MANIFEST = "llm_adapter_export.json"
#: the shards and index of a dense export, for export manifests without a ``files`` list
_EXPORT_SHARD = re.compile(
    r"model-[0-9]{5}-of-[0-9]{5}\.safetensors|model\.safetensors\.index\.json"
)
#: files a save may write, for manifests older than the ``files`` list
_KNOWN_FILES = frozenset(
    {
        MANIFEST,
        WEIGHTS,
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def _written_by_us(out: Path) -> None:
    """Raise unless ``out`` is empty or a directory llm-adapter wrote that holds nothing else.

    A checkpoint (``compression.json``) or a dense export (``llm_adapter_export.json``)
    whose manifest lists its files (older manifests: the files a save writes).
    """
    fix = "choose another output directory, or remove it yourself"
    if not any(out.iterdir()):
        return
    name = MANIFEST if (out / MANIFEST).is_file() else EXPORT_MANIFEST
    file = out / name
    if not file.is_file():
        raise refuse(out, f"has no {MANIFEST}: it was not written by llm-adapter", fix)
    listed: Any = None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        if name == MANIFEST:
            ck = manifest["checkpoint"]
            listed = ck.get("files")
            ok = ck.get("format_version") == FORMAT_VERSION
        else:
            listed = manifest.get("files")
            ok = manifest.get("format") == "dense"
    except (ValueError, KeyError, TypeError, AttributeError):
        ok, listed = False, None
    if not ok:
        raise refuse(
            file,
            f"is not a manifest of llm-adapter checkpoint format {FORMAT_VERSION} (nor of a "
            "dense export)",
            fix,
        )
    if isinstance(listed, list):
        allowed = {str(n) for n in listed} | {name}
    else:  # written before manifests listed their files
        allowed = set(_KNOWN_FILES) | {name}
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if not p.is_file()
        or (p.name not in allowed and not (listed is None and _EXPORT_SHARD.fullmatch(p.name)))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise refuse(out, f"holds files llm-adapter did not write ({shown})", fix)


def check_output_dir(
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike[str]] = (),
    name: str | None = None,
) -> None:
    """Check, before any work, that a checkpoint can be written to ``out``.

    Parameters
    ----------
    out : str or path
        The target directory.
    overwrite : bool
        Whether an existing ``out`` may be replaced: only an empty directory,
        or one written by llm-adapter (its manifest says so) that holds no
        other file.
    sources : iterable of str or path
        Inputs (the model directory) that ``out`` must neither be nor contain.
    name : str, optional
        How the messages name ``out`` (default: the setting ``out``, marked with
        :func:`llm_adapter.errors.mention`).

    Raises
    ------
    AdapterError
        When ``out`` is an input or contains one, exists without
        ``overwrite``, may not be replaced, is not a directory, or cannot be
        created (a parent is a file, or is not writable).
    """
    named = mention("out") if name is None else name
    target = Path(out)
    resolved = target.resolve()
    for src in sources:
        src_path = Path(src)
        if str(src) and src_path.exists() and _is_within(src_path.resolve(), resolved):
            what = "is" if src_path.resolve() == resolved else "contains"
            raise AdapterError(
                f"{named} {str(out)!r} {what} the input model {str(src)!r}; writing there "
                f"would replace it: choose another {named}"
            )
    if target.is_symlink():
        raise AdapterError(f"{named} {str(out)!r} is a symbolic link; give a real directory")
    if target.exists():
        if not target.is_dir():
            raise AdapterError(
                f"{named} {str(out)!r} exists and is not a directory; choose another {named}"
            )
        if not overwrite:
            raise AdapterError(
                f"output directory {str(out)!r} exists; pass {mention('overwrite', True)} "
                "to replace it"
            )
        _written_by_us(target)
    writable_ancestor(target.parent, f"{named} {str(out)!r}", f"choose a writable {named}")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``compression.json`` manifest of a saved directory.

    Parameters
    ----------
    path : str or path
        A directory written by :func:`llm_adapter.save`.

    Returns
    -------
    dict
        The parsed manifest (method and parameters, ranks, per-layer errors,
        calibration protocol, package versions, timings).

    Raises
    ------
    AdapterError
        When the directory or its manifest is missing, or the manifest is not
        a JSON object.
    """
    file = Path(path) / MANIFEST
    recover(Path(path))
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    if not file.is_file():
        raise CheckpointError(
            f"{str(path)!r} has no {MANIFEST}; not a checkpoint written by llm-adapter"
        )
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(file)!r} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(file)!r} holds a {type(data).__name__}, not an object; {fix}")
    return data


def check_schema(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``checkpoint`` section, its schema checked; the weights file inside."""
    where = f"{str(root / MANIFEST)!r}"
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    ck = manifest.get("checkpoint")
    if not isinstance(ck, dict):
        raise CheckpointError(f"{where} has no 'checkpoint' object; {fix}")
    if ck.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(root)!r} has checkpoint format {ck.get('format_version')!r}; "
            f"this llm-adapter reads {FORMAT_VERSION}"
        )
    weights = ck.get("weights", WEIGHTS)
    if (
        not isinstance(weights, str)
        or weights in ("", ".", "..")
        or Path(weights).name != weights
        or "\\" in weights
    ):
        raise CheckpointError(
            f"{where}: weights = {weights!r} is not a file name inside the checkpoint "
            f"directory; {fix}"
        )
    file = root / weights
    if file.is_symlink() or not _is_within(file.resolve(), root.resolve()):
        raise CheckpointError(
            f"{where}: weights file {weights!r} leads out of the directory; {fix}"
        )
    digest = ck.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise CheckpointError(f"{where}: weights_sha256 = {digest!r} is not a sha256 digest; {fix}")
    lowrank = ck.get("lowrank_modules", {})
    aliases = ck.get("aliases", {})
    if not isinstance(lowrank, dict) or not isinstance(aliases, dict):
        raise CheckpointError(f"{where}: lowrank_modules and aliases must be objects; {fix}")
    for name, info in lowrank.items():
        ints = ("out_features", "in_features", "rank")
        ok = (
            isinstance(info, dict)
            and all(type(info.get(k)) is int and info[k] >= 1 for k in ints)
            and type(info.get("bias")) is bool
            and info.get("shared") in ("left", "right")
        )
        if not ok:
            raise CheckpointError(f"{where}: low-rank module {name} has a malformed entry; {fix}")
        if info["rank"] > min(info["out_features"], info["in_features"]):
            raise CheckpointError(
                f"{where}: low-rank module {name} has rank {info['rank']} above "
                f"min({info['out_features']}, {info['in_features']}); {fix}"
            )
    for a, c in aliases.items():
        if not isinstance(c, str):
            raise CheckpointError(f"{where}: alias {a} -> {c!r} is not a tensor name; {fix}")
    return ck


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_weights_hash(root: Path, ck: dict[str, Any]) -> None:
    """Check the weights file against the sha256 its manifest records (none: not checked).

    Checkpoints written before the manifest recorded a hash load unchecked.

    Parameters
    ----------
    root : Path
        The checkpoint directory.
    ck : dict
        The manifest's ``checkpoint`` section (:func:`check_schema`).

    Raises
    ------
    AdapterError
        When the file's bytes are not the ones written.
    """
    digest = ck.get("weights_sha256")
    if digest is None:
        return
    weights = root / ck.get("weights", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"weights file {str(weights)!r} does not exist")
    if sha256_file(weights) != digest:
        raise CheckpointError(
            f"{str(weights)!r} does not match the sha256 its manifest records: the file was "
            "changed or damaged after llm-adapter wrote it; write the checkpoint again with "
            "llm-adapter compress"
        )


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint without loading a model: manifest, weights header and content hash.

    Parameters
    ----------
    path : str or path
        A directory written by :func:`llm_adapter.save`.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    AdapterError
        Naming what is wrong.
    """
    root = Path(path)
    manifest = read_manifest(root)
    ck = check_schema(root, manifest)
    read_safetensors_header(root / ck.get("weights", WEIGHTS))
    check_weights_hash(root, ck)
    return manifest
