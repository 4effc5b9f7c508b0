"""Model access: loading, devices and dtypes, and one accessor table per architecture.

The table :data:`ARCHITECTURES` maps a ``config.model_type`` to where its
transformer blocks live and which linear maps form each *family* (the L
same-shaped weights of one kind of map, one per layer).  Supporting another
architecture is one entry in that table; nothing else in the adapter branches
on the model type.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .errors import AdapterError, mention, one_line
from .methods import split_families

__all__ = [
    "ARCHITECTURES",
    "LLAMA_LAYOUT",
    "NEUTRAL_FAMILIES",
    "ArchSpec",
    "canonical_family",
    "check_finite",
    "family_modules",
    "family_weights",
    "get_arch",
    "known_family_names",
    "load_pretrained",
    "resolve_device",
    "resolve_dtype",
    "resolve_families",
    "set_module",
]


@dataclass(frozen=True)
class ArchSpec:
    """Where one architecture keeps its blocks and linear maps.

    Attributes
    ----------
    layers : str
        Dotted path from the causal-LM model to the ``ModuleList`` of blocks.
    families : dict of str to str
        Family name -> dotted path of the linear map inside one block.
    file_renames : dict of str to str
        State-dict key prefixes as the model names them -> as checkpoints on
        the hub name them (applied on save, undone on load), so files read
        the same whatever the ``transformers`` version.
    aliases : dict of str to str
        Architecture-neutral family name (:data:`NEUTRAL_FAMILIES`) -> the
        family of this architecture it names.  Accepted wherever a family is.
    """

    layers: str
    families: dict[str, str]
    file_renames: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


#: Architecture-neutral family names and what each means; every architecture
#: maps the ones it has to its own family (``ArchSpec.aliases``).
NEUTRAL_FAMILIES: dict[str, str] = {
    "attn.qkv": "the fused query-key-value input map of attention",
    "attn.q": "the query map",
    "attn.k": "the key map",
    "attn.v": "the value map",
    "attn.out": "the attention output map",
    "mlp.gate": "the MLP gate map (gated MLPs)",
    "mlp.up": "the MLP up (input) map",
    "mlp.out": "the MLP down (output) map",
}

_LLAMA_FAMILIES = {
    f: f
    for f in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
}
_LLAMA_ALIASES = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.out": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.out": "mlp.down_proj",
}


def _llama_layout() -> ArchSpec:
    """The Llama module layout: ``model.layers.i.self_attn.*_proj`` and ``mlp.*_proj``."""
    return ArchSpec(
        layers="model.layers", families=dict(_LLAMA_FAMILIES), aliases=dict(_LLAMA_ALIASES)
    )


#: Architectures (``config.model_type``) that transformers ships with exactly
#: Llama's module layout for the linear maps: separate q/k/v/o projections
#: and a gated MLP, blocks at ``model.layers``.  They differ in norms, rotary
#: details, biases, tying and scaling, none of which the adapter touches.
LLAMA_LAYOUT = (
    "llama",
    "mistral",
    "ministral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "vaultgemma",
    "olmo",
    "olmo2",
    "olmo3",
    "granite",
    "helium",
    "stablelm",
    "cohere",
    "cohere2",
    "exaone4",
    "seed_oss",
    "hunyuan_v1_dense",
    "ernie4_5",
    "smollm3",
)

#: model_type -> accessors.  GPT-NeoX is the Pythia architecture; Llama
#: (SmolLM2, Llama 2/3) and the architectures of :data:`LLAMA_LAYOUT` share
#: one layout.
ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        families={
            "attention.query_key_value": "attention.query_key_value",
            "attention.dense": "attention.dense",
            "mlp.dense_h_to_4h": "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h": "mlp.dense_4h_to_h",
        },
        # transformers 5.x names the head ``lm_head``; 4.x and hub files use ``embed_out``
        file_renames={"lm_head.": "embed_out."},
        aliases={
            "attn.qkv": "attention.query_key_value",
            "attn.out": "attention.dense",
            "mlp.up": "mlp.dense_h_to_4h",
            "mlp.out": "mlp.dense_4h_to_h",
        },
    ),
    **{model_type: _llama_layout() for model_type in LLAMA_LAYOUT},
}


def known_family_names() -> tuple[str, ...]:
    """Every family name of every architecture, then the neutral names."""
    names = [f for spec in ARCHITECTURES.values() for f in spec.families]
    return tuple(dict.fromkeys([*names, *NEUTRAL_FAMILIES]))


def canonical_family(spec: ArchSpec, name: str) -> str:
    """The architecture's own family for ``name`` (a family or a neutral alias)."""
    if name in spec.families:
        return name
    if name in spec.aliases:
        return spec.aliases[name]
    valid = ", ".join([*spec.families, *spec.aliases])
    if name in NEUTRAL_FAMILIES:
        raise AdapterError(
            f"family {name!r} ({NEUTRAL_FAMILIES[name]}) does not exist in this architecture; "
            f"valid families: {valid} (or 'all')"
        )
    raise AdapterError(f"unknown family {name!r}; valid families: {valid} (or 'all')")


def get_arch(model: nn.Module) -> ArchSpec:
    """The accessor entry of ``model``'s architecture.

    Parameters
    ----------
    model : torch.nn.Module
        A causal-LM model with a ``config.model_type``.

    Returns
    -------
    ArchSpec
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise AdapterError(
            f"unsupported architecture {model_type!r}; supported: "
            f"{', '.join(sorted(ARCHITECTURES))} (add an entry to llm_adapter.models.ARCHITECTURES)"
        )
    return ARCHITECTURES[model_type]


def resolve_families(model: nn.Module, families: str | Sequence[str]) -> tuple[str, ...]:
    """Validate family names against the model's table; ``"all"`` means every family.

    Parameters
    ----------
    model : torch.nn.Module
    families : str or sequence of str
        ``"all"``, one family name, a comma-separated list, or a sequence.
        Architecture-neutral names (``attn.out``, ``mlp.out``, ...; see
        :data:`NEUTRAL_FAMILIES`) are accepted and mapped to the model's own.

    Returns
    -------
    tuple of str
        The model's own family names, in the table's order, without duplicates.
    """
    spec = get_arch(model)
    names = list(split_families(families))
    if names == ["all"]:
        return tuple(spec.families)
    if not names:
        raise AdapterError(
            f"no family given; valid families: {', '.join(spec.families)} (or 'all')"
        )
    wanted = {canonical_family(spec, name) for name in names}
    return tuple(f for f in spec.families if f in wanted)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's ``ModuleList`` of transformer blocks (where :data:`ARCHITECTURES` says)."""
    spec = get_arch(model)
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise AdapterError(f"{spec.layers} of this model is not a ModuleList")
    return layers


def family_modules(model: nn.Module, family: str) -> list[nn.Module]:
    """The family's module in every layer, in layer order.

    Parameters
    ----------
    model : torch.nn.Module
    family : str
        A family name of the model's architecture.

    Returns
    -------
    list of torch.nn.Module, length L
        ``nn.Linear`` before compression, :class:`~llm_adapter.lowrank.LowRankLinear` after.
    """
    spec = get_arch(model)
    path = spec.families[canonical_family(spec, family)]
    return [layer.get_submodule(path) for layer in layer_list(model)]


def family_module_names(model: nn.Module, family: str) -> list[str]:
    """Dotted names (from the model root) of the family's modules, in layer order."""
    spec = get_arch(model)
    n_layers = len(layer_list(model))
    path = spec.families[canonical_family(spec, family)]
    return [f"{spec.layers}.{i}.{path}" for i in range(n_layers)]


def family_weights(model: nn.Module, family: str) -> NDArray[np.float64]:
    """The family's weights as one float64 array.

    Parameters
    ----------
    model : torch.nn.Module
    family : str

    Returns
    -------
    W : ndarray, shape=[L, m, n]
        PyTorch orientation ``y = W x`` (``m`` outputs, ``n`` inputs), float64
        whatever the model's dtype, on the CPU.
    """
    mats = []
    for i, module in enumerate(family_modules(model, family)):
        if not isinstance(module, nn.Linear):
            raise AdapterError(
                f"{family} of layer {i} is {type(module).__name__}, not a dense nn.Linear "
                "(already compressed?); load the uncompressed model"
            )
        weight = module.weight
        if weight.device.type == "meta":
            raise AdapterError(
                f"{family} of layer {i} is offloaded (meta device); compression needs the "
                f"weights in memory: use {mention('device_map', 'auto')} with enough GPU+CPU "
                "memory and no disk offload"
            )
        mats.append(weight.detach().to(device="cpu", dtype=torch.float64).numpy())
    W = np.stack(mats)
    if not np.all(np.isfinite(W)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(W))[:, 0]})
        raise AdapterError(
            f"non-finite weights (NaN or inf) in {family} of layers {bad}; "
            "the checkpoint is corrupt"
        )
    return W


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "fp64": torch.float64,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"auto"`` (keep the checkpoint's), a torch dtype, or a name like ``"bf16"``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise AdapterError(
            f"unknown dtype {dtype!r}; valid: auto, float32 (fp32), float16 (fp16), "
            "bfloat16 (bf16), float64 (fp64, for exact checks)"
        )
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` takes the GPU when there is one; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AdapterError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdapterError(
            f"device {device!r} asked for but CUDA is not available; use {mention('device', 'cpu')}"
        )
    if dev.type not in ("cpu", "cuda"):
        raise AdapterError(f"unsupported device {device!r}; valid: auto, cpu, cuda, cuda:N")
    return dev


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained`` keyword for the dtype (``dtype`` in 5.x, ``torch_dtype`` in 4.x)."""
    key = "dtype" if _transformers_major() >= 5 else "torch_dtype"
    return {key: dtype if dtype is not None else "auto"}


def check_tokenizer(tokenizer: Any, source: str) -> None:
    """Fail loudly on an empty or non-working tokenizer.

    Offline, ``GPTNeoXTokenizer.from_pretrained(hub_id)`` can return a
    tokenizer with no vocabulary instead of raising.
    """
    try:
        size = len(tokenizer)
        ids = tokenizer("Hello world")["input_ids"]
    except Exception as exc:
        raise AdapterError(f"the tokenizer of {source} does not work: {one_line(exc)}") from None
    if size < 2 or len(ids) == 0:
        raise AdapterError(
            f"the tokenizer loaded from {source} is empty (vocabulary size {size}); the files are "
            "missing or the hub could not be reached"
        )


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """Load and check the tokenizer of a local directory or hub id."""
    from transformers import AutoTokenizer

    source = str(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot load the tokenizer of {source!r}: {one_line(exc)}") from None
    check_tokenizer(tokenizer, repr(source))
    return tokenizer


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Load a plain causal LM and its tokenizer from a local directory or a hub id.

    Compressed checkpoints and GGUF files go through :func:`llm_adapter.load`,
    the one loader.

    Parameters
    ----------
    name_or_path : str or path
        Local directory or a hub id such as ``EleutherAI/pythia-70m``.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        Where to put the model; ``auto`` takes the GPU when there is one.
        Ignored when ``device_map`` is given.
    dtype : str or torch.dtype, optional
        ``float32``, ``float16``, ``bfloat16`` (or ``fp32``/``fp16``/``bf16``);
        default: the checkpoint's own.
    device_map : str or dict, optional
        ``"auto"`` hands placement (and CPU offload) to ``accelerate``.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    path = Path(name_or_path).expanduser()
    local = path.is_dir()
    if not local and (str(name_or_path).startswith((".", "/", "~")) or path.exists()):
        raise AdapterError(f"model directory {str(name_or_path)!r} does not exist")
    torch_dtype = resolve_dtype(dtype)
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        where = (
            "local directory"
            if local
            else "hub id (the hub could not be reached or has no such model)"
        )
        raise AdapterError(f"cannot load model {source!r} as a {where}: {one_line(exc)}") from None
    if config.model_type not in ARCHITECTURES:
        raise AdapterError(
            f"unsupported architecture {config.model_type!r} in {source!r}; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    kwargs: dict[str, Any] = dtype_kwargs(torch_dtype)
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise AdapterError(
                f"{mention('device_map')} needs the accelerate package: pip install "
                "'llm-adapter[bigmodels]'"
            ) from None
        kwargs["device_map"] = device_map
    try:
        model: nn.Module = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot load the weights of {source!r}: {one_line(exc)}") from None
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    tokenizer = load_tokenizer(source)
    return model, tokenizer


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise naming the first floating-point tensor that holds a NaN or an infinity.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        Named tensors (a state dict); tensors on the meta device are skipped.
    where : str
        What holds them, for the message (e.g. ``"the model 'pythia-70m'"``).

    Raises
    ------
    AdapterError
        Naming the tensor and how many of its values are not finite.
    """
    with torch.no_grad():
        for name, t in tensors.items():
            if t.device.type == "meta" or not t.is_floating_point():
                continue
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise AdapterError(
                    f"tensor {name} of {where} holds {bad} NaN or infinite value(s) of "
                    f"{t.numel()}: the weights are corrupt; re-create or re-download them"
                )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first (input) parameters."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def model_identity(model: nn.Module) -> dict[str, Any]:
    """A cheap fingerprint of the model (name, config, per-tensor shapes and sums).

    Used to key the calibration cache: two models with the same identity
    give the same calibration statistics.
    """
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "")) if config is not None else ""
    cfg = json.loads(config.to_json_string()) if config is not None else {}
    for volatile in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        cfg.pop(volatile, None)
    sums: list[tuple[Any, ...]] = []
    with torch.no_grad():
        for pname, p in model.state_dict().items():
            if p.device.type == "meta" or not p.is_floating_point():
                sums.append((pname, list(p.shape)))
                continue
            flat = p.detach().reshape(-1)
            sums.append(
                (
                    pname,
                    list(p.shape),
                    str(p.dtype),
                    float(flat.sum(dtype=torch.float64)),
                    float(flat[:64].double().abs().sum()),
                )
            )
    return {"name": name, "config": cfg, "tensors": sums}
