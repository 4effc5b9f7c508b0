"""llm-adapter: compress GPT-NeoX (Pythia) models with grassbundle.

extract (weights, calibration statistics) -> call grassbundle -> write back
(low-rank modules) -> save / reload -> evaluate.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
