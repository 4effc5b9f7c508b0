"""The public names the API reference must document, and a build-time check.

``public_names()`` is the single definition of "public": every name in
``grassbundle.__all__`` and ``llm_adapter.__all__`` (``__version__`` aside) and
every public function of :mod:`grassbundle.theorems` and
:mod:`grassbundle.theorems_fits`.  During the build the
extension warns (an error under ``-W``) for each such name that no API page
documents and for each that has no docstring; ``tests/test_docs.py`` runs the
same check without building.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)

DEFAULT_MODULES = (
    "grassbundle",
    "llm_adapter",
    "grassbundle.theorems",
    "grassbundle.theorems_fits",
)


def _module_names(mod: ModuleType) -> list[str]:
    if mod.__name__ in ("grassbundle", "llm_adapter"):
        return [n for n in getattr(mod, "__all__", []) if not n.startswith("_")]
    # submodules (grassbundle.theorems): the public functions defined there
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_")
            and inspect.isfunction(obj)
            and getattr(obj, "__module__", None) == mod.__name__
        ]
    funcs = []
    for n in names:
        obj = getattr(mod, n, None)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            funcs.append(n)
    return funcs


def public_names(
    modules: tuple[str, ...] | list[str] = DEFAULT_MODULES,
) -> tuple[dict[str, list[str]], list[str]]:
    """``({module: [public names]}, [modules that do not import])``."""
    found: dict[str, list[str]] = {}
    missing: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            missing.append(name)
            continue
        found[name] = sorted(_module_names(mod))
    return found, missing


def accepted_targets(module: str, name: str) -> list[str]:
    """Fully qualified names under which ``module.name`` counts as documented.

    A re-exported function or class counts as documented under the public
    name (``llm_adapter.load``) and under its defining module's name
    (``llm_adapter.checkpoint.load``); a function of
    ``grassbundle.theorems`` that the package re-exports also counts under
    ``grassbundle.f``.
    """
    targets = [f"{module}.{name}"]
    obj = getattr(importlib.import_module(module), name)
    home = getattr(obj, "__module__", None)
    if home and (inspect.isfunction(obj) or inspect.isclass(obj)):
        # documented under its defining module (``llm_adapter.checkpoint.load``)
        targets.append(f"{home}.{obj.__qualname__}")
    if "." in module:
        top = importlib.import_module(module.split(".")[0])
        if getattr(top, name, None) is getattr(importlib.import_module(module), name):
            targets.append(f"{top.__name__}.{name}")
    return targets


def undocumented(documented: set[str], modules: tuple[str, ...] | list[str]) -> list[str]:
    """Public names (``module.name``) that are not among ``documented``."""
    found, _ = public_names(modules)
    out = []
    for module, names in found.items():
        for name in names:
            if not any(t in documented for t in accepted_targets(module, name)):
                out.append(f"{module}.{name}")
    return out


def missing_docstrings(modules: tuple[str, ...] | list[str]) -> list[str]:
    """Public functions and classes whose object has no docstring of its own.

    Data constants (tables, tuples) carry no docstring of their own; the API
    page describes them in the text of their ``.. data::`` entry.
    """
    found, _ = public_names(modules)
    out = []
    for module, names in found.items():
        mod = importlib.import_module(module)
        for name in names:
            obj: Any = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = obj.__doc__
            if inspect.isclass(obj) and doc == getattr(object, "__doc__", None):
                doc = None
            if not (doc and doc.strip()):
                out.append(f"{module}.{name}")
    return out


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    modules = app.config.public_api_modules
    _, missing = public_names(modules)
    for name in missing:
        logger.info("public_api: module %s does not import yet; not checked", name)
    documented = set(env.get_domain("py").objects)  # type: ignore[attr-defined]
    for name in undocumented(documented, modules):
        logger.warning(
            "public name %s is not documented in the API pages (add it to docs/api/*.rst)",
            name,
            type="public_api",
        )
    for name in missing_docstrings(modules):
        logger.warning("public name %s has no docstring", name, type="public_api")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("public_api_modules", list(DEFAULT_MODULES), "env")
    app.connect("env-check-consistency", _check)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
