"""llm-adapter: compress GPT-NeoX and Llama-family causal language models with grassbundle.

extract (weights, calibration statistics) -> call grassbundle -> write back
(low-rank modules) -> save / reload -> evaluate.

The public names are imported on first use, so that ``import llm_adapter``
(and ``llm-adapter --help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .calibrate import CalibrationStats, calibrate
    from .checkpoint import load, save
    from .compress import (
        CompressionConfig,
        CompressionReport,
        FamilyReport,
        compress_model,
        rank_for,
    )
    from .errors import (
        AdapterError,
        AdapterWarning,
        CheckpointError,
        ConfigurationError,
        DataError,
    )
    from .gguf_cache import dequantize_gguf
    from .jobs import (
        CompressRequest,
        EvaluateRequest,
        compress_loaded,
        run_compress,
        run_evaluate,
    )
    from .lowrank import LowRankLinear, count_unique_parameters
    from .manifest import read_manifest
    from .methods import METHODS
    from .models import ARCHITECTURES, family_modules, family_weights

#: public name -> the module that defines it
_HOMES: dict[str, str] = {
    "ARCHITECTURES": "models",
    "METHODS": "methods",
    "AdapterError": "errors",
    "AdapterWarning": "errors",
    "CheckpointError": "errors",
    "ConfigurationError": "errors",
    "DataError": "errors",
    "EvaluateRequest": "jobs",
    "CalibrationStats": "calibrate",
    "CompressRequest": "jobs",
    "CompressionConfig": "compress",
    "CompressionReport": "compress",
    "FamilyReport": "compress",
    "LowRankLinear": "lowrank",
    "calibrate": "calibrate",
    "compress_loaded": "jobs",
    "compress_model": "compress",
    "count_unique_parameters": "lowrank",
    "dequantize_gguf": "gguf_cache",
    "family_modules": "models",
    "family_weights": "models",
    "load": "checkpoint",
    "rank_for": "compress",
    "run_compress": "jobs",
    "run_evaluate": "jobs",
    "read_manifest": "manifest",
    "save": "checkpoint",
}

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "AdapterError",
    "AdapterWarning",
    "CalibrationStats",
    "CheckpointError",
    "CompressRequest",
    "CompressionConfig",
    "CompressionReport",
    "ConfigurationError",
    "DataError",
    "EvaluateRequest",
    "FamilyReport",
    "LowRankLinear",
    "__version__",
    "calibrate",
    "compress_loaded",
    "compress_model",
    "count_unique_parameters",
    "dequantize_gguf",
    "family_modules",
    "family_weights",
    "load",
    "rank_for",
    "read_manifest",
    "run_compress",
    "run_evaluate",
    "save",
]


class _Package(types.ModuleType):
    """The package module: its attribute ``calibrate`` stays the function.

    Importing the submodule ``llm_adapter.calibrate`` sets the package's
    attribute of that name to the submodule; this keeps the function the
    submodule defines instead, as the eager ``from .calibrate import
    calibrate`` did.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _HOMES
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'llm_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
