"""Small random models for tests, examples and benchmarks.

:func:`random_neox` builds a GPT-NeoX causal LM and :func:`random_model` one
of any architecture in :data:`llm_adapter.models.ARCHITECTURES`, both seeded
and on the CPU; :func:`other_value` gives a method parameter a valid value
away from its default.  Nothing in the library imports this module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import AdapterError
from .methods import PARAMS
from .models import ARCHITECTURES

__all__ = ["other_value", "random_model", "random_neox"]


def random_neox(
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_size: int = 128,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A randomly initialised GPT-NeoX causal LM (for tests and benchmarks).

    Parameters
    ----------
    hidden_size, num_hidden_layers, num_attention_heads : int
    intermediate_size : int, optional
        Default ``4 * hidden_size`` (as Pythia).
    vocab_size, max_position_embeddings : int
    tie_word_embeddings : bool, default False
    seed : int
        Seeds the initialisation (the global torch generator is left as it was).
    dtype : torch.dtype, default float32

    Returns
    -------
    transformers.GPTNeoXForCausalLM
        In eval mode, on the CPU, dropout off.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = GPTNeoXForCausalLM(config)
    model.to(dtype)
    model.eval()
    return model


def random_model(
    model_type: str = "llama",
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 128,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A randomly initialised causal LM of any architecture in :data:`ARCHITECTURES`.

    Parameters
    ----------
    model_type : str, default "llama"
        A key of :data:`ARCHITECTURES` (``gpt_neox`` goes to :func:`random_neox`).
    hidden_size, num_hidden_layers, num_attention_heads : int
    num_key_value_heads : int, optional
        Grouped-query attention: fewer key/value heads than query heads
        (default 2); ``None`` for plain multi-head attention.
    intermediate_size : int, optional
        Default ``3 * hidden_size``.
    vocab_size, max_position_embeddings : int
    tie_word_embeddings : bool, default True
        Share the input embedding and the output head (as SmolLM2).
    seed : int
        Seeds the initialisation (the global torch generator is left as it
        was); norm weights are drawn from ``U(0.5, 1.5)`` so that a lost
        norm shows in the logits.
    dtype : torch.dtype, default float32

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode, on the CPU, dropout off.
    """
    if model_type == "gpt_neox":
        return random_neox(
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings,
            seed=seed,
            dtype=dtype,
        )
    if model_type not in ARCHITECTURES:
        raise AdapterError(
            f"unsupported architecture {model_type!r}; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM

    kv = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
    config = AutoConfig.for_model(
        model_type,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=kv,
        head_dim=hidden_size // num_attention_heads,
        intermediate_size=intermediate_size or 3 * hidden_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        # special ids of the hub configs lie outside a tiny vocabulary
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name and p.ndim == 1:
                    p.uniform_(0.5, 1.5)
    model.to(dtype)
    model.eval()
    return model


def other_value(key: str) -> Any:
    """A valid value of method parameter ``key`` away from its default (for tests that
    set every parameter a method takes, or one it does not)."""
    p = PARAMS[key]
    if p.kind is bool:
        return not p.default
    if p.kind is str:
        return next(c for c in p.choices if c != p.default)
    if p.kind is int:
        return int(p.default) + 1
    if isinstance(p.default, float) and math.isfinite(p.default):
        return p.default + 0.25
    return 0.5
