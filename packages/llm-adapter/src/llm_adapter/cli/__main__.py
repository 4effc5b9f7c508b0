"""``python -m llm_adapter.cli``: the ``llm-adapter`` command."""

from __future__ import annotations

from . import main

raise SystemExit(main())
