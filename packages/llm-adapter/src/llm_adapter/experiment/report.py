"""Reports: a Markdown table and figures from sweep results.

``llm-adapter report RESULTS.jsonl --out DIR`` writes

``DIR/results.md`` (and the same table as ``DIR/results.csv``)
    One row per point: errors, perplexity, HellaSwag, the budget both ways (the
    fraction of the whole model's parameters removed and the fraction of the
    compressed maps' parameters removed), and the
    two quantities the paper argues about, both against SVD-LLM on the same
    model, families and d/D: the **Frobenius reduction**
    ``1 - frob(point) / frob(SVD-LLM)`` and the **perplexity ratio**
    ``ppl(point) / ppl(SVD-LLM)``.
``DIR/phase_diagram.png``
    The ``(lambda, k)`` phase diagram of the weight-metric bundle: one heat map
    per measured quantity.
``DIR/frobenius_vs_perplexity.png``
    Frobenius reduction against perplexity ratio (the paper's central figure),
    with the paper's Pythia-1.4B lambda = 0 corner drawn for reference.
``DIR/per_layer_errors.png``
    Per-layer Frobenius and activation error fractions of every point.
``DIR/pareto.png``
    Perplexity and HellaSwag acc_norm against the fraction of the model's
    parameters kept, one curve per method (points with a parameter budget).
``DIR/allocation.png`` and ``DIR/allocation.csv``
    For allocated points (per-layer ranks; of the first calibration seed
    when there are several): the rank of every layer of every family, maps
    left dense marked, and per family the mean, smallest and largest rank and
    the number of dense layers.

Rows measured with per-window and per-item scores also get a paired table:
every method against SVD-LLM at the same budget, with a bootstrap interval
(:mod:`llm_adapter.budgets`); with rows under several calibration seeds, each
seed's comparison and the comparison over all seeds (a bootstrap over seeds,
then windows within each seed). Rows with per-item HellaSwag hits also get
``DIR/mcnemar.csv``: an exact McNemar test of ``acc_norm`` and ``acc`` against
SVD-LLM on the items where the two disagree, per calibration seed
(:func:`llm_adapter.experiment.budgets.mcnemar_cells`).  Each further reference
(``against``) gets its own ``paired_<slug>.csv`` and ``mcnemar_<slug>.csv``.

Figures are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..compress import refit_counts
from ..errors import AdapterError, mention
from ..methods import METHOD_TABLE, format_float, parse_float, reference_method
from .budgets import (
    SAME_BUDGET_RTOL,
    budget_cells,
    cells_csv,
    cells_markdown,
    comparison_basis,
    mcnemar_cells,
    pareto_figure,
    pyplot,
)
from .paired import calibration_seed
from .sweep import read_results

__all__ = [
    "csv_table",
    "frobenius_reduction_rows",
    "markdown_table",
    "rank_correlations",
    "refit_lines",
    "table_cells",
    "write_report",
]

#: the paper's Pythia-1.4B figures at d/D = 0.25 (lambda = 0 corner against SVD-LLM)
PAPER_PYTHIA_1B4 = {"frobenius_reduction": 0.372, "ppl": 159.14, "ppl_svd_llm": 50.17}


def _group(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row.get("sweep"),
        row.get("model"),
        tuple(row.get("families", ())),
        row.get("rank_ratio"),
        row.get("budget"),  # None in rows written before budgets existed
    )


def frobenius_reduction_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``frobenius_reduction`` and ``ppl_ratio`` against SVD-LLM added.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows (see :mod:`llm_adapter.sweep`).

    Returns
    -------
    list of dict
        Copies of the rows; the two keys are None where the group (sweep, model,
        families, d/D) has no SVD-LLM row or a value is missing. The dense
        baseline's perplexity ratio is against SVD-LLM of the first group of its sweep.
    """
    refs: dict[tuple[Any, ...], dict[str, Any]] = {}
    by_sweep: dict[Any, dict[str, Any]] = {}
    reference = reference_method()
    for r in rows:
        if r.get("method") == reference:
            refs.setdefault(_group(r), r)
            by_sweep.setdefault(r.get("sweep"), r)
    out = []
    for r in rows:
        r = dict(r)
        ref = refs.get(_group(r)) or (
            by_sweep.get(r.get("sweep")) if r["method"] == "dense" else None
        )
        red = ratio = None
        if ref is not None:
            f, f0 = r.get("frobenius_fraction"), ref.get("frobenius_fraction")
            if f is not None and f0:
                red = 1.0 - f / f0
            p, p0 = r.get("ppl"), ref.get("ppl")
            if p is not None and p0:
                ratio = p / p0
        r["frobenius_reduction"] = red
        r["ppl_ratio"] = ratio
        out.append(r)
    return out


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The results table as a header and formatted cells (one row per point, in file order).

    Beside the errors and the scores: the budget both ways, the fraction of the
    whole model's parameters removed (``model_ratio``) and of the compressed
    maps' parameters (``1 - param_ratio``); the whole model's parameters (shared
    tensors once) and the perplexity pass's throughput (tokens per second,
    measured in the sweep's own run, so comparable between its rows only).

    Parameters
    ----------
    rows : sequence of dict

    Returns
    -------
    head : list of str
    cells : list of list of str
    """
    rows = frobenius_reduction_rows(rows)
    head = [
        "point", "families", "d/D", "params kept", "removed (model)", "removed (maps)",
        "Frob err", "Frob reduction vs SVD-LLM",
        "act err (calib)", "act err (held-out)", "perplexity", "ppl ratio vs SVD-LLM",
        "HellaSwag acc", "acc_norm", "model params (M)", "eval tokens/s",
    ]  # fmt: skip
    body = []
    for r in rows:
        fams = ", ".join(r.get("families") or []) or "(none)"
        kept = "-" if not r.get("params_dense") else f"{r['param_ratio']:.3f}"
        maps = "-" if not r.get("params_dense") else f"{100 * (1.0 - r['param_ratio']):.1f}%"
        model = r.get("model_ratio")
        red = r["frobenius_reduction"]
        body.append(
            [
                r.get("label", r["method"]),
                fams,
                "1" if r["method"] == "dense" else _fmt(r.get("rank_ratio"), ".3g"),
                kept,
                "-" if model is None else f"{100 * model:.1f}%",
                maps,
                _fmt(r.get("frobenius_fraction"), ".4f"),
                "-" if red is None else f"{100 * red:+.1f}%",
                _fmt(r.get("activation_fraction"), ".4f"),
                _fmt(r.get("activation_fraction_heldout"), ".4f"),
                _fmt(r.get("ppl"), ".3f"),
                _fmt(r.get("ppl_ratio"), ".3f"),
                _fmt(r.get("hellaswag_acc"), ".3f"),
                _fmt(r.get("hellaswag_acc_norm"), ".3f"),
                _fmt(None if r.get("model_params") is None else r["model_params"] / 1e6, ".2f"),
                _fmt(r.get("ppl_tokens_per_second"), ".0f"),
            ]
        )
    return head, body


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (see :func:`table_cells`).

    Parameters
    ----------
    rows : sequence of dict

    Returns
    -------
    str
    """
    return cells_markdown(*table_cells(rows))


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as CSV (see :func:`table_cells`), e.g. for Sphinx's ``csv-table``.

    Parameters
    ----------
    rows : sequence of dict

    Returns
    -------
    str
    """
    return cells_csv(*table_cells(rows))


def refit_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per refit row: how many maps kept their refit (the held-out gate).

    A refit is kept for a map only where it lowers that map's output error on
    the held-out calibration windows (:mod:`llm_adapter.sequential`); rows record
    the gate per layer as ``per_layer[family]["refit_kept"]`` (rows written
    before they did are left out).  Maps an allocation kept dense have nothing
    to refit (their ``refit_ridge`` is None): they are counted apart.

    Returns
    -------
    list of str
        Markdown list items, empty when no row records a gate.
    """
    lines = []
    for row in rows:
        per_layer = row.get("per_layer") or {}
        kept, factored, dense = refit_counts(
            (fam.get("refit_kept") or [], fam.get("refit_ridge")) for fam in per_layer.values()
        )
        if not factored and not dense:
            continue
        seed = calibration_seed(row)
        lines.append(
            f"- {row.get('label')}, {row.get('budget')}"
            + (f", seed {seed}" if seed is not None else "")
            + f": kept by {kept} of {factored} factored maps"
            + (f" ({dense} kept dense, nothing to refit)" if dense else "")
        )
    return lines


def revision_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Which code revisions wrote the rows: one line per commit, with its row count.

    Rows record ``code["revision"]`` (:func:`llm_adapter.provenance.source_revision`);
    rows written before they did, or from an installed package, are counted apart.

    Returns
    -------
    list of str
        Markdown list items, empty when no row records a revision.
    """
    counts: dict[str, int] = {}
    unknown = 0
    for row in rows:
        rev = (row.get("code") or {}).get("revision")
        if not rev:
            unknown += 1
            continue
        name = str(rev["commit"])[:12] + (" (with local changes)" if rev.get("modified") else "")
        counts[name] = counts.get(name, 0) + 1
    if not counts:
        return []
    lines = [f"- {name}: {n} row{'s' if n != 1 else ''}" for name, n in counts.items()]
    if unknown:
        lines.append(f"- not recorded: {unknown} row{'s' if unknown != 1 else ''}")
    return lines


def rank_correlations(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Spearman rank correlation of perplexity with each error, over the compressed rows.

    Parameters
    ----------
    rows : sequence of dict

    Returns
    -------
    list of str
        One Markdown bullet per error measure (empty with fewer than 3 rows).
    """
    from scipy.stats import spearmanr

    pts = [r for r in rows if r["method"] != "dense" and r.get("ppl") is not None]
    lines = []
    for key, name in (
        ("frobenius_fraction", "Frobenius error"),
        ("activation_fraction", "activation error (calibration)"),
        ("activation_fraction_heldout", "activation error (held-out)"),
    ):
        sel = [r for r in pts if r.get(key) is not None]
        if len(sel) < 3:
            continue
        res = spearmanr([r["ppl"] for r in sel], [r[key] for r in sel])
        lines.append(
            f"- perplexity vs {name}: Spearman rho = {float(res.statistic):+.3f} "
            f"(p = {float(res.pvalue):.2g}, {len(sel)} points)"
        )
    return lines


def _phase_diagram(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    plt = pyplot()
    import numpy as np

    grids = {m.name: m.phase_grid for m in METHOD_TABLE.values() if m.phase_grid is not None}
    grid = [r for r in rows if r["method"] in grids and grids[r["method"]](r)]
    if not grid:
        return False
    lams = sorted({parse_float(r["lam"]) for r in grid})
    ks = sorted({int(r["tying"]) for r in grid})
    quantities = [
        ("frobenius_fraction", "Frobenius error fraction"),
        ("activation_fraction_heldout", "activation error fraction (held-out)"),
        ("ppl", "perplexity"),
        ("hellaswag_acc", "HellaSwag acc"),
    ]
    quantities = [q for q in quantities if any(r.get(q[0]) is not None for r in grid)]
    fig, axes = plt.subplots(
        1, len(quantities), figsize=(4.2 * len(quantities), 3.6), squeeze=False
    )
    for ax, (key, title) in zip(axes[0], quantities, strict=True):
        Z = np.full((len(ks), len(lams)), np.nan)
        for r in grid:
            if r.get(key) is not None:
                Z[ks.index(int(r["tying"])), lams.index(parse_float(r["lam"]))] = r[key]
        im = ax.imshow(Z, origin="lower", aspect="auto", cmap="viridis")
        for (i, j), v in np.ndenumerate(Z):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(lams)), [format_float(v) for v in lams])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("anchor strength lambda")
        ax.set_ylabel("tying degree k")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"(lambda, k) phase diagram: {grid[0].get('sweep', '')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _central(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    plt = pyplot()
    pts = [
        r
        for r in frobenius_reduction_rows(rows)
        if r["method"] != "dense" and r["frobenius_reduction"] is not None and r["ppl_ratio"]
    ]
    if not pts:
        return False
    paper = PAPER_PYTHIA_1B4
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = {m.name: m.marker for m in METHOD_TABLE.values()}
    cmap = plt.get_cmap("tab20")
    for panel, ax in enumerate(axes):
        for c, r in enumerate(pts):
            ax.scatter(
                100 * r["frobenius_reduction"], r["ppl_ratio"],
                marker=markers.get(r["method"], "o"), color=cmap(c % 20), s=45, zorder=3,
                label=r.get("label", r["method"]) if panel == 1 else None,
            )  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axvline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("Frobenius error reduction vs SVD-LLM (%)")
    axes[0].scatter(
        100 * paper["frobenius_reduction"], paper["ppl"] / paper["ppl_svd_llm"],
        marker="X", color="tab:orange", s=90, zorder=3,
        label="paper: Pythia-1.4B lambda=0 corner\n(37.2%, 159.14 / 50.17)",
    )  # fmt: skip
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity / perplexity of SVD-LLM")
    axes[0].set_title("with the paper's Pythia-1.4B point (log scale)", fontsize=10)
    axes[0].legend(fontsize=8, loc="center left")
    axes[1].set_title("this sweep only (linear scale)", fontsize=10)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(
        f"Weight-space gain vs language-model loss: {pts[0].get('sweep', '')}", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _per_layer(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    plt = pyplot()
    pts = [r for r in rows if r.get("per_layer")]
    if not pts:
        return False
    families = list(dict.fromkeys(f for r in pts for f in r["per_layer"]))
    kinds = [("frobenius_fraction", "Frobenius error fraction"),
             ("activation_fraction_heldout", "activation error fraction (held-out)")]  # fmt: skip
    if not any(r["per_layer"][f].get(kinds[1][0]) for r in pts for f in r["per_layer"]):
        kinds[1] = ("activation_fraction", "activation error fraction (calibration)")
    fig, axes = plt.subplots(
        len(families), 2, figsize=(11, 3.2 * len(families)), squeeze=False, sharex=True
    )
    cmap = plt.get_cmap("tab20")
    for i, f in enumerate(families):
        for j, (key, title) in enumerate(kinds):
            ax = axes[i][j]
            for c, r in enumerate(pts):
                values = r["per_layer"].get(f, {}).get(key)
                if values:
                    entry = METHOD_TABLE.get(r["method"])
                    style = "--" if entry is not None and entry.dashed else "-"
                    ax.plot(range(len(values)), values, style, marker=".", color=cmap(c % 20),
                            label=r.get("label", r["method"]))  # fmt: skip
            ax.set_title(f"{f}: {title}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _allocated(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with per-layer ranks, of the first calibration seed present."""
    pts = [
        r for r in rows
        if any("ranks" in v for v in (r.get("per_layer") or {}).values())
    ]  # fmt: skip
    seeds = [calibration_seed(r) for r in pts]
    first = next((x for x in seeds if x is not None), None)
    return [r for r, x in zip(pts, seeds, strict=True) if x == first]


def allocation_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Per allocated point and family: mean, smallest and largest rank, dense layers."""
    import numpy as np

    lines = ["label,budget,family,layers,mean rank (factored),min rank,max rank,dense layers"]
    for r in _allocated(rows):
        for f, v in r["per_layer"].items():
            ranks = v.get("ranks")
            if ranks is None:
                continue
            dense = v.get("dense") or [False] * len(ranks)
            fac = [k for k, d in zip(ranks, dense, strict=True) if not d]
            mean = f"{np.mean(fac):.1f}" if fac else "-"
            lo = str(min(fac)) if fac else "-"
            hi = str(max(fac)) if fac else "-"
            lines.append(
                f'"{r.get("label", r["method"])}",{r.get("budget")},{f},{len(ranks)},{mean},'
                f"{lo},{hi},{sum(dense)}"
            )
    return "\n".join(lines) + "\n"


def _allocation(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    import numpy as np

    pts = _allocated(rows)
    if not pts:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(pts), 1, figsize=(11, 1.0 + 0.32 * 8 * len(pts)), squeeze=False)
    for ax, r in zip(axes[:, 0], pts, strict=True):
        fams = [f for f, v in r["per_layer"].items() if v.get("ranks") is not None]
        L = max(len(r["per_layer"][f]["ranks"]) for f in fams)
        grid = np.full((len(fams), L), np.nan)
        dense = np.zeros((len(fams), L), dtype=bool)
        for i, f in enumerate(fams):
            ranks = r["per_layer"][f]["ranks"]
            flags = r["per_layer"][f].get("dense") or [False] * len(ranks)
            for l, (k, d) in enumerate(zip(ranks, flags, strict=True)):
                grid[i, l] = np.nan if d else k
                dense[i, l] = d
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        ys, xs = np.nonzero(dense)
        ax.scatter(xs, ys, marker="s", s=28, color="red", label="dense")
        ax.set_yticks(range(len(fams)), [f.split(".")[-1] for f in fams], fontsize=7)
        ax.set_title(f"{r.get('label', r['method'])}, {r.get('budget')}: rank per layer "
                     "(red: kept dense)", fontsize=9)  # fmt: skip
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def against_slug(reference: str) -> str:
    """The file-name part of the paired table against ``reference``: ``paired_<slug>.csv``."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", reference.lower()).strip("_") or "reference"


def write_report(
    results: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    title: str | None = None,
    against: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the Markdown table and the figures for one or more results files.

    Parameters
    ----------
    results : str or Path or sequence of them
        JSONL files written by ``llm-adapter sweep``.
    out_dir : str or Path
        Created if needed.
    title : str, optional
        Heading of ``results.md``.
    against : sequence of str
        Further reference methods (a method name or a row label, e.g.
        ``"svd-llm +update"``): each gets its own paired table in
        ``results.md`` and ``paired_<slug>.csv`` (:func:`against_slug`),
        beside the one against SVD-LLM.

    Returns
    -------
    dict of str to Path
        ``table`` (Markdown), ``csv`` and each figure written (``phase_diagram``,
        ``frobenius_vs_perplexity``, ``per_layer_errors``), and, where there is
        something to pair, ``paired_csv``, ``mcnemar_csv`` and, per further
        reference, ``paired_<slug>_csv`` and ``mcnemar_<slug>_csv``.
    """
    files = [results] if isinstance(results, str | Path) else list(results)
    rows: list[dict[str, Any]] = []
    for f in files:
        if not Path(f).is_file():
            raise AdapterError(f"results file {str(f)!r} does not exist; run llm-adapter sweep")
        rows += read_results(f)
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not isinstance(row.get("method"), str):
                raise AdapterError(
                    f"results file {str(f)!r}: row {i} has no method; give results written "
                    "by llm-adapter sweep"
                )
    if not rows:
        raise AdapterError(f"no rows in {', '.join(map(str, files))}; run llm-adapter sweep first")
    names = {str(r.get(k)) for r in rows for k in ("method", "label")}
    for ref in against:
        if ref not in names:
            raise AdapterError(
                f"reference {ref!r} names no method or label of the rows; give one of: "
                + ", ".join(sorted(n for n in names if n != "None"))
            )
    out = Path(out_dir)
    _check_report_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    figures = {
        "phase_diagram": _phase_diagram,
        "frobenius_vs_perplexity": _central,
        "per_layer_errors": _per_layer,
        "pareto": pareto_figure,
        "allocation": _allocation,
    }
    for name, draw in figures.items():
        if draw(rows, out / f"{name}.png"):
            written[name] = out / f"{name}.png"
    first = rows[0]
    proto = first.get("protocol", {})
    ev = proto.get("evaluation", {})
    if ev.get("max_windows") and ev.get("windows") == "spread":
        chosen = f", {ev['max_windows']} windows spread over the split ({_window_seeds(rows)})"
    elif ev.get("max_windows"):
        chosen = f", first {ev['max_windows']} windows"
    else:
        chosen = ""
    basis = comparison_basis(rows)
    lines = [
        f"# {title or first.get('sweep', 'Sweep results')}",
        "",
        f"Model `{first.get('model')}`; results from {', '.join(f'`{f}`' for f in files)} "
        f"({len(rows)} rows).",
        f"Perplexity: WikiText-2 `{ev.get('wikitext')}`, windows of {ev.get('seq_len')} tokens"
        + chosen
        + f"; HellaSwag: `{ev.get('hellaswag')}`"
        + (f", first {ev['limit']} items" if ev.get("limit") else "")
        + ".",
        "Errors are means over the compressed layers of ||W - W'||_F^2 / ||W||_F^2 (Frob) and "
        "tr((W - W') C (W - W')^T) / tr(W C W^T) (act; C from calibration or held-out tokens).",
        "Budgets both ways: removed (model) is the fraction of the whole model's parameters "
        "removed, removed (maps) the fraction of the compressed maps' parameters removed"
        + (
            "; the points of a d/D group share a rank, not a budget (tied and grouped "
            "methods keep fewer parameters at the same rank)."
            if basis != "the same budget"
            else "."
        ),
        "",
        markdown_table(rows),
        "",
    ]
    paired_head, paired_body = budget_cells(rows)
    if paired_body:
        shared = {
            "the same budget": "at the same budget (parameters kept within "
            f"{100 * SAME_BUDGET_RTOL:g}% in every group)",
            "equal rank": "at equal rank (the same d/D; parameters kept differ, see the columns)",
        }.get(basis, "at the same requested budget (parameters kept differ, see the columns)")
        seeds = {calibration_seed(r) for r in rows if r.get("method") != "dense"}
        over_seeds = (
            "; rows 'all N' resample the N calibration seeds with replacement, then each "
            "drawn seed's windows with replacement (the same windows for both methods), "
            "'better'/'worse' only where the 95% interval of the perplexity ratio excludes 1, "
            "'tie' where it contains 1 and the ratio is within 1% of 1, 'inconclusive' where "
            "it contains 1 otherwise"
            if len(seeds - {None}) > 1
            else ""
        )
        lines += [
            f"Paired comparison with SVD-LLM {shared} (bootstrap over the shared "
            "windows and items, 2,000 resamples; 'tie' where the 95% interval contains no "
            f"difference{over_seeds}):",
            "",
            cells_markdown(paired_head, paired_body),
            "",
        ]
    extra: dict[str, str] = {}
    for ref in against:
        head, body = budget_cells(rows, reference=ref)
        if not body:
            continue
        extra[ref] = cells_csv(head, body)
        lines += [
            f"Paired comparison with `{ref}`, as above (ratios below 1: lower perplexity "
            f"than `{ref}`):",
            "",
            cells_markdown(head, body),
            "",
        ]
    tests: dict[str, str] = {}
    for ref in dict.fromkeys((reference_method(), *against)):
        head, body = mcnemar_cells(rows, reference=ref)
        if not body:
            continue
        tests[ref] = cells_csv(head, body)
        lines += [
            f"HellaSwag against `{ref}`, exact McNemar test on the items where the two "
            "disagree (wins: items only the point gets right; losses: items only "
            f"`{ref}` gets right; two-sided p; 'tie' where p >= 0.05):",
            "",
            cells_markdown(head, body),
            "",
        ]
    refits = refit_lines(rows)
    if refits:
        lines += [
            "Refits kept per map (a map keeps its refit only where it lowers the output "
            "error on the held-out calibration windows):",
            "",
            *refits,
            "",
        ]
    revisions = revision_lines(rows)
    if revisions:
        lines += ["Code revisions that wrote the rows:", "", *revisions, ""]
    corr = rank_correlations(rows)
    if corr:
        lines += ["Rank correlations over the compressed points:", "", *corr, ""]
    for name, path in written.items():
        lines += [f"![{name}]({path.name})", ""]
    table = out / "results.md"
    table.write_text("\n".join(lines))
    written["table"] = table
    written["csv"] = out / "results.csv"
    written["csv"].write_text(csv_table(rows))
    if "allocation" in written:
        written["allocation_csv"] = out / "allocation.csv"
        written["allocation_csv"].write_text(allocation_csv(rows))
    if paired_body:
        written["paired_csv"] = out / "paired.csv"
        written["paired_csv"].write_text(cells_csv(paired_head, paired_body))
    for ref, text in extra.items():
        key = f"paired_{against_slug(ref)}_csv"
        written[key] = out / f"paired_{against_slug(ref)}.csv"
        written[key].write_text(text)
    for ref, text in tests.items():
        name = "mcnemar" if ref == reference_method() else f"mcnemar_{against_slug(ref)}"
        written[f"{name}_csv"] = out / f"{name}.csv"
        written[f"{name}_csv"].write_text(text)
    _record_report(out, written.values())
    return written


#: the hidden file of a report directory that lists what the report wrote, with hashes
REPORT_RECORD = ".llm-adapter-report.json"
#: every file a report may write
REPORT_FILES = (
    "results.md", "results.csv", "paired.csv", "phase_diagram.png",
    "frobenius_vs_perplexity.png", "per_layer_errors.png", "pareto.png", "allocation.png",
    "allocation.csv", "mcnemar.csv",
)  # fmt: skip
#: a sentence of every results.md a report wrote (recognises reports older than the record)
_REPORT_SENTENCE = "Errors are means over the compressed layers of"


def _window_seeds(rows: Sequence[dict[str, Any]]) -> str:
    """Which seed chose the rows' spread evaluation windows, in words."""
    evs = [(r, (r.get("protocol") or {}).get("evaluation") or {}) for r in rows]
    seeds = {ev.get("window_seed", 0) for _, ev in evs if ev.get("windows") == "spread"}
    if len(seeds) <= 1:
        return f"seed {next(iter(seeds), 0)}"
    calibrated = [(r, ev) for r, ev in evs if calibration_seed(r) is not None]
    if all(ev.get("window_seed", 0) == calibration_seed(r) for r, ev in calibrated):
        return "seed: each row's calibration seed"
    return "seeds " + ", ".join(str(s) for s in sorted(seeds, key=str))


def _check_report_dir(out: Path) -> None:
    """Raise before writing when a file the report would replace is not one it wrote.

    A file is the report's when the directory's record lists it with its
    current sha256, or, in a directory written before the record existed,
    when its ``results.md`` is a report's (it has the report's explanation
    of the errors).
    """
    from ..files import refuse, sha256_file

    if not out.is_dir():
        return
    recorded: dict[str, str] = {}
    try:
        data = json.loads((out / REPORT_RECORD).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            recorded = {str(k): str(v) for k, v in data["files"].items()}
    except (OSError, ValueError):
        pass
    legacy = False
    if not recorded and (out / "results.md").is_file():
        try:
            legacy = _REPORT_SENTENCE in (out / "results.md").read_text(encoding="utf-8")
        except (OSError, ValueError):
            legacy = False
    extra = sorted(p.name for p in (*out.glob("paired_*.csv"), *out.glob("mcnemar_*.csv")))
    for name in (*REPORT_FILES, *extra):
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_file() and not path.is_symlink():
            if legacy or recorded.get(name) == sha256_file(path):
                continue
        raise refuse(
            path,
            "was not written by llm-adapter report (or was changed since)",
            f"give another {mention('out')}, or move the file away",
        )


def _record_report(out: Path, paths: Any) -> None:
    """Write the record of what the report wrote (name -> sha256)."""
    from ..files import sha256_file, write_atomic

    files = {Path(p).name: sha256_file(p) for p in paths}
    write_atomic(out / REPORT_RECORD, json.dumps({"files": files}, indent=2) + "\n")
