"""The table of compression methods: one place for names, parameters, defaults and checks.

:data:`METHOD_TABLE` lists every method with the parameters it takes, whether it
needs calibration statistics and the label reports print; :data:`PARAMS` gives
each parameter its type, default, allowed values and help text.  Everything
that takes a method's parameters derives from these two tables:
:class:`llm_adapter.CompressionConfig` (the Python API and the ``compress``
command's flags), the sweep configuration's point tables, and the manifest a
compressed checkpoint records.  :func:`check_params` is the one validation: an
unknown parameter, one the method does not take, a wrong type or a value out
of range is an :class:`~llm_adapter.AdapterError` that names the value as the
caller spells it (``--group-size 0`` on the command line, ``points[2]
group_size = 0`` in a sweep configuration).

This module imports neither torch nor numpy, so the command line can build its
parsers (and ``--help``) from it at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import AdapterError

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_FAMILIES",
    "DEFAULT_RANK_RATIO",
    "ENERGY_ALLOCATIONS",
    "FLAGS",
    "GATES",
    "GRADIENT_ALLOCATIONS",
    "LOSS_AWARE",
    "METHODS",
    "METHOD_TABLE",
    "METRICS",
    "PARAMS",
    "REFITS",
    "REFIT_TARGETS",
    "SELECTIONS",
    "Method",
    "Param",
    "Spelling",
    "check_params",
    "flag",
    "format_float",
    "parse_float",
    "split_families",
]

#: ``d / D`` when neither a rank ratio nor a parameter budget is given
DEFAULT_RANK_RATIO = 0.25
#: the families compressed when none are named
DEFAULT_FAMILIES: tuple[str, ...] = ("attention.dense",)
#: rank allocation modes (``"none"``: one rank per family)
ALLOCATIONS = ("none", "sum", "normalised", "fisher", "gradient", "type", "sensitivity")
#: the loss-aware allocations (:mod:`llm_adapter.scoring`, :func:`grassbundle.select_components`):
#: components chosen globally under the budget, dense maps allowed
LOSS_AWARE = ("fisher", "gradient", "type", "sensitivity")
#: the allocations that need gradient scores (a backward pass per calibration window)
GRADIENT_ALLOCATIONS = ("fisher", "gradient")
#: the allocations by activation energy (summed over units, or relative per unit)
ENERGY_ALLOCATIONS = ("sum", "normalised")
#: how the loss-aware allocations use their scores
SELECTIONS = ("rank", "components")
#: the bundle's energies
METRICS = ("weight", "activation")
#: which factors a refit frees (:func:`grassbundle.constrained_refit`; "none": no refit)
REFITS = ("none", "left", "right", "both", "sigma")
#: the output a refit fits
REFIT_TARGETS = ("output", "local", "joint")
#: refit gating: keep a map's refit only where it lowers the held-out output error, or always
GATES = ("heldout", "off")


def flag(key: str) -> str:
    """The command-line flag of a parameter: ``group_size`` -> ``--group-size``."""
    return "--" + key.replace("_", "-")


def format_float(value: float) -> str:
    """A float as the configuration writes it: ``inf`` for infinity, else ``%g``."""
    return "inf" if math.isinf(value) and value > 0 else f"{value:g}"


@dataclass(frozen=True)
class Spelling:
    """How messages name a parameter: as a flag (``where`` empty) or a configuration key.

    ``Spelling()`` writes ``--lam -1``; ``Spelling("points[0]")`` writes
    ``points[0] lam = -1``.
    """

    where: str = ""

    def name(self, key: str) -> str:
        """``--group-size`` or ``points[0] group_size``."""
        return f"{self.where} {key}" if self.where else flag(key)

    def value(self, key: str, value: Any) -> str:
        """``--group-size 0`` or ``points[0] group_size = 0``."""
        if self.where:
            return f"{self.where} {key} = {value!r}"
        return f"{flag(key)} {value}"


#: the command line's spelling
FLAGS = Spelling()


def parse_float(value: Any, key: str = "lam", spell: Spelling = FLAGS) -> float:
    """A float from a number or a string, ``"inf"``/``"infinity"`` allowed.

    Parameters
    ----------
    value : float, int or str
    key : str
        The parameter, for the message.
    spell : Spelling
        How the message names the value.

    Returns
    -------
    float
    """
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    if isinstance(value, bool):
        raise AdapterError(f"{spell.value(key, value)} is not a number (use a float or 'inf')")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AdapterError(
            f"{spell.value(key, value)} is not a number (use a float or 'inf')"
        ) from None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def split_families(value: str | Sequence[str]) -> tuple[str, ...]:
    """Family names from ``"a,b"`` (stripped, blanks dropped) or a sequence (as given)."""
    if isinstance(value, str):
        return tuple(f.strip() for f in value.split(",") if f.strip())
    return tuple(str(f) for f in value)


@dataclass(frozen=True)
class Param:
    """One method parameter.

    Attributes
    ----------
    name : str
        As in :class:`~llm_adapter.CompressionConfig` and sweep points.
    kind : type
        ``float``, ``int``, ``str`` or ``bool``.
    default : Any
    help : str
        One line for ``--help`` (the default is appended there).
    what : str
        The quantity in words, for messages (``anchor strength``).
    choices : tuple of str
        Allowed values of a ``str`` parameter.
    low : float, optional
        Smallest allowed value (inclusive).
    allow_inf : bool
        Whether ``inf`` is allowed (``float`` only).
    words : tuple of str
        Words a ``float`` parameter takes besides numbers (``"auto"``).
    optional : bool
        Left out of manifests and sweep keys at its default (so records
        written before the parameter existed read the same).
    """

    name: str
    kind: type
    default: Any
    help: str
    what: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    allow_inf: bool = False
    optional: bool = False
    words: tuple[str, ...] = ()

    def check(self, value: Any, spell: Spelling = FLAGS) -> Any:
        """``value`` converted to :attr:`kind` and checked; raises naming it by ``spell``."""
        key = self.name
        if self.kind is bool:
            if not isinstance(value, bool):
                raise AdapterError(f"{spell.value(key, value)}: give true or false")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise AdapterError(
                    f"unknown {self.what} {value!r}; valid: {', '.join(self.choices)} "
                    f"(got {spell.value(key, value)})"
                )
            return value
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AdapterError(
                    f"{spell.value(key, value)} is not an integer; give whole numbers"
                )
            if self.low is not None and value < self.low:
                raise AdapterError(
                    f"{self.what} must be an integer >= {self.low:g}; got {spell.value(key, value)}"
                )
            return value
        if self.words and isinstance(value, str) and not _is_number(value):
            if value.strip().lower() in self.words:
                return value.strip().lower()
            raise AdapterError(
                f"{spell.value(key, value)} is not a number or {' or '.join(self.words)} "
                f"(use a float >= {self.low:g} or {' or '.join(self.words)})"
            )
        number = parse_float(value, key, spell)
        if math.isnan(number) or (math.isinf(number) and not self.allow_inf):
            raise AdapterError(
                f"{self.what} must be finite and >= 0; got {spell.value(key, value)}"
            )
        if self.low is not None and number < self.low:
            inf = " (inf allowed)" if self.allow_inf else ""
            raise AdapterError(
                f"{self.what} must be >= {self.low:g}{inf}; got {spell.value(key, value)}"
            )
        return number


@dataclass(frozen=True)
class Method:
    """One compression method.

    Attributes
    ----------
    name : str
        As given to ``--method`` and in sweep points.
    label : str
        How reports name it.
    params : tuple of str
        The parameters (keys of :data:`PARAMS`) it takes; every other
        parameter must stay at its default.
    help : str
        One line.
    calibration : callable
        ``calibration(params)``: whether it needs the calibration covariances,
        given its full parameters.
    """

    name: str
    label: str
    params: tuple[str, ...]
    help: str
    calibration: Callable[[Mapping[str, Any]], bool]


PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("lam", float, 0.0, "bundle: anchor strength, inf allowed", "anchor strength",
              low=0.0, allow_inf=True),
        Param("tying", int, 1, "bundle: section-tying degree k", "tying degree", low=1),
        Param("metric", str, "weight", "bundle: the energy", "metric", choices=METRICS),
        Param("coupling", float, 0.0, "bundle: soft coupling mu, untied", "coupling", low=0.0),
        Param("group_size", int, 2, "basis-sharing: layers per group", "group size", low=1),
        Param("update", bool, False, "svd-llm: add SVD-LLM's second step (sequential "
              "least-squares update of the left factor on the compressed model's inputs)",
              "update", optional=True),
        Param("refit", str, "none", "svd-llm: refit factors of SVD-LLM's truncation block by "
              "block on the compressed model's inputs: the left, the right, both (reduced-rank) "
              "or the kept singular values ('sigma'); 'none': no refit", "refit",
              choices=REFITS, optional=True),
        Param("target", str, "output", "svd-llm with --refit: the output fitted: the original "
              "W x ('output'), W x_hat ('local', SVD-LLM's update's) or both inputs together "
              "('joint', weighted by --mix)", "refit target", choices=REFIT_TARGETS,
              optional=True),
        Param("mix", float, 0.5, "svd-llm with --refit and --target joint: weight of the "
              "original inputs, in [0, 1]", "joint mixing weight", low=0.0, optional=True),
        Param("ridge", float, "auto", "svd-llm with --refit: pull towards the unrefit factors, "
              "relative to the mean input variance (>= 0), or 'auto' (chosen per map on "
              "held-out calibration windows)", "refit ridge", low=0.0, words=("auto",),
              optional=True),
        Param("gate", str, "heldout", "svd-llm with --refit: keep a map's refit only where it "
              "lowers the output error on held-out calibration windows ('heldout'), or always "
              "('off')", "refit gate", choices=GATES, optional=True),
        Param("allocate", str, "none", "svd-llm, residual, bundle (tied corner): per-layer "
              "(per-group) ranks under the same parameter budget, minimising the summed ('sum') "
              "or per-unit relative ('normalised') activation energy, maps allowed to stay "
              "dense except in the tied corner ('none': one rank per family); svd-llm only, "
              "loss-aware with maps allowed to stay dense: 'fisher' "
              "(per-window squared first-order loss changes), 'gradient' (absolute first-order "
              "loss changes), 'type' (activation energy compared within each family), "
              "'sensitivity' (calibration loss with each map alone truncated, ASVD-style)",
              "allocation", choices=ALLOCATIONS, optional=True),
        Param("select", str, "rank", "svd-llm with a loss-aware --allocate (fisher, gradient, "
              "type): keep each map's top singular components at the chosen rank ('rank') or "
              "the highest-scoring components ('components')", "selection",
              choices=SELECTIONS, optional=True),
        Param("protect", int, 0, "svd-llm with a loss-aware --allocate: keep the first and the "
              "last N layers of every family dense", "protected layers", low=0, optional=True),
        Param("rank_floor", float, 0.0, "svd-llm with a loss-aware --allocate: smallest rank "
              "of a factored map, as a fraction of its break-even rank mn/(m+n)", "rank floor",
              low=0.0, optional=True),
        Param("probe_windows", int, 2, "svd-llm --allocate sensitivity: calibration windows "
              "each probe evaluates (4 truncations per map, each a forward pass over them)",
              "probe windows", low=1, optional=True),
        Param("max_deviation", float, math.inf, "svd-llm with a loss-aware --allocate: bound "
              "on each map's kept fraction of parameters away from the uniform one (inf: none)",
              "deviation bound", low=0.0, allow_inf=True, optional=True),
    )
}  # fmt: skip

METHOD_TABLE: dict[str, Method] = {
    m.name: m
    for m in (
        Method("svd", "SVD", (), "plain truncated SVD per layer", lambda p: False),
        Method("svd-llm", "SVD-LLM", ("update", "allocate", "select", "protect", "rank_floor",
                                      "max_deviation", "probe_windows", "refit", "target",
                                      "mix", "ridge", "gate"),
               "SVD-LLM: top eigenspace of W C W^T per layer", lambda p: True),
        Method("basis-sharing", "Basis Sharing", ("group_size",),
               "Basis Sharing: one input-side basis per group of layers", lambda p: True),
        Method("bundle", "bundle", ("lam", "tying", "metric", "coupling", "allocate"),
               "the Grassmann-bundle section (anchor lam, tying k)",
               lambda p: p["metric"] == "activation" or p["lam"] > 0),
        Method("residual", "residual", ("allocate",),
               "residual-aware sequential refit, block by block", lambda p: True),
    )
}  # fmt: skip
METHODS = tuple(METHOD_TABLE)


def check_params(method: str, given: Mapping[str, Any], spell: Spelling = FLAGS) -> dict[str, Any]:
    """Check a method and the parameters given for it; return every parameter's value.

    Parameters
    ----------
    method : str
        A key of :data:`METHOD_TABLE`.
    given : mapping
        The parameters that were set (the others take their defaults).
    spell : Spelling
        How messages name a value (:data:`FLAGS` or ``Spelling("points[0]")``).

    Returns
    -------
    dict
        Every key of :data:`PARAMS`, checked and converted.

    Raises
    ------
    AdapterError
        For an unknown method or parameter, a parameter the method does not
        take (set to anything but its default), a wrong type or a value out
        of range.
    """
    entry = METHOD_TABLE.get(method)
    if entry is None:
        raise AdapterError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise AdapterError(
            f"unknown parameter(s) {unknown} for method {method!r}; valid: {sorted(PARAMS)}"
        )
    values = {key: p.default for key, p in PARAMS.items()}
    for key, value in given.items():
        param = PARAMS[key]
        if key not in entry.params and value != param.default:
            takers = [m.name for m in METHOD_TABLE.values() if key in m.params]
            name = spell.name(key)
            raise AdapterError(
                f"{name} applies to --method {' or '.join(takers)}"
                f"{' only' if len(takers) == 1 else ''}; got --method {method} "
                f"(drop {name}, or choose a method that takes it)"
            )
        values[key] = param.check(value, spell)
    if method == "bundle" and values["allocate"] != "none":
        corner = values["lam"] == 0 and values["coupling"] == 0
        if not corner or values["metric"] != "activation":
            raise AdapterError(
                "--allocate with --method bundle allocates ranks over the tied groups of the "
                "activation corner: use --metric activation, --lam 0 and no --coupling; got "
                f"{spell.value('metric', values['metric'])}, {spell.value('lam', values['lam'])}"
            )
    refit = values["refit"] != "none"
    for key in ("target", "mix", "ridge", "gate"):
        if not refit and values[key] != PARAMS[key].default:
            raise AdapterError(
                f"{spell.name(key)} shapes a refit: add --refit "
                f"{' or '.join(REFITS[1:])} (got {spell.value('refit', values['refit'])})"
            )
    if refit and values["update"]:
        raise AdapterError(
            "--update is SVD-LLM's own refit (the left factor for the target W x_hat): drop "
            f"--update, or use --refit left --target local instead of --update with "
            f"{spell.value('refit', values['refit'])}"
        )
    if values["mix"] > 1:
        raise AdapterError(
            f"joint mixing weight must be in [0, 1]; got {spell.value('mix', values['mix'])}"
        )
    if values["mix"] != PARAMS["mix"].default and values["target"] != "joint":
        raise AdapterError(
            f"{spell.name('mix')} weighs the joint target: add --target joint "
            f"(got {spell.value('target', values['target'])})"
        )
    loss_aware = values["allocate"] in LOSS_AWARE
    if loss_aware and method != "svd-llm":
        raise AdapterError(
            f"{spell.value('allocate', values['allocate'])} selects components of SVD-LLM's "
            "truncation (maps may stay dense): use --method svd-llm"
        )
    if loss_aware and (refit or values["update"]) and values["select"] != "rank":
        step = spell.name("refit") if refit else spell.name("update")
        raise AdapterError(
            f"{step} refits SVD-LLM's truncation at each map's rank, not a chosen set of "
            f"components: use {spell.value('select', 'rank')} (got "
            f"{spell.value('select', values['select'])})"
        )
    for key in ("select", "protect", "rank_floor", "max_deviation"):
        if not loss_aware and values[key] != PARAMS[key].default:
            raise AdapterError(
                f"{spell.name(key)} shapes a loss-aware allocation: add --allocate "
                f"{' or '.join(LOSS_AWARE)} (got {spell.value('allocate', values['allocate'])})"
            )
    if values["probe_windows"] != PARAMS["probe_windows"].default and (
        values["allocate"] != "sensitivity"
    ):
        raise AdapterError(
            f"{spell.name('probe_windows')} sizes the sensitivity probe: add --allocate "
            f"sensitivity (got {spell.value('allocate', values['allocate'])})"
        )
    if values["allocate"] == "sensitivity" and values["select"] != "rank":
        raise AdapterError(
            "--allocate sensitivity measures whole truncations, not single components: "
            f"use --select rank (got {spell.value('select', values['select'])})"
        )
    if values["coupling"] > 0:
        if math.isinf(values["lam"]):
            raise AdapterError(
                "soft coupling needs a finite anchor strength; got --lam inf with --coupling"
            )
        if values["tying"] != 1:
            raise AdapterError(
                "soft coupling couples untied sections: use --tying 1 with --coupling; "
                f"got {spell.value('tying', values['tying'])}"
            )
    return values
