"""Equal-budget comparisons of sweep rows: paired tables and Pareto curves.

Rows of a sweep that share an evaluation protocol were scored on the same
windows and items, so each method can be compared with a reference method
(SVD-LLM by default) *at the same budget* with a paired bootstrap
(:mod:`llm_adapter.paired`). A row's budget is what the sweep point asked for
(``budget``: ``d/D=...``, ``params kept ...`` or ``model ratio ...``); rows are
paired within one (sweep, families, budget) group.

Every table states a budget both ways: the fraction of the whole model's
parameters removed (``model_ratio``, ``1 - model_params / model_params_dense``)
and the fraction of the compressed maps' parameters removed (``1 -
param_ratio``).  A group whose points keep parameters differing by more than
:data:`SAME_BUDGET_RTOL` (relative) does not share a budget: the points of a
``d/D`` group share a rank (tied and grouped methods keep fewer parameters at
the same rank), and its tables say "equal rank" instead of "the same budget"
(:func:`comparison_basis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from .paired import paired_accuracy, paired_perplexity

__all__ = [
    "SAME_BUDGET_RTOL",
    "budget_cells",
    "budget_csv",
    "budget_markdown",
    "cells_csv",
    "cells_markdown",
    "comparison_basis",
    "group_spread",
    "paired_rows",
    "pareto_figure",
    "pyplot",
]


#: points whose kept parameters differ by more than this fraction do not share a budget
SAME_BUDGET_RTOL = 0.005


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("sweep"), tuple(row.get("families") or ()), row.get("budget"))


def group_spread(rows: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
    """How far the kept parameters of each budget group's compressed points spread.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows.

    Returns
    -------
    dict
        ``(sweep, families, budget)`` to ``max / min - 1`` of the rows'
        ``param_ratio`` (0 for a group of one point).
    """
    kept: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        if r.get("method") != "dense" and r.get("param_ratio"):
            kept.setdefault(_key(r), []).append(float(r["param_ratio"]))
    return {k: max(v) / min(v) - 1.0 for k, v in kept.items()}


def comparison_basis(rows: Sequence[dict[str, Any]]) -> str:
    """What the points compared within each budget group share, in words.

    Parameters
    ----------
    rows : sequence of dict

    Returns
    -------
    str
        ``"the same budget"`` when every group's points keep parameters within
        :data:`SAME_BUDGET_RTOL` of each other; ``"equal rank"`` when the groups
        that do not are all ``d/D`` groups; otherwise ``"the same requested
        budget"``.
    """
    apart = [k for k, s in group_spread(rows).items() if s > SAME_BUDGET_RTOL]
    if not apart:
        return "the same budget"
    if all(str(k[2] or "d/D").startswith("d/D") for k in apart):
        return "equal rank"
    return "the same requested budget"


def _removed(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _pairable(row: dict[str, Any]) -> bool:
    return row.get("method") != "dense" and (
        row.get("ppl_window_nll") is not None or row.get("hellaswag_correct_norm") is not None
    )


def paired_rows(
    rows: Sequence[dict[str, Any]], *, reference: str = "svd-llm", seed: int = 0
) -> list[dict[str, Any]]:
    """Each compressed row against the reference method's row of its budget group.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows with per-window and per-item fields (sweeps store them).
    reference : str
        The method (``row["method"]``) or label (``row["label"]``) compared against.
    seed : int
        Bootstrap seed (one seed for the whole table, so every comparison uses the
        same resamples).

    Returns
    -------
    list of dict
        One dict per compressed row that has a reference in its group, in file
        order: ``label``, ``families``, ``budget``, ``param_ratio`` (kept fraction
        of the families), ``model_ratio`` (removed fraction of the model),
        ``shares_budget`` (whether the group's kept parameters are within
        :data:`SAME_BUDGET_RTOL`), ``ppl``, ``ppl_ratio`` / ``ppl_low`` /
        ``ppl_high`` / ``ppl_significant``
        and, with HellaSwag, ``acc_norm``, ``acc_norm_diff`` / ``acc_norm_low`` /
        ``acc_norm_high`` / ``acc_norm_significant``. The reference row itself is
        included with a ratio of 1. The perplexity keys are absent where the
        rows have no per-window scores (a HellaSwag-only sweep), the acc_norm
        keys where they have no per-item hits.
    """
    refs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if _pairable(r) and reference in (r.get("method"), r.get("label")):
            refs.setdefault(_key(r), r)
    spread = group_spread(rows)
    out = []
    for r in rows:
        ref = refs.get(_key(r))
        if ref is None or not _pairable(r):
            continue
        entry: dict[str, Any] = {
            "label": r.get("label", r.get("method")),
            "families": list(r.get("families") or []),
            "budget": r.get("budget"),
            "param_ratio": r.get("param_ratio"),
            "model_ratio": r.get("model_ratio"),
            "shares_budget": spread.get(_key(r), 0.0) <= SAME_BUDGET_RTOL,
        }
        if r.get("ppl_window_nll") is not None and ref.get("ppl_window_nll") is not None:
            ppl = paired_perplexity(ref, r, seed=seed)
            entry.update(
                ppl=r.get("ppl"),
                ppl_ratio=ppl.estimate,
                ppl_low=ppl.low,
                ppl_high=ppl.high,
                ppl_significant=ppl.significant,
            )
        if r.get("hellaswag_correct_norm") is not None and ref.get("hellaswag_correct_norm"):
            acc = paired_accuracy(ref, r, seed=seed)
            entry.update(
                acc_norm=r.get("hellaswag_acc_norm"),
                acc_norm_diff=acc.estimate,
                acc_norm_low=acc.low,
                acc_norm_high=acc.high,
                acc_norm_significant=acc.significant,
            )
        out.append(entry)
    return out


def _verdict(significant: bool, better: bool) -> str:
    if not significant:
        return "tie"
    return "better" if better else "worse"


def budget_cells(
    rows: Sequence[dict[str, Any]], *, reference: str = "svd-llm"
) -> tuple[list[str], list[list[str]]]:
    """The paired comparison as a header and formatted cells (see :func:`paired_rows`).

    Parameters
    ----------
    rows : sequence of dict
    reference : str

    Returns
    -------
    head : list of str
    cells : list of list of str
        Empty when no row can be paired.
    """
    pairs = paired_rows(rows, reference=reference)
    head = [
        "point", "families", "budget", "params kept", "removed (model)", "removed (maps)",
        "perplexity",
        f"ppl / {reference} [95% CI]", "verdict", "acc_norm", f"acc_norm - {reference} [95% CI]",
        "verdict",
    ]  # fmt: skip
    body = []
    for p in pairs:
        budget = str(p["budget"])
        if not p["shares_budget"]:
            budget += " (equal rank)" if budget.startswith("d/D") else " (kept differs)"
        kept = p.get("param_ratio")
        cells = [
            str(p["label"]),
            ", ".join(p["families"]),
            budget,
            f"{kept:.3f}" if kept is not None else "-",
            _removed(p.get("model_ratio")),
            _removed(None if kept is None else 1.0 - kept),
        ]
        if "ppl_ratio" in p:
            cells += [
                f"{p['ppl']:.3f}",
                f"{p['ppl_ratio']:.4f} [{p['ppl_low']:.4f}, {p['ppl_high']:.4f}]",
                _verdict(p["ppl_significant"], p["ppl_ratio"] < 1.0),
            ]
        else:
            cells += ["-", "-", "-"]
        if "acc_norm" in p:
            cells += [
                f"{p['acc_norm']:.3f}",
                f"{p['acc_norm_diff']:+.3f} [{p['acc_norm_low']:+.3f}, {p['acc_norm_high']:+.3f}]",
                _verdict(p["acc_norm_significant"], p["acc_norm_diff"] > 0),
            ]
        else:
            cells += ["-", "-", "-"]
        body.append(cells)
    return head, body


def budget_markdown(rows: Sequence[dict[str, Any]], *, reference: str = "svd-llm") -> str:
    """The paired comparison as a Markdown table (see :func:`budget_cells`).

    Parameters
    ----------
    rows : sequence of dict
    reference : str

    Returns
    -------
    str
        Empty when no row can be paired.
    """
    head, body = budget_cells(rows, reference=reference)
    return cells_markdown(head, body) if body else ""


def budget_csv(rows: Sequence[dict[str, Any]], *, reference: str = "svd-llm") -> str:
    """The paired comparison as CSV (see :func:`budget_cells`), e.g. for ``csv-table``.

    Parameters
    ----------
    rows : sequence of dict
    reference : str

    Returns
    -------
    str
        Empty when no row can be paired.
    """
    head, body = budget_cells(rows, reference=reference)
    return cells_csv(head, body) if body else ""


def cells_markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A header and rows of cells as a Markdown table.

    Parameters
    ----------
    head : sequence of str
    body : sequence of sequence of str

    Returns
    -------
    str
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def cells_csv(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A header and rows of cells as CSV text.

    Parameters
    ----------
    head : sequence of str
    body : sequence of sequence of str

    Returns
    -------
    str
    """
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(body)
    return buf.getvalue()


def pareto_figure(rows: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Perplexity (and HellaSwag acc_norm) against parameters kept, one curve per method.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows; only rows whose point had a parameter budget (``param_ratios``
        or ``model_ratios``) are drawn, one panel row per family set.
    path : str or Path
        The PNG written.

    Returns
    -------
    bool
        Whether there was anything to draw.
    """
    pts = [
        r
        for r in rows
        if r.get("method") != "dense"
        and str(r.get("budget", "")).startswith(("params kept", "model ratio"))
    ]
    if not pts:
        return False
    plt = pyplot()
    fam_sets = list(dict.fromkeys(tuple(r.get("families") or ()) for r in pts))
    dense = [r for r in rows if r.get("method") == "dense" and r.get("ppl") is not None]
    has_hs = any(r.get("hellaswag_acc_norm") is not None for r in pts)
    cols = 2 if has_hs else 1
    fig, axes = plt.subplots(
        len(fam_sets), cols, figsize=(6.5 * cols, 4.2 * len(fam_sets)), squeeze=False
    )
    for i, fams in enumerate(fam_sets):
        sel = [r for r in pts if tuple(r.get("families") or ()) == fams]
        labels = list(dict.fromkeys(str(r.get("label", r["method"])) for r in sel))
        metrics = [("ppl", "WikiText-2 perplexity")]
        if has_hs:
            metrics.append(("hellaswag_acc_norm", "HellaSwag acc_norm"))
        for j, (key, name) in enumerate(metrics):
            ax = axes[i][j]
            for label in labels:
                curve = sorted(
                    (1.0 - r["model_ratio"], r[key])
                    for r in sel
                    if str(r.get("label", r["method"])) == label and r.get(key) is not None
                )
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.plot(xs, ys, marker="o", label=label)
            if dense and dense[0].get(key) is not None:
                ax.axhline(dense[0][key], color="grey", ls="--", lw=0.8, label="dense")
            ax.set_xlabel("fraction of the model's parameters kept")
            ax.set_ylabel(name)
            if key == "ppl":
                ax.set_yscale("log")
            ax.set_title(f"{', '.join(fams)}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a one-line error without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise AdapterError(
            "the report's figures need matplotlib: pip install 'llm-adapter[report]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
