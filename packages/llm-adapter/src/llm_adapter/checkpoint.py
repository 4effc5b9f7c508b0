"""Save and reload compressed (and plain) models; the ``info`` subcommand.

A saved directory holds ``model.safetensors``, ``config.json``, the tokenizer
files and ``compression.json`` (the :class:`~llm_adapter.CompressionReport`
plus a ``checkpoint`` section: format version, the low-rank modules, and the
*aliases* -- state-dict keys that name the same tensor as another key).

A tensor shared by several modules (the basis of a tied group, or tied word
embeddings) is stored once, under its first key; safetensors cannot store
shared storage, and storing it once is what makes the file shrink as
reported.  On load the modules are rebuilt from the manifest and every alias
is pointed at the *same* ``nn.Parameter`` as its canonical key.

Writes are atomic: everything is written to a temporary directory next to
the target, which is renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdapterError
from .lowrank import LowRankLinear, count_unique_parameters
from .models import (
    dtype_kwargs,
    get_arch,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    set_module,
)

__all__ = ["FORMAT_VERSION", "load", "main_file_tensor_bytes", "read_manifest", "save"]

FORMAT_VERSION = 1
MANIFEST = "compression.json"
WEIGHTS = "model.safetensors"


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
        Compressed or plain.
    tokenizer : tokenizer or None
    report : CompressionReport or None
        ``None`` for a plain model.
    out_dir : str or path
    overwrite : bool, default False
        Replace an existing directory; otherwise an existing one is an error
        and is never touched.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise AdapterError(
            f"output directory {str(out)!r} exists; pass overwrite=True (--overwrite) to replace it"
        )
    if out.exists() and not out.is_dir():
        raise AdapterError(f"output path {str(out)!r} exists and is not a directory")
    spec = get_arch(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tensors, aliases = _dedupe(model)
        file_tensors = {
            _to_file_key(k, spec.file_renames): t.detach().to("cpu").contiguous()
            for k, t in tensors.items()
        }
        file_aliases = {
            _to_file_key(a, spec.file_renames): _to_file_key(c, spec.file_renames)
            for a, c in aliases.items()
        }
        save_file(file_tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
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
            "dtype": dtypes,
            "parameters": count_unique_parameters(model),
            "lowrank_modules": lowrank,
            "aliases": file_aliases,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        _normal_permissions(tmp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a 0700 directory: give the result the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for file in root.rglob("*"):
        os.chmod(file, (0o777 if file.is_dir() else 0o666) & ~umask)


def main_file_tensor_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and header)."""
    import struct

    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - int(header_len)


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
        When the directory or its manifest is missing.
    """
    file = Path(path) / MANIFEST
    if not Path(path).is_dir():
        raise AdapterError(f"checkpoint directory {str(path)!r} does not exist")
    if not file.is_file():
        raise AdapterError(
            f"{str(path)!r} has no {MANIFEST}; not a checkpoint written by llm-adapter"
        )
    data: dict[str, Any] = json.loads(file.read_text())
    return data


def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """Reload a checkpoint written by :func:`save`, or a plain Hugging Face one.

    Parameters
    ----------
    path : str or path
        Directory; without ``compression.json`` it is loaded as a plain
        checkpoint (:func:`llm_adapter.load_model`), as is a ``.gguf`` file.
    device : {"auto", "cpu", "cuda", "cuda:N"}
    dtype : str or torch.dtype, optional
        Cast after loading; default: as stored.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode, with its low-rank modules and their sharing rebuilt.
    tokenizer : tokenizer or None
        ``None`` when the directory holds no tokenizer.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(path)
    if root.is_file():  # a .gguf file: dequantized through the cache by load_model
        from .models import load_model

        return load_model(root, device=device, dtype=dtype)
    if not root.is_dir():
        raise AdapterError(f"checkpoint directory {str(path)!r} does not exist")
    if not (root / MANIFEST).is_file():
        from .models import load_model

        return load_model(root, device=device, dtype=dtype)
    manifest = read_manifest(root)
    ck = manifest.get("checkpoint", {})
    if ck.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
            f"{str(path)!r} has checkpoint format {ck.get('format_version')!r}; "
            f"this llm-adapter reads {FORMAT_VERSION}"
        )
    config = AutoConfig.from_pretrained(str(root))
    stored = load_file(str(root / ck.get("weights", WEIGHTS)))
    store_dtype = next(iter(stored.values())).dtype if stored else torch.float32
    try:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, **dtype_kwargs(store_dtype))
    except ImportError:
        model = AutoModelForCausalLM.from_config(config, **dtype_kwargs(store_dtype))
    spec = get_arch(model)
    for name, info in ck.get("lowrank_modules", {}).items():
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
    model_keys = set(model.state_dict(keep_vars=True).keys())
    # clone: fresh aligned allocations, independent of the file's layout
    renamed = {
        _from_file_key(k, spec.file_renames, model_keys): v.clone() for k, v in stored.items()
    }
    unexpected = sorted(set(renamed) - model_keys)
    if unexpected:
        raise AdapterError(f"{str(path)!r} holds tensors the model does not have: {unexpected[:5]}")
    model.load_state_dict(renamed, strict=False, assign=True)
    for alias, canonical in ck.get("aliases", {}).items():
        a = _from_file_key(alias, spec.file_renames, model_keys)
        c = _from_file_key(canonical, spec.file_renames, model_keys)
        owner_name, _, attr = a.rpartition(".")
        owner = model.get_submodule(owner_name)
        target = model.get_parameter(c) if c in dict(model.named_parameters()) else None
        if target is None:
            raise AdapterError(f"{str(path)!r}: alias {alias} points at missing tensor {canonical}")
        setattr(owner, attr, target)
    missing = [
        k for k, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"
    ]
    if missing:
        raise AdapterError(f"{str(path)!r} lacks tensors the model needs: {missing[:5]}")
    for p in model.parameters():
        p.requires_grad_(False)
    torch_dtype = resolve_dtype(dtype)
    model.to(device=resolve_device(device), dtype=torch_dtype)
    model.eval()
    tokenizer = None
    if (root / "tokenizer_config.json").is_file() or (root / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(root)
    return model, tokenizer


# ---------------------------------------------------------------- command line


def register(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    p = subparsers.add_parser(
        "info",
        help="describe a saved checkpoint",
        description="Describe a checkpoint written by llm-adapter compress: method, ranks, "
        "parameters and per-family errors.",
    )
    p.add_argument("dir", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print compression.json as is")
    p.set_defaults(func=run_info)


def _info_plain(root: Path) -> int:
    """Describe a plain Hugging Face checkpoint (no compression manifest)."""
    config = json.loads((root / "config.json").read_text())
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin"))
    print(f"checkpoint {root}")
    print("  plain Hugging Face checkpoint (no compression.json)")
    print(
        f"  model_type: {config.get('model_type')}, layers: {config.get('num_hidden_layers')}, "
        f"hidden: {config.get('hidden_size')}, intermediate: {config.get('intermediate_size')}"
    )
    for file in files:
        print(f"  {file.name}: {file.stat().st_size} bytes")
    from .export import checkpoint_summary, format_summary

    print("\n".join(format_summary(checkpoint_summary(root))))
    return 0


def run_info(args: argparse.Namespace) -> int:
    """The ``info`` subcommand."""
    from .compress import CompressionReport

    root = Path(args.dir)
    if root.is_file():  # a .gguf file: describe its dequantized (cached) copy
        from .gguf_cache import describe_gguf

        return _info_plain(describe_gguf(root))
    if root.is_dir() and not (root / MANIFEST).is_file() and (root / "config.json").is_file():
        return _info_plain(root)
    manifest = read_manifest(args.dir)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    ck = manifest.get("checkpoint", {})
    weights = Path(args.dir) / ck.get("weights", WEIGHTS)
    size = weights.stat().st_size if weights.is_file() else 0
    print(f"checkpoint {args.dir}")
    print(f"  model: {manifest.get('model') or '?'}")
    print(f"  parameters: {ck.get('parameters')}  ({', '.join(ck.get('dtype', []))})")
    print(f"  {WEIGHTS}: {size} bytes")
    print(
        f"  low-rank modules: {len(ck.get('lowrank_modules', {}))}, "
        f"shared tensors stored once: {len(ck.get('aliases', {}))}"
    )
    cal = manifest.get("calibration")
    if cal:
        src = cal.get("text_path") or cal.get("dataset") or "token windows"
        print(
            f"  calibration: {src}, {cal.get('samples')} x {cal.get('seq_len')} tokens, "
            f"seed {cal.get('seed')}"
        )
    if manifest.get("method") is None:
        print("  plain (uncompressed) checkpoint")
        return 0
    timings = manifest.get("timings", {})
    if timings:
        print("  timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    print(CompressionReport.from_dict(manifest).summary_table())
    from .export import checkpoint_summary, format_summary

    print("\n".join(format_summary(checkpoint_summary(args.dir))))
    return 0
