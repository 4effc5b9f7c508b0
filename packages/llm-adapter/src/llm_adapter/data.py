"""Calibration text and the project's window sampling.

What the code does: the text is tokenised once, then ``samples`` windows of
``seq_len`` consecutive *tokens* are taken from its ``n_tokens`` tokens, by one
of two rules (:data:`WINDOW_MODES`; :func:`sample_windows`'s ``mode``,
:func:`llm_adapter.calibrate`'s ``windows``):

- ``"random"`` (the default, and what every shipped result used): start
  offsets drawn from a seeded generator
  (``numpy.random.default_rng(seed).integers(0, n_tokens - seq_len + 1)``),
  independently, so windows may overlap, within a seed and across seeds;
- ``"disjoint"``: the tokens are cut into ``S = n_tokens // seq_len``
  non-overlapping slots (slot ``i`` is tokens ``[i * seq_len, (i + 1) *
  seq_len)``; the last ``n_tokens % seq_len`` tokens are never used), the slot
  indices are shuffled once by a generator that does not depend on the seed,
  ``perm = numpy.random.default_rng(0).permutation(S)``
  (:data:`DISJOINT_SEED`), and seed ``s`` takes the slots ``perm[s * samples :
  (s + 1) * samples]``, in that order.  Seeds 0, 1, 2, ... of the same text,
  ``samples`` and ``seq_len`` therefore get pairwise disjoint windows, and no
  two windows of one seed overlap.  Seed ``s`` needs ``(s + 1) * samples <=
  S``; otherwise :func:`sample_windows` raises :class:`~llm_adapter.DataError`
  (:func:`check_disjoint` is the check alone).

This is not SVD-LLM's loader, though it has its shape (random windows of a
fixed length from one seeded generator): SVD-LLM's authors draw *character*
offsets into the raw training split with a fixed seed and tokenise
each window's text, so their windows differ from these even at the same
seed and text.  Compare methods within this project's protocol, not against
figures computed with theirs.

WikiText text comes in two published variants.  The *tokenized* one
(``wikitext-2-v1``, ``wiki.*.tokens``) replaces rare words by ``<unk>``; the
*raw* one (``wikitext-2-raw-v1``, ``wiki.*.raw``) keeps them.  Both keep
WikiText's own spacing: a space on each side of punctuation and brackets, and
number separators written ``@-@``, ``@,@`` and ``@.@`` (``1 @,@ 000``).
:func:`detokenize_wikitext` undoes that spacing by lm-evaluation-harness's
rules for its ``wikitext`` task; it does not restore the words behind
``<unk>``.  :func:`is_tokenized_wikitext` recognises the tokenized variant.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .errors import AdapterError, DataError, check_choice, mention

__all__ = [
    "DISJOINT_SEED",
    "WINDOW_MODES",
    "check_disjoint",
    "detokenize_wikitext",
    "is_tokenized_wikitext",
    "load_text",
    "resolve_detokenize",
    "sample_windows",
    "text_fingerprint",
    "text_variant",
    "tokenize_text",
]

#: WikiText's number separators: ``1 @,@ 000``, ``2 @.@ 5``, ``guest @-@ starring``
NUMBER_SEPARATORS = (" @-@ ", " @,@ ", " @.@ ")
#: WikiText's marker of a word out of the tokenized variant's vocabulary
UNKNOWN_WORD = "<unk>"
#: how :func:`sample_windows` chooses the calibration windows (the first is the default)
WINDOW_MODES = ("random", "disjoint")
#: the seed of the one shuffle of the slots that every seed's ``"disjoint"`` windows come from
DISJOINT_SEED = 0

#: lm-evaluation-harness's ``wikitext_detokenizer`` (``tasks/wikitext/preprocess_wikitext.py``)
#: as steps applied in order: ``("str", old, new)`` replaces every occurrence of ``old``,
#: ``("re", pattern, replacement)`` every match.  The harness also has a rule written
#: with literal slashes (``/' [0-9]/``), which never matches WikiText; it is left out.
_DETOKENIZE_STEPS: tuple[tuple[str, str, str], ...] = (
    ("str", "s '", "s'"),  # plural possessive: players ' -> players'
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),  # ( text ) -> (text); pairs in order
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r'"\s*([^"]*?)\s*"', r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="),  # heading marks
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)
#: an article's title line, `` = Title = `` (section headings have two or more ``=``)
_ARTICLE = re.compile(r"^ = [^=].* = ?$", re.MULTILINE)


def _detokenize_article(text: str) -> str:
    for kind, old, new in _DETOKENIZE_STEPS:
        text = text.replace(old, new) if kind == "str" else re.sub(old, new, text)
    return text


def detokenize_wikitext(text: str) -> str:
    """WikiText's spacing undone, by lm-evaluation-harness's ``wikitext`` rules.

    The rules, in order: ``s '`` -> ``s'``; the number separators ``@-@``,
    ``@,@``, ``@.@`` with their spaces -> ``-``, ``,``, ``.``; the space before
    ``:``, ``;``, ``.``, ``!``, ``?`` and ``,`` (when a space follows) removed;
    the spaces inside each pair of ``()``, ``[]``, ``{}``, ``""`` and ``''``
    removed (pairs taken in order of appearance); heading marks ``= = =``
    joined to ``===`` (and ``==``, ``====``); `` ° `` -> ``°``; spaces at line
    ends and line starts removed; `` N `` -> `` 1 ``; `` 's`` -> ``'s``.

    The harness applies them to one article at a time; so does this function,
    cutting the text just after the leading space of every article title line
    (`` = Title = ``), so that an article with an odd number of quotes does not
    shift the pairing of the next (the space stays with the text before, where
    the line-start rule removes it as it would in one pass).  ``<unk>`` is left
    as it is.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
    """
    cuts = [m.start() + 1 for m in _ARTICLE.finditer(text)]
    bounds = zip([0, *cuts], [*cuts, len(text)], strict=True)
    return "".join(_detokenize_article(text[a:b]) for a, b in bounds)


def is_tokenized_wikitext(text: str) -> bool:
    """Whether ``text`` is WikiText's tokenized variant.

    True when it holds the unknown-word marker ``<unk>`` and at least one of
    the number separators `` @-@ ``, `` @,@ ``, `` @.@ ``.  The raw variant has
    the separators but no ``<unk>``, so it is not the tokenized variant (it is
    used as it is unless detokenization is asked for explicitly).

    Parameters
    ----------
    text : str

    Returns
    -------
    bool
    """
    return UNKNOWN_WORD in text and any(sep in text for sep in NUMBER_SEPARATORS)


def resolve_detokenize(detokenize: bool | str, text: str | None = None) -> bool:
    """Whether to detokenize: a bool as given, ``"auto"`` by :func:`is_tokenized_wikitext`.

    Parameters
    ----------
    detokenize : bool or {"auto"}
    text : str, optional
        Needed for ``"auto"``.

    Returns
    -------
    bool
    """
    if isinstance(detokenize, bool):
        return detokenize
    if detokenize != "auto":
        raise AdapterError(
            f"detokenize = {detokenize!r} is not one of true, false or 'auto'; give one of them"
        )
    if text is None:
        raise AdapterError("detokenize = 'auto' needs the text to inspect")
    return is_tokenized_wikitext(text)


def text_variant(text: str, detokenized: bool) -> str:
    """``"detokenized"``, ``"tokenized"`` (WikiText's tokenized variant as it is) or ``"raw"``."""
    if detokenized:
        return "detokenized"
    return "tokenized" if is_tokenized_wikitext(text) else "raw"


def load_text(
    text_path: str | os.PathLike[str] | None = None, dataset: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Calibration text from a local file or a hub dataset.

    Parameters
    ----------
    text_path : str or path, optional
        A UTF-8 text file.
    dataset : str, optional
        ``NAME[:CONFIG[:SPLIT]]`` of a hub dataset with a ``text`` column
        (e.g. ``wikitext:wikitext-2-raw-v1:train``; needs the ``datasets``
        package and internet).  Rows are joined with blank lines, as SVD-LLM does.

    Returns
    -------
    text : str
    source : dict
        Where the text came from, with a content hash (for the cache key and
        the manifest).
    """
    if (text_path is None) == (dataset is None):
        raise AdapterError("give exactly one of a calibration text file or a dataset name")
    if text_path is not None:
        path = Path(text_path)
        if not path.is_file():
            raise AdapterError(f"calibration file {str(text_path)!r} does not exist")
        text = path.read_text(encoding="utf-8", errors="replace")
        source: dict[str, Any] = {"text_path": str(path.resolve())}
    else:
        assert dataset is not None
        parts = dataset.split(":")
        name = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else "train"
        try:
            import datasets
        except ImportError:
            raise AdapterError(
                f"calibration dataset {dataset!r} needs the datasets package (pip install "
                f"datasets); or pass a local file with {mention('text_path')}"
            ) from None
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:200]
            raise AdapterError(
                f"cannot load calibration dataset {dataset!r} (hub unreachable or no such "
                f"dataset): {msg}"
            ) from None
        if "text" not in ds.column_names:
            raise AdapterError(
                f"calibration dataset {dataset!r} has no 'text' column; columns: {ds.column_names}"
            )
        text = "\n\n".join(ds["text"])
        source = {"dataset": dataset}
    if not text.strip():
        raise AdapterError(f"calibration text from {source} is empty")
    source["sha256"] = text_fingerprint(text)
    return text, source


def text_fingerprint(text: str) -> str:
    """sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenize_text(text: str, tokenizer: Any) -> NDArray[np.int64]:
    """All token ids of ``text`` (no special tokens added), shape ``(n_tokens,)``."""
    chunks = []
    # tokenise line blocks to keep memory modest on long texts; a block boundary
    # falls on a newline, which byte-level BPE never merges across
    block = 1 << 20
    start = 0
    while start < len(text):
        end = min(len(text), start + block)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        ids = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        chunks.append(np.asarray(ids, dtype=np.int64))
        start = end
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def check_disjoint(n_tokens: int, samples: int, seq_len: int, seed: int) -> None:
    """Raise :class:`~llm_adapter.DataError` unless seed ``seed`` has ``samples`` disjoint windows.

    The ``"disjoint"`` rule of :func:`sample_windows` gives seed ``s`` the slots
    ``s * samples`` to ``(s + 1) * samples - 1`` of the shuffled ``n_tokens //
    seq_len`` slots; this checks that they exist (and that ``seed >= 0``).
    The message names the values and the fixes.

    Parameters
    ----------
    n_tokens, samples, seq_len, seed : int
    """
    slots = n_tokens // seq_len if seq_len >= 1 else 0
    if seed < 0:
        raise DataError(
            f"{mention('windows', 'disjoint')} numbers its seeds from 0; got "
            f"{mention('seed', seed)} (give a seed >= 0, or {mention('windows', 'random')})",
            key="seed",
            value=seed,
            reason="must be >= 0",
        )
    if samples < 1 or (seed + 1) * samples <= slots:
        return
    most = slots // samples - 1
    seeds = f", {mention('seed')} <= {most}" if most >= 0 else ""
    each = f" (seeds 0 to {seed} take {samples} each)" if seed > 0 else ""
    raise DataError(
        f"{mention('windows', 'disjoint')} cuts the {n_tokens}-token text into {slots} "
        f"non-overlapping windows of {mention('seq_len', seq_len)}, and "
        f"{mention('seed', seed)} with {mention('samples', samples)} needs "
        f"{(seed + 1) * samples} of them{each}; use fewer "
        f"{mention('samples')}, a shorter "
        f"{mention('seq_len')}{seeds}, a longer text, or {mention('windows', 'random')}",
        key="windows",
        value="disjoint",
        reason=f"seed {seed} needs {(seed + 1) * samples} windows, the text has {slots}",
    )


def sample_windows(
    token_ids: NDArray[np.int64] | torch.Tensor,
    samples: int,
    seq_len: int,
    seed: int,
    mode: str = "random",
) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` consecutive tokens, chosen by ``mode`` and ``seed``.

    ``"random"`` is SVD-LLM's protocol (seeded random offsets; windows may
    overlap); ``"disjoint"`` takes non-overlapping slots, disjoint across
    seeds (the module notes give both rules).

    Parameters
    ----------
    token_ids : array-like of int, shape=[n_tokens]
    samples : int
        Number of windows ``N >= 1``.
    seq_len : int
        Tokens per window, ``1 <= seq_len <= n_tokens``.
    seed : int
        ``"random"``: seed of the ``numpy.random.Generator`` that draws the
        offsets.  ``"disjoint"``: which block of ``samples`` shuffled slots
        (``seed >= 0``, ``(seed + 1) * samples <= n_tokens // seq_len``).
    mode : {"random", "disjoint"}, default "random"
        :data:`WINDOW_MODES`; :func:`llm_adapter.calibrate`'s ``windows``
        (messages name it so).

    Returns
    -------
    windows : torch.LongTensor, shape=[samples, seq_len]
    """
    check_choice("windows", mode, WINDOW_MODES)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if samples < 1:
        raise DataError(
            f"need at least one calibration sample; got {mention('samples', samples)}",
            key="samples",
            value=samples,
            reason="must be >= 1",
        )
    if seq_len < 1:
        raise DataError(
            f"need a positive sequence length; got {mention('seq_len', seq_len)}",
            key="seq_len",
            value=seq_len,
            reason="must be >= 1",
        )
    if ids.size < seq_len:
        raise DataError(
            f"the calibration text has {ids.size} tokens, fewer than "
            f"{mention('seq_len', seq_len)}; use a longer text or a shorter sequence length",
            key="seq_len",
            value=seq_len,
            reason=f"longer than the calibration text ({ids.size} tokens)",
        )
    if mode == "disjoint":
        check_disjoint(ids.size, samples, seq_len, seed)
        perm = np.random.default_rng(DISJOINT_SEED).permutation(ids.size // seq_len)
        offsets = perm[seed * samples : (seed + 1) * samples] * seq_len
    else:
        rng = np.random.default_rng(seed)
        offsets = rng.integers(0, ids.size - seq_len + 1, size=samples)
    windows = np.stack([ids[o : o + seq_len] for o in offsets])
    return torch.from_numpy(windows)
