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

Rows calibrated with different seeds (:func:`llm_adapter.experiment.paired.calibration_seed`)
are paired within each seed; where a method has rows under two or more seeds,
:func:`seed_paired_rows` adds its comparison over all of them
(:func:`llm_adapter.experiment.paired.paired_perplexity_seeds`), and the tables
gain a ``seed`` column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdapterError
from ..methods import reference_method
from .paired import (
    calibration_seed,
    mcnemar,
    paired_accuracy,
    paired_perplexity,
    paired_perplexity_seeds,
)

__all__ = [
    "SAME_BUDGET_RTOL",
    "budget_cells",
    "budget_csv",
    "budget_markdown",
    "cells_csv",
    "cells_markdown",
    "comparison_basis",
    "group_spread",
    "mcnemar_cells",
    "paired_rows",
    "pareto_figure",
    "pyplot",
    "seed_paired_rows",
]


#: points whose kept parameters differ by more than this fraction do not share a budget
SAME_BUDGET_RTOL = 0.005


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row's budget group: rows evaluated alike, calibrated alike, on one budget.

    Rows that record their protocol (the model, calibration and evaluation as
    the sweep ran them) are grouped by it, whichever sweep wrote them, so a
    configuration that adds points to another's results file is paired with
    that file's rows; older rows without it are grouped by their sweep's name.
    """
    protocol = row.get("protocol")
    source = json.dumps(protocol, sort_keys=True) if protocol else row.get("sweep")
    return (
        source,
        tuple(row.get("families") or ()),
        row.get("budget"),
        calibration_seed(row),
    )


def group_spread(rows: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
    """How far the kept parameters of each budget group's compressed points spread.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows.

    Returns
    -------
    dict
        ``(sweep, families, budget, calibration seed)`` to ``max / min - 1`` of
        the rows' ``param_ratio`` (0 for a group of one point).
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


def _references(rows: Sequence[dict[str, Any]], reference: str) -> dict[tuple[Any, ...], Any]:
    """The reference method's first pairable row of each budget group (:func:`_key`)."""
    refs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if _pairable(r) and reference in (r.get("method"), r.get("label")):
            refs.setdefault(_key(r), r)
    return refs


def _budget_cell(budget: Any, shares_budget: bool) -> str:
    """A row's budget as the tables print it: marked where its group does not share one."""
    text = str(budget)
    if not shares_budget:
        text += " (equal rank)" if text.startswith("d/D") else " (kept differs)"
    return text


def paired_rows(
    rows: Sequence[dict[str, Any]], *, reference: str | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Each compressed row against the reference method's row of its budget group.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows with per-window and per-item fields (sweeps store them).
    reference : str, optional
        The method (``row["method"]``) or label (``row["label"]``) compared against.
    seed : int
        Bootstrap seed (one seed for the whole table, so every comparison uses the
        same resamples).

    Returns
    -------
    list of dict
        One dict per compressed row that has a reference in its group (the same
        sweep, families, budget and calibration seed), in file
        order: ``label``, ``families``, ``budget``, ``seed`` (the calibration
        seed), ``param_ratio`` (kept fraction
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
    refs = _references(rows, reference or reference_method())
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
            "seed": calibration_seed(r),
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


def _window_seed(row: dict[str, Any]) -> Any:
    return ((row.get("protocol") or {}).get("evaluation") or {}).get("window_seed")


def _experiment(row: dict[str, Any]) -> tuple[Any, ...]:
    """What rows of one experiment under several calibration seeds share, but the
    evaluation's ``window_seed`` (see :func:`_experiments`)."""
    protocol = row.get("protocol") or {}
    calibration = {k: v for k, v in (protocol.get("calibration") or {}).items() if k != "seed"}
    evaluation = dict(protocol.get("evaluation") or {})
    evaluation.pop("window_seed", None)
    return (
        row.get("model"),
        tuple(row.get("families") or ()),
        row.get("budget"),
        json.dumps(evaluation, sort_keys=True),
        json.dumps(calibration, sort_keys=True),
    )


def _experiments(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by experiment (:func:`_experiment`) and by their evaluation windows.

    Rows that differ only in ``window_seed`` stay apart, except where every row
    of the experiment was scored on windows chosen by its own calibration seed
    (``window_seed`` equal to the seed, as in the SmolLM2 configurations): those
    count as one protocol across seeds, since the pairing stays within each seed,
    whose two rows share their windows
    (:func:`~llm_adapter.experiment.paired.paired_perplexity_seeds` checks it).
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_experiment(r), []).append(r)
    out = []
    for group in groups.values():
        if all(_window_seed(r) == calibration_seed(r) for r in group):
            out.append(group)
            continue
        by_windows: dict[str, list[dict[str, Any]]] = {}
        for r in group:
            by_windows.setdefault(json.dumps(_window_seed(r)), []).append(r)
        out += by_windows.values()
    return out


def seed_paired_rows(
    rows: Sequence[dict[str, Any]], *, reference: str | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Each method against the reference over all its calibration seeds.

    Rows of one experiment (the same model, families, budget, evaluation
    protocol and calibration settings but the seed) and one label are
    compared with the reference's rows of the same seeds by
    :func:`llm_adapter.experiment.paired.paired_perplexity_seeds`, where they
    share two or more seeds.

    Parameters
    ----------
    rows : sequence of dict
        Sweep rows with per-window scores, from one or several results files.
    reference : str, optional
        The method or label compared against.
    seed : int
        Bootstrap seed.

    Returns
    -------
    list of dict
        One dict per (experiment, label) with two or more shared seeds, the
        reference's own included: ``label``, ``families``, ``budget``,
        ``seed`` (``"all N"``), ``seeds``, ``param_ratio``, ``model_ratio``,
        ``shares_budget``, ``ppl`` (over every seed's windows), ``ppl_ratio``,
        ``ppl_low``, ``ppl_high``, ``ppl_significant`` and ``ppl_verdict``.
    """
    reference = reference or reference_method()
    usable = [
        r
        for r in rows
        if r.get("method") != "dense"
        and r.get("ppl_window_nll") is not None
        and calibration_seed(r) is not None
    ]
    spread = group_spread(rows)
    out = []
    for group in _experiments(usable):
        labels: dict[str, list[dict[str, Any]]] = {}
        for r in group:
            labels.setdefault(str(r.get("label", r.get("method"))), []).append(r)
        refs = next((v for k, v in labels.items() if reference in (k, v[0].get("method"))), None)
        if refs is None:
            continue
        ref_seeds = {calibration_seed(r) for r in refs}
        for label, mine in labels.items():
            shared = [r for r in mine if calibration_seed(r) in ref_seeds]
            seeds = {calibration_seed(r) for r in shared}
            if len(seeds) < 2 or len(seeds) < len(shared):
                continue
            base = [r for r in refs if calibration_seed(r) in seeds]
            res = paired_perplexity_seeds(base, shared, seed=seed)
            nll = sum(float(sum(r["ppl_window_nll"])) for r in shared)
            tokens = sum(float(sum(r["ppl_window_tokens"])) for r in shared)
            first = shared[0]
            out.append(
                {
                    "label": label,
                    "families": list(first.get("families") or []),
                    "budget": first.get("budget"),
                    "seed": f"all {len(seeds)}",
                    "seeds": list(res.seeds),
                    "param_ratio": first.get("param_ratio"),
                    "model_ratio": first.get("model_ratio"),
                    "shares_budget": all(
                        spread.get(_key(r), 0.0) <= SAME_BUDGET_RTOL for r in shared
                    ),
                    "ppl": math.exp(nll / tokens),
                    "ppl_ratio": res.estimate,
                    "ppl_low": res.low,
                    "ppl_high": res.high,
                    "ppl_significant": res.significant,
                    "ppl_verdict": res.verdict,
                }
            )
    return out


def _verdict(significant: bool, better: bool) -> str:
    if not significant:
        return "tie"
    return "better" if better else "worse"


def budget_cells(
    rows: Sequence[dict[str, Any]], *, reference: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """The paired comparison as a header and formatted cells (see :func:`paired_rows`).

    Parameters
    ----------
    rows : sequence of dict
    reference : str, optional

    Returns
    -------
    head : list of str
    cells : list of list of str
        Empty when no row can be paired.
    """
    reference = reference or reference_method()
    pairs = paired_rows(rows, reference=reference)
    head = [
        "point", "families", "budget", "params kept", "removed (model)", "removed (maps)",
        "perplexity",
        f"ppl / {reference} [95% CI]", "verdict", "acc_norm", f"acc_norm - {reference} [95% CI]",
        "verdict",
    ]  # fmt: skip
    seeded = len({p["seed"] for p in pairs}) > 1
    if seeded:  # rows under several calibration seeds: each seed, then all of them
        head.insert(3, "seed")
        pairs += seed_paired_rows(rows, reference=reference)
    body = []
    for p in pairs:
        kept = p.get("param_ratio")
        cells = [
            str(p["label"]),
            ", ".join(p["families"]),
            _budget_cell(p["budget"], p["shares_budget"]),
            f"{kept:.3f}" if kept is not None else "-",
            _removed(p.get("model_ratio")),
            _removed(None if kept is None else 1.0 - kept),
        ]
        if seeded:
            cells.insert(3, "-" if p["seed"] is None else str(p["seed"]))
        if "ppl_ratio" in p:
            cells += [
                f"{p['ppl']:.3f}",
                f"{p['ppl_ratio']:.4f} [{p['ppl_low']:.4f}, {p['ppl_high']:.4f}]",
                p.get("ppl_verdict") or _verdict(p["ppl_significant"], p["ppl_ratio"] < 1.0),
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


def mcnemar_cells(
    rows: Sequence[dict[str, Any]], *, reference: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """Exact McNemar tests of HellaSwag against the reference, as a header and cells.

    Each compressed row with per-item hits is tested against the reference row
    of its group (the same sweep, families, budget and calibration seed, as in
    :func:`paired_rows`), on ``acc_norm`` and on ``acc``
    (:func:`llm_adapter.experiment.paired.mcnemar`). A cell reads ``wins /
    losses, p``: the items only the row gets right, the items only the
    reference gets right, and the exact two-sided p-value. The verdict is
    "better" or "worse" where ``p < 0.05``, else "tie". There is no pooled row
    over calibration seeds: the test pairs items of one model each.

    Parameters
    ----------
    rows : sequence of dict
    reference : str, optional
        The method or label tested against (default: the reference method).

    Returns
    -------
    head : list of str
    cells : list of list of str
        Empty when no row has per-item hits beside its reference's.
    """
    reference = reference or reference_method()
    refs = _references(rows, reference)
    head = [
        "point", "families", "budget", "seed", "removed (model)", "removed (maps)",
        f"acc_norm: wins / losses against {reference}, p", "verdict",
        f"acc: wins / losses against {reference}, p", "verdict",
    ]  # fmt: skip
    spread = group_spread(rows)
    body = []
    for r in rows:
        ref = refs.get(_key(r))
        if ref is None or r is ref or r.get("method") == "dense":
            continue
        if not (r.get("hellaswag_correct_norm") and ref.get("hellaswag_correct_norm")):
            continue
        kept = r.get("param_ratio")
        seed = calibration_seed(r)
        cells = [
            str(r.get("label", r.get("method"))),
            ", ".join(r.get("families") or []),
            _budget_cell(r.get("budget"), spread.get(_key(r), 0.0) <= SAME_BUDGET_RTOL),
            "-" if seed is None else str(seed),
            _removed(r.get("model_ratio")),
            _removed(None if kept is None else 1.0 - kept),
        ]
        for norm, key in ((True, "hellaswag_correct_norm"), (False, "hellaswag_correct")):
            if r.get(key) is None or ref.get(key) is None:
                cells += ["-", "-"]
                continue
            t = mcnemar(ref, r, norm=norm)
            cells += [
                f"{t.wins} / {t.losses}, p = {t.p_value:.3g}",
                _verdict(t.significant, t.wins > t.losses),
            ]
        body.append(cells)
    return head, body


def budget_markdown(rows: Sequence[dict[str, Any]], *, reference: str | None = None) -> str:
    """The paired comparison as a Markdown table (see :func:`budget_cells`).

    Parameters
    ----------
    rows : sequence of dict
    reference : str, optional

    Returns
    -------
    str
        Empty when no row can be paired.
    """
    reference = reference or reference_method()
    head, body = budget_cells(rows, reference=reference)
    return cells_markdown(head, body) if body else ""


def budget_csv(rows: Sequence[dict[str, Any]], *, reference: str | None = None) -> str:
    """The paired comparison as CSV (see :func:`budget_cells`), e.g. for ``csv-table``.

    Parameters
    ----------
    rows : sequence of dict
    reference : str, optional

    Returns
    -------
    str
        Empty when no row can be paired.
    """
    reference = reference or reference_method()
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
            if ax.get_legend_handles_labels()[0]:  # a panel with no curve has no legend
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
