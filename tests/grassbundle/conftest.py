"""Shared fixtures of grassbundle's tests."""

from __future__ import annotations

import sys
from typing import Any

import pytest


class Mutation:
    """Edits of the package for one test, undone after it (through ``monkeypatch``).

    :meth:`everywhere` replaces an object the way an edit of its source would:
    in every grassbundle module that holds it, so that the module that defines
    it and every module that imported it see the replacement.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def setattr(self, target: object, name: str, value: Any) -> None:
        """``monkeypatch.setattr(target, name, value)``: one module's attribute."""
        self.monkeypatch.setattr(target, name, value)

    def everywhere(self, original: object, replacement: object) -> None:
        """Replace ``original`` by ``replacement`` in every grassbundle module that holds it."""
        hits = 0
        for name, mod in list(sys.modules.items()):
            if name == "grassbundle" or name.startswith("grassbundle."):
                for attr, value in list(vars(mod).items()):
                    if value is original:
                        self.monkeypatch.setattr(mod, attr, replacement)
                        hits += 1
        assert hits, f"{original!r} is imported nowhere"


@pytest.fixture
def mutate(monkeypatch: pytest.MonkeyPatch) -> Mutation:
    """A :class:`Mutation` of the package for this test."""
    return Mutation(monkeypatch)
