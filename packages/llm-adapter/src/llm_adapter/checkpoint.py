"""Save and load models: compressed checkpoints, plain ones, GGUF files, hub ids.

A saved directory holds ``model.safetensors``, ``config.json``, the tokenizer
files and ``compression.json`` (:mod:`llm_adapter.manifest`).

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
and every tensor read is checked for NaN and inf; the weights file's sha256
is compared with the manifest's before a tensor is read.

Saving writes a temporary directory and swaps it into place
(:mod:`llm_adapter.atomic`); ``overwrite`` replaces only a directory that
llm-adapter wrote (:func:`llm_adapter.manifest.check_output_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import clean_leftovers, normal_permissions, recover, swap_into_place
from .errors import AdapterError, CheckpointError, mention
from .files import crash_point, new_tag, sha256_file
from .gguf_cache import load_gguf
from .lowrank import LowRankLinear, count_unique_parameters
from .manifest import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    check_output_dir,
    check_schema,
    check_weights_hash,
    read_manifest,
)
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
from .safetensors_file import check_weight_files, read_safetensors_header

__all__ = ["load", "model_context", "save"]


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
    check_output_dir(out, overwrite=overwrite, sources=[source] if source else [], name="out_dir")
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

    This is the one loader; the package exports it as ``llm_adapter.load``.

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
            f"{str(path)!r} is a compressed checkpoint: load it without {mention('device_map')}"
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
        raise CheckpointError(f"{str(weights)!r} holds tensors of dtype {sorted(stored_dtypes)}")
    store_dtype = _TORCH_DTYPES[next(iter(header.values()))["dtype"]] if header else torch.float32
    try:
        config = AutoConfig.from_pretrained(str(root))
    except (OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"cannot read the config of {str(path)!r}: {msg}") from None
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
            raise CheckpointError(
                f"{str(path)!r}: low-rank module {name} is not a linear map of this model "
                f"({config.model_type}, {getattr(config, 'num_hidden_layers', '?')} layers); {fix}"
            )
        shape = (info["out_features"], info["in_features"], info["bias"])
        if shape != (old.out_features, old.in_features, old.bias is not None):
            raise CheckpointError(
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
        raise CheckpointError(
            f"{str(path)!r} holds tensors the model does not have: {unexpected[:5]}"
        )
    for k, m in file_to_model.items():
        if tuple(header[k]["shape"]) != expected[m]:
            raise CheckpointError(
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
            raise CheckpointError(f"{str(path)!r}: alias {alias} {bad}; {fix}")
        alias_map[a] = c
    missing = sorted(model_keys - stored_keys - set(alias_map))
    missing = [k for k in missing if k in dict(model.named_parameters(remove_duplicate=False))]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks tensors the model needs: {missing[:5]}")
    check_weights_hash(root, ck)
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(weights)!r}: {exc}; {fix}") from None
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
            raise CheckpointError(f"{str(path)!r}: alias {a} points at {c}, not a parameter; {fix}")
        setattr(owner, attr, target)
    missing = [
        k for k, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"
    ]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks tensors the model needs: {missing[:5]}")
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
