"""llm-adapter: compress GPT-NeoX (Pythia) models with grassbundle.

extract (weights, calibration statistics) -> call grassbundle -> write back
(low-rank modules) -> save / reload -> evaluate.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .calibrate import CalibrationStats, calibrate
from .checkpoint import load, read_manifest, save
from .compress import (
    METHODS,
    CompressionConfig,
    CompressionReport,
    FamilyReport,
    compress_model,
    rank_for,
)
from .errors import AdapterError
from .gguf_cache import dequantize_gguf
from .lowrank import LowRankLinear, count_unique_parameters
from .models import ARCHITECTURES, family_modules, family_weights, load_model

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "AdapterError",
    "CalibrationStats",
    "CompressionConfig",
    "CompressionReport",
    "FamilyReport",
    "LowRankLinear",
    "__version__",
    "calibrate",
    "compress_model",
    "count_unique_parameters",
    "dequantize_gguf",
    "family_modules",
    "family_weights",
    "load",
    "load_model",
    "rank_for",
    "read_manifest",
    "save",
]
