"""Files shipped with llm-adapter: the tiny GPT-NeoX checkpoint of ``make demo``.

``neox-tiny`` is a 4-layer GPT-NeoX with the Pythia architecture, trained by
``scripts/train_tiny_model.py`` on the WikiText-2 validation text; its
``MODEL_CARD.md`` gives the recipe, size and perplexity.  It loads with
``transformers.AutoModelForCausalLM.from_pretrained(TINY_MODEL)`` and
``AutoTokenizer.from_pretrained(TINY_MODEL)``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CALIBRATION_TOKENS", "TINY_MODEL"]

#: folder of the shipped checkpoint (config, safetensors weights, tokenizer, model card)
TINY_MODEL: Path = Path(__file__).resolve().parent / "neox-tiny"

#: calibration windows of the training text: safetensors file with one tensor
#: ``input_ids``, int64, shape=[64, 128] (64 seeded windows of 128 tokens)
CALIBRATION_TOKENS: Path = TINY_MODEL / "calibration_tokens.safetensors"
