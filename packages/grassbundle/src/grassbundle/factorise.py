"""Every low-rank factorisation of a layer family, behind one function and one result.

:func:`factorise` takes a family's weights ``W`` (``L x m x n``, PyTorch
orientation ``y = W_l x``), the calibration covariances ``C`` of their inputs
(``L x n x n``) and a method, and returns a :class:`Factorisation`: the
factors to write back, which of them a tied group shares, the per-layer ranks,
the parameters the factors keep, and the per-layer errors

* ``frobenius_error[l] = ||W_l - W'_l||_F^2`` and its fraction of ``||W_l||_F^2``;
* ``activation_error[l] = tr((W_l - W'_l) C_l (W_l - W'_l)^T)`` (the expected
  squared output error on the calibration inputs) and its fraction of
  ``tr(W_l C_l W_l^T)``; ``None`` without ``C``.

The methods (``method``):

``"svd"``
    Plain truncated SVD, the top-``d`` eigenspace of ``N_l = W_l W_l^T`` per
    layer (Eckart-Young): :func:`grassbundle.solve` at ``lam = 0``, ``k = 1``
    under the weight metric.  ``C`` is optional (only for the activation
    errors).
``"svd-llm"``
    SVD-LLM: the top-``d`` eigenspace of ``M_l = W_l C_l W_l^T`` per layer
    (:func:`grassbundle.anchor_section`), ``W'_l = P_{U_l} W_l``.  With
    per-layer ``ranks`` (an allocation), SVD-LLM's truncation layer by layer,
    each at its own rank (:func:`grassbundle.svd_llm_update` with ``ridge =
    0`` and the update statistics equal to ``C``, so its second step changes
    nothing but roundoff).
``"bundle"``
    The bundle section ``solve(BundleProblem(W, C, rank=d, metric=metric),
    lam, tying)``; with ``coupling > 0`` the soft-coupled untied section of
    :func:`grassbundle.solve_coupled`, evaluated at ``lam``.  ``C`` is needed
    unless ``metric="weight"`` and ``lam = 0``.
``"basis-sharing"``
    Basis Sharing as its authors build it: a shared *input-side* basis per
    group of ``group_size`` consecutive layers, in the space whitened by the
    group's summed Gram (:func:`grassbundle.basis_sharing_input`).

Every method but ``"basis-sharing"`` shares the *left* (output-side) factor:
``W'_l = U_{g(l)} (U_{g(l)}^T W_l)`` with ``U_g`` of shape ``(m, d)`` stored
once per group and ``U_g^T W_l`` (``d x n``) per layer.  ``"basis-sharing"``
shares the *right* factor: ``W'_l = A_l B_{g(l)}`` with ``B_g`` (``d x n``)
once per group and ``A_l`` (``m x d``) per layer.

:func:`reconstruction_errors` gives the same per-layer errors for any
compressed weights (a refit computed elsewhere), and the output error
``E||W_l x - W'_l x_hat||^2`` when the compressed model's input statistics
are given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validate
from .baselines import basis_sharing_input
from .bundle import BundleProblem, anchor_section, check_lam, evaluate_section, solve
from .coupling import solve_coupled
from .refit import svd_llm_update

__all__ = [
    "FACTORISERS",
    "METHODS",
    "Factorisation",
    "Factoriser",
    "ReconstructionErrors",
    "factorise",
    "reconstruction_errors",
    "register_factoriser",
]

F64 = NDArray[np.float64]
Side = Literal["left", "right"]

#: the methods :func:`factorise` knows: the keys of :data:`FACTORISERS`
METHODS: tuple[str, ...] = ()


def _fraction(error: F64, total: F64) -> F64:
    """``error / total`` per layer, 0 where the total is 0."""
    return np.divide(error, total, out=np.zeros(error.shape), where=total > 0)


@dataclass(frozen=True)
class ReconstructionErrors:
    """Per-layer errors of compressed weights ``W'_l`` against the originals ``W_l``.

    Attributes
    ----------
    frobenius_error : ndarray, shape=[L]
        ``||W_l - W'_l||_F^2``.
    frobenius_total : ndarray, shape=[L]
        ``||W_l||_F^2``.
    activation_error : ndarray, shape=[L], or None
        ``tr((W_l - W'_l) C_l (W_l - W'_l)^T)``; None without ``C``.
    activation_total : ndarray, shape=[L], or None
        ``tr(W_l C_l W_l^T) = E||W_l x||^2``; None without ``C``.
    output_error : ndarray, shape=[L], or None
        ``E||W_l x - W'_l x_hat||^2 = tr(W_l C_l W_l^T) - 2 tr(W_l C_cross_l
        W'_l^T) + tr(W'_l C_hat_l W'_l^T)``, clipped below at 0 (original
        input ``x`` against the compressed model's input ``x_hat``); None
        without ``C_hat`` and ``C_cross``.  Its reference is
        ``activation_total``.
    """

    frobenius_error: F64
    frobenius_total: F64
    activation_error: F64 | None
    activation_total: F64 | None
    output_error: F64 | None = None

    @property
    def frobenius_fraction(self) -> F64:
        """``frobenius_error / frobenius_total`` (0 where the total is 0), shape=[L]."""
        return _fraction(self.frobenius_error, self.frobenius_total)

    @property
    def activation_fraction(self) -> F64 | None:
        """``activation_error / activation_total`` (0 where the total is 0); None without ``C``."""
        if self.activation_error is None or self.activation_total is None:
            return None
        return _fraction(self.activation_error, self.activation_total)


def reconstruction_errors(
    W: ArrayLike,
    W_hat: ArrayLike,
    C: ArrayLike | None = None,
    *,
    C_hat: ArrayLike | None = None,
    C_cross: ArrayLike | None = None,
) -> ReconstructionErrors:
    """Per-layer Frobenius, activation and output errors of compressed weights.

    For weights ``W_hat`` computed by any means (a refit, a sequential fit),
    with ``E_l = W_l - W'_l``: ``||E_l||_F^2``, ``tr(E_l C_l E_l^T)`` and
    ``tr(W_l C_l W_l^T)``, each one inner product (``np.vdot``) per layer; and,
    given the compressed model's input statistics, the output error
    ``E||W_l x - W'_l x_hat||^2`` expanded in ``C``, ``C_cross`` and
    ``C_hat``.

    Parameters
    ----------
    W : array-like, shape=[m, n] or [L, m, n]
        The original weights.
    W_hat : array-like, the shape of ``W``
        The compressed weights.
    C : array-like, shape=[n, n] or [L, n, n], optional
        ``E[x x^T]``, the original model's input covariance per layer.
    C_hat : array-like, shape=[n, n] or [L, n, n], optional
        ``E[x_hat x_hat^T]``, the compressed model's input covariance; with
        ``C_cross`` (and ``C``) for the output error.
    C_cross : array-like, shape=[n, n] or [L, n, n], optional
        ``E[x x_hat^T]``, original times compressed input.

    Returns
    -------
    ReconstructionErrors
        Arrays of shape ``(L,)`` (``L = 1`` for one map).

    Raises
    ------
    ValueError
        For mismatched shapes, non-finite entries, or only one of ``C_hat``
        and ``C_cross`` (or either without ``C``).
    """
    W64 = _validate.weight_stack(W)
    L, _, n = W64.shape
    Wh = _validate.weight_stack(W_hat, name="W_hat")
    if Wh.shape != W64.shape:
        raise ValueError(
            f"W_hat must have the shape of W, {np.shape(W)}; got shape {np.shape(W_hat)}"
        )
    if (C_hat is None) != (C_cross is None):
        raise ValueError("C_hat and C_cross go together (the output error needs both)")
    if C_hat is not None and C is None:
        raise ValueError("the output error needs C (E[x x^T]) besides C_hat and C_cross")
    fro = np.empty(L)
    for l in range(L):
        E = W64[l] - Wh[l]
        fro[l] = float(np.vdot(E, E))
    total = np.einsum("lij,lij->l", W64, W64)
    if C is None:
        return ReconstructionErrors(fro, total, None, None)
    C64 = _validate.covariance_stack(C, L, n, "C", psd=False)
    act = np.empty(L)
    act_total = np.empty(L)
    for l in range(L):
        E = W64[l] - Wh[l]
        act[l] = float(np.vdot(E @ C64[l], E))
        act_total[l] = float(np.vdot(W64[l] @ C64[l], W64[l]))
    out: F64 | None = None
    if C_hat is not None and C_cross is not None:
        Ch = _validate.covariance_stack(C_hat, L, n, "C_hat", psd=False)
        Cx = _validate.covariance_stack(C_cross, L, n, "C_cross", psd=False)
        out = np.empty(L)
        for l in range(L):
            err = (
                float(np.vdot(W64[l] @ C64[l], W64[l]))
                - 2.0 * float(np.vdot(W64[l] @ Cx[l], Wh[l]))
                + float(np.vdot(Wh[l] @ Ch[l], Wh[l]))
            )
            out[l] = max(err, 0.0)
    return ReconstructionErrors(fro, total, act, act_total, out)


@dataclass(frozen=True)
class Factorisation:
    """The factors of a compressed family, what they share, and their errors.

    Layer ``l``'s compressed weight is ``W'_l = left(l) @ right(l)``, applied
    as ``y = left(l) (right(l) x)``.  One factor of each layer is *shared* by
    its group ``g = groups[l]`` (stored once, in :attr:`shared`), the other
    is the layer's own (in :attr:`layer_factors`):

    * ``side == "left"`` (every method but Basis Sharing): ``left(l) =
      shared[g]``, the output-side basis ``U_g`` of shape ``(m, d)``
      (orthonormal; with per-layer ``ranks`` SVD-LLM's least-squares left
      factor, orthonormal to roundoff), and ``right(l) = layer_factors[l] =
      U_g^T W_l`` of shape ``(d, n)``.
    * ``side == "right"`` (``"basis-sharing"``): ``right(l) = shared[g]``,
      the input-side basis ``B_g`` of shape ``(d, n)``, and ``left(l) =
      layer_factors[l] = A_l`` of shape ``(m, d)``.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    side : {"left", "right"}
        Which factor a group shares (see above).
    shared : tuple of ndarray, length G
        The shared factor of each group: ``(m, d_g)`` for ``"left"``,
        ``(d_g, n)`` for ``"right"``.
    layer_factors : tuple of ndarray, length L
        Each layer's own factor: ``(d_l, n)`` for ``"left"``, ``(m, d_l)`` for
        ``"right"``.
    groups : ndarray, shape=[L], int
        Layer-to-group map (``groups[l]`` indexes :attr:`shared`); consecutive
        groups, ``arange(L)`` when nothing is shared.
    ranks : ndarray, shape=[L], int
        Each layer's rank ``d_l`` (all equal unless ``ranks`` was given).
    frobenius_error : ndarray, shape=[L]
        ``||W_l - W'_l||_F^2``.
    frobenius_fraction : ndarray, shape=[L]
        ``||W_l - W'_l||_F^2 / ||W_l||_F^2``.
    activation_error : ndarray, shape=[L], or None
        ``tr((W_l - W'_l) C_l (W_l - W'_l)^T)``; None without ``C``.
    activation_fraction : ndarray, shape=[L], or None
        ``activation_error / tr(W_l C_l W_l^T)``, 0 where that total is 0;
        None without ``C``.
    params_kept : int
        Entries of all the factors, each shared factor counted once.
    params_dense : int
        Entries of the dense weights, ``L m n``.
    """

    method: str
    side: Side
    shared: tuple[F64, ...]
    layer_factors: tuple[F64, ...]
    groups: NDArray[np.intp]
    ranks: NDArray[np.intp]
    frobenius_error: F64
    frobenius_fraction: F64
    activation_error: F64 | None
    activation_fraction: F64 | None
    params_kept: int
    params_dense: int

    def left(self, l: int) -> F64:
        """The ``(m, d_l)`` factor of layer ``l`` (shared by its group when ``side == "left"``).

        Parameters
        ----------
        l : int
            Layer index.

        Returns
        -------
        ndarray, shape=[m, d_l]
        """
        return self._factor(l, "left")

    def right(self, l: int) -> F64:
        """The ``(d_l, n)`` factor of layer ``l`` (shared by its group when ``side == "right"``).

        Parameters
        ----------
        l : int
            Layer index.

        Returns
        -------
        ndarray, shape=[d_l, n]
        """
        return self._factor(l, "right")

    def _factor(self, l: int, side: Side) -> F64:
        """Layer ``l``'s factor on ``side``: its group's shared one, or its own."""
        return self.shared[self.groups[l]] if self.side == side else self.layer_factors[l]

    def weight(self, l: int) -> F64:
        """The compressed weight ``W'_l = left(l) @ right(l)``.

        Parameters
        ----------
        l : int
            Layer index.

        Returns
        -------
        ndarray, shape=[m, n]
        """
        return self.left(l) @ self.right(l)


def _layer_ranks(ranks: Any, L: int, m: int, n: int) -> NDArray[np.intp]:
    """``ranks`` as ``L`` integers in ``[1, min(m, n)]``, or a ``ValueError`` naming the value."""
    arr = np.asarray(ranks)
    if arr.shape != (L,) or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ranks must be {L} integers (one per layer); got ranks = {ranks!r}")
    top = min(m, n)
    bad = np.flatnonzero((arr < 1) | (arr > top))
    if bad.size:
        l = int(bad[0])
        raise ValueError(
            f"per-layer ranks must satisfy 1 <= d_l <= min(m, n) = {top}; "
            f"got ranks[{l}] = {int(arr[l])}"
        )
    return arr.astype(np.intp)


@dataclass(frozen=True)
class Factoriser:
    """One method of :func:`factorise`: its options, its covariance need, its solver.

    :func:`factorise` checks what every method shares (the options' owners,
    the family's shapes, the rank, ``C``) and hands the rest to the method's
    entry of :data:`FACTORISERS`; :func:`register_factoriser` adds one.

    Attributes
    ----------
    name : str
        The ``method`` argument of :func:`factorise`.
    options : mapping of str to Any
        The keyword options the method takes, with their defaults; any other
        method given one of them away from its default is refused.
    needs_covariance : callable
        ``needs_covariance(options)``: whether ``C`` is required, given every
        option's value (defaults filled in, after :attr:`check`).
    run : callable
        ``run(W, C, rank, ranks, options)`` -> :class:`Factorisation`, with
        ``W`` validated (``L x m x n`` float64), ``C`` validated or None,
        exactly one of ``rank`` (an int) and ``ranks`` (``L`` ints in ``[1,
        min(m, n)]``) given.
    ranks : bool
        Whether the method takes per-layer ``ranks``.
    check : callable, optional
        ``check(options)`` -> the options checked and converted (raises
        ``ValueError`` naming the value); called before ``W`` is read.
    describe : callable, optional
        ``describe(options)``: words that qualify the method in the message
        about a missing ``C`` (``" with metric='activation' and lam = 1"``).
    """

    name: str
    options: Mapping[str, Any]
    needs_covariance: Callable[[Mapping[str, Any]], bool]
    run: Callable[[F64, F64 | None, int | None, NDArray[np.intp] | None, Mapping[str, Any]],
                  Factorisation]  # fmt: skip
    ranks: bool = False
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    describe: Callable[[Mapping[str, Any]], str] | None = None


#: every method of :func:`factorise`, by name (see :func:`register_factoriser`)
FACTORISERS: dict[str, Factoriser] = {}


def register_factoriser(factoriser: Factoriser) -> Factoriser:
    """Add a method to :func:`factorise` (and to :data:`METHODS`); returns it.

    Parameters
    ----------
    factoriser : Factoriser
        Its :attr:`Factoriser.name` becomes a ``method`` of :func:`factorise`.

    Returns
    -------
    Factoriser
        ``factoriser``.

    Raises
    ------
    ValueError
        For a name already registered.
    """
    global METHODS
    if factoriser.name in FACTORISERS:
        raise ValueError(f"method {factoriser.name!r} is already registered")
    FACTORISERS[factoriser.name] = factoriser
    METHODS = tuple(FACTORISERS)
    return factoriser


def _check_options(method: str, options: Mapping[str, Any], ranks: Any) -> None:
    """Raise for an option given a value that its method does not take."""
    if ranks is not None and not FACTORISERS[method].ranks:
        takers = " and ".join(repr(f.name) for f in FACTORISERS.values() if f.ranks)
        raise ValueError(
            f"ranks applies to methods {takers} only; got ranks with method {method!r}"
        )
    own = FACTORISERS[method].options
    for name, value in options.items():
        if name in own:
            continue
        owners = [f.name for f in FACTORISERS.values() if name in f.options]
        if not owners:
            raise TypeError(f"factorise() got an unexpected keyword argument {name!r}")
        default = FACTORISERS[owners[0]].options[name]
        if value != default:
            owner = " or ".join(repr(o) for o in owners)
            raise ValueError(
                f"{name} applies to method {owner} only; got {name} = {value!r} "
                f"with method {method!r}"
            )


def factorise(
    W: ArrayLike,
    C: ArrayLike | None,
    method: str,
    rank: int | None,
    *,
    ranks: Sequence[int] | ArrayLike | None = None,
    **options: Any,
) -> Factorisation:
    """Compress a layer family with one method; the factors, what they share, the errors.

    See the module docstring for the methods and :class:`Factorisation` for
    the factors.  The errors are the ones the methods' own routines compute:
    for the output-side sections :meth:`grassbundle.BundleProblem.layer_energies`
    (and the section's fractions), for Basis Sharing
    :func:`grassbundle.basis_sharing_input`'s, and for per-layer ``ranks``
    :func:`reconstruction_errors`.  The method is looked up in
    :data:`FACTORISERS`; the options are the methods' own (each refused
    away from its default by a method that does not take it).

    Parameters
    ----------
    W : array-like, shape=[L, m, n]
        The family's weights, ``y = W_l x``.
    C : array-like, shape=[L, n, n], or None
        Calibration covariances ``E[x x^T]`` of the layers' inputs (symmetric
        positive semi-definite).  None only where the method needs none
        (``"svd"``, and ``"bundle"`` with ``metric="weight"`` and ``lam =
        0``); given there, it only adds the activation errors.
    method : {"svd", "svd-llm", "bundle", "basis-sharing"}
        Or any name added by :func:`register_factoriser`.
    rank : int or None
        The rank ``d`` of every layer: ``1 <= d < m`` and ``d <= n`` for the
        output-side methods, ``1 <= d <= n`` for ``"basis-sharing"``.  None
        exactly when ``ranks`` is given.
    ranks : sequence of int, shape=[L], optional
        ``"svd-llm"``: one rank per layer, ``1 <= d_l <= min(m, n)``.
        ``"bundle"`` at the tied corner (``lam = 0``, no coupling): one rank
        per layer, equal within each group of ``tying`` consecutive layers
        (the group's basis), below ``m``; each group is then the corner of its
        own layers at its own rank.
    **options
        The method's own options (its :attr:`Factoriser.options`):

        * ``lam`` (float, default 0.0): ``"bundle"``'s anchor strength,
          ``>= 0`` or ``inf``;
        * ``tying`` (int, default 1): ``"bundle"``'s tying degree ``k``,
          ``1 <= k <= L``;
        * ``metric`` ({"weight", "activation"}, default "weight"):
          ``"bundle"``'s energy;
        * ``coupling`` (float, default 0.0): ``"bundle"``'s soft coupling
          ``mu >= 0`` of adjacent layers (finite; needs ``tying = 1`` and a
          finite ``lam``);
        * ``group_size`` (int, default 2): ``"basis-sharing"``'s layers per
          group, ``1 <= group_size <= L``.

    Returns
    -------
    Factorisation

    Raises
    ------
    ValueError
        For an unknown method, an option the method does not take, bad
        shapes or non-finite entries, a rank out of range, ``C = None`` where
        the method needs covariances, and, where it does, a layer whose
        activation energy ``tr(W_l C_l W_l^T)`` is zero (its activation
        errors, and SVD-LLM's subspace, are undefined there).
    """
    entry = FACTORISERS.get(method)
    if entry is None:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    _check_options(method, options, ranks)
    values = {**entry.options, **{k: v for k, v in options.items() if k in entry.options}}
    if entry.check is not None:
        values = entry.check(values)
    W64 = _validate.family(W)
    L, m, n = W64.shape
    if ranks is not None and rank is not None:
        raise ValueError(
            f"give one rank for every layer or per-layer ranks, not both; got rank = {rank!r} "
            "and ranks"
        )
    if ranks is None and rank is None:
        raise ValueError("need a rank (or per-layer ranks for method 'svd-llm'); got rank = None")
    C64: F64 | None = None
    needs = entry.needs_covariance(values)
    if C is None:
        if needs:
            what = entry.describe(values) if entry.describe is not None else ""
            raise ValueError(
                f"method {method!r}{what} needs the input covariances C of shape (L, n, n) = "
                f"{(L, n, n)}; got C = None"
            )
    else:
        C64 = _validate.covariance_stack(C, L, n, "C", psd=False, matrix=False)
        if needs:
            # tr(W_l C_l W_l^T) through BLAS (a three-operand einsum loops in C)
            energy = np.einsum("lij,lij->l", W64 @ C64, W64)
            zero = [int(l) for l in np.flatnonzero(~(energy > 0))]
            if zero:
                raise ValueError(
                    f"zero activation energy tr(W_l C_l W_l^T) in layers {zero}: no calibration "
                    "input reaches what these layers respond to, so their activation errors "
                    "(and SVD-LLM's subspace, the anchor) are undefined"
                )
    per_layer = None if ranks is None else _layer_ranks(ranks, L, m, n)
    return entry.run(W64, C64, rank, per_layer, values)


def _output_side(
    method: str,
    W: F64,
    C: F64 | None,
    rank: int,
    section_of: Callable[[BundleProblem], Any],
    *,
    metric: str = "weight",
) -> Factorisation:
    """An output-side section ``W'_l = P_{U_l} W_l``; ``section_of(problem)`` solves it."""
    L, m, n = W.shape
    problem = BundleProblem(W, C, rank=rank, metric=metric)  # type: ignore[arg-type]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 fractions are set to 0 below
        section = section_of(problem)
    bases = np.asarray(section.bases, dtype=np.float64)
    groups = np.asarray(section.groups, dtype=np.intp)
    energies = problem.layer_energies(bases[groups])
    frob = energies["frobenius"]
    assert frob is not None
    act = energies["activation"]
    act_frac = None
    if act is not None:
        assert problem._act_tr is not None  # tr M_l, the section's denominators
        act_frac = _fraction(act, problem._act_tr)
    shared = tuple(bases[g] for g in range(bases.shape[0]))
    own = tuple(bases[groups[l]].T @ W[l] for l in range(L))
    return Factorisation(
        method=method,
        side="left",
        shared=shared,
        layer_factors=own,
        groups=groups,
        ranks=np.full(L, rank, dtype=np.intp),
        frobenius_error=np.asarray(frob),
        frobenius_fraction=np.asarray(section.frobenius_error),
        activation_error=act,
        activation_fraction=act_frac,
        params_kept=_params(shared, own),
        params_dense=L * m * n,
    )


def _tied_corner(k: int) -> Callable[[BundleProblem], Any]:
    """The solver of the tied corner (``lam = 0``) with groups of ``k`` layers."""
    return lambda problem: solve(problem, 0.0, k)


def _bundle_section(problem: BundleProblem, lam: float, tying: int, mu: float) -> Any:
    """The bundle's section: soft-coupled (``mu > 0``, evaluated at ``lam``) or tied."""
    if mu > 0:
        coupled = solve_coupled(problem, lam, mu)
        # per-layer bases (L, m, d): evaluated as an untied section
        L = problem.W.shape[0]
        return evaluate_section(problem, coupled.bases, np.arange(L), lam=lam)
    return solve(problem, lam, tying)


def _basis_sharing(W: F64, C: F64, rank: int, group_size: int) -> Factorisation:
    """Basis Sharing as its authors build it: a shared input-side basis per group."""
    L, m, n = W.shape
    share = basis_sharing_input(W, C, rank, group_size)
    shared = tuple(share.right[g] for g in range(share.right.shape[0]))
    own = tuple(share.left[l] for l in range(L))
    act_total = np.einsum("lij,lij->l", W @ C, W)
    return Factorisation(
        method="basis-sharing",
        side="right",
        shared=shared,
        layer_factors=own,
        groups=share.groups,
        ranks=np.full(L, int(rank), dtype=np.intp),
        frobenius_error=share.frobenius_error,
        frobenius_fraction=share.frobenius_error / np.einsum("lij,lij->l", W, W),
        activation_error=share.activation_error,
        activation_fraction=_fraction(share.activation_error, act_total),
        params_kept=_params(shared, own),
        params_dense=L * m * n,
    )


def _per_layer_svd_llm(W: F64, C: F64, ranks: NDArray[np.intp]) -> Factorisation:
    """SVD-LLM's truncation layer by layer, each layer at its own rank (untied)."""
    L, m, n = W.shape
    fits = [svd_llm_update(W[l], C[l], rank=int(ranks[l]), ridge=0.0) for l in range(L)]
    shared = tuple(f.left for f in fits)
    own = tuple(f.right for f in fits)
    errors = reconstruction_errors(W, np.stack([f.weight() for f in fits]), C)
    return Factorisation(
        method="svd-llm",
        side="left",
        shared=shared,
        layer_factors=own,
        groups=np.arange(L, dtype=np.intp),
        ranks=ranks,
        frobenius_error=errors.frobenius_error,
        frobenius_fraction=errors.frobenius_fraction,
        activation_error=errors.activation_error,
        activation_fraction=errors.activation_fraction,
        params_kept=_params(shared, own),
        params_dense=L * m * n,
    )


def _per_group_bundle(
    W: F64, C: F64 | None, ranks: NDArray[np.intp], tying: int, metric: str
) -> Factorisation:
    """The tied corner (``lam = 0``) with each group of ``tying`` layers at its own rank.

    The corner's objective is a sum over groups, each group's term depending
    only on its own basis, so the minimiser solves every group alone: group
    ``g`` is the corner of the sub-family ``W[g]`` at rank ``d_g`` (the same
    ``omega_l``, which depend on each layer alone).
    """
    L, m, n = W.shape
    if not _validate.is_integer(tying) or not 1 <= int(tying) <= L:
        raise ValueError(f"tying must satisfy 1 <= k <= L = {L}; got tying = {tying!r}")
    k = int(tying)
    starts = range(0, L, k)
    for s in starts:
        block = ranks[s : s + k]
        if np.any(block != block[0]):
            raise ValueError(
                "per-layer ranks must be equal within a tied group (its layers share one "
                f"basis); got ranks[{s}:{s + len(block)}] = {block.tolist()}"
            )
        if block[0] >= m:
            raise ValueError(f"a group's rank must be below m = {m}; got ranks[{s}] = {block[0]}")
    parts = [
        _output_side(
            "bundle", W[s : s + k], None if C is None else C[s : s + k], int(ranks[s]),
            _tied_corner(min(s + k, L) - s),
            metric=metric,
        )
        for s in starts
    ]  # fmt: skip
    act = [p.activation_error for p in parts if p.activation_error is not None]
    frac = [p.activation_fraction for p in parts if p.activation_fraction is not None]
    shared = tuple(b for p in parts for b in p.shared)
    own = tuple(f for p in parts for f in p.layer_factors)
    return Factorisation(
        method="bundle",
        side="left",
        shared=shared,
        layer_factors=own,
        groups=np.asarray([l // k for l in range(L)], dtype=np.intp),
        ranks=ranks,
        frobenius_error=np.concatenate([p.frobenius_error for p in parts]),
        frobenius_fraction=np.concatenate([p.frobenius_fraction for p in parts]),
        activation_error=np.concatenate(act) if C is not None else None,
        activation_fraction=np.concatenate(frac) if C is not None else None,
        params_kept=_params(shared, own),
        params_dense=L * m * n,
    )


def _params(shared: tuple[F64, ...], own: tuple[F64, ...]) -> int:
    return int(sum(a.size for a in shared) + sum(b.size for b in own))


# --------------------------------------------------------------------------- the methods


def _check_bundle(options: dict[str, Any]) -> dict[str, Any]:
    want = "a finite number >= 0"
    options["lam"] = check_lam(options["lam"])
    options["coupling"] = _validate.nonnegative(
        options["coupling"], "coupling", allow_inf=False, want=want, bad=want
    )
    metric = options["metric"]
    if metric not in ("weight", "activation"):
        raise ValueError(f"metric must be 'weight' or 'activation'; got metric = {metric!r}")
    return options


def _run_svd(
    W: F64, C: F64 | None, rank: int | None, ranks: Any, o: Mapping[str, Any]
) -> Factorisation:
    assert rank is not None
    return _output_side("svd", W, C, rank, lambda problem: solve(problem, 0.0, 1))


def _run_svd_llm(
    W: F64, C: F64 | None, rank: int | None, ranks: Any, o: Mapping[str, Any]
) -> Factorisation:
    assert C is not None
    if ranks is not None:
        return _per_layer_svd_llm(W, C, ranks)
    assert rank is not None
    return _output_side("svd-llm", W, C, rank, anchor_section)


def _run_bundle(
    W: F64, C: F64 | None, rank: int | None, ranks: Any, o: Mapping[str, Any]
) -> Factorisation:
    lam, tying, metric, mu = o["lam"], o["tying"], o["metric"], o["coupling"]
    if ranks is not None:
        if lam != 0 or mu != 0:
            raise ValueError(
                "per-group ranks of the bundle need the tied corner, lam = 0 and coupling = 0 "
                f"(its energy is then a sum over groups); got lam = {lam:g}, coupling = {mu:g}"
            )
        return _per_group_bundle(W, C, ranks, tying, metric)
    assert rank is not None
    if mu > 0 and tying != 1:
        raise ValueError(
            f"coupling > 0 couples untied sections and needs tying = 1; got tying = {tying!r}"
        )
    return _output_side(
        "bundle", W, C, rank, lambda p: _bundle_section(p, lam, tying, mu), metric=metric
    )


def _run_basis_sharing(
    W: F64, C: F64 | None, rank: int | None, ranks: Any, o: Mapping[str, Any]
) -> Factorisation:
    assert C is not None and rank is not None
    return _basis_sharing(W, C, rank, o["group_size"])


register_factoriser(Factoriser("svd", {}, lambda o: False, _run_svd))
register_factoriser(Factoriser("svd-llm", {}, lambda o: True, _run_svd_llm, ranks=True))
register_factoriser(
    Factoriser(
        "bundle",
        {"lam": 0.0, "tying": 1, "metric": "weight", "coupling": 0.0},
        lambda o: o["metric"] == "activation" or o["lam"] > 0,
        _run_bundle,
        ranks=True,
        check=_check_bundle,
        describe=lambda o: f" with metric={o['metric']!r} and lam = {o['lam']:g}",
    )
)
register_factoriser(
    Factoriser("basis-sharing", {"group_size": 2}, lambda o: True, _run_basis_sharing)
)
