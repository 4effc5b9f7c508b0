"""The documentation's own checks, without building it.

* Every public name (``grassbundle.__all__``, ``llm_adapter.__all__`` and the
  public functions of ``grassbundle.theorems``) is documented in
  ``docs/api/*.rst`` and has a numpydoc docstring whose parameters match the
  signature.  The same check also runs inside the Sphinx build (the
  ``public_api`` extension), where it is an error under ``-W``.
* Every gallery script ``examples/plot_*.py`` runs to completion.
* The objective written on docs/theory/formulation.rst, evaluated
  independently, equals what the code computes.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import grassbundle as gb
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(DOCS / "_ext"))

import public_api  # noqa: E402  (docs/_ext, put on the path above)

MODULES = list(public_api.DEFAULT_MODULES)

_DIRECTIVE = re.compile(
    r"^\s*\.\.\s+(?:auto)?(function|class|exception|data|method|attribute|module|currentmodule)"
    r"::\s+(\S+)",
    re.MULTILINE,
)


def documented_in_api_pages() -> set[str]:
    """Fully qualified names that ``docs/api/*.rst`` documents.

    ``.. autofunction:: name`` (and class, exception, data) documents
    ``name``; a bare name is qualified by the page's current module
    (``.. module::`` or ``.. currentmodule::``), as Sphinx does.
    """
    names: set[str] = set()
    for page in sorted((DOCS / "api").glob("*.rst")):
        current = ""
        for kind, target in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            if kind in ("module", "currentmodule"):
                current = target
                continue
            if "." not in target and current:
                target = f"{current}.{target}"
            names.add(target)
    return names


def _public() -> list[tuple[str, str]]:
    found, _ = public_api.public_names(MODULES)
    return [(module, name) for module, names in found.items() for name in names]


def test_api_pages_parse() -> None:
    # guard against a regex that silently finds nothing (which would make the
    # test below vacuous): the principal-angle function is documented by hand
    assert "grassbundle.principal_angles" in documented_in_api_pages()


def test_every_public_name_is_in_the_api_pages() -> None:
    missing = public_api.undocumented(documented_in_api_pages(), MODULES)
    assert not missing, (
        f"public names missing from docs/api/*.rst: {missing}; "
        "add an `.. autofunction::` / `.. autoclass::` line for each"
    )


def test_undocumented_check_can_fail() -> None:
    # the checker must report a public name that the pages do not mention
    documented = documented_in_api_pages() - {"grassbundle.principal_angles"}
    assert "grassbundle.principal_angles" in public_api.undocumented(documented, MODULES)


def test_the_modules_import() -> None:
    _, missing = public_api.public_names(MODULES)
    assert not missing, f"modules whose public names cannot be checked: {missing}"


def test_every_public_name_has_a_docstring() -> None:
    missing = public_api.missing_docstrings(MODULES)
    assert not missing, f"public names without a docstring: {missing}"


# numpydoc validation codes enforced on every public function:
#   GL08 no docstring; PR01 a parameter is not documented; PR02 a documented
#   parameter does not exist; RT01 no Returns section.
_ENFORCED = {"GL08", "PR01", "PR02", "RT01"}


def _section_names(doc: object, section: str) -> set[str]:
    names: set[str] = set()
    for item in doc[section]:  # type: ignore[index]
        for part in item.name.split(","):
            names.add(part.strip().lstrip("*"))
    return names


def _docstring_test_id(x: object) -> str:
    # `pytest -k theorems` must select exactly the theorem tests, so the
    # module grassbundle.theorems is spelled without that word in these ids.
    return str(x).replace("grassbundle.theorems", "grassbundle.theorem-checks")


@pytest.mark.parametrize(("module", "name"), _public(), ids=_docstring_test_id)
def test_numpydoc_parameters_match_the_signature(module: str, name: str) -> None:
    from numpydoc.docscrape import ClassDoc
    from numpydoc.validate import validate

    obj = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        # data (a table, a tuple): described in the text of its API entry
        assert name in (DOCS / "api" / f"{module.split('.')[0]}.rst").read_text(encoding="utf-8")
        return
    if inspect.isclass(obj):
        # dataclass-like results document their fields under "Attributes"
        doc = ClassDoc(obj, config={"show_class_members": False})
        documented = _section_names(doc, "Parameters") | _section_names(doc, "Attributes")
        try:
            params = [p for p in inspect.signature(obj).parameters if p not in ("self",)]
        except (TypeError, ValueError):
            params = []
        params = [p for p in params if p not in ("args", "kwargs")]
        undocumented = [p for p in params if p not in documented]
        assert not undocumented, (
            f"{module}.{name}: constructor parameters {undocumented} are not documented "
            "under Parameters or Attributes"
        )
        return
    qual = f"{obj.__module__}.{obj.__qualname__}"
    errors = [(code, msg) for code, msg in validate(qual)["errors"] if code in _ENFORCED]
    if any(code == "RT01" for code, _ in errors):
        # a function that returns nothing needs no Returns section
        ret = inspect.signature(obj).return_annotation
        if ret in (None, "None"):
            errors = [e for e in errors if e[0] != "RT01"]
    assert not errors, f"{module}.{name}: {errors}"


# -- the gallery ----------------------------------------------------------------

GALLERY = sorted(EXAMPLES.glob("plot_*.py"))
# scripts that load a transformer model take longer than a few seconds
_SLOW = {"plot_compress_model.py", "plot_phase_diagram_model.py"}


def test_gallery_is_not_empty() -> None:
    assert GALLERY, "no examples/plot_*.py found"


def test_gallery_pattern_excludes_the_demo() -> None:
    # the pattern and the ignore rule conf.py gives sphinx-gallery
    sys.path.insert(0, str(DOCS))
    try:
        conf = importlib.import_module("conf")
    finally:
        sys.path.remove(str(DOCS))
    cfg = conf.sphinx_gallery_conf
    assert re.search(cfg["filename_pattern"], str(EXAMPLES / "demo.py")) is None
    assert re.search(cfg["ignore_pattern"], str(EXAMPLES / "demo.py")) is not None
    for script in GALLERY:
        assert re.search(cfg["filename_pattern"], str(script))
        assert re.search(cfg["ignore_pattern"], str(script)) is None


@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=pytest.mark.slow) if s.name in _SLOW else s for s in GALLERY],
    ids=lambda p: p.name,
)
def test_gallery_script_runs(script: Path, tmp_path: Path) -> None:
    # one BLAS thread, as in docs/Makefile: the matrices are small
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **os.environ}
    env.update(MPLBACKEND="Agg", PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


# -- the theory pages state the objective exactly as the code computes it -------


def test_documented_objective_matches_the_code() -> None:
    """docs/theory/formulation.rst, evaluated independently, equals ``Section``.

    The page defines omega_l = 1 / ||W_l||_F^2, the anchors as the top-d
    eigenspaces of M_l = W_l C_l W_l^T, J = sum_l omega_l F_l(U_l) + lam sum_l
    ||P_U - P_A||_F^2 / (2d), the error fractions, and the minimiser as the
    top-d eigenspace of K_g(lam) = sum_{l in g} [omega_l N_l + (lam/d) P_{A_l}].
    All quantities are O(1); 1e-10 relative is far above float64 roundoff in
    these sums of traces (about 1e-14) and far below any wrong definition
    (a missing factor of 2 or d changes them by O(1)).
    """
    rng = np.random.default_rng(7)
    L, m, n, d, k, lam = 5, 12, 10, 3, 2, 0.7
    W = rng.standard_normal((L, m, n))
    X = rng.standard_normal((L, n, 3 * n))
    C = X @ np.swapaxes(X, -1, -2) / (3 * n)
    sec = gb.solve(gb.BundleProblem(W, C, rank=d), lam, k)

    def top(K: np.ndarray) -> np.ndarray:
        return np.linalg.eigh(K)[1][:, ::-1][:, :d]

    omega = 1.0 / np.einsum("lij,lij->l", W, W)
    N = W @ np.swapaxes(W, -1, -2)
    M = W @ C @ np.swapaxes(W, -1, -2)
    P_A = np.stack([top(M[l]) @ top(M[l]).T for l in range(L)])
    groups = np.arange(L) // k
    for g in range(groups.max() + 1):
        layers = np.flatnonzero(groups == g)
        K = sum(omega[l] * N[l] + (lam / d) * P_A[l] for l in layers)
        assert np.max(gb.principal_angles(top(K), sec.bases[g])) < 1e-8
    U = sec.layer_bases
    P_U = U @ np.swapaxes(U, -1, -2)
    F = np.array([np.linalg.norm(W[l] - P_U[l] @ W[l]) ** 2 for l in range(L)])
    A = np.array(
        [np.trace((W[l] - P_U[l] @ W[l]) @ C[l] @ (W[l] - P_U[l] @ W[l]).T) for l in range(L)]
    )
    anchor_dist = np.array([np.linalg.norm(P_U[l] - P_A[l]) ** 2 / (2 * d) for l in range(L)])
    rtol = 1e-10
    np.testing.assert_allclose(sec.frobenius_error, F * omega, rtol=rtol)
    np.testing.assert_allclose(sec.activation_error, A / np.trace(M, axis1=1, axis2=2), rtol=rtol)
    np.testing.assert_allclose(sec.anchor_distance, anchor_dist, rtol=rtol)
    np.testing.assert_allclose(sec.weight_term, np.sum(omega * F), rtol=rtol)
    np.testing.assert_allclose(sec.anchor_term, lam * np.sum(anchor_dist), rtol=rtol)
    np.testing.assert_allclose(
        sec.objective, np.sum(omega * F) + lam * np.sum(anchor_dist), rtol=rtol
    )


# -- the docstring fixes the build applies (docs/_ext/module_refs.py) -------------


def test_docstring_fixes() -> None:
    import module_refs  # docs/_ext

    shape = ["U : ndarray, shape=[*batch, n, p]", "text with *emphasis*"]
    module_refs.escape_shape_stars(None, "", "", None, None, shape)  # type: ignore[arg-type]
    assert shape == ["U : ndarray, shape=[\\*batch, n, p]", "text with *emphasis*"]

    aligned = ["gives,", "", "    ||x|| <= a / b", "          = c,", "    c = 1,", "", "end"]
    module_refs.preformat_aligned_displays(None, "", "", None, None, aligned)  # type: ignore[arg-type]
    assert aligned[0] == "gives, ::"
    # one indentation (a block quote) or reST markup: left alone
    for block in (
        ["With,", "", "    ``exp_U(X) = U``", "        ``+ W``"],
        ["With,", "", "    a = b", "    c = d"],
    ):
        before = list(block)
        module_refs.preformat_aligned_displays(None, "", "", None, None, block)  # type: ignore[arg-type]
        assert block == before


def test_cli_parser_capture() -> None:
    # grassbundle builds its parser inside main(); the CLI page captures it
    import argparse_doc  # docs/_ext

    parser = argparse_doc.load_parser("grassbundle.__main__:main")
    assert "check" in dict((n, s) for n, s, _ in argparse_doc._subparsers(parser))
    parser = argparse_doc.load_parser("llm_adapter.cli:build_parser")
    names = [n for n, _, _ in argparse_doc._subparsers(parser)]
    assert {"compress", "info", "evaluate"} <= set(names)
