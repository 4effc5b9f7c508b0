"""Dense export: a compressed checkpoint as a plain transformers checkpoint.

A checkpoint written by :func:`llm_adapter.save` holds its compressed maps as
factors (``W' = L R``, :class:`~llm_adapter.lowrank.LowRankLinear`), which
only :func:`llm_adapter.load` rebuilds.  :func:`export_dense` multiplies the
factors out, ``W' = L R`` in float64 then rounded once to the stored dtype,
puts an ordinary ``nn.Linear`` back in place of every low-rank module, and
writes the model with ``save_pretrained``: a directory that
``AutoModelForCausalLM.from_pretrained`` (and any tool that reads
transformers checkpoints) loads with no custom code.  It has the original
model's size and, to float tolerance, the compressed model's outputs.

transformers has no generic way to declare "this linear map is a product of
two thin matrices" in a config: the architectures with built-in low-rank
projections (the multi-head latent attention of DeepSeek-V2/V3 and
MiniCPM3) fix them to a few attention maps, with one global rank and a norm
between the factors, and PEFT adapters (LoRA) add a low-rank term to a dense
weight that is stored in full.  So the factored form is served by
:func:`llm_adapter.load` (smaller and, at low rank, faster), and the dense
form by everything else.

Tolerance: the two forms compute the same map in a different order
(``L (R x)`` against ``(L R) x``), so their outputs differ by rounding only:
in float32 the logits agree to about ``1e-6`` of their largest magnitude on
the shipped tiny model (the tests allow ``1e-4``), in float64 to about
``1e-12``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import clean_leftovers, normal_permissions, recover, swap_into_place
from .checkpoint import load
from .errors import CheckpointError
from .files import crash_point, new_tag
from .lowrank import LowRankLinear, count_unique_parameters
from .manifest import EXPORT_MANIFEST, check_output_dir, read_manifest
from .models import resolve_dtype, set_module

__all__ = [
    "EXPORT_MANIFEST",
    "checkpoint_summary",
    "export_dense",
    "format_summary",
    "merge_lowrank",
    "safetensors_parameters",
]

_COMPRESSION_MANIFEST = "compression.json"


def merge_lowrank(model: nn.Module) -> int:
    """Replace every low-rank module of ``model`` by the dense ``nn.Linear`` it computes.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place.  Each :class:`~llm_adapter.lowrank.LowRankLinear`
        becomes ``nn.Linear`` with weight ``left @ right`` (multiplied in
        float64, then cast to the factors' dtype and device) and the same bias.

    Returns
    -------
    int
        The number of modules replaced.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, LowRankLinear)]
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, LowRankLinear)
        left, right = module.left.detach(), module.right.detach()
        with torch.no_grad():
            weight = (left.to("cpu", torch.float64) @ right.to("cpu", torch.float64)).to(
                device=left.device, dtype=left.dtype
            )
        dense = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device="meta",
            dtype=left.dtype,
        )
        dense.weight = nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            dense.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        set_module(model, name, dense)
    return len(names)


def export_dense(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint's merged dense weights as a plain transformers checkpoint.

    Parameters
    ----------
    source : str or path
        A directory written by :func:`llm_adapter.save` (a plain transformers
        directory is copied through unchanged in content).
    out_dir : str or path
        The new directory: ``config.json``, ``model.safetensors``, the
        tokenizer files, and :data:`EXPORT_MANIFEST` (the source's
        compression manifest, for ``llm-adapter info``).  Written atomically.
    dtype : str or torch.dtype, optional
        Cast the weights, e.g. ``"bfloat16"``; default: the source's dtype.
    overwrite : bool, default False
        Replace an existing ``out_dir``, but only a directory llm-adapter
        wrote (an export or a checkpoint) that holds nothing else, never the
        source nor a directory containing it (the rule of
        :func:`llm_adapter.checkpoint.save`); checked before the model loads.

    Returns
    -------
    Path
        ``out_dir``; ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.
    """
    src = Path(source)
    recover(src)
    if not src.is_dir():
        raise CheckpointError(f"checkpoint directory {str(source)!r} does not exist")
    if not (src / _COMPRESSION_MANIFEST).is_file() and not (src / "config.json").is_file():
        raise CheckpointError(
            f"{str(source)!r} is neither an llm-adapter checkpoint (compression.json) nor a "
            "transformers directory (config.json)"
        )
    out = Path(out_dir)
    torch_dtype = resolve_dtype(dtype)
    clean_leftovers(out)  # before loading anything: the output is checked like compress's
    check_output_dir(out, overwrite=overwrite, sources=[src])
    manifest = read_manifest(src) if (src / _COMPRESSION_MANIFEST).is_file() else None
    model: Any
    model, tokenizer = load(src, device="cpu")
    merged = merge_lowrank(model)
    if torch_dtype is not None:
        model.to(torch_dtype)
    config: Any = model.config
    if getattr(config, "quantization_config", None) is not None:
        # a model dequantized from GGUF: the weights written are plain tensors
        del config.quantization_config
    if hasattr(model, "tie_weights") and getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = new_tag()
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        crash_point("export-partial")
        record: dict[str, Any] = {
            "format": "dense",
            "source": str(src),
            "lowrank_modules_merged": merged,
            "parameters": count_unique_parameters(model),
            "source_compression": manifest,
            "source_bytes": _weights_bytes(src),
            "files": sorted([p.name for p in tmp.iterdir()] + [EXPORT_MANIFEST]),
        }
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        normal_permissions(tmp)
        swap_into_place(tmp, out, tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------ sizes and info


def _weights_files(root: Path) -> list[Path]:
    """The model's weight files: the index's shards, ``model.safetensors``, or ``*.bin``."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [root / s for s in shards if (root / s).is_file()]
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    bins = sorted(root.glob("pytorch_model*.bin"))
    return bins or sorted(root.glob("*.gguf"))


def _weights_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in _weights_files(root))


def safetensors_parameters(path: str | os.PathLike[str]) -> tuple[int, dict[str, int]]:
    """Parameter count and bytes per dtype of a safetensors file, read from its header only.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    count : int
        Entries over all tensors of the file (each stored tensor once).
    itemsizes : dict of str to int
        Bytes per entry of each dtype found (``{"F32": 4}``).
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    count = 0
    itemsizes: dict[str, int] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        numel = 1
        for s in info["shape"]:
            numel *= int(s)
        count += numel
        begin, end = info["data_offsets"]
        if numel:
            itemsizes[info["dtype"]] = (int(end) - int(begin)) // numel
    return count, itemsizes


def _gguf_parameters(path: Path) -> int | None:
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(str(path))
    return sum(int(t.n_elements) for t in reader.tensors)


def _stored_parameters(root: Path) -> int | None:
    files = _weights_files(root)
    if files and all(f.suffix == ".safetensors" for f in files):
        return sum(safetensors_parameters(f)[0] for f in files)
    if len(files) == 1 and files[0].suffix == ".gguf":
        return _gguf_parameters(files[0])
    return None


def _itemsize(root: Path) -> int:
    sizes: set[int] = set()
    for f in _weights_files(root):
        if f.suffix == ".safetensors":
            sizes.update(safetensors_parameters(f)[1].values())
    return max(sizes) if sizes else 4


def checkpoint_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Method, budget, ranks per family, and parameters and bytes before and after.

    Parameters
    ----------
    path : str or path
        An llm-adapter checkpoint, a dense export (:func:`export_dense`) or a
        plain transformers directory.

    Returns
    -------
    dict
        ``kind`` (``"low-rank"``, ``"dense export"`` or ``"plain"``),
        ``method``, ``budget`` (the compression config's ``rank_ratio`` /
        ``param_ratio``), ``ranks`` (family -> rank), and ``sizes``: a list
        of rows ``{"form", "parameters", "bytes", "measured"}``.  ``measured``
        is True for a figure read from files here and False for one derived:
        the original dense model's bytes are its parameters times the stored
        item size (the dense checkpoint is not at hand), and its parameters
        are the compressed count plus, per family, ``params_dense -
        params_kept``.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    manifest: dict[str, Any] | None = None
    kind = "plain"
    export: dict[str, Any] | None = None
    if (root / _COMPRESSION_MANIFEST).is_file():
        manifest = json.loads((root / _COMPRESSION_MANIFEST).read_text())
        kind = "low-rank" if manifest.get("method") is not None else "plain"
    elif (root / EXPORT_MANIFEST).is_file():
        export = json.loads((root / EXPORT_MANIFEST).read_text())
        manifest = export.get("source_compression")
        kind = "dense export"
    elif not (root / "config.json").is_file() and not list(root.glob("*.gguf")):
        raise CheckpointError(
            f"{str(path)!r} has no compression.json, config.json or .gguf file; not a checkpoint"
        )
    method = manifest.get("method") if manifest else None
    config = manifest.get("config", {}) if manifest else {}
    families = manifest.get("families", {}) if manifest and method else {}
    budget = {k: config[k] for k in ("rank_ratio", "param_ratio") if config.get(k) is not None}
    ranks = {name: int(f["rank"]) for name, f in families.items()}
    removed = sum(int(f["params_dense"]) - int(f["params_kept"]) for f in families.values())
    here_params = _stored_parameters(root)
    if kind == "low-rank" and manifest is not None:
        here_params = manifest.get("checkpoint", {}).get("parameters", here_params)
    here_bytes = _weights_bytes(root)
    item = _itemsize(root)
    rows: list[dict[str, Any]] = []
    if kind == "low-rank" and here_params is not None:
        rows.append(
            {
                "form": "dense original",
                "parameters": here_params + removed,
                "bytes": (here_params + removed) * item,
                "measured": False,
            }
        )
        rows.append(
            {
                "form": "low-rank (this)",
                "parameters": here_params,
                "bytes": here_bytes,
                "measured": True,
            }
        )
    elif kind == "dense export" and export is not None and manifest is not None:
        low = manifest.get("checkpoint", {}).get("parameters")
        rows.append(
            {
                "form": "dense export (this)",
                "parameters": here_params,
                "bytes": here_bytes,
                "measured": True,
            }
        )
        if low is not None:
            rows.append(
                {
                    "form": "low-rank source",
                    "parameters": int(low),
                    "bytes": export.get("source_bytes"),
                    "measured": True,
                }
            )
    else:
        rows.append(
            {
                "form": "plain (this)",
                "parameters": here_params,
                "bytes": here_bytes,
                "measured": True,
            }
        )
    return {
        "path": str(root),
        "kind": kind,
        "method": method,
        "budget": budget,
        "ranks": ranks,
        "sizes": rows,
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The lines ``llm-adapter info`` prints for a :func:`checkpoint_summary`."""
    lines = [f"  kind: {summary['kind']}"]
    if summary["method"] is not None:
        budget = ", ".join(f"{k} {v}" for k, v in summary["budget"].items()) or "-"
        lines.append(f"  method: {summary['method']}  budget: {budget}")
        ranks = ", ".join(f"{k} {v}" for k, v in summary["ranks"].items())
        lines.append(f"  ranks: {ranks}")
    lines.append(f"  {'size':<22} {'parameters':>14} {'bytes':>14}")
    for row in summary["sizes"]:
        params = "?" if row["parameters"] is None else f"{row['parameters']:,}"
        size = "?" if row["bytes"] is None else f"{row['bytes']:,}"
        note = "" if row["measured"] else "  (computed: dense parameters x item size)"
        lines.append(f"  {row['form']:<22} {params:>14} {size:>14}{note}")
    return lines
