"""Sweeps: many compression points of one model, each compressed, measured and logged.

A sweep names a model, calibration and evaluation data, the families and d/D
values, and a list of point tables (methods and the ``(lam, tying, metric,
coupling)`` grid). Every point becomes one JSON line in the results file with
the Frobenius and activation error fractions (calibration tokens and held-out
tokens), perplexity, HellaSwag acc/acc_norm, parameters kept and timings.

Configuration (TOML or YAML; relative paths are taken from the working
directory, where the command is run)::

    name = "neox-mini"
    model = "../shared/models/neox-mini"
    out = "experiments/results/neox_mini.jsonl"
    device = "auto"                 # calibration and evaluation device
    baseline = true                 # also measure the uncompressed model
    families = ["attention.dense"]  # each entry: a family, "a,b", or "all"
    rank_ratios = [0.25]            # d/D values; or equal budgets instead (see below)
    checkpoints = "out/checkpoints" # optional: save every compressed model (see below)

    [calibration]                   # SVD-LLM protocol: seeded random windows
    text = "../shared/data/wikitext-2/wiki.valid.tokens"   # or dataset = "NAME:CONFIG:SPLIT"
    samples = 256
    seq_len = 128
    seed = 0
    detokenize = false              # true, or "auto": undo WikiText's spacing first
    windows = "random"              # or "disjoint": non-overlapping, disjoint across seeds

    [heldout]                       # optional: activation error on other tokens
    text = "../shared/data/wikitext-2/wiki.test.tokens"
    samples = 64
    seq_len = 128
    seed = 1

    [evaluation]                    # "hub" reads the hub datasets (needs `datasets`)
    wikitext = "../shared/data/wikitext-2/wiki.test.tokens"
    hellaswag = "../shared/data/hellaswag/hellaswag_val_full.txt.bz2"
    seq_len = 128
    limit = 500

    [[points]]
    method = "svd-llm"

    [[points]]                      # lists expand to their cartesian product
    method = "bundle"
    lam = [0.0, 1.0, inf]
    tying = [1, 2, 6]

Models and data by name, local copies in ``[paths]``: ``model`` may be a hub id,
``[calibration]``/``[heldout]`` ``dataset`` a hub dataset ``NAME:CONFIG:SPLIT``,
``[evaluation]`` ``wikitext`` a hub dataset ``NAME:CONFIG:SPLIT`` (``"hub"``:
``wikitext:wikitext-2-raw-v1:test``) and ``hellaswag`` ``"Rowan/hellaswag"`` (or
``"hub"``: its validation split).  The ``[paths]`` table maps such names to
local files::

    model = "HuggingFaceTB/SmolLM2-135M-Instruct"

    [calibration]
    dataset = "wikitext:wikitext-2-v1:validation"

    [paths]                         # name = local file, used when the file exists
    "HuggingFaceTB/SmolLM2-135M-Instruct" = "../shared/models/smollm2/model.Q4_1.gguf"
    "wikitext:wikitext-2-v1:validation" = "../shared/data/wikitext-2/wiki.valid.tokens"

Before anything else, :func:`resolve_inputs` replaces every name whose
``[paths]`` file exists by that file (a ``dataset`` becomes the section's
``text``), so the run, its point keys and its rows are those of a
configuration that named the file itself; keys computed before ``[paths]``
existed stay valid.  A name whose ``[paths]`` file is missing is used from
the hub, with one line saying so; when the hub cannot be used either (offline,
not in the local hub cache) the sweep stops with one line naming the value and
both fixes.  A name with no ``[paths]`` entry is used as it is.  A point run
from the hub has other keys than one run from the local file (the protocol
names what was read).  Every row records where each input came from:
``model_source`` (``"local"`` or ``"hub"``) and ``sources``, one entry per
input (``model``, ``calibration.text``, ``evaluation.wikitext``, ...) with the
configured ``name``, the ``source``, the local ``path`` or, for a hub model in
the local hub cache, its ``revision``; neither enters the keys.

Budgets: ``rank_ratios`` fixes d/D (equal rank, not equal parameters: tying
and the map's shape change what a rank costs). ``param_ratios`` gives every
method the rank that keeps that fraction of the compressed families'
parameters (``CompressionConfig.param_ratio``), and ``model_ratios`` the
whole-model compression ratio as SVD-LLM reports it (parameters removed over
all the model's parameters), turned into the families' kept fraction
``1 - r * P_model / P_families`` once the model is loaded. The three lists may
be combined; without any, ``rank_ratios = [0.25]``.

``detokenize`` (in ``[calibration]`` and ``[heldout]``): ``true`` applies
:func:`llm_adapter.data.detokenize_wikitext` to the text before tokenising,
``"auto"`` does so when the local file is WikiText's tokenized variant, and
``false`` (the default) uses the text as it is.  The setting enters the point
keys, resolved, only when the text is detokenized, so configurations written
before it existed keep their keys.  Every row records the calibration that made
it (``calibration``: windows, tokens, seed, sequence length, ``text_variant``).

``windows`` (in ``[calibration]`` and ``[heldout]``): ``"random"`` (default)
draws the windows at seeded random offsets, ``"disjoint"`` takes
non-overlapping windows that are disjoint across the seeds 0, 1, 2, ... of the
same text, ``samples`` and ``seq_len`` (:func:`llm_adapter.data.sample_windows`;
seed ``s`` needs ``(s + 1) * samples`` windows of ``seq_len`` tokens in the
text, checked once the text is tokenised, before any point runs).
``"disjoint"`` enters the keys; ``"random"`` does not, so configurations written
before the setting existed keep their keys.  Rows calibrated on disjoint
windows record ``window_rule = "disjoint"`` in ``calibration``.

``windows`` (in ``[evaluation]``): ``"first"`` (default) scores the first
``max_windows`` perplexity windows, ``"spread"`` that many chosen over the whole
split by ``window_seed`` (default 0; see :func:`llm_adapter.evaluate.perplexity`),
the same windows for every point.  ``"spread"`` and its seed enter the keys;
``"first"`` does not.  Rows record the windows' start offsets
(``ppl_window_starts``, aligned with ``ppl_window_nll``), their sha256, the
rule and the seed.

Point keys: ``method``, ``lam``, ``tying``, ``metric``, ``coupling``,
``group_size``, ``families``, ``rank_ratio``, ``param_ratio``, ``model_ratio``,
``label``. Each point is keyed
by a hash of everything that determines its row (model, point, calibration
and evaluation protocol); rows are appended to the JSONL file one whole line
per ``write`` and flushed to disk, so a killed sweep restarts where it stopped
and never writes a key twice (a line cut off by the kill is dropped on
restart). While a sweep runs it holds an exclusive lock on its results file,
so a second sweep on the same file stops at once instead of writing every
row again, and :func:`read_results` keeps each key once (files written before
the lock existed). A results file that is not a sweep's (a line that is
not a row) is refused, never appended to nor truncated. Every point and
setting is checked before any runs, and a dry run reports the same errors;
a saved point checkpoint is checked against its content hash before it is
reused. Calibration statistics are cached on disk by :func:`calibrate`;
with ``checkpoints = "DIR"`` every compressed model is also saved, and a
restarted sweep reloads it instead of factorising again.

Checkpoints: a point's compressed model is saved to ``DIR/<compression key>``
(:func:`compression_key`), a hash of what determines the compressed model
and nothing else: the point as its key records it (method, parameters,
families, budget), the ``model`` as read (after ``[paths]``) and the
``[calibration]`` section as the keys record it (``text`` or ``dataset``,
``samples``, ``seq_len``, ``seed``, ``batch_size``, ``detokenize``,
``windows``).  ``[heldout]`` and ``[evaluation]`` only measure the model and
are left out, as are ``device``, ``dtype`` (applied after compression, for
evaluation) and ``cache_dir``; the point keys do not name the device either.
So a configuration that evaluates the same points, calibrated the same way,
on other text (the whole test split, HellaSwag) reloads the checkpoints
another configuration saved in the same directory instead of compressing
again, and its rows keep their own point keys; another calibration (a seed,
a text, a window count) compresses again.  Every row of a compressed point
records ``checkpoint_key`` (outside its key) and ``reused_checkpoint``.  A
checkpoint saved before compression keys existed is in ``DIR/<point key>``:
when ``DIR/<compression key>`` holds none, the point reuses that one (so the
configuration that saved it, whose point keys name it, still finds it).
Every checkpoint a run would reuse, and every directory it would replace, is
checked before the run starts (the dry run too, which marks the points it
would reload): content changed since it was saved, or a directory that is
not llm-adapter's, is an error.  A sweep saves a model only when it computes
the point, so a configuration whose rows are all done saves nothing.  Points
of one sweep never share a compression key (points are kept once by what
their keys record); if two did, the first would save the model and the
second reload it.  Two sweeps running at once on one ``DIR`` may both
compress a point that neither has saved yet; the one that finishes second
keeps the checkpoint the first saved (saves are atomic: a reader sees a
whole checkpoint or none).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..compress import CompressionConfig, CompressionReport
from ..errors import AdapterError, ConfigurationError, Spelling, mention
from ..methods import (
    DEFAULT_FAMILIES,
    DEFAULT_RANK_RATIO,
    METHOD_TABLE,
    PARAMS,
    split_families,
)
from ..provenance import package_versions, source_revision

#: the methods a point may name: the method table's and ``dense`` (uncompressed)
METHOD_NAMES = ("dense", *METHOD_TABLE)

__all__ = [
    "SweepPoint",
    "check_results_file",
    "compression_key",
    "expand_points",
    "load_config",
    "read_results",
    "resolve_inputs",
    "run_point",
    "run_sweep",
    "saved_checkpoint",
    "sweep_protocol",
]

#: the budget keys of a point, and the top-level lists they come from
BUDGETS = {
    "rank_ratio": "rank_ratios",
    "param_ratio": "param_ratios",
    "model_ratio": "model_ratios",
}
#: every key a point table may have: the method, its parameters (the method table's),
#: ``private`` (basis-sharing), the families, a budget and a label
POINT_KEYS = ("method", *PARAMS, "private", "families", *BUDGETS)
TOP_KEYS = {
    "name", "model", "out", "device", "dtype", "baseline", "families", "rank_ratios",
    "param_ratios", "model_ratios",
    "calibration", "heldout", "evaluation", "points", "checkpoints", "cache_dir", "paths",
}  # fmt: skip
#: the keys of a text section, ``[calibration]`` or ``[heldout]``
TEXT_SECTION_KEYS = {
    "text", "dataset", "samples", "seq_len", "seed", "batch_size", "detokenize", "windows",
}  # fmt: skip
SECTION_KEYS = {
    "calibration": TEXT_SECTION_KEYS,
    "heldout": TEXT_SECTION_KEYS,
    "evaluation": {
        "wikitext",
        "hellaswag",
        "seq_len",
        "stride",
        "max_windows",
        "windows",
        "window_seed",
        "limit",
        "batch_size",
    },
}


#: the whole-number settings of each section, and their least value
SECTION_NUMBERS = {
    "calibration": {"samples": 1, "seq_len": 2, "seed": 0, "batch_size": 1},
    "heldout": {"samples": 1, "seq_len": 2, "seed": 0, "batch_size": 1},
    "evaluation": {"seq_len": 2, "stride": 1, "max_windows": 1, "limit": 1, "batch_size": 1},
}


# --------------------------------------------------------------------------- config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep configuration from TOML (``.toml``) or YAML (``.yaml``/``.yml``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        The configuration, checked for unknown keys.
    """
    p = Path(path)
    if not p.is_file():
        raise AdapterError(f"sweep configuration {str(p)!r} does not exist")
    if p.suffix == ".toml":
        try:
            config = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise AdapterError(f"{p} is not valid TOML: {exc}") from None
    elif p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise AdapterError(
                f"{p} is YAML, which needs pyyaml (pip install 'llm-adapter[report]'); "
                "or write the configuration as TOML"
            ) from None
        config = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise AdapterError(f"{p} must hold a mapping at the top level")
    else:
        raise AdapterError(f"{p}: unknown configuration type {p.suffix!r}; use .toml or .yaml")
    check_config(config, str(p))
    return config


def check_config(config: dict[str, Any], source: str = "the configuration") -> None:
    """Raise :class:`AdapterError` naming any unknown key of ``config``."""
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise AdapterError(
            f"{source}: unknown key(s) {sorted(unknown)}; valid top-level keys: {sorted(TOP_KEYS)}"
        )
    for section, keys in SECTION_KEYS.items():
        value = config.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise AdapterError(f"{source}: [{section}] must be a table")
        bad = set(value) - keys
        if bad:
            raise AdapterError(
                f"{source}: unknown key(s) {sorted(bad)} in [{section}]; valid: {sorted(keys)}"
            )
    paths = config.get("paths", {})
    if not isinstance(paths, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in paths.items()
    ):
        raise AdapterError(
            f"{source}: [paths] must be a table of names and local files, e.g. "
            '"HuggingFaceTB/SmolLM2-135M-Instruct" = "../shared/models/smollm2/model.gguf"; '
            f"got paths = {paths!r}"
        )
    points = config.get("points", [])
    if not isinstance(points, list) or not all(isinstance(t, dict) for t in points):
        raise AdapterError(
            f"{source}: points must be a list of tables ([[points]] with method = ...); "
            f"got points = {points!r}"
        )
    if "families" in config:
        fams = _as_list(config["families"])
        if not fams or not all(isinstance(f, str) and split_families(f) for f in fams):
            raise AdapterError(
                f"{source}: families = {config['families']!r} names no family; give family "
                f"sets such as ['attention.dense'] or ['all'] ({mention('families')} 'a,b;c')"
            )
    for section, limits in SECTION_NUMBERS.items():
        for key, low in limits.items():
            value = (config.get(section) or {}).get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AdapterError(
                    f"{source}: [{section}] {key} = {value!r} is not valid; give an integer "
                    f">= {low}"
                )
    for i, table in enumerate(points):
        bad = set(table) - set(POINT_KEYS) - {"label"}
        if bad:
            raise AdapterError(
                f"{source}: unknown key(s) {sorted(bad)} in points[{i}]; "
                f"valid: {sorted([*POINT_KEYS, 'label'])}"
            )


@dataclass(frozen=True)
class SweepPoint:
    """One compression point of a sweep.

    Attributes
    ----------
    method : str
        ``dense`` (uncompressed), ``svd``, ``svd-llm``, ``basis-sharing`` or ``bundle``.
    families : tuple of str
    rank_ratio : float or None
        d/D, or None under a parameter budget.
    params : dict
        The method's own parameters (``lam``, ``tying``, ``metric``, ``coupling``,
        ``group_size``), only those that matter for it.
    label : str
        A short name for tables and plots.
    param_ratio : float or None
        Fraction of the compressed families' parameters kept.
    model_ratio : float or None
        Whole-model compression ratio (parameters removed over all parameters).
    """

    method: str
    families: tuple[str, ...]
    rank_ratio: float | None
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    param_ratio: float | None = None
    model_ratio: float | None = None

    @property
    def budget(self) -> str:
        """The budget in words, e.g. ``d/D=0.25`` or ``model ratio 0.2``."""
        if self.model_ratio is not None:
            return f"model ratio {self.model_ratio:g}"
        if self.param_ratio is not None:
            return f"params kept {self.param_ratio:g}"
        return f"d/D={self.rank_ratio:g}"

    def describe(self) -> dict[str, Any]:
        """The point as a JSON-ready dict (``lam = inf`` written as the string ``"inf"``)."""
        out: dict[str, Any] = {
            "method": self.method,
            "families": list(self.families),
            "rank_ratio": self.rank_ratio,
        }
        for key in ("param_ratio", "model_ratio"):  # absent from rank-ratio points' keys
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({k: _jsonable(v) for k, v in self.params.items()})
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def expand_points(config: dict[str, Any]) -> list[SweepPoint]:
    """Every point of the configuration, in order: the baseline first, then each table's
    cartesian product, crossed with ``families`` and the budgets (``rank_ratios``,
    ``param_ratios``, ``model_ratios``).

    Parameters
    ----------
    config : dict
        See the module documentation.

    Returns
    -------
    list of SweepPoint
        Duplicates (the same method and relevant parameters) are kept once.
    """
    fam_sets = [split_families(f) for f in _as_list(config.get("families", [DEFAULT_FAMILIES]))]
    budgets = _budgets(config)
    tables: list[dict[str, Any]] = list(config.get("points", []))
    first = 0  # messages count the configuration's own points from 0
    if config.get("baseline", True):
        tables = [{"method": "dense"}, *tables]
        first = -1
    points: list[SweepPoint] = []
    seen: set[str] = set()
    for i, table in enumerate(tables, first):
        if "method" not in table:
            raise AdapterError(f"points[{i}] has no method; give one of {sorted(METHOD_NAMES)}")
        axes = {k: _as_list(v) for k, v in table.items() if k != "label"}
        names = list(axes)
        for combo in itertools.product(*(axes[n] for n in names)):
            values = dict(zip(names, combo, strict=True))
            method = str(values.pop("method"))
            if method not in METHOD_NAMES:
                raise AdapterError(
                    f"points[{i}]: unknown method {method!r}; valid: {sorted(METHOD_NAMES)}"
                )
            fsets = [split_families(values.pop("families"))] if "families" in values else fam_sets
            if method != "dense" and not all(fsets):
                raise AdapterError(
                    f"points[{i}]: families = {table.get('families')!r} names no family; "
                    "give e.g. 'attention.dense' or 'all'"
                )
            given = [(k, _ratio(values.pop(k), k, i)) for k in BUDGETS if k in values]
            if len(given) > 1:
                raise AdapterError(
                    f"points[{i}] gives {' and '.join(k for k, _ in given)}: give one budget"
                )
            rrs = given or budgets
            params = {k: values[k] for k in PARAMS if k in values}
            if "private" in values:
                entry = METHOD_TABLE.get(method)
                if entry is None or "private" not in entry.sweep_keys:
                    takers = [m.name for m in METHOD_TABLE.values() if "private" in m.sweep_keys]
                    raise AdapterError(
                        f"points[{i}]: private applies to {' or '.join(takers)} only; "
                        f"got method {method}"
                    )
                private = split_families(values["private"])
                if private:  # absent when empty, so other points keep their keys
                    params["private"] = list(private)
            label = str(table.get("label", ""))
            for fams, (kind, value) in itertools.product(
                fsets if method != "dense" else [()], rrs if method != "dense" else [("", 1.0)]
            ):
                point = SweepPoint(
                    method,
                    fams,
                    value if kind in ("rank_ratio", "") else None,
                    params,
                    label,
                    param_ratio=value if kind == "param_ratio" else None,
                    model_ratio=value if kind == "model_ratio" else None,
                )
                point = _checked(point, i)
                ident = json.dumps(point.describe(), sort_keys=True)
                if ident not in seen:
                    seen.add(ident)
                    points.append(point)
    return points


class PointSpelling(Spelling):
    """A sweep configuration's spelling of a point's settings: ``points[2].rank_ratio = 0.0``.

    Parameters
    ----------
    where : str
        The point table, e.g. ``"points[2]"``.
    """

    def __init__(self, where: str) -> None:
        self.where = where

    def name(self, key: str) -> str:
        """``points[2].rank_ratio``."""
        return f"{self.where}.{key}"

    def value(self, key: str, text: str, rep: str) -> str:
        """``points[2].rank_ratio = 0.0``."""
        return f"{self.name(key)} = {rep}"


def _ratio(value: Any, key: str, where: int | None = None) -> float:
    place = f"points[{where}].{key}" if where is not None else BUDGETS[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{place} = {value!r} is not a number; give a fraction in (0, 1)",
            key=key,
            value=value,
            reason="not a number",
        )
    if not 0.0 < float(value) < 1.0:
        raise ConfigurationError(
            f"{place} = {value!r} must be in (0, 1)",
            key=key,
            value=value,
            reason="must be in (0, 1)",
        )
    return float(value)


def _checked(point: SweepPoint, where: int) -> SweepPoint:
    """``point`` with its parameters checked and converted by the method table.

    Only the parameters the method takes stay (the optional ones only away from
    their defaults, so points written before they existed keep their keys); a
    bad value is an error naming ``points[where]`` and the key.
    """
    if point.method == "dense":
        return point
    params = {k: v for k, v in point.params.items() if k in PARAMS}
    try:
        config = CompressionConfig(
            method=point.method,
            rank_ratio=point.rank_ratio or DEFAULT_RANK_RATIO,
            param_ratio=point.param_ratio,
            families=point.families,
            **params,
        )
    except AdapterError as exc:
        defaults = {k: PARAMS[k].default for k in METHOD_TABLE[point.method].params}
        try:
            label = point_label(replace(point, params={**defaults, **point.params}))
        except (KeyError, TypeError, ValueError):
            label = point.method
        spelling = PointSpelling(f"points[{where}]")
        raise type(exc)(
            f"points[{where}] ({label}): {exc.spelled(spelling)}",
            key=exc.key,
            value=exc.value,
            reason=exc.reason,
        ) from None
    kept = {
        k: getattr(config, k)
        for k in METHOD_TABLE[point.method].params
        if not (PARAMS[k].optional and getattr(config, k) == PARAMS[k].default)
    }
    if "private" in point.params:
        kept["private"] = point.params["private"]
    return replace(point, params=kept)


def _budgets(config: dict[str, Any]) -> list[tuple[str, float]]:
    """The top-level budgets as ``(point key, value)`` pairs, rank ratios first."""
    out = [
        (key, _ratio(v, key)) for key, top in BUDGETS.items() for v in _as_list(config.get(top, []))
    ]
    return out or [("rank_ratio", DEFAULT_RANK_RATIO)]


#: the settings that name a model or data: (section, key); section None is the top level
INPUTS: tuple[tuple[str | None, str], ...] = (
    (None, "model"),
    ("calibration", "text"),
    ("calibration", "dataset"),
    ("heldout", "text"),
    ("heldout", "dataset"),
    ("evaluation", "wikitext"),
    ("evaluation", "hellaswag"),
)
#: the hub names ``[evaluation] hellaswag`` takes (the validation split of Rowan/hellaswag)
HELLASWAG_HUB_NAMES = ("hub", "Rowan/hellaswag")


def is_hub_data(key: str, value: Any) -> bool:
    """Whether the data setting ``key`` (``dataset``, ``wikitext``, ``hellaswag``, ``text``)
    names a hub dataset rather than a local file.

    ``dataset`` always does; ``wikitext`` when it is ``"hub"`` or ``NAME:CONFIG[:SPLIT]``
    (and no such file exists); ``hellaswag`` when it is ``"hub"`` or ``"Rowan/hellaswag"``.
    """
    if value is None:
        return False
    value = str(value)
    if key == "dataset":
        return True
    if key == "wikitext":
        return value == "hub" or (":" in value and not Path(value).exists())
    if key == "hellaswag":
        return value in HELLASWAG_HUB_NAMES and not Path(value).exists()
    return False


def _place(section: str | None, key: str) -> str:
    return key if section is None else f"{section}.{key}"


def _hub_revision(hub_id: str) -> str | None:
    """The commit the local hub cache holds for ``hub_id`` (its ``refs/main``), if any."""
    from ..hub import hub_cache

    ref = hub_cache() / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _check_hub_fallback(section: str | None, key: str, name: str, local: str) -> None:
    """Raise when the hub cannot stand in for the missing ``[paths]`` file of ``name``."""
    from ..hub import check_hub_dataset, check_hub_model, hub_cache, why_offline

    why = why_offline()
    if why is None:
        return
    try:
        if section is None:
            check_hub_model(name)
        elif key == "hellaswag":
            check_hub_dataset("Rowan/hellaswag", "[paths]")
        else:
            check_hub_dataset("wikitext" if name == "hub" else name.split(":")[0], "[paths]")
    except AdapterError:
        raise AdapterError(
            f"{_place(section, key)} = {name!r}: its [paths] file {local!r} does not exist, "
            f"and the hub cannot be used ({why}; not in the local hub cache {hub_cache()}); "
            "put the file at that path or correct [paths], or allow the hub"
        ) from None


def resolve_inputs(
    config: dict[str, Any], log: Any = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``config`` with its ``[paths]`` applied, and where each input comes from.

    Every model and data name (``model``, ``[calibration]``/``[heldout]``
    ``text``/``dataset``, ``[evaluation]`` ``wikitext``/``hellaswag``) that
    ``[paths]`` maps to an existing local file is replaced by that file (a
    ``dataset`` by ``text``), so the points' keys are those of a configuration
    that named the file.  A name whose ``[paths]`` file is missing is kept, to
    be read from the hub, with one line on ``log`` saying so; when the hub
    cannot be used either (offline and not in the local cache) that is an
    :class:`AdapterError` naming the value and the fixes.

    Parameters
    ----------
    config : dict
        A sweep configuration (see the module documentation).
    log : file-like, optional
        Where to print the line of each fallback (default stderr).

    Returns
    -------
    config : dict
        A copy, without ``[paths]``.
    sources : dict
        ``{place: {"name", "source", "path" or "revision"}}`` for each input
        given, ``place`` being ``model`` or ``section.key`` of the resolved
        configuration; ``source`` is ``"local"`` or ``"hub"``.
    """
    from ..hub import is_local

    log = log or sys.stderr
    out = copy.deepcopy(config)
    paths = out.pop("paths", None) or {}
    sources: dict[str, dict[str, Any]] = {}
    for section, key in INPUTS:
        node = out if section is None else out.get(section)
        if not isinstance(node, dict) or node.get(key) is None:
            continue
        name = str(node[key])
        local = paths.get(name)
        if key == "dataset" and "text" in node:
            local = None  # both given: the run names the conflict
        if local is not None and Path(local).exists():
            del node[key]
            target = "text" if key == "dataset" else key
            node[target] = local
            sources[_place(section, target)] = {"name": name, "source": "local", "path": local}
            continue
        if local is not None:
            _check_hub_fallback(section, key, name, local)
            print(
                f"sweep: [paths] {name!r} = {local!r} does not exist; "
                f"{_place(section, key)} {name!r} is read from the hub",
                file=log,
            )
        if section is None:
            hub = not is_local(name)
        else:
            hub = is_hub_data(key, name)
        entry: dict[str, Any] = {"name": name, "source": "hub" if hub else "local"}
        if not hub:
            entry["path"] = name
        elif section is None and (revision := _hub_revision(name)) is not None:
            entry["revision"] = revision
        sources[_place(section, key)] = entry
    return out, sources


def _keyed_text_section(section: dict[str, Any], name: str) -> dict[str, Any]:
    """A ``[calibration]`` or ``[heldout]`` section as its points' keys and rows record it.

    ``detokenize`` is resolved (``"auto"``: whether the local text file is
    WikiText's tokenized variant) and kept, as ``true``, only when the text is
    detokenized; ``false`` (the default) leaves the section as it was before the
    setting existed, so the points of configurations that use their text as it
    is keep their keys.  ``windows`` likewise stays only as ``"disjoint"``
    (``"random"``, the default, is left out).
    """
    from ..data import WINDOW_MODES, is_tokenized_wikitext, load_text

    out = dict(section)
    rule = out.pop("windows", "random")
    if rule not in WINDOW_MODES:
        raise AdapterError(f'[{name}] windows = {rule!r} is not valid; give "random" or "disjoint"')
    if rule != "random":
        out["windows"] = rule
    if "detokenize" not in out:
        return out
    value = out.pop("detokenize")
    if not isinstance(value, bool) and value != "auto":
        raise AdapterError(
            f'[{name}] detokenize = {value!r} is not valid; give true, false or "auto"'
        )
    if value == "auto":
        if not out.get("text"):
            raise AdapterError(
                f'[{name}] detokenize = "auto" inspects a local text file; with a hub dataset '
                "write detokenize = true or false"
            )
        value = is_tokenized_wikitext(load_text(str(out["text"]))[0])
    if value:
        out["detokenize"] = True
    return out


def _keyed_evaluation(section: dict[str, Any]) -> dict[str, Any]:
    """The ``[evaluation]`` section as its points' keys and rows record it.

    ``windows = "spread"`` stays, with its ``window_seed`` (default 0);
    ``windows = "first"`` (the default) and the seed, which it does not use, are
    left out, so configurations written before the setting existed keep their keys.
    """
    out = dict(section)
    rule = out.pop("windows", "first")
    seed = out.pop("window_seed", 0)
    if rule not in ("first", "spread"):
        raise AdapterError(
            f'[evaluation] windows = {rule!r} is not valid; give "first" or "spread"'
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AdapterError(
            f"[evaluation] window_seed = {seed!r} is not valid; give an integer >= 0"
        )
    if rule == "spread":
        if out.get("stride") is not None:
            raise AdapterError(
                '[evaluation] windows = "spread" chooses among non-overlapping windows; '
                "drop stride or the windows setting"
            )
        out["windows"] = "spread"
        out["window_seed"] = seed
    return out


def sweep_protocol(config: dict[str, Any]) -> dict[str, Any]:
    """The protocol that keys a sweep's points, as :func:`point_key` and the rows record it.

    Parameters
    ----------
    config : dict
        The configuration as the run uses it (after :func:`resolve_inputs`).

    Returns
    -------
    dict
        ``model``, ``calibration``, ``heldout`` and ``evaluation`` (each section
        keyed: a default that changes nothing is left out).
    """
    return {
        "model": str(config["model"]),
        "calibration": _keyed_text_section(dict(config.get("calibration") or {}), "calibration"),
        "heldout": _keyed_text_section(dict(config.get("heldout") or {}), "heldout"),
        "evaluation": _keyed_evaluation(dict(config.get("evaluation") or {})),
    }


def point_key(point: SweepPoint, protocol: dict[str, Any]) -> str:
    """Hash of everything that determines a point's row (16 hex digits)."""
    blob = json.dumps({"point": point.describe(), "protocol": _jsonable(protocol)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the protocol entries a point's compressed model depends on; ``heldout`` and
#: ``evaluation`` only measure it (see :func:`compression_key`)
COMPRESSION_PROTOCOL = ("model", "calibration")


def compression_key(point: SweepPoint, protocol: dict[str, Any]) -> str:
    """Hash of everything that determines a point's compressed model (16 hex digits).

    The point as its key records it (:meth:`SweepPoint.describe`: method,
    parameters, families, budget) with the protocol's ``model`` (the model as
    read, after ``[paths]``) and ``calibration`` (keyed as in
    :func:`point_key`); not ``heldout`` nor ``evaluation``, which measure the
    compressed model without changing it.  It names the point's directory under
    ``checkpoints``, so sweeps that evaluate the same points on other text share
    their checkpoints; the point's row key (:func:`point_key`) is unchanged.

    Parameters
    ----------
    point : SweepPoint
    protocol : dict
        :func:`sweep_protocol` of the configuration (only ``model`` and
        ``calibration`` are read).

    Returns
    -------
    str
    """
    blob = json.dumps(
        {
            "compressed": {
                "point": point.describe(),
                **{k: _jsonable(protocol[k]) for k in COMPRESSION_PROTOCOL},
            }
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def saved_checkpoint(root: str | Path, point: SweepPoint, protocol: dict[str, Any]) -> Path | None:
    """The saved checkpoint a sweep reuses for ``point``, if any.

    ``root / compression_key(point, protocol)``; when that holds none, the
    directory that sweeps saved the point to before compression keys existed,
    ``root / point_key(point, protocol)``.  A directory holds a checkpoint when
    it has a ``compression.json``; its content is checked by the sweep before
    it runs, not here.

    Parameters
    ----------
    root : str or Path
        The sweep's ``checkpoints`` directory.
    point : SweepPoint
    protocol : dict
        :func:`sweep_protocol` of the configuration.

    Returns
    -------
    Path or None
        None when neither directory holds a checkpoint, and for a dense point.
    """
    if point.method == "dense":
        return None
    root = Path(root)
    for ck in (root / compression_key(point, protocol), root / point_key(point, protocol)):
        if (ck / "compression.json").is_file():
            return ck
    return None


def point_label(point: SweepPoint) -> str:
    """A short readable name, e.g. ``bundle lam=0 k=6 weight``."""
    if point.label:
        return point.label
    entry = METHOD_TABLE.get(point.method)
    return entry.describe_point(point.params) if entry is not None else point.method


# --------------------------------------------------------------------------- results file


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a results JSONL file, each key once.

    Parameters
    ----------
    path : str or Path
    repair : bool
        Drop a last line cut off by a kill (no trailing newline, not JSON) from
        the file itself; without it such a line is skipped.

    Returns
    -------
    list of dict
        In file order; a row whose ``key`` an earlier row has (two sweeps
        that wrote the same file) is left out, so statistics count it once.
    """
    p = Path(path)
    if not p.is_file():
        return []
    data = p.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:  # not JSON, or not UTF-8 (a binary file)
            raise AdapterError(
                f"{p} line {i} is not JSON ({' '.join(str(exc).split())[:120]}); it is not a "
                "results file of llm-adapter sweep, or that line is damaged: fix or remove it"
            ) from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))
        except ValueError:
            if repair:
                with open(p, "r+b") as fh:
                    fh.truncate(len(data) - len(tail))
                print(f"sweep: dropped an incomplete last line of {p}", file=sys.stderr)
    seen: set[Any] = set()
    unique = []
    for row in rows:
        key = row.get("key") if isinstance(row, dict) else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        unique.append(row)
    return unique


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync."""
    line = (json.dumps(_jsonable(row), allow_nan=False, sort_keys=False) + "\n").encode()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- running


def _heldout_fractions(
    dense: dict[str, np.ndarray], model: Any, families: Iterable[str], C: dict[str, np.ndarray]
) -> dict[str, list[float]]:
    """Per-layer ``tr(E C E^T) / tr(W C W^T)``, ``E = W - W'``, on held-out covariances."""
    from grassbundle import reconstruction_errors

    from ..lowrank import effective_weights

    out: dict[str, list[float]] = {}
    for f in families:
        errors = reconstruction_errors(dense[f], effective_weights(model, f), C[f])
        assert errors.activation_fraction is not None
        out[f] = [float(x) for x in errors.activation_fraction]
    return out


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(np.mean(vals)) if vals else None


def run_sweep(
    config: dict[str, Any],
    *,
    only_methods: Iterable[str] | None = None,
    dry_run: bool = False,
    progress: bool = True,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Run every point of ``config`` not yet in its results file; return the new rows.

    Every point and setting is checked before anything runs (``dry_run``
    reports the same errors). While it runs, the sweep holds an exclusive
    lock on the results file: a second sweep on the same file stops at once
    with an error instead of computing and writing every row again.

    Parameters
    ----------
    config : dict
        See the module documentation (``model`` and ``out`` are required).
    only_methods : iterable of str, optional
        Run only these methods.
    dry_run : bool
        List the points and whether each is done; run nothing.
    progress : bool
        Progress bars.
    log : file-like, optional
        Where to print one line per point (default stderr).

    Returns
    -------
    list of dict
        The rows appended by this call.
    """
    locks: list[tuple[int, Path | None]] = []
    try:
        return _run_sweep(
            config, only_methods=only_methods, dry_run=dry_run, progress=progress, log=log,
            locks=locks,
        )  # fmt: skip
    finally:
        for fd, created in locks:
            if created is not None and os.fstat(fd).st_size == 0:
                created.unlink(missing_ok=True)  # created for the lock, nothing written
            os.close(fd)  # releases the lock


def _lock_results(out: Path) -> tuple[int, Path | None]:
    """Open ``out`` (created if needed) and take its exclusive lock.

    Returns the descriptor, and ``out`` when this call created the file (else None).
    """
    import fcntl

    created = None if out.exists() else out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise AdapterError(
            f"results file {str(out)!r} cannot be opened for writing ({exc.strerror}); "
            f"give a writable file path ({mention('out')})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AdapterError(
            f"another sweep is writing {out} (it holds the file's lock); wait for it to "
            f"finish, or give another results file ({mention('out')})"
        ) from None
    return fd, created


def _check_inputs(config: dict[str, Any]) -> None:
    """Device, dtype and calibration texts, checked as the real run will use them."""
    from ..evaluate import read_wikitext
    from ..files import check_text_file, check_writable_dir
    from ..models import resolve_device, resolve_dtype

    resolve_device(str(config.get("device", "auto")))
    dtype = config.get("dtype", "auto")
    resolve_dtype(None if dtype == "auto" else str(dtype))
    for section in ("calibration", "heldout"):
        text = (config.get(section) or {}).get("text")
        if text is not None:
            check_text_file(str(text), f"[{section}] text")
    for key in ("cache_dir", "checkpoints"):
        if config.get(key):
            check_writable_dir(str(config[key]), key)
    evaluation = config.get("evaluation") or {}
    if evaluation.get("wikitext") and not is_hub_data("wikitext", evaluation["wikitext"]):
        read_wikitext(str(evaluation["wikitext"]))  # a damaged file fails here, not after


def check_results_file(path: str | Path) -> None:
    """Raise unless ``path`` is absent, empty or a results file a sweep wrote.

    A sweep appends to its results file and drops a last line cut off by a
    kill; it does so only to a file whose every line is a row (a JSON object
    with a ``key``), the last one possibly cut off after its ``{"key": ``.

    Parameters
    ----------
    path : str or Path
    """
    from ..files import refuse

    p = Path(path)
    fix = f"give another {mention('out')} file, or move this one away"
    if p.is_symlink() or (p.exists() and not p.is_file()):
        if p.is_dir():
            return  # opening it fails with its own message
        raise refuse(p, "is not a regular file", fix)
    if not p.exists():
        return
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AdapterError(
            f"results file {str(p)!r} cannot be read ({exc.strerror}); give a readable "
            f"{mention('out')}"
        ) from None
    lines = data.split(b"\n")
    tail = lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:
            row = None
        if not isinstance(row, dict) or "key" not in row:
            raise refuse(p, f"is not a sweep results file (line {i} is not a JSON row)", fix)
    head = b'{"key": '
    if tail.strip() and not (tail.startswith(head) or head.startswith(tail)):
        raise refuse(p, f"is not a sweep results file (line {len(lines) + 1} is not a row)", fix)


def _check_checkpoints(
    config: dict[str, Any], todo: list[tuple[SweepPoint, str]], protocol: dict[str, Any]
) -> None:
    """Every saved point checkpoint the run would reuse or replace, checked before it starts:
    a directory that is not llm-adapter's, or a checkpoint whose content changed, is an error.

    Each point reuses :func:`saved_checkpoint` (its compression key's directory, else
    the one its point key named before compression keys existed) or writes its
    compression key's directory; points that share a compression key are checked once.
    """
    from ..manifest import check_output_dir, verify

    if not config.get("checkpoints"):
        return
    root = Path(config["checkpoints"])
    seen: set[str] = set()
    for point, _ in todo:
        if point.method == "dense":
            continue
        ckey = compression_key(point, protocol)
        if ckey in seen:
            continue
        seen.add(ckey)
        ck = saved_checkpoint(root, point, protocol)
        if ck is None:
            if (root / ckey).exists():  # replaced when the point is saved
                check_output_dir(root / ckey, overwrite=True, name="the checkpoint of a point")
            continue
        try:
            verify(ck)
        except AdapterError as exc:
            raise AdapterError(
                f"the saved checkpoint of point {point_label(point)} cannot be reused: "
                f"{exc.template}; or remove {str(ck)!r} to compute the point again"
            ) from None


@dataclass
class _Shared:
    """What every point of a run shares: the dense model, its statistics, the data."""

    config: dict[str, Any]
    base: Any
    tokenizer: Any
    context: int
    stats: Any
    held_C: dict[str, np.ndarray] | None
    dense_W: dict[str, np.ndarray]
    dense_params: int
    kept_ratio: dict[str, float | None]
    wiki_ids: Any
    hs_items: Any
    checkpoints: Path | None
    protocol: dict[str, Any]
    evaluation: dict[str, Any]
    progress: bool
    #: the loss-aware allocations' components and gradient scores per family, computed
    #: on the dense model when a point first needs them and shared by every later point
    #: (and the seconds they took, reported in the row of the point that computed them)
    scoring: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"bases": {}, "grad": {}, "seconds": {}}
    )
    #: the code that runs the points: package versions and the source revision, read
    #: once when the run starts, so that a checkout moved while the run goes on (which
    #: does not change the modules it has loaded) does not relabel its rows
    code: dict[str, Any] = field(default_factory=dict)


def _shared(
    config: dict[str, Any],
    todo: list[tuple[SweepPoint, str]],
    protocol: dict[str, Any],
    progress: bool,
) -> _Shared:
    """Load the model, calibrate, read the evaluation data: once for every point to run."""
    from ..calibrate import calibrate
    from ..checkpoint import load, model_context
    from ..evaluate import read_hellaswag, tokenize_for_eval
    from ..hub import check_hub_dataset, check_hub_model
    from ..lowrank import count_unique_parameters
    from ..models import family_weights, resolve_families
    from ..safetensors_file import check_weight_files

    calib = dict(config.get("calibration") or {})
    held = dict(config.get("heldout") or {})
    evaluation = dict(config.get("evaluation") or {})
    device = config.get("device", "auto")
    check_hub_model(str(config["model"]))
    for section, key, local in (("calibration", "dataset", f"{mention('calib_text')} PATH"),
                               ("heldout", "dataset", "a [heldout] text file")):  # fmt: skip
        if (config.get(section) or {}).get(key):
            check_hub_dataset(str(config[section][key]).split(":")[0], local)
    for key, name in (("wikitext", "wikitext"), ("hellaswag", "Rowan/hellaswag")):
        value = evaluation.get(key)
        if is_hub_data(key, value):
            hub_name = name if value in ("hub", name) else str(value).split(":")[0]
            check_hub_dataset(hub_name, f"{mention(key)} PATH")
    check_weight_files(str(config["model"]))
    base, tokenizer = load(config["model"], device=device)
    base.eval()
    context = model_context(str(config["model"]), base.config) or 2048
    needed = sorted({f for p, _ in todo for f in p.families})
    families_all = list(resolve_families(base, needed)) if needed else []
    seq = int(calib.get("seq_len") or context)  # default: the model's training context
    stats = None
    if families_all:
        if ("text" in calib) == ("dataset" in calib):
            raise AdapterError(
                "[calibration] needs exactly one of text (a local file) or dataset "
                "(hub NAME:CONFIG:SPLIT, e.g. wikitext:wikitext-2-raw-v1:train)"
            )
        with _spelled_as("calibration"):
            stats = calibrate(
                base, tokenizer, families_all,
                text_path=calib.get("text"), dataset=calib.get("dataset"),
                samples=int(calib.get("samples", 256)), seq_len=seq,
                seed=int(calib.get("seed", 0)), cache_dir=config.get("cache_dir", _default_cache()),
                batch_size=int(calib.get("batch_size", 8)), progress=progress,
                detokenize=bool(protocol["calibration"].get("detokenize")),
                windows=str(protocol["calibration"].get("windows", "random")),
            )  # fmt: skip
    held_C: dict[str, np.ndarray] | None = None
    if families_all and (held.get("text") or held.get("dataset")):
        with _spelled_as("heldout"):
            hstats = calibrate(
                base, tokenizer, families_all, text_path=held.get("text"),
                dataset=held.get("dataset"), samples=int(held.get("samples", 64)),
                seq_len=int(held.get("seq_len", seq)), seed=int(held.get("seed", 1)),
                cache_dir=config.get("cache_dir", _default_cache()),
                batch_size=int(held.get("batch_size", 8)), progress=progress,
                detokenize=bool(protocol["heldout"].get("detokenize")),
                windows=str(protocol["heldout"].get("windows", "random")),
            )  # fmt: skip
        held_C = {f: hstats.covariance(f) for f in families_all}
    dense_W = {f: family_weights(base, f) for f in families_all}
    dense_params = count_unique_parameters(base)
    kept_ratio = {  # the families' kept fraction of every point, checked before any runs
        k: _param_ratio(p, dense_params, {f: dense_W[f].size for f in families_all}, base)
        for p, k in todo
        if p.method != "dense"
    }
    wiki_ids = None
    if evaluation.get("wikitext"):  # "hub": wikitext-2-raw-v1 test through `datasets`
        wiki_ids = tokenize_for_eval(tokenizer, _eval_wikitext(str(evaluation["wikitext"])))
    hs_items = None
    if evaluation.get("hellaswag"):  # "hub": Rowan/hellaswag validation through `datasets`
        hub = is_hub_data("hellaswag", evaluation["hellaswag"])
        source = None if hub else evaluation["hellaswag"]
        hs_items = read_hellaswag(source, limit=evaluation.get("limit"))
    checkpoints = Path(config["checkpoints"]) if config.get("checkpoints") else None

    return _Shared(
        config, base, tokenizer, context, stats, held_C, dense_W, dense_params, kept_ratio,
        wiki_ids, hs_items, checkpoints, protocol, evaluation, progress,
        code={**package_versions(), "revision": source_revision()},
    )  # fmt: skip


@contextlib.contextmanager
def _spelled_as(section: str) -> Iterator[None]:
    """The too-few-windows error of ``windows = "disjoint"`` raised inside, spelled as the
    keys of ``[section]``.

    :func:`llm_adapter.data.check_disjoint` names ``windows``, ``samples``,
    ``seq_len`` and ``seed``, which are the section's own keys: the message
    then reads ``calibration.windows = 'disjoint'``.
    """
    from ..errors import DataError

    try:
        yield
    except DataError as exc:
        if exc.key != "windows":
            raise
        raise DataError(
            exc.spelled(PointSpelling(section)), key=exc.key, value=exc.value, reason=exc.reason
        ) from None


def _eval_wikitext(value: str) -> str:
    """The perplexity text: a local file, ``"hub"`` (wikitext-2-raw-v1 test) or a hub
    dataset ``NAME:CONFIG:SPLIT`` (its rows joined with blank lines, as ``"hub"``)."""
    from ..data import load_text
    from ..evaluate import read_wikitext

    if value == "hub":
        return read_wikitext(None)
    if is_hub_data("wikitext", value):
        return load_text(dataset=value)[0]
    return read_wikitext(value)


def run_point(s: _Shared, point: SweepPoint, key: str) -> dict[str, Any]:
    """Compress (or reload), save and evaluate one point; its results row.

    The compression is :func:`llm_adapter.jobs.compress_loaded` on a copy of
    the dense model the run loaded and calibrated once (:func:`run_sweep`).
    With ``checkpoints``, the model of :func:`saved_checkpoint` is reloaded
    instead, or the compressed model is saved to
    ``checkpoints / compression_key(point, s.protocol)``; the row records
    ``reused_checkpoint`` and ``checkpoint_key`` (None for the dense model).
    """
    from ..checkpoint import load, save
    from ..evaluate import HellaSwagTask, PerplexityTask, evaluate_model, prepare_for_eval
    from ..lowrank import count_unique_parameters
    from ..manifest import read_manifest

    config, device, evaluation = s.config, s.config.get("device", "auto"), s.evaluation
    base, tokenizer, stats, context = s.base, s.tokenizer, s.stats, s.context
    checkpoints, held_C, dense_W, kept_ratio = s.checkpoints, s.held_C, s.dense_W, s.kept_ratio
    wiki_ids, hs_items, dense_params, protocol = s.wiki_ids, s.hs_items, s.dense_params, s.protocol
    progress = s.progress
    out = Path(config["out"])
    t_point = time.perf_counter()
    report: CompressionReport | None = None
    reused = False
    ckey = compression_key(point, protocol) if point.method != "dense" else None
    ck = checkpoints / ckey if checkpoints is not None and ckey is not None else None
    saved = saved_checkpoint(checkpoints, point, protocol) if checkpoints is not None else None
    if point.method == "dense":
        model = copy.deepcopy(base)
    elif saved is not None:  # this sweep's, an earlier one's, or one saved by point key
        model, _ = load(saved, device=device)
        report = CompressionReport.from_dict(read_manifest(saved))
        reused = True
    else:
        model = copy.deepcopy(base)
        report = _compress_point(model, point, kept_ratio[key], stats, s)
        for name, seconds in s.scoring["seconds"].items():  # computed for this point
            report.timings[f"scoring_{name}"] = seconds
        s.scoring["seconds"] = {}
        if ck is not None and not (ck / "compression.json").is_file():  # else saved meanwhile
            save(model, tokenizer, report, ck, overwrite=True)
    model = prepare_for_eval(model, device, config.get("dtype", "auto"))
    tasks: list[Any] = []
    if wiki_ids is not None:
        tasks.append(PerplexityTask(
            input_ids=wiki_ids, seq_len=int(evaluation.get("seq_len") or context),
            stride=evaluation.get("stride"), max_windows=evaluation.get("max_windows"),
            windows=protocol["evaluation"].get("windows", "first"),
            window_seed=int(protocol["evaluation"].get("window_seed", 0)),
        ))  # fmt: skip
    if hs_items is not None:
        tasks.append(HellaSwagTask(items=hs_items, limit=evaluation.get("limit")))
    metrics = evaluate_model(
        model, tokenizer, tasks, batch_size=int(evaluation.get("batch_size", 8)),
        progress=progress, per_item=True,
    )  # fmt: skip
    per_layer: dict[str, dict[str, Any]] = {}
    frob: list[float] = []
    act: list[float] = []
    act_held: list[float] = []
    kept = total = 0
    ranks: dict[str, int] = {}
    timings = {"calibration": stats.seconds if stats is not None else 0.0}
    if report is not None:
        fams = list(report.families)
        heldout = _heldout_fractions(dense_W, model, fams, held_C) if held_C else {}
        for f, fr in report.families.items():
            per_layer[f] = {
                "frobenius_fraction": fr.frobenius_fraction,
                "activation_fraction": fr.activation_fraction,
                "activation_fraction_heldout": heldout.get(f),
            }
            if fr.ranks is not None:  # allocated: the ranks, and which layers stayed dense
                per_layer[f]["ranks"] = fr.ranks
            if fr.dense is not None:
                per_layer[f]["dense"] = fr.dense
            if fr.refit_kept is not None:  # a refit: per layer, its gate and its ridge
                per_layer[f]["refit_kept"] = list(fr.refit_kept)
                per_layer[f]["refit_ridge"] = list(fr.refit_ridge or [])
            frob += fr.frobenius_fraction
            act += fr.activation_fraction or []
            act_held += heldout.get(f, [])
            kept += fr.params_kept
            total += fr.params_dense
            ranks[f] = fr.rank
        timings.update(
            factorisation=float(report.timings.get("factorisation", 0.0)),
            write_back=float(report.timings.get("write_back", 0.0)),
            **{k: float(v) for k, v in report.timings.items() if k.startswith("scoring_")},
        )
    timings.update(
        perplexity=float(metrics.get("ppl_seconds", 0.0)),
        hellaswag=float(metrics.get("hellaswag_seconds", 0.0)),
    )
    timings["point"] = time.perf_counter() - t_point
    row: dict[str, Any] = {
        "key": key,
        "sweep": config.get("name", out.stem),
        "label": point_label(point),
        "model": str(config["model"]),
        **point.describe(),
        "rank": ranks,
        "frobenius_fraction": _mean(frob),
        "activation_fraction": _mean(act),
        "activation_fraction_heldout": _mean(act_held),
        "params_kept": kept,
        "params_dense": total,
        "param_ratio": kept / total if total else 1.0,
        "budget": point.budget if point.method != "dense" else "dense",
        "target_param_ratio": kept_ratio.get(key),
        "model_params": count_unique_parameters(model),
        "model_params_dense": dense_params,
        "model_ratio": 1.0 - count_unique_parameters(model) / dense_params,
        **metrics,
        "per_layer": per_layer,
        "timings": timings,
        "reused_checkpoint": reused,
        "checkpoint_key": ckey,  # not in the key: rows of one compressed model share it
        "protocol": protocol,
        "calibration": stats.protocol if stats is not None else None,
        "code": s.code,  # not in the key
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    del model
    return row


def _run_sweep(
    config: dict[str, Any],
    *,
    only_methods: Iterable[str] | None = None,
    dry_run: bool = False,
    progress: bool = True,
    log: Any = None,
    locks: list[tuple[int, Path | None]],
) -> list[dict[str, Any]]:
    """The body of :func:`run_sweep`; the results file's lock descriptor goes to ``locks``."""
    from ..files import crash_point

    log = log or sys.stderr
    check_config(config)
    for key in ("model", "out"):
        if not config.get(key):
            raise ConfigurationError(
                f"the sweep needs '{key}' (in the configuration or as {mention(key)})",
                key=key,
                value=config.get(key),
                reason="missing",
            )
    config, sources = resolve_inputs(config, log)
    out = Path(config["out"])
    calib = dict(config.get("calibration") or {})
    for section, key in (("calibration", "text"), ("heldout", "text"), ("evaluation", "wikitext"),
                         ("evaluation", "hellaswag")):  # fmt: skip
        value = (config.get(section) or {}).get(key)
        if value is not None and not is_hub_data(key, value) and not Path(value).is_file():
            raise AdapterError(f"[{section}] {key} = {value!r} is not a file")
    _check_inputs(config)
    points = expand_points(config)
    if only_methods is not None:
        keep = set(only_methods)
        unknown = sorted(keep - set(METHOD_NAMES))
        if unknown:
            raise AdapterError(
                f"{mention('only', ','.join(unknown))}: unknown method(s); valid: "
                f"{', '.join(METHOD_NAMES)}"
            )
        points = [p for p in points if p.method in keep]
        if not points:
            raise AdapterError(
                f"{mention('only', ','.join(sorted(keep)))}: no point of the sweep has that "
                f"method; give a method of its [[points]] (or {mention('methods')})"
            )
    protocol = sweep_protocol(config)
    keys = [point_key(p, protocol) for p in points]
    compressing = any(p.method != "dense" for p in points)
    if not dry_run and compressing and ("text" in calib) == ("dataset" in calib):
        raise AdapterError(
            "[calibration] needs exactly one of text (a local file) or dataset "
            "(hub NAME:CONFIG:SPLIT, e.g. wikitext:wikitext-2-raw-v1:train)"
        )
    check_results_file(out)
    if not dry_run:
        locks.append(_lock_results(out))
    done = {r.get("key") for r in read_results(out, repair=not dry_run)}
    todo = [(p, k) for p, k in zip(points, keys, strict=True) if k not in done]
    _check_checkpoints(config, todo, protocol)
    print(
        f"sweep {config.get('name', out.stem)}: {len(points)} points, {len(points) - len(todo)} "
        f"done in {out}, {len(todo)} to run",
        file=log,
    )
    if dry_run:
        root = config.get("checkpoints")
        for p, k in zip(points, keys, strict=True):
            saved = saved_checkpoint(root, p, protocol) if root and k not in done else None
            reuse = f" (reuses the checkpoint {saved})" if saved is not None else ""
            print(f"  [{'done' if k in done else 'todo'}] {k} {point_label(p)} "
                  f"{','.join(p.families)} {p.budget}{reuse}", file=log)  # fmt: skip
        return []
    if not todo:
        return []

    shared = _shared(config, todo, protocol, progress)
    rows = []
    for i, (point, key) in enumerate(todo, 1):
        row = run_point(shared, point, key)
        row.update(model_source=sources["model"]["source"], sources=sources)  # not in the key
        append_row(out, row)
        crash_point("sweep-row")
        rows.append(row)
        shown = {k: row.get(k) for k in ("frobenius_fraction", "ppl", "hellaswag_acc")}
        print(
            f"[{i}/{len(todo)}] {point_label(point)} {','.join(point.families)}: "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
            )
            + f" ({row['timings']['point']:.0f}s)",
            file=log,
            flush=True,
        )
    return rows


def _loss_aware_inputs(
    s: _Shared, families: tuple[str, ...], allocate: str, probe_windows: int = 2
) -> dict[str, Any]:
    """The components (and gradient scores) of ``families``, computed once per sweep run."""
    from ..methods import GRADIENT_ALLOCATIONS, LOSS_AWARE
    from ..scoring import ComponentBases, GradientScores, component_bases, gradient_scores

    if allocate not in LOSS_AWARE:
        return {}
    have = s.scoring["bases"]
    todo = [f for f in families if f not in have]
    if todo:
        got = component_bases(s.base, todo, s.stats)
        s.scoring["seconds"]["bases"] = s.scoring["seconds"].get("bases", 0.0) + got.seconds
        for f in todo:
            have[f] = (got.energies[f], got.bases[f])
    bases = ComponentBases({f: have[f][0] for f in families}, {f: have[f][1] for f in families})
    out: dict[str, Any] = {"bases": bases}
    if allocate == "sensitivity":
        from ..scoring import sensitivity_scores

        got_p = sensitivity_scores(
            s.base, families, s.stats, bases, s.stats.windows[:probe_windows],
            cache_dir=s.config.get("cache_dir", _default_cache()), progress=s.progress,
        )  # fmt: skip
        if got_p.seconds:
            seconds = s.scoring["seconds"]
            seconds["sensitivity"] = seconds.get("sensitivity", 0.0) + got_p.seconds
        out["sensitivity"] = got_p
    if allocate in GRADIENT_ALLOCATIONS:
        grad = s.scoring["grad"]
        todo = [f for f in families if f not in grad]
        if todo:
            got_s = gradient_scores(
                s.base, todo, s.stats, ComponentBases(
                    {f: have[f][0] for f in todo}, {f: have[f][1] for f in todo}),
                cache_dir=s.config.get("cache_dir", _default_cache()), progress=s.progress,
            )  # fmt: skip
            seconds = s.scoring["seconds"]
            seconds["gradient"] = seconds.get("gradient", 0.0) + got_s.seconds
            for f in todo:
                grad[f] = (got_s.first[f], got_s.second[f], got_s)
        first = {f: grad[f][0] for f in families}
        second = {f: grad[f][1] for f in families}
        any_ = grad[families[0]][2]
        out["scores"] = GradientScores(
            first, second, any_.windows, any_.tokens, protocol=any_.protocol
        )
    return out


def _compress_point(
    model: Any,
    point: SweepPoint,
    param_ratio: float | None,
    stats: Any,
    shared: _Shared | None = None,
) -> Any:
    """Compress ``model`` in place for one point; return its report.

    A basis-sharing point with ``private`` families shares bases within groups in
    the other families and factorises the private ones layer by layer (group size 1),
    as Basis Sharing's authors configure Llama models (attention output and MLP
    down projections private); both parts keep the same fraction of parameters.
    """
    from ..jobs import compress_loaded
    from ..models import resolve_families

    params = dict(point.params)
    private = tuple(resolve_families(model, params.pop("private"))) if "private" in params else ()
    families = resolve_families(model, point.families)
    parts = [(tuple(f for f in families if f not in private), params)]
    if private:
        parts.append((tuple(f for f in families if f in private), {**params, "group_size": 1}))
    configs = [
        CompressionConfig(
            method=point.method,
            rank_ratio=point.rank_ratio or DEFAULT_RANK_RATIO,
            param_ratio=param_ratio,
            families=fams,
            **kw,
        )
        for fams, kw in parts
        if fams
    ]

    def extras(cc: CompressionConfig) -> dict[str, Any]:
        if shared is None:
            return {}
        return _loss_aware_inputs(shared, tuple(cc.families), cc.allocate, cc.probe_windows)

    report = compress_loaded(model, configs, stats, extras=extras)
    if private:
        report.config["families"] = list(families)
        report.config["private"] = list(private)
    return report


def _param_ratio(
    point: SweepPoint, model_params: int, family_params: dict[str, int], model: Any
) -> float | None:
    """The families' kept fraction a point's budget asks for (None: a rank-ratio point).

    A model ratio ``r`` removes ``r * P_model`` parameters, all from the point's
    families: they keep ``1 - r * P_model / P_families``.
    """
    from ..models import resolve_families

    if point.param_ratio is not None:
        return point.param_ratio
    if point.model_ratio is None:
        return None
    fams = resolve_families(model, point.families)
    total = sum(family_params[f] for f in fams)
    kept = 1.0 - point.model_ratio * model_params / total
    if kept <= 0.0:
        raise AdapterError(
            f"model_ratio = {point.model_ratio:g} removes {point.model_ratio * model_params:,.0f} "
            f"parameters but the families {','.join(fams)} hold only {total:,}: "
            "lower the ratio or compress more families"
        )
    return kept


def _default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return str(Path(root) / "llm-adapter" / "calibration")
