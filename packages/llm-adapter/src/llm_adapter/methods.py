"""The table of compression methods: one place for names, parameters, defaults and checks.

:data:`METHOD_TABLE` lists every method with the parameters it takes, whether it
needs calibration statistics and the label reports print; :data:`PARAMS` gives
each parameter its type, default, allowed values and help text.  Everything
that takes a method's parameters derives from these two tables:
:class:`llm_adapter.CompressionConfig` (the Python API and the ``compress``
command's flags), the sweep configuration's point tables, and the manifest a
compressed checkpoint records.  :func:`check_params` is the one validation: an
unknown parameter, one the method does not take, a wrong type or a value out
of range is a :class:`~llm_adapter.ConfigurationError` carrying the key, the
value and the reason; its message names the value as the surface that shows it
spells it (``--group-size 0`` on the command line, ``points[2].group_size = 0``
in a sweep configuration, ``group_size=0`` in Python).

This module imports neither torch nor numpy, so the command line can build its
parsers (and ``--help``) from it at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, Mentions, mention

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_FAMILIES",
    "DEFAULT_RANK_RATIO",
    "ENERGY_ALLOCATIONS",
    "GATES",
    "GRADIENT_ALLOCATIONS",
    "LOSS_AWARE",
    "MENTIONS",
    "METHODS",
    "METHOD_TABLE",
    "METRICS",
    "PARAMS",
    "REFITS",
    "REFIT_TARGETS",
    "SELECTIONS",
    "Method",
    "Param",
    "check_params",
    "format_float",
    "get_method",
    "parse_float",
    "reference_method",
    "register_method",
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


def format_float(value: float) -> str:
    """A float as the configuration writes it: ``inf`` for infinity, else ``%g``."""
    return "inf" if math.isinf(value) and value > 0 else f"{value:g}"


#: how the checks name a setting in their messages (spelled by the surface that shows them)
MENTIONS = Mentions()


def parse_float(value: Any, key: str = "lam", spell: Mentions = MENTIONS) -> float:
    """A float from a number or a string, ``"inf"``/``"infinity"`` allowed.

    Parameters
    ----------
    value : float, int or str
    key : str
        The parameter, for the message.
    spell : llm_adapter.errors.Mentions
        How the message names the value.

    Returns
    -------
    float
    """
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    if isinstance(value, bool):
        raise ConfigurationError(
            f"{spell.value(key, value)} is not a number (use a float or 'inf')",
            key=key,
            value=value,
            reason="not a number",
        )
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{spell.value(key, value)} is not a number (use a float or 'inf')",
            key=key,
            value=value,
            reason="not a number",
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
        One line for the command line's help (the default is appended there); the
        settings it names are marked with :func:`llm_adapter.errors.mention`.
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

    def check(self, value: Any, spell: Mentions = MENTIONS) -> Any:
        """``value`` converted to :attr:`kind` and checked; raises naming it by ``spell``.

        Raises
        ------
        ConfigurationError
            With :attr:`name` as its ``key``, ``value`` and the message as its ``reason``.
        """
        try:
            return self._check(value, spell)
        except ConfigurationError as exc:
            if exc.key is None:
                exc.key, exc.value, exc.reason = self.name, value, str(exc)
            raise

    def _check(self, value: Any, spell: Mentions) -> Any:
        key = self.name
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigurationError(f"{spell.value(key, value)}: give true or false")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise ConfigurationError(
                    f"unknown {self.what} {value!r}; valid: {', '.join(self.choices)} "
                    f"(got {spell.value(key, value)})"
                )
            return value
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(
                    f"{spell.value(key, value)} is not an integer; give whole numbers"
                )
            if self.low is not None and value < self.low:
                raise ConfigurationError(
                    f"{self.what} must be an integer >= {self.low:g}; got {spell.value(key, value)}"
                )
            return value
        if self.words and isinstance(value, str) and not _is_number(value):
            if value.strip().lower() in self.words:
                return value.strip().lower()
            raise ConfigurationError(
                f"{spell.value(key, value)} is not a number or {' or '.join(self.words)} "
                f"(use a float >= {self.low:g} or {' or '.join(self.words)})"
            )
        number = parse_float(value, key, spell)
        if math.isnan(number) or (math.isinf(number) and not self.allow_inf):
            raise ConfigurationError(
                f"{self.what} must be finite and >= 0; got {spell.value(key, value)}"
            )
        if self.low is not None and number < self.low:
            inf = " (inf allowed)" if self.allow_inf else ""
            raise ConfigurationError(
                f"{self.what} must be >= {self.low:g}{inf}; got {spell.value(key, value)}"
            )
        return number


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
        Param("target", str, "output", f"svd-llm with {mention('refit')}: the output "
              "fitted: the original W x ('output'), W x_hat ('local', SVD-LLM's update's) or "
              f"both inputs together ('joint', weighted by {mention('mix')})", "refit target",
              choices=REFIT_TARGETS, optional=True),
        Param("mix", float, 0.5, f"svd-llm with {mention('refit')} and {mention('target')} "
              "joint: weight of the original inputs, in [0, 1]", "joint mixing weight",
              low=0.0, optional=True),
        Param("ridge", float, "auto", f"svd-llm with {mention('refit')}: pull towards the "
              "unrefit factors, relative to the mean input variance (>= 0), or 'auto' (chosen "
              "per map on held-out calibration windows)", "refit ridge", low=0.0,
              words=("auto",), optional=True),
        Param("gate", str, "heldout", f"svd-llm with {mention('refit')}: keep a map's refit "
              "only where it lowers the output error on held-out calibration windows "
              "('heldout'), or always ('off')", "refit gate", choices=GATES, optional=True),
        Param("allocate", str, "none", "svd-llm, residual, bundle (tied corner): per-layer "
              "(per-group) ranks under the same parameter budget, minimising the summed ('sum') "
              "or per-unit relative ('normalised') activation energy, maps allowed to stay "
              "dense except in the tied corner ('none': one rank per family); svd-llm only, "
              "loss-aware with maps allowed to stay dense: 'fisher' "
              "(per-window squared first-order loss changes), 'gradient' (absolute first-order "
              "loss changes), 'type' (activation energy compared within each family), "
              "'sensitivity' (calibration loss with each map alone truncated, ASVD-style)",
              "allocation", choices=ALLOCATIONS, optional=True),
        Param("select", str, "rank", f"svd-llm with a loss-aware {mention('allocate')} "
              "(fisher, gradient, type): keep each map's top singular components at the chosen "
              "rank ('rank') or the highest-scoring components ('components')", "selection",
              choices=SELECTIONS, optional=True),
        Param("protect", int, 0, f"svd-llm with a loss-aware {mention('allocate')}: keep the "
              "first and the last N layers of every family dense", "protected layers", low=0,
              optional=True),
        Param("rank_floor", float, 0.0, f"svd-llm with a loss-aware {mention('allocate')}: "
              "smallest rank of a factored map, as a fraction of its break-even rank "
              "mn/(m+n)", "rank floor", low=0.0, optional=True),
        Param("probe_windows", int, 2, f"svd-llm {mention('allocate')} sensitivity: "
              "calibration windows each probe evaluates (4 truncations per map, each a forward "
              "pass over them)", "probe windows", low=1, optional=True),
        Param("stages", int, 1, f"svd-llm {mention('allocate')} fisher or gradient "
              f"({mention('select')} rank): reach the budget in this many stages, the "
              "gradients scored again on the model each stage compressed, ranks never growing "
              "back (Zero Sum SVD's schedule)", "stages", low=1, optional=True),
        Param("max_deviation", float, math.inf, f"svd-llm with a loss-aware "
              f"{mention('allocate')}: bound on each map's kept fraction of parameters away "
              "from the uniform one (inf: none)", "deviation bound", low=0.0, allow_inf=True,
              optional=True),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Method:
    """One compression method: everything the adapter, sweeps and reports ask of it.

    A method is registered once (:func:`register_method`) and looked up by
    name in :data:`METHOD_TABLE`; nothing outside its entry compares method
    names.

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
    factoriser : str or None
        The :func:`grassbundle.factorise` method it calls (a key of
        :data:`grassbundle.FACTORISERS`); None for a method that only fits
        block by block (:attr:`fit`).
    options : tuple of str
        The parameters passed on to :func:`grassbundle.factorise` as keyword
        options (and shown in a report's one-line summary).
    fit : callable
        ``fit(params)``: the block-by-block fit of
        :func:`llm_adapter.sequential.compress_sequential` (``"update"``,
        ``"residual"``, ``"refit"``), or None where the method factorises each
        family at once.
    shares : {"left", "right"}
        Which factor a group of layers shares: the output-side basis ``U``
        (``m x d``) or the input-side basis (``d x n``); the rank-for-budget
        rule counts the shared factor once (:meth:`rank_for_params`).
    group : str or None
        The parameter giving the layers per shared group (``tying``,
        ``group_size``); None for untied layers.
    allocations : tuple of str
        The values of ``allocate`` it accepts (within :data:`ALLOCATIONS`).
    allocates_groups : bool
        Whether ``allocate`` gives one rank per group of :attr:`group` layers
        (the bundle's tied corner) instead of one per layer.
    check : callable, optional
        ``check(values, spell)``: the method's own checks of its full
        parameters (after each one's type and range); raises
        :class:`~llm_adapter.AdapterError`.
    point_label : callable, optional
        ``point_label(params)``: a sweep point's short name (default: the name).
    marker : str
        Its matplotlib marker in report plots.
    dashed : bool
        Whether per-layer plots draw it dashed.
    reference : bool
        Whether it is the method reports compare the others with (one method).
    phase_grid : callable, optional
        ``phase_grid(row)``: whether a sweep row belongs to the report's
        phase diagram over ``lam`` and ``tying`` (the bundle's weight metric,
        uncoupled); None for a method without one.
    sweep_keys : tuple of str
        Point keys only sweeps know, taken by this method (``private``).
    """

    name: str
    label: str
    params: tuple[str, ...]
    help: str
    calibration: Callable[[Mapping[str, Any]], bool]
    factoriser: str | None = None
    options: tuple[str, ...] = ()
    fit: Callable[[Mapping[str, Any]], str | None] = lambda p: None
    shares: str = "left"
    group: str | None = None
    allocations: tuple[str, ...] = ("none",)
    allocates_groups: bool = False
    check: Callable[[dict[str, Any], Mentions], None] | None = None
    point_label: Callable[[Mapping[str, Any]], str] | None = None
    marker: str = "o"
    dashed: bool = False
    reference: bool = False
    phase_grid: Callable[[Mapping[str, Any]], bool] | None = None
    sweep_keys: tuple[str, ...] = ()

    def needs_calibration(self, values: Mapping[str, Any]) -> bool:
        """Whether the method needs the calibration covariances at these parameters."""
        return self.calibration(values)

    def sequential(self, values: Mapping[str, Any]) -> bool:
        """Whether the method fits block by block on calibration windows."""
        return self.fit(values) is not None

    def factorise_options(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword options of :func:`grassbundle.factorise`, from the full parameters."""
        return {key: values[key] for key in self.options}

    def group_layers(self, values: Mapping[str, Any], layers: int) -> int:
        """Layers per shared group, at most ``layers`` (1 for untied layers)."""
        return min(int(values[self.group]), layers) if self.group is not None else 1

    def rank_for_params(
        self, ratio: float, m: int, n: int, layers: int, values: Mapping[str, Any]
    ) -> tuple[int, int]:
        """The rank keeping the fraction ``ratio`` of the weights, and its bound ``D``.

        For groups of ``k`` maps (``m x n``) sharing one factor, the shared
        factor is counted once: ``d = floor(p k m n / (m + k n))`` (shared
        output-side ``U``, ``D = m``) or ``floor(p k m n / (n + k m))``
        (shared input-side basis: the stacked group, ``k m x n``, has rank up
        to ``min(n, k m)``, so ``D = min(n, k m) + 1``).  The rank must satisfy
        ``1 <= d < D``.
        """
        k = self.group_layers(values, layers)
        if self.shares == "right":
            return math.floor(ratio * k * m * n / (n + k * m)), min(n, k * m) + 1
        return math.floor(ratio * k * m * n / (m + k * n)), m

    def describe_point(self, params: Mapping[str, Any]) -> str:
        """A sweep point's short name, e.g. ``bundle lam=0 k=6 weight``."""
        return self.point_label(params) if self.point_label is not None else self.name


#: every registered method, by name (:func:`register_method`)
METHOD_TABLE: dict[str, Method] = {}
#: the registered methods' names, in registration order
METHODS: tuple[str, ...] = ()


def register_method(method: Method) -> Method:
    """Add a method to :data:`METHOD_TABLE` (and :data:`METHODS`); returns it.

    Its parameters must be keys of :data:`PARAMS`, its allocations values of
    :data:`ALLOCATIONS`.  Register before the command line builds its parsers
    (importing the method's module from :mod:`llm_adapter.methods` does).

    Raises
    ------
    ValueError
        For a name already taken or a parameter not in :data:`PARAMS`.
    """
    global METHODS
    if method.name in METHOD_TABLE or method.name == "dense":
        raise ValueError(f"method {method.name!r} is already registered")
    unknown = sorted(set(method.params) - set(PARAMS))
    if unknown:
        raise ValueError(f"method {method.name!r}: unknown parameter(s) {unknown}")
    bad = sorted(set(method.allocations) - set(ALLOCATIONS))
    if bad:
        raise ValueError(f"method {method.name!r}: unknown allocation(s) {bad}")
    METHOD_TABLE[method.name] = method
    METHODS = tuple(METHOD_TABLE)
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; :class:`~llm_adapter.AdapterError` for another name."""
    entry = METHOD_TABLE.get(name)
    if entry is None:
        raise ConfigurationError(
            f"unknown method {name!r}; valid methods: {', '.join(METHODS)}",
            key="method",
            value=name,
            reason="not a registered method",
        )
    return entry


def reference_method() -> str:
    """The method reports compare the others with (SVD-LLM)."""
    return next(m.name for m in METHOD_TABLE.values() if m.reference)


def _loss_aware_needs_svd_llm(values: Mapping[str, Any], spell: Mentions) -> ConfigurationError:
    return ConfigurationError(
        f"{spell.value('allocate', values['allocate'])} selects components of SVD-LLM's "
        f"truncation (maps may stay dense): use {spell.value('method', 'svd-llm')}"
    )


# --------------------------------------------------------------------------- svd


register_method(
    Method("svd", "SVD", (), "plain truncated SVD per layer", lambda p: False,
           factoriser="svd", marker="s")
)  # fmt: skip


# --------------------------------------------------------------------------- svd-llm


def _svd_llm_fit(p: Mapping[str, Any]) -> str | None:
    if p["refit"] != "none":
        return "refit"
    return "update" if p["update"] else None


def _check_svd_llm(values: dict[str, Any], spell: Mentions) -> None:
    """The interplay of SVD-LLM's update, refit and loss-aware allocation parameters."""
    refit = values["refit"] != "none"
    for key in ("target", "mix", "ridge", "gate"):
        if not refit and values[key] != PARAMS[key].default:
            raise ConfigurationError(
                f"{spell.name(key)} shapes a refit: add {spell.name('refit')} "
                f"{' or '.join(REFITS[1:])} (got {spell.value('refit', values['refit'])})"
            )
    if refit and values["update"]:
        raise ConfigurationError(
            f"{spell.name('update')} is SVD-LLM's own refit (the left factor for the target W "
            f"x_hat): drop {spell.name('update')}, or use {spell.value('refit', 'left')} "
            f"{spell.value('target', 'local')} instead of {spell.name('update')} with "
            f"{spell.value('refit', values['refit'])}"
        )
    if values["mix"] > 1:
        raise ConfigurationError(
            f"joint mixing weight must be in [0, 1]; got {spell.value('mix', values['mix'])}"
        )
    if values["mix"] != PARAMS["mix"].default and values["target"] != "joint":
        raise ConfigurationError(
            f"{spell.name('mix')} weighs the joint target: add {spell.value('target', 'joint')} "
            f"(got {spell.value('target', values['target'])})"
        )
    loss_aware = values["allocate"] in LOSS_AWARE
    if loss_aware and (refit or values["update"]) and values["select"] != "rank":
        step = spell.name("refit") if refit else spell.name("update")
        raise ConfigurationError(
            f"{step} refits SVD-LLM's truncation at each map's rank, not a chosen set of "
            f"components: use {spell.value('select', 'rank')} (got "
            f"{spell.value('select', values['select'])})"
        )
    for key in ("select", "protect", "rank_floor", "max_deviation"):
        if not loss_aware and values[key] != PARAMS[key].default:
            raise ConfigurationError(
                f"{spell.name(key)} shapes a loss-aware allocation: add {spell.name('allocate')} "
                f"{' or '.join(LOSS_AWARE)} (got {spell.value('allocate', values['allocate'])})"
            )
    if values["stages"] != 1 and (
        values["allocate"] not in GRADIENT_ALLOCATIONS or values["select"] != "rank"
    ):
        raise ConfigurationError(
            f"{spell.name('stages')} re-scores the gradients between stages: use "
            f"{spell.name('allocate')} {' or '.join(GRADIENT_ALLOCATIONS)} with "
            f"{spell.value('select', 'rank')} (got "
            f"{spell.value('allocate', values['allocate'])}, "
            f"{spell.value('select', values['select'])})"
        )
    if values["probe_windows"] != PARAMS["probe_windows"].default and (
        values["allocate"] != "sensitivity"
    ):
        raise ConfigurationError(
            f"{spell.name('probe_windows')} sizes the sensitivity probe: add "
            f"{spell.value('allocate', 'sensitivity')} "
            f"(got {spell.value('allocate', values['allocate'])})"
        )
    if values["allocate"] == "sensitivity" and values["select"] != "rank":
        raise ConfigurationError(
            f"{spell.value('allocate', 'sensitivity')} measures whole truncations, not single "
            f"components: use {spell.value('select', 'rank')} "
            f"(got {spell.value('select', values['select'])})"
        )


def _sequential_label(name: str) -> Callable[[Mapping[str, Any]], str]:
    """``svd-llm +update alloc=fisher select=components``: the name and what differs."""

    def label(p: Mapping[str, Any]) -> str:
        text = (
            name
            + (" +update" if p.get("update") else "")
            + (f" alloc={p['allocate']}" if p.get("allocate", "none") != "none" else "")
        )
        if p.get("refit", "none") != "none":
            text += f" refit={p['refit']}"
        for key, short in (("select", "select"), ("protect", "protect"),
                           ("rank_floor", "floor"), ("max_deviation", "dev"),
                           ("stages", "stages"), ("target", "target"), ("mix", "mix"),
                           ("ridge", "ridge"), ("gate", "gate")):  # fmt: skip
            if key in p and p[key] != PARAMS[key].default:
                value = p[key]
                text += f" {short}={format_float(value) if isinstance(value, float) else value}"
        return text

    return label


register_method(
    Method("svd-llm", "SVD-LLM", ("update", "allocate", "select", "protect", "rank_floor",
                                  "max_deviation", "probe_windows", "stages", "refit", "target",
                                  "mix", "ridge", "gate"),
           "SVD-LLM: top eigenspace of W C W^T per layer", lambda p: True,
           factoriser="svd-llm", fit=_svd_llm_fit, allocations=ALLOCATIONS,
           check=_check_svd_llm, point_label=_sequential_label("svd-llm"), marker="*",
           reference=True)
)  # fmt: skip


# --------------------------------------------------------------------------- basis-sharing


def _basis_sharing_label(p: Mapping[str, Any]) -> str:
    private = p.get("private")
    return f"basis-sharing g={p['group_size']}" + (
        f" private {','.join(private)}" if private else ""
    )


register_method(
    Method("basis-sharing", "Basis Sharing", ("group_size",),
           "Basis Sharing: one input-side basis per group of layers", lambda p: True,
           factoriser="basis-sharing", options=("group_size",), shares="right",
           group="group_size", point_label=_basis_sharing_label, marker="D",
           sweep_keys=("private",))
)  # fmt: skip


# --------------------------------------------------------------------------- bundle


def _check_bundle(values: dict[str, Any], spell: Mentions) -> None:
    """The tied corner of an allocation, and soft coupling's untied, finite sections."""
    if values["allocate"] != "none":
        corner = values["lam"] == 0 and values["coupling"] == 0
        if not corner or values["metric"] != "activation":
            raise ConfigurationError(
                f"{spell.name('allocate')} with {spell.value('method', 'bundle')} allocates ranks "
                "over the tied groups of the activation corner: use "
                f"{spell.value('metric', 'activation')}, {spell.value('lam', 0)} and no "
                f"{spell.name('coupling')}; got "
                f"{spell.value('metric', values['metric'])}, {spell.value('lam', values['lam'])}"
            )
    if values["coupling"] > 0:
        if math.isinf(values["lam"]):
            raise ConfigurationError(
                f"soft coupling needs a finite anchor strength; got {spell.value('lam', 'inf')} "
                f"with {spell.name('coupling')}"
            )
        if values["tying"] != 1:
            raise ConfigurationError(
                f"soft coupling couples untied sections: use {spell.value('tying', 1)} with "
                f"{spell.name('coupling')}; "
                f"got {spell.value('tying', values['tying'])}"
            )


def _bundle_label(p: Mapping[str, Any]) -> str:
    text = f"bundle lam={format_float(p['lam'])} k={p['tying']} {p['metric']}"
    if p["coupling"]:
        text += f" mu={p['coupling']:g}"
    if p.get("allocate", "none") != "none":
        text += f" alloc={p['allocate']}"
    return text


register_method(
    Method("bundle", "bundle", ("lam", "tying", "metric", "coupling", "allocate"),
           "the Grassmann-bundle section (anchor lam, tying k)",
           lambda p: p["metric"] == "activation" or p["lam"] > 0,
           factoriser="bundle", options=("lam", "tying", "metric", "coupling"),
           group="tying", allocations=("none", "sum", "normalised"), allocates_groups=True,
           check=_check_bundle, point_label=_bundle_label, dashed=True,
           phase_grid=lambda r: r.get("metric") == "weight" and not r.get("coupling"))
)  # fmt: skip


# --------------------------------------------------------------------------- residual


register_method(
    Method("residual", "residual", ("allocate",),
           "residual-aware sequential refit, block by block", lambda p: True,
           fit=lambda p: "residual", allocations=("none", "sum", "normalised"),
           point_label=_sequential_label("residual"))
)  # fmt: skip


def check_params(
    method: str, given: Mapping[str, Any], spell: Mentions = MENTIONS
) -> dict[str, Any]:
    """Check a method and the parameters given for it; return every parameter's value.

    The checks common to every method (unknown parameters, parameters the
    method does not take, each value's type and range, the allocations it
    accepts) run here; the method's own interplay of parameters is its
    :attr:`Method.check`.

    Parameters
    ----------
    method : str
        A key of :data:`METHOD_TABLE`.
    given : mapping
        The parameters that were set (the others take their defaults).
    spell : llm_adapter.errors.Mentions
        How messages name a setting (:func:`llm_adapter.errors.mention`; the surface
        that shows the error spells it).

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
    entry = get_method(method)
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise ConfigurationError(
            f"unknown parameter(s) {unknown} for method {method!r}; valid: {sorted(PARAMS)}",
            key=unknown[0],
            value=given[unknown[0]],
            reason="unknown parameter",
        )
    values = {key: p.default for key, p in PARAMS.items()}
    for key, value in given.items():
        param = PARAMS[key]
        if key not in entry.params and value != param.default:
            takers = [m.name for m in METHOD_TABLE.values() if key in m.params]
            name = spell.name(key)
            raise ConfigurationError(
                f"{name} applies to {spell.name('method')} {' or '.join(takers)}"
                f"{' only' if len(takers) == 1 else ''}; got {spell.value('method', method)} "
                f"(drop {name}, or choose a method that takes it)",
                key=key,
                value=value,
                reason=f"applies to method {' or '.join(takers)}, not {method}",
            )
        values[key] = param.check(value, spell)
    if entry.check is not None:
        entry.check(values, spell)
    if values["allocate"] not in entry.allocations and "allocate" in entry.params:
        raise _loss_aware_needs_svd_llm(values, spell)
    return values
