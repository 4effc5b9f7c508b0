"""Save and reload compressed (and plain) models; the ``info`` subcommand.

A saved directory holds ``model.safetensors``, ``config.json``, the tokenizer
files and ``compression.json`` (the :class:`~llm_adapter.CompressionReport`
plus a ``checkpoint`` section: format version, the low-rank modules, the
*aliases* -- state-dict keys that name the same tensor as another key -- and
the names of the files written).

A tensor shared by several modules (the basis of a tied group, or tied word
embeddings) is stored once, under its first key; safetensors cannot store
shared storage, and storing it once is what makes the file shrink as
reported.  On load the modules are rebuilt from the manifest and every alias
is pointed at the *same* ``nn.Parameter`` as its canonical key.

Loading trusts nothing in the directory: the manifest's schema, the weights
file's header (names, shapes and byte ranges, checked against the file size),
the low-rank shapes against the model's config, and every alias (only between
equal-shape tensors that the format shares: the factors on a low-rank module's
shared side, or tied word embeddings) are checked before any tensor is read,
and every tensor read is checked for NaN and inf.  The manifest records the
sha256 of the weights file (``weights_sha256``), and loading compares it
before reading a tensor, so a weights file changed after it was written (even
one bit, every shape intact) is an error; checkpoints written before the hash
existed load unchecked.

Writes never lose data:

* everything is written to ``.NAME.tmp-<host>-<pid>-<random>`` beside the
  target ``NAME`` and renamed into place only when complete;
* ``overwrite`` replaces only a directory that llm-adapter wrote (its
  manifest says so and it holds no other file), never the model being saved
  nor a directory containing it;
* the replacement is one atomic exchange of the two directories
  (``renameat2(RENAME_EXCHANGE)`` on Linux); where the system lacks it, the
  old directory is first renamed to ``.NAME.old-<host>-<pid>-<random>``, and
  the next write to ``NAME`` puts it back if the process died before the new
  one was in place;
* the next write to ``NAME`` removes the leftovers of a dead earlier write
  (the host and process id in their names identify them; a live writer's
  are left alone), and reading ``NAME`` when it is missing puts back an
  ``.old-`` directory first.

The rule and its one message live in :mod:`llm_adapter.files`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdapterError
from .files import (
    crash_point,
    leftover_kind,
    new_tag,
    refuse,
    sha256_file,
)
from .gguf_cache import load_gguf
from .lowrank import LowRankLinear, count_unique_parameters
from .models import (
    check_finite,
    dtype_kwargs,
    get_arch,
    load_pretrained,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    set_module,
)

__all__ = [
    "EXPORT_MANIFEST",
    "FORMAT_VERSION",
    "check_output_dir",
    "check_weight_files",
    "check_weights_hash",
    "clean_leftovers",
    "load",
    "main_file_tensor_bytes",
    "model_context",
    "read_manifest",
    "read_safetensors_header",
    "save",
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
# ---------------------------------------------------------------- safe writes


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
    flag: str = "--out",
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
    flag : str
        How the messages name ``out``.

    Raises
    ------
    AdapterError
        When ``out`` is an input or contains one, exists without
        ``overwrite``, may not be replaced, is not a directory, or cannot be
        created (a parent is a file, or is not writable).
    """
    target = Path(out)
    resolved = target.resolve()
    for src in sources:
        src_path = Path(src)
        if str(src) and src_path.exists() and _is_within(src_path.resolve(), resolved):
            what = "is" if src_path.resolve() == resolved else "contains"
            raise AdapterError(
                f"{flag} {str(out)!r} {what} the input model {str(src)!r}; writing there "
                f"would replace it: choose another {flag}"
            )
    if target.is_symlink():
        raise AdapterError(f"{flag} {str(out)!r} is a symbolic link; give a real directory")
    if target.exists():
        if not target.is_dir():
            raise AdapterError(
                f"{flag} {str(out)!r} exists and is not a directory; choose another {flag}"
            )
        if not overwrite:
            raise AdapterError(
                f"output directory {str(out)!r} exists; pass --overwrite "
                "(overwrite=True) to replace it"
            )
        _written_by_us(target)
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdapterError(
            f"{flag} {str(out)!r} cannot be created: {str(ancestor)!r} is not a directory"
        )
    probe = ancestor / f".{target.name}.tmp-{new_tag()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise AdapterError(
            f"{flag} {str(out)!r} cannot be written ({exc.strerror} in {str(ancestor)!r}); "
            f"choose a writable {flag}"
        ) from None


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


def _to_file_key(key: str, renames: dict[str, str]) -> str:
    for model_prefix, file_prefix in renames.items():
        if key.startswith(model_prefix):
            return file_prefix + key[len(model_prefix) :]
    return key


def _from_file_key(key: str, renames: dict[str, str], model_keys: set[str]) -> str:
    if key in model_keys:
        return key
    for model_prefix, file_prefix in renames.items():
        if key.startswith(file_prefix):
            candidate = model_prefix + key[len(file_prefix) :]
            if candidate in model_keys:
                return candidate
    return key


def _dedupe(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor once, and alias -> canonical key."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        if t.device.type == "meta":
            raise AdapterError(
                f"{key} is offloaded (meta device); save a model whose weights are in memory"
            )
        ident = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if t.numel() > 0 and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t
    return tensors, aliases


def save(
    model: nn.Module,
    tokenizer: Any,
    report: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the model, its tokenizer and the compression manifest, atomically.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Compressed or plain; every tensor must be finite.
    tokenizer : tokenizer or None
    report : CompressionReport or None
        ``None`` for a plain model.
    out_dir : str or path
    overwrite : bool, default False
        Replace an existing directory, but only one written by llm-adapter
        that holds no other file; otherwise an existing one is an error and
        is never touched.  The directory the model was loaded from (and any
        directory containing it) is never replaced.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    clean_leftovers(out)
    source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    check_output_dir(out, overwrite=overwrite, sources=[source] if source else [], flag="out_dir")
    spec = get_arch(model)
    tensors, aliases = _dedupe(model)
    check_finite(tensors, "the model to save")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = new_tag()
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        file_tensors = {
            _to_file_key(k, spec.file_renames): t.detach().to("cpu").contiguous()
            for k, t in tensors.items()
        }
        file_aliases = {
            _to_file_key(a, spec.file_renames): _to_file_key(c, spec.file_renames)
            for a, c in aliases.items()
        }
        save_file(file_tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        weights_sha256 = sha256_file(tmp / WEIGHTS)
        crash_point("save-partial")
        config: Any = model.config
        config.save_pretrained(str(tmp))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            try:
                gen.save_pretrained(str(tmp))
            except Exception:  # a generation config is optional
                pass
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        lowrank = {}
        for name, module in model.named_modules():
            if isinstance(module, LowRankLinear):
                lowrank[name] = {
                    "out_features": module.out_features,
                    "in_features": module.in_features,
                    "rank": module.rank,
                    "bias": module.bias is not None,
                    "shared": module.shared,
                }
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
        manifest: dict[str, Any] = report.to_dict() if report is not None else {"method": None}
        manifest["checkpoint"] = {
            "format_version": FORMAT_VERSION,
            "weights": WEIGHTS,
            "weights_sha256": weights_sha256,
            "dtype": dtypes,
            "parameters": count_unique_parameters(model),
            "lowrank_modules": lowrank,
            "aliases": file_aliases,
            "training_context": model_context(source, config) if source else None,
            "files": sorted([p.name for p in tmp.iterdir()] + [MANIFEST]),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        normal_permissions(tmp)
        swap_into_place(tmp, out, tag)
        crash_point("save-done")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def normal_permissions(root: Path) -> None:
    """Give the files the usual umask-based modes (as a plain ``mkdir`` would)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for file in root.rglob("*"):
        os.chmod(file, (0o777 if file.is_dir() else 0o666) & ~umask)


def main_file_tensor_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and header)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - int(header_len)


_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file, checked against the file's size.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    dict
        Tensor name -> ``{"dtype", "shape", "data_offsets"}`` (the
        ``__metadata__`` entry left out).

    Raises
    ------
    AdapterError
        For a missing, truncated or malformed file: a header that is not a
        JSON object, a tensor whose byte range does not match its shape and
        dtype or lies outside the file, or data of another length than the
        tensors need.
    """
    p = Path(path)
    fix = "the file is truncated or not a safetensors file; re-create or re-download it"
    if not p.is_file():
        raise AdapterError(f"weights file {str(p)!r} does not exist")
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise AdapterError(f"{str(p)!r} has {size} bytes, no safetensors header: {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise AdapterError(
                    f"{str(p)!r} announces a {n}-byte header in a {size}-byte file: {fix}"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{str(p)!r} has an unreadable header ({exc}): {fix}") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{str(p)!r}: the header is not a JSON object: {fix}")
    header.pop("__metadata__", None)
    data = size - 8 - n
    end = 0
    for name, info in header.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], info["shape"], info["data_offsets"]
            numel = math.prod(int(s) for s in shape)
            ok = (
                dtype in _ITEMSIZE
                and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(lo, int)
                and isinstance(hi, int)
                and 0 <= lo <= hi
                and hi - lo == numel * _ITEMSIZE[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise AdapterError(f"{str(p)!r}: tensor {name} has a malformed entry {info!r}: {fix}")
        end = max(end, hi)
    if end != data:
        raise AdapterError(
            f"{str(p)!r} holds {data} bytes of tensor data, its header describes {end}: {fix}"
        )
    return header


def check_weight_files(path: str | os.PathLike[str]) -> None:
    """Check every ``*.safetensors`` file of a local model directory (see
    :func:`read_safetensors_header`); a hub id or a missing path is left to the loader.

    Parameters
    ----------
    path : str or path
    """
    root = Path(path)
    if root.is_dir():
        for file in sorted(root.glob("*.safetensors")):
            read_safetensors_header(file)


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
        raise AdapterError(f"checkpoint directory {str(path)!r} does not exist")
    if not file.is_file():
        raise AdapterError(
            f"{str(path)!r} has no {MANIFEST}; not a checkpoint written by llm-adapter"
        )
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{str(file)!r} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{str(file)!r} holds a {type(data).__name__}, not an object; {fix}")
    return data


def check_schema(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``checkpoint`` section, its schema checked; the weights file inside."""
    where = f"{str(root / MANIFEST)!r}"
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    ck = manifest.get("checkpoint")
    if not isinstance(ck, dict):
        raise AdapterError(f"{where} has no 'checkpoint' object; {fix}")
    if ck.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
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
        raise AdapterError(
            f"{where}: weights = {weights!r} is not a file name inside the checkpoint "
            f"directory; {fix}"
        )
    file = root / weights
    if file.is_symlink() or not _is_within(file.resolve(), root.resolve()):
        raise AdapterError(f"{where}: weights file {weights!r} leads out of the directory; {fix}")
    digest = ck.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise AdapterError(f"{where}: weights_sha256 = {digest!r} is not a sha256 digest; {fix}")
    lowrank = ck.get("lowrank_modules", {})
    aliases = ck.get("aliases", {})
    if not isinstance(lowrank, dict) or not isinstance(aliases, dict):
        raise AdapterError(f"{where}: lowrank_modules and aliases must be objects; {fix}")
    for name, info in lowrank.items():
        ints = ("out_features", "in_features", "rank")
        ok = (
            isinstance(info, dict)
            and all(type(info.get(k)) is int and info[k] >= 1 for k in ints)
            and type(info.get("bias")) is bool
            and info.get("shared") in ("left", "right")
        )
        if not ok:
            raise AdapterError(f"{where}: low-rank module {name} has a malformed entry; {fix}")
        if info["rank"] > min(info["out_features"], info["in_features"]):
            raise AdapterError(
                f"{where}: low-rank module {name} has rank {info['rank']} above "
                f"min({info['out_features']}, {info['in_features']}); {fix}"
            )
    for a, c in aliases.items():
        if not isinstance(c, str):
            raise AdapterError(f"{where}: alias {a} -> {c!r} is not a tensor name; {fix}")
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
        raise AdapterError(f"weights file {str(weights)!r} does not exist")
    if sha256_file(weights) != digest:
        raise AdapterError(
            f"{str(weights)!r} does not match the sha256 its manifest records: the file was "
            "changed or damaged after llm-adapter wrote it; write the checkpoint again with "
            "llm-adapter compress"
        )


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint without loading a model: manifest, weights header and content hash.

    Parameters
    ----------
    path : str or path
        A directory written by :func:`save`.

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


def recover(root: Path) -> None:
    """Put back a checkpoint that a write killed mid-replacement left aside (see
    :func:`clean_leftovers`), so that reading ``root`` finds it."""
    if not root.exists() and not root.is_symlink():
        clean_leftovers(root)


_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
}  # fmt: skip


def _family_path(module: str, layers: str) -> str | None:
    """``attention.dense`` of ``gpt_neox.layers.3.attention.dense``; None outside the blocks."""
    head, _, rest = module.partition(f"{layers}.")
    index, _, path = rest.partition(".")
    return path if head == "" and index.isdigit() and path else None


def _shared_pairs(model: nn.Module) -> set[frozenset[str]]:
    """Parameter names the format shares: tied input and output embeddings."""
    pairs: set[frozenset[str]] = set()
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return pairs
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return pairs
    emb_in, emb_out = get_in(), get_out()
    names = {id(m): n for n, m in model.named_modules()}
    if emb_in is not None and emb_out is not None and id(emb_in) in names and id(emb_out) in names:
        pairs.add(frozenset({f"{names[id(emb_in)]}.weight", f"{names[id(emb_out)]}.weight"}))
    return pairs


def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Load any model: a checkpoint written by :func:`save`, a plain one, a GGUF file, a hub id.

    This is the one loader (``llm_adapter.load_model`` is this function).

    Everything in the directory is checked before any tensor is read (see the
    module notes): a damaged or hand-edited checkpoint is an
    :class:`~llm_adapter.AdapterError` naming what is wrong.

    Parameters
    ----------
    path : str or path
        Directory; without ``compression.json`` it is loaded as a plain
        checkpoint (:func:`llm_adapter.models.load_pretrained`), a ``.gguf``
        file through its dequantized cache entry
        (:func:`llm_adapter.gguf_cache.load_gguf`), anything else as a hub id.
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Ignored when ``device_map`` is given.
    dtype : str or torch.dtype, optional
        Cast after loading; default: as stored.
    device_map : str or dict, optional
        ``"auto"`` hands placement (and CPU offload) to ``accelerate``; plain
        checkpoints only.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode, with its low-rank modules and their sharing rebuilt.
    tokenizer : tokenizer or None
        ``None`` when the directory holds no tokenizer.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(path).expanduser()
    recover(root)
    if root.is_file() or str(path).lower().endswith(".gguf"):
        return load_gguf(root, device=device, dtype=dtype, device_map=device_map)
    if not (root / MANIFEST).is_file():
        if root.is_dir():
            check_weight_files(root)
        return load_pretrained(path, device=device, dtype=dtype, device_map=device_map)
    if device_map is not None:
        raise AdapterError(
            f"{str(path)!r} is a compressed checkpoint: load it without --device-map"
        )
    torch_dtype = resolve_dtype(dtype)
    target_device = resolve_device(device)
    fix = "the checkpoint is damaged: write it again with llm-adapter compress"
    manifest = read_manifest(root)
    ck = check_schema(root, manifest)
    weights = root / ck.get("weights", WEIGHTS)
    header = read_safetensors_header(weights)
    stored_dtypes = {info["dtype"] for info in header.values()}
    if not stored_dtypes <= set(_TORCH_DTYPES):
        raise AdapterError(f"{str(weights)!r} holds tensors of dtype {sorted(stored_dtypes)}")
    store_dtype = _TORCH_DTYPES[next(iter(header.values()))["dtype"]] if header else torch.float32
    try:
        config = AutoConfig.from_pretrained(str(root))
    except (OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise AdapterError(f"cannot read the config of {str(path)!r}: {msg}") from None
    try:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, **dtype_kwargs(store_dtype))
    except ImportError:
        model = AutoModelForCausalLM.from_config(config, **dtype_kwargs(store_dtype))
    spec = get_arch(model)
    lowrank: dict[str, Any] = ck.get("lowrank_modules", {})
    for name, info in lowrank.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            old = None
        if not isinstance(old, nn.Linear):
            raise AdapterError(
                f"{str(path)!r}: low-rank module {name} is not a linear map of this model "
                f"({config.model_type}, {getattr(config, 'num_hidden_layers', '?')} layers); {fix}"
            )
        shape = (info["out_features"], info["in_features"], info["bias"])
        if shape != (old.out_features, old.in_features, old.bias is not None):
            raise AdapterError(
                f"{str(path)!r}: low-rank module {name} is {shape[0]}x{shape[1]} "
                f"(bias {shape[2]}), the config makes it {old.out_features}x{old.in_features} "
                f"(bias {old.bias is not None}); {fix}"
            )
        set_module(
            model,
            name,
            LowRankLinear.empty(
                info["out_features"],
                info["in_features"],
                info["rank"],
                bias=info["bias"],
                shared=info["shared"],
                dtype=store_dtype,
                device="meta",
            ),
        )
    expected = {k: tuple(t.shape) for k, t in model.state_dict(keep_vars=True).items()}
    model_keys = set(expected)
    file_to_model = {k: _from_file_key(k, spec.file_renames, model_keys) for k in header}
    unexpected = sorted(k for k, m in file_to_model.items() if m not in model_keys)
    if unexpected:
        raise AdapterError(f"{str(path)!r} holds tensors the model does not have: {unexpected[:5]}")
    for k, m in file_to_model.items():
        if tuple(header[k]["shape"]) != expected[m]:
            raise AdapterError(
                f"{str(path)!r}: tensor {k} has shape {tuple(header[k]['shape'])}, the model "
                f"needs {expected[m]}; {fix}"
            )
    stored_keys = set(file_to_model.values())
    shared_pairs = _shared_pairs(model)
    alias_map: dict[str, str] = {}
    for alias, canonical in ck.get("aliases", {}).items():
        a = _from_file_key(alias, spec.file_renames, model_keys)
        c = _from_file_key(canonical, spec.file_renames, model_keys)
        bad = None
        if a not in model_keys:
            bad = "names no tensor of the model"
        elif a in stored_keys or a in alias_map:
            bad = "names a tensor that is stored or aliased already"
        elif c not in stored_keys:
            bad = f"points at {canonical}, which is not stored"
        elif expected[a] != expected[c]:
            bad = f"has shape {expected[a]}, its target {canonical} {expected[c]}"
        else:
            (a_mod, _, a_attr), (c_mod, _, c_attr) = a.rpartition("."), c.rpartition(".")
            mods = (lowrank.get(a_mod), lowrank.get(c_mod))
            factor = (
                a_attr == c_attr
                and all(isinstance(m, dict) and m["shared"] == a_attr for m in mods)
                and _family_path(a_mod, spec.layers) == _family_path(c_mod, spec.layers)
            )
            if not factor and frozenset({a, c}) not in shared_pairs:
                bad = f"shares {canonical}, which the format never shares with it"
        if bad is not None:
            raise AdapterError(f"{str(path)!r}: alias {alias} {bad}; {fix}")
        alias_map[a] = c
    missing = sorted(model_keys - stored_keys - set(alias_map))
    missing = [k for k in missing if k in dict(model.named_parameters(remove_duplicate=False))]
    if missing:
        raise AdapterError(f"{str(path)!r} lacks tensors the model needs: {missing[:5]}")
    check_weights_hash(root, ck)
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"cannot read {str(weights)!r}: {exc}; {fix}") from None
    check_finite(stored, repr(str(path)))
    # clone: fresh aligned allocations, independent of the file's layout
    renamed = {file_to_model[k]: v.clone() for k, v in stored.items()}
    del stored
    model.load_state_dict(renamed, strict=False, assign=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    for a, c in alias_map.items():
        owner_name, _, attr = a.rpartition(".")
        owner = model.get_submodule(owner_name)
        target = params.get(c)
        if target is None:
            raise AdapterError(f"{str(path)!r}: alias {a} points at {c}, not a parameter; {fix}")
        setattr(owner, attr, target)
    missing = [
        k for k, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"
    ]
    if missing:
        raise AdapterError(f"{str(path)!r} lacks tensors the model needs: {missing[:5]}")
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device=target_device, dtype=torch_dtype)
    model.eval()
    tokenizer = None
    if (root / "tokenizer_config.json").is_file() or (root / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(root)
    return model, tokenizer


def model_context(name_or_path: str | os.PathLike[str], config: Any = None) -> int | None:
    """The context a model was trained on: the default window of calibration and evaluation.

    In order: the training record beside the weights (``TRAINING.json``:
    ``eval_seq``, ``eval_ppl_seq``, ``recipe.seq``), the ``training_context``
    a compressed checkpoint's manifest carries over from its source model, and
    the config's ``max_position_embeddings``.

    Parameters
    ----------
    name_or_path : str or path
        Local directory or hub id.
    config : transformers config, optional
        The loaded model's config (for ``max_position_embeddings``).

    Returns
    -------
    int or None
        None when nothing records it.
    """
    root = Path(name_or_path)
    record = root / "TRAINING.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            recipe = data.get("recipe")
            recipe = recipe if isinstance(recipe, dict) else {}
            for value in (data.get("eval_seq"), data.get("eval_ppl_seq"), recipe.get("seq")):
                if type(value) is int and value >= 2:
                    return value
    manifest = root / "compression.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            value = data["checkpoint"]["training_context"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            value = None
        if type(value) is int and value >= 2:
            return value
    value = getattr(config, "max_position_embeddings", None)
    if config is None and (root / "config.json").is_file():
        try:
            value = json.loads((root / "config.json").read_text(encoding="utf-8")).get(
                "max_position_embeddings"
            )
        except (ValueError, UnicodeDecodeError, AttributeError):
            value = None
    return value if type(value) is int and value >= 2 else None


#: the one loader under the name the package exports (``llm_adapter.load_model``)
load_model = load
