"""Evaluation: WikiText-2 perplexity and HellaSwag accuracy, as evaluation tasks.

Two measurements turn a (compressed) model into the numbers the paper argues
about.  Each is an evaluation task (:class:`PerplexityTask`,
:class:`HellaSwagTask`); :func:`evaluate_model` runs a list of tasks, these
and the harness's (:class:`llm_adapter.lmeval.HarnessTask`), the registry
of which is :data:`llm_adapter.eval_tasks.EVAL_TASKS`.

**Perplexity** follows SVD-LLM's protocol [SVDLLM]_: the whole test text is
tokenised once, cut into non-overlapping windows of ``seq_len`` tokens (the
incomplete tail is dropped), every window is scored independently, and the
perplexity is ``exp`` of the mean next-token negative log-likelihood over
all predicted tokens of all windows (``seq_len - 1`` per window). The
sliding-window variant (``stride``) is the one in the transformers perplexity
guide: windows of at most ``seq_len`` tokens start every ``stride`` tokens and
only the tokens not scored by the previous window count, so each token after
the first is scored exactly once with at least ``seq_len - stride`` tokens of
context (more context, lower perplexity, ``seq_len / stride`` times the work).

With ``max_windows = N`` the non-overlapping protocol scores N of the text's
``M = n_tokens // seq_len`` windows: the first N (``windows="first"``, the
default) or N spread over the whole text (``windows="spread"``): window
indices ``numpy.random.default_rng(window_seed).choice(M, size=N,
replace=False)``, sorted, window ``i`` starting at token ``i * seq_len``.
The choice depends only on ``M``, ``N`` and the seed, so every model scored
on the same text and settings is scored on the same windows; the result
records their start offsets.

**HellaSwag** follows lm-evaluation-harness [Harness]_: the query is
``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, each
of the four choices is ``preprocess(ending)`` scored as the continuation
``" " + choice`` (tokenised as the harness does: the context's tokens, then the
tokens that the whole string adds), ``acc`` is the share of items whose
highest summed log-likelihood is the gold ending, and ``acc_norm`` divides
each log-likelihood by the choice's length in characters first.

The shared text format (six lines per item: ``activity_label: ctx``, the gold
label, four endings) has ``ctx_a`` and ``ctx_b`` already joined, without the
capitalisation; :func:`read_hellaswag` restores it by upper-casing the first
letter after the context's last sentence end, which is where ``ctx_b`` starts
in the ActivityNet items (WikiHow items have an empty ``ctx_b`` and their
last sentence already starts with a capital). The one case it can miss, a
``ctx_b`` that itself contains a sentence end, changes one letter of the
query.

On a GPU the weights are cast to bfloat16 (float16 where bfloat16 is not
supported) unless a dtype is given; log-softmax always runs in float32 and
sums accumulate in float64. On the CPU the weights stay in float32.

References
----------
.. [SVDLLM] X. Wang et al., "SVD-LLM: Truncation-aware Singular Value
   Decomposition for Large Language Model Compression", ICLR 2025
   (``ppl_eval`` in the authors' code).
.. [Harness] EleutherAI lm-evaluation-harness, ``tasks/hellaswag/utils.py``
   and ``HFLM._encode_pair`` / ``_loglikelihood_tokens``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .data import tokenize_text
from .errors import AdapterError, DataError, mention
from .models import model_device, resolve_device, resolve_dtype

__all__ = [
    "EvalTask",
    "HellaSwagItem",
    "HellaSwagResult",
    "HellaSwagTask",
    "PerplexityResult",
    "PerplexityTask",
    "evaluate_hellaswag",
    "evaluate_model",
    "perplexity",
    "prepare_for_eval",
    "preprocess",
    "read_hellaswag",
    "read_wikitext",
]

#: hub names used when no local file is given (loaded through ``datasets``)
HUB_WIKITEXT = ("wikitext", "wikitext-2-raw-v1")
HUB_HELLASWAG = "Rowan/hellaswag"
#: the fields of an original HellaSwag record
HELLASWAG_KEYS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
#: how :func:`perplexity` picks ``max_windows`` of the non-overlapping windows
WINDOW_RULES = ("first", "spread")


# --------------------------------------------------------------------------- devices


def _eval_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The weight dtype for evaluation: as asked, else bf16/fp16 on CUDA, as is on the CPU."""
    explicit = resolve_dtype(dtype)
    if explicit is not None:
        return explicit
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def prepare_for_eval(
    model: torch.nn.Module,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> torch.nn.Module:
    """Move ``model`` to ``device`` in evaluation mode, cast for the GPU.

    Parameters
    ----------
    model : torch.nn.Module
        A causal language model (transformers ``*ForCausalLM`` or compatible).
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``.
    dtype : str or torch.dtype or None
        ``"auto"`` or None: bfloat16 (else float16) on CUDA, unchanged on the CPU.

    Returns
    -------
    torch.nn.Module
        The same model, moved and in ``eval()`` mode.
    """
    dev = resolve_device(device)
    target = _eval_dtype(dev, dtype)
    if getattr(model, "hf_device_map", None) is None:  # not dispatched by accelerate
        model.to(dev)
    if target is not None:
        model.to(target)
    model.eval()
    return model


# --------------------------------------------------------------------------- text


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (optionally ``.bz2``/``.gz``), line ends normalised to ``\\n``."""
    opener: Any = open
    if path.suffix == ".bz2":
        opener = bz2.open
    elif path.suffix == ".gz":
        opener = gzip.open
    if not path.is_file():
        raise DataError(f"{path} is not a file; give the path of an existing text file")
    try:
        with opener(path, "rt", encoding="utf-8", newline=None) as fh:  # newline=None: CRLF -> LF
            return str(fh.read())
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        kind = f"{path.suffix[1:]}-compressed UTF-8 text" if opener is not open else "UTF-8 text"
        raise DataError(
            f"{path} cannot be read as {kind} ({' '.join(str(exc).split())[:120]}): the file "
            "is truncated or damaged; download it again"
        ) from None


def read_wikitext(path: str | Path | None = None, *, split: str = "test") -> str:
    """The WikiText-2 text to score, from a local file or the hub.

    Parameters
    ----------
    path : str or Path or None
        A local text file (``wiki.test.tokens``, ``wiki.test.raw``, optionally
        ``.bz2``/``.gz``), read verbatim with line ends normalised to ``\\n``.
        None: ``wikitext-2-raw-v1`` from the hub through ``datasets``, its
        lines joined with ``"\\n\\n"`` as SVD-LLM does.
    split : str
        Hub split (``"test"``, ``"validation"``, ``"train"``); ignored for a file.

    Returns
    -------
    str
    """
    if path is not None:
        return read_text_file(Path(path))
    dataset = _load_hub_dataset(*HUB_WIKITEXT, split=split)
    return "\n\n".join(dataset["text"])


def _load_hub_dataset(*names: str, split: str) -> Any:
    try:
        import datasets  # imported lazily: an optional dependency
    except ImportError as exc:
        raise AdapterError(
            f"reading {'/'.join(names)} from the hub needs the 'datasets' package, which is "
            "not installed; pip install datasets, or pass a local file "
            f"({mention('wikitext')} PATH / {mention('hellaswag')} PATH)"
        ) from exc
    return datasets.load_dataset(*names, split=split)


def tokenize_for_eval(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor, without special tokens."""
    return torch.from_numpy(tokenize_text(text, tokenizer))


# --------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one text under one model.

    Attributes
    ----------
    perplexity : float
        ``exp(nll)``.
    nll : float
        Mean next-token negative log-likelihood (nats) over the scored tokens.
    scored_tokens : int
        Tokens whose likelihood was counted.
    windows : int
        Forward passes of at most ``seq_len`` tokens.
    seq_len : int
    stride : int or None
        None for the non-overlapping protocol.
    seconds : float
        Wall time of the scoring loop (tokenisation excluded).
    tokens_per_second : float
        Tokens passed through the model per second (``windows * seq_len / seconds``
        for the non-overlapping protocol).
    window_nll : tuple of float
        Summed NLL (nats) of the tokens each window scored, in window order
        (paired comparisons of two models resample these windows).
    window_tokens : tuple of int
        Tokens each window scored.
    window_starts : tuple of int
        Token offset in the text where each of those windows starts.
    window_rule : str
        ``"first"`` or ``"spread"`` (see :func:`perplexity`).
    window_seed : int or None
        The seed of a ``"spread"`` choice; None for ``"first"``.
    """

    perplexity: float
    nll: float
    scored_tokens: int
    windows: int
    seq_len: int
    stride: int | None
    seconds: float
    tokens_per_second: float
    window_nll: tuple[float, ...] = ()
    window_tokens: tuple[int, ...] = ()
    window_starts: tuple[int, ...] = ()
    window_rule: str = "first"
    window_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _token_nll(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL, shape=[B, T-1], float32: log-softmax in float32 whatever the weights."""
    logits = model(input_ids=input_ids).logits
    shift = logits[:, :-1, :].float()
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def _max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer: Any = None,
    *,
    text: str | None = None,
    input_ids: torch.Tensor | Sequence[int] | None = None,
    seq_len: int = 2048,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = True,
    windows: str = "first",
    window_seed: int = 0,
) -> PerplexityResult:
    """WikiText-style perplexity: non-overlapping windows (SVD-LLM) or a sliding window.

    Parameters
    ----------
    model : transformers causal LM
        Already on its device (see :func:`prepare_for_eval`).
    tokenizer : transformers tokenizer, optional
        Needed when ``text`` is given.
    text : str, optional
        The text; tokenised whole, without special tokens.
    input_ids : torch.Tensor or sequence of int, shape=[N], optional
        Token ids instead of ``text``.
    seq_len : int
        Window length in tokens (SVD-LLM: 2048 for 2k-context models).
    stride : int, optional
        None (default): non-overlapping windows, the tail shorter than
        ``seq_len`` dropped, every window's ``seq_len - 1`` next-token
        predictions counted. An int ``1 <= stride <= seq_len``: sliding window
        over the whole text, each token after the first scored once with the
        ``seq_len - stride`` or more preceding tokens as context.
    batch_size : int
        Windows per forward pass (non-overlapping protocol; the sliding
        window runs one window at a time).
    max_windows : int, optional
        Score only ``max_windows`` windows (chosen by ``windows``).
    progress : bool
        Show a tqdm progress bar.
    windows : {"first", "spread"}
        Which ``max_windows`` windows: the first ones (default; the sliding
        window always takes the first), or, for the non-overlapping protocol,
        ``max_windows`` of all the text's windows chosen by
        ``numpy.random.default_rng(window_seed).choice`` without replacement
        and sorted (see the module documentation).
    window_seed : int
        Seed of the ``"spread"`` choice (``>= 0``).

    Returns
    -------
    PerplexityResult
    """
    from tqdm.auto import tqdm

    if (text is None) == (input_ids is None):
        raise AdapterError("give exactly one of text= or input_ids= to perplexity()")
    if text is not None:
        if tokenizer is None:
            raise AdapterError("perplexity(text=...) needs the tokenizer; pass tokenizer=")
        ids = tokenize_for_eval(tokenizer, text)
    else:
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    if not isinstance(seq_len, int) or seq_len < 2:
        raise AdapterError(f"seq_len={seq_len!r} must be an int >= 2 (tokens per window)")
    limit = _max_positions(model)
    if limit is not None and seq_len > limit:
        raise AdapterError(
            f"seq_len={seq_len} exceeds the model's max_position_embeddings={limit}; "
            f"pass {mention('seq_len', limit)} or less"
        )
    if batch_size < 1:
        raise AdapterError(f"batch_size={batch_size} must be >= 1")
    if max_windows is not None and max_windows < 1:
        raise AdapterError(f"max_windows={max_windows} must be >= 1 or None")
    if windows not in WINDOW_RULES:
        raise AdapterError(f"windows={windows!r} is not one of {', '.join(WINDOW_RULES)}")
    if isinstance(window_seed, bool) or not isinstance(window_seed, int) or window_seed < 0:
        raise AdapterError(f"window_seed={window_seed!r} must be an int >= 0")
    if windows == "spread" and stride is not None:
        raise AdapterError(
            "windows='spread' chooses among non-overlapping windows; drop "
            f"{mention('stride')} or keep windows='first'"
        )
    device = model_device(model)
    n = int(ids.numel())
    total = 0.0  # float64 accumulation of NLL sums
    count = 0
    passes = 0  # windows run through the model
    passed = 0
    per_nll: list[float] = []
    per_tokens: list[int] = []
    per_start: list[int] = []
    start = time.perf_counter()
    if stride is None:
        n_windows = n // seq_len
        if n_windows == 0:
            raise AdapterError(
                f"the text has {n} tokens, fewer than one window of seq_len={seq_len}; "
                f"give a longer text or a smaller {mention('seq_len')}"
            )
        every = ids[: n_windows * seq_len].view(n_windows, seq_len)
        chosen = np.arange(n_windows)
        if max_windows is not None and max_windows < n_windows:
            if windows == "spread":
                rng = np.random.default_rng(window_seed)
                chosen = np.sort(rng.choice(n_windows, size=max_windows, replace=False))
            else:
                chosen = chosen[:max_windows]
            n_windows = max_windows
        blocks = every[torch.from_numpy(chosen)]
        per_start = [int(i) * seq_len for i in chosen]
        bar = tqdm(total=n_windows, desc="perplexity", unit="win", disable=not progress)
        for b0 in range(0, n_windows, batch_size):
            batch = blocks[b0 : b0 + batch_size].to(device)
            nll = _token_nll(model, batch).double()
            per_nll += nll.sum(dim=1).tolist()
            per_tokens += [int(nll.shape[1])] * int(nll.shape[0])
            total += float(nll.sum())
            count += int(nll.numel())
            passes += int(batch.shape[0])
            passed += int(batch.numel())
            bar.update(int(batch.shape[0]))
        bar.close()
    else:
        if not isinstance(stride, int) or not 1 <= stride <= seq_len:
            raise AdapterError(f"stride={stride!r} must be an int with 1 <= stride <= seq_len")
        if n < 2:
            raise AdapterError(f"the text has {n} tokens; at least 2 are needed")
        begins = list(range(0, n - 1, stride))
        if max_windows is not None:
            begins = begins[:max_windows]
        prev_end = 1  # token 0 is never predicted
        bar = tqdm(total=len(begins), desc="perplexity (sliding)", unit="win", disable=not progress)
        for begin in begins:
            end = min(begin + seq_len, n)
            window = ids[begin:end].unsqueeze(0).to(device)
            nll = _token_nll(model, window)[0]  # predicts tokens begin+1 .. end-1
            new = end - max(prev_end, begin + 1)  # tokens not scored before
            if new > 0:
                part = float(nll[-new:].double().sum())
                total += part
                count += new
                per_nll.append(part)
                per_tokens.append(new)
                per_start.append(begin)
            prev_end = max(prev_end, end)
            passes += 1
            passed += int(window.numel())
            bar.update(1)
            if end == n:
                break
        bar.close()
    seconds = time.perf_counter() - start
    mean = total / count
    return PerplexityResult(
        perplexity=math.exp(mean),
        nll=mean,
        scored_tokens=count,
        windows=passes,
        seq_len=seq_len,
        stride=stride,
        seconds=seconds,
        tokens_per_second=passed / seconds if seconds > 0 else float("inf"),
        window_nll=tuple(per_nll),
        window_tokens=tuple(per_tokens),
        window_starts=tuple(per_start),
        window_rule=windows,
        window_seed=window_seed if windows == "spread" else None,
    )


# --------------------------------------------------------------------------- HellaSwag


def preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag text clean-up.

    Strip, turn the WikiHow ``" [title]"`` marker into a sentence end, remove
    the remaining bracketed markers and collapse double spaces (once, as the
    harness does).

    Parameters
    ----------
    text : str

    Returns
    -------
    str
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


@dataclass(frozen=True)
class HellaSwagItem:
    """One HellaSwag item, already preprocessed.

    Attributes
    ----------
    query : str
        ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``.
    choices : tuple of str, length 4
        ``preprocess(ending)`` for each ending.
    label : int
        Index of the gold ending, 0..3.
    """

    query: str
    choices: tuple[str, ...]
    label: int


_SENTENCE_END = re.compile(r"[.!?] ")


def _capitalise_ctx_b(line: str) -> str:
    """Upper-case the first letter after the last sentence end (see the module notes)."""
    head, sep, ctx = line.partition(": ")
    if not sep:
        head, ctx = "", line
    ends = list(_SENTENCE_END.finditer(ctx))
    at = ends[-1].end() if ends else 0
    if at < len(ctx):
        ctx = ctx[:at] + ctx[at].upper() + ctx[at + 1 :]
    return f"{head}{sep}{ctx}"


def _item_from_hub(doc: dict[str, Any]) -> HellaSwagItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = preprocess(doc["activity_label"] + ": " + ctx)
    return HellaSwagItem(
        query=query,
        choices=tuple(preprocess(e) for e in doc["endings"]),
        label=int(doc["label"]),
    )


def hellaswag_text_blocks(lines: list[str], source: str) -> Iterator[tuple[str, str, list[str]]]:
    """The items of the six-line HellaSwag text format, checked.

    Parameters
    ----------
    lines : list of str
        The file's lines (no trailing empty line).
    source : str
        The file, for messages.

    Yields
    ------
    (context, label, endings)
        ``activity_label: ctx`` with ``ctx_b``'s capital restored, the gold
        label (``"0"``..``"3"``) and the four endings.
    """
    if len(lines) % 6:
        raise DataError(
            f"{source} has {len(lines)} lines, not a multiple of 6; the text format is six "
            "lines per item: 'activity_label: ctx', the gold label (0-3), four endings"
        )
    for i in range(0, len(lines), 6):
        label_text = lines[i + 1].strip()
        if label_text not in {"0", "1", "2", "3"}:
            raise DataError(
                f"{source} line {i + 2}: gold label {label_text!r} is not 0-3; "
                "is this the six-lines-per-item HellaSwag text format?"
            )
        yield _capitalise_ctx_b(lines[i]), label_text, lines[i + 2 : i + 6]


def hellaswag_jsonl(path: Path, text: str, limit: int | None) -> Iterator[dict[str, Any]]:
    """The records of a HellaSwag jsonl file, with the original keys checked.

    Parameters
    ----------
    path : Path
        The file, for messages.
    text : str
        Its text.
    limit : int, optional
        Stop after this many records.

    Yields
    ------
    dict
        ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``.
    """
    count = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            record = {k: doc[k] for k in HELLASWAG_KEYS}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path} line {lineno} is not a HellaSwag jsonl record ({exc!r}); expected "
                f"keys {', '.join(HELLASWAG_KEYS)}"
            ) from None
        yield record
        count += 1
        if limit is not None and count >= limit:
            return


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` names a JSON-lines file (``.jsonl``/``.json``, compressed or not)."""
    stem = [s for s in path.suffixes if s not in {".bz2", ".gz"}]
    return bool(stem) and stem[-1] in {".jsonl", ".json"}


def split_lines(text: str) -> list[str]:
    """The lines of ``text``, without the empty one after a final newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_hellaswag(
    path: str | Path | None = None, *, limit: int | None = None
) -> list[HellaSwagItem]:
    """HellaSwag validation items from the six-line text format, a jsonl file or the hub.

    Parameters
    ----------
    path : str or Path or None
        ``*.txt`` / ``*.txt.bz2``: six lines per item (``activity_label: ctx``,
        gold label, four endings). ``*.jsonl`` (optionally ``.gz``/``.bz2``):
        the original HellaSwag records (``activity_label``, ``ctx_a``,
        ``ctx_b``, ``endings``, ``label``). None: ``Rowan/hellaswag``
        validation from the hub through ``datasets``.
    limit : int, optional
        Keep the first ``limit`` items.

    Returns
    -------
    list of HellaSwagItem
    """
    if limit is not None and limit < 1:
        raise AdapterError(f"limit={limit} must be >= 1 or None")
    items: list[HellaSwagItem] = []
    if path is None:
        dataset = _load_hub_dataset(HUB_HELLASWAG, split="validation")
        for doc in dataset:
            items.append(_item_from_hub(doc))
            if limit is not None and len(items) >= limit:
                break
        return items
    p = Path(path)
    text = read_text_file(p)
    if is_jsonl(p):
        items = []
        for doc in hellaswag_jsonl(p, text, limit):
            try:
                items.append(_item_from_hub(doc))
            except (TypeError, ValueError) as exc:  # a label that is not 0-3, an ending not text
                raise DataError(
                    f"{p}: HellaSwag record {len(items) + 1} is malformed ({exc!r})"
                ) from None
        return items
    lines = split_lines(text)
    if limit is not None:
        lines = lines[: 6 * limit]
    return [
        HellaSwagItem(
            query=preprocess(context),
            choices=tuple(preprocess(e) for e in endings),
            label=int(label),
        )
        for context, label, endings in hellaswag_text_blocks(lines, str(p))
    ]


@dataclass(frozen=True)
class HellaSwagResult:
    """HellaSwag accuracy.

    Attributes
    ----------
    acc : float
        Share of items whose highest summed log-likelihood is the gold ending.
    acc_norm : float
        The same after dividing each log-likelihood by the choice's length in characters.
    items : int
    acc_stderr : float
        Binomial standard error ``sqrt(acc (1 - acc) / (items - 1))`` (the harness's).
    acc_norm_stderr : float
    seconds : float
        Wall time of the scoring loop (tokenisation included).
    tokens_per_second : float
        Tokens passed through the model per second, padding excluded.
    correct : tuple of int
        1 where the item was answered right by ``acc``'s rule, else 0, in item order.
    correct_norm : tuple of int
        The same under ``acc_norm``'s rule.
    """

    acc: float
    acc_norm: float
    items: int
    acc_stderr: float
    acc_norm_stderr: float
    seconds: float
    tokens_per_second: float
    correct: tuple[int, ...] = ()
    correct_norm: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: trailing context spaces move to the continuation; the
    continuation's tokens are what the whole string adds to the context's."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return list(ctx), list(whole[len(ctx) :])


@torch.no_grad()
def _loglikelihoods(
    model: Any,
    requests: list[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_length: int | None,
    prefix_token: int,
    progress: bool,
    desc: str = "hellaswag",
) -> tuple[list[float], int]:
    """Summed log p(continuation | context) per request, and the tokens passed."""
    from tqdm.auto import tqdm

    device = model_device(model)
    seqs: list[tuple[list[int], int]] = []  # (context + continuation, continuation length)
    for ctx, cont in requests:
        if not cont:
            raise AdapterError("an empty continuation cannot be scored")
        full = (ctx or [prefix_token]) + cont
        if max_length is not None:
            full = full[-(max_length + 1) :]  # the harness's left truncation
        seqs.append((full, len(cont)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))  # longest first
    out = [0.0] * len(seqs)
    passed = 0
    bar = tqdm(total=len(seqs), desc=desc, unit="req", disable=not progress)
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        width = max(len(seqs[i][0]) for i in idx) - 1
        inputs = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n_in = len(seqs[i][0]) - 1
            inputs[r, :n_in] = torch.tensor(seqs[i][0][:-1])
            passed += n_in
        # right padding needs no attention mask: under causal attention a position
        # never sees the padding after it, and positions ids start at 0 in every row
        logits = model(input_ids=inputs.to(device)).logits
        for r, i in enumerate(idx):
            full, n_cont = seqs[i]
            n_in = len(full) - 1
            # logits at position j predict token j + 1: the continuation's tokens
            # full[-n_cont:] are predicted at positions n_in - n_cont .. n_in - 1
            rows = logits[r, n_in - n_cont : n_in, :].float()
            logp = torch.log_softmax(rows, dim=-1)  # float32 whatever the weights
            target = torch.tensor(full[-n_cont:], device=logits.device).unsqueeze(-1)
            out[i] = float(logp.gather(-1, target).double().sum())
        bar.update(len(idx))
    bar.close()
    return out, passed


def evaluate_hellaswag(
    model: Any,
    tokenizer: Any,
    items: Sequence[HellaSwagItem],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> HellaSwagResult:
    """HellaSwag acc and acc_norm of ``model`` on ``items`` (lm-evaluation-harness scoring).

    Parameters
    ----------
    model : transformers causal LM
        Already on its device (see :func:`prepare_for_eval`).
    tokenizer : transformers tokenizer
    items : sequence of HellaSwagItem
        From :func:`read_hellaswag`.
    batch_size : int
        Sequences (item x choice) per forward pass.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    HellaSwagResult
    """
    if not items:
        raise DataError(
            f"no HellaSwag items to score; check {mention('hellaswag')} and {mention('limit')}"
        )
    if batch_size < 1:
        raise AdapterError(f"batch_size={batch_size} must be >= 1")
    start = time.perf_counter()
    requests: list[tuple[list[int], list[int]]] = []
    for item in items:
        for choice in item.choices:
            requests.append(_encode_pair(tokenizer, item.query, " " + choice))
    prefix = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    lls, passed = _loglikelihoods(
        model,
        requests,
        batch_size=batch_size,
        max_length=_max_positions(model),
        prefix_token=int(prefix),
        progress=progress,
    )
    hits: list[int] = []
    hits_norm: list[int] = []
    pos = 0
    for item in items:
        k = len(item.choices)
        ll = lls[pos : pos + k]
        pos += k
        norm = [v / len(c) for v, c in zip(ll, item.choices, strict=True)]
        hits.append(int(max(range(k), key=lambda j: ll[j]) == item.label))
        hits_norm.append(int(max(range(k), key=lambda j: norm[j]) == item.label))
    seconds = time.perf_counter() - start
    n = len(items)
    acc, acc_norm = sum(hits) / n, sum(hits_norm) / n

    def stderr(p: float) -> float:
        return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")

    return HellaSwagResult(
        acc=acc,
        acc_norm=acc_norm,
        items=n,
        acc_stderr=stderr(acc),
        acc_norm_stderr=stderr(acc_norm),
        seconds=seconds,
        tokens_per_second=passed / seconds if seconds > 0 else float("inf"),
        correct=tuple(hits),
        correct_norm=tuple(hits_norm),
    )


# --------------------------------------------------------------------------- one call


class EvalTask(Protocol):
    """One evaluation task: a name, and a run that returns flat JSON-ready figures.

    The task's own settings (its data, window length, item limit) are its
    fields; :func:`evaluate_model` passes the settings every task shares.
    """

    name: ClassVar[str]

    def run(
        self, model: Any, tokenizer: Any, *, batch_size: int, progress: bool, per_item: bool
    ) -> dict[str, Any]:
        """The task's figures, keys prefixed by the task (``ppl_*``, ``hellaswag_*``)."""
        ...


@dataclass(frozen=True)
class PerplexityTask:
    """WikiText-2 perplexity (see :func:`perplexity`) as an evaluation task.

    Attributes
    ----------
    path : str or Path, optional
        A local text file (see :func:`read_wikitext`); None with no
        ``input_ids``: the hub's test split.
    input_ids : torch.Tensor, shape=[N], optional
        Pre-tokenised text (sweeps tokenise once); overrides ``path``.
    seq_len, stride, max_windows, windows, window_seed
        See :func:`perplexity`.
    """

    name: ClassVar[str] = "wikitext"
    path: str | Path | None = None
    input_ids: torch.Tensor | None = None
    seq_len: int = 2048
    stride: int | None = None
    max_windows: int | None = None
    windows: str = "first"
    window_seed: int = 0

    def run(
        self, model: Any, tokenizer: Any, *, batch_size: int, progress: bool, per_item: bool
    ) -> dict[str, Any]:
        """Keys ``ppl``, ``ppl_nll``, ``ppl_tokens``, ... (per window with ``per_item``)."""
        if self.input_ids is not None:
            res = perplexity(
                model,
                input_ids=self.input_ids,
                seq_len=self.seq_len,
                stride=self.stride,
                batch_size=batch_size,
                max_windows=self.max_windows,
                progress=progress,
                windows=self.windows,
                window_seed=self.window_seed,
            )
        else:
            res = perplexity(
                model,
                tokenizer,
                text=read_wikitext(self.path),
                seq_len=self.seq_len,
                stride=self.stride,
                batch_size=batch_size,
                max_windows=self.max_windows,
                progress=progress,
                windows=self.windows,
                window_seed=self.window_seed,
            )
        starts = np.asarray(res.window_starts, dtype=np.int64)
        out: dict[str, Any] = dict(
            ppl=res.perplexity,
            ppl_nll=res.nll,
            ppl_tokens=res.scored_tokens,
            ppl_windows=res.windows,
            ppl_seq_len=res.seq_len,
            ppl_stride=res.stride,
            ppl_seconds=res.seconds,
            ppl_tokens_per_second=res.tokens_per_second,
            ppl_window_rule=res.window_rule,
            ppl_window_seed=res.window_seed,
            ppl_window_starts_sha256=hashlib.sha256(starts.tobytes()).hexdigest(),
        )
        if per_item:
            out.update(
                ppl_window_nll=list(res.window_nll),
                ppl_window_tokens=list(res.window_tokens),
                ppl_window_starts=list(res.window_starts),
            )
        return out


@dataclass(frozen=True)
class HellaSwagTask:
    """HellaSwag accuracy (see :func:`evaluate_hellaswag`) as an evaluation task.

    Attributes
    ----------
    path : str or Path, optional
        A local file (see :func:`read_hellaswag`); None with no ``items``:
        the hub's validation split.
    items : sequence of HellaSwagItem, optional
        Pre-read items (sweeps read the file once); overrides ``path``.
    limit : int, optional
        Items to score (the first ``limit``).
    """

    name: ClassVar[str] = "hellaswag"
    path: str | Path | None = None
    items: Sequence[HellaSwagItem] | None = None
    limit: int | None = None

    def run(
        self, model: Any, tokenizer: Any, *, batch_size: int, progress: bool, per_item: bool
    ) -> dict[str, Any]:
        """Keys ``hellaswag_acc``, ``hellaswag_acc_norm``, ... (per item with ``per_item``).

        Scores four times ``batch_size`` sequences per pass.
        """
        items = (
            list(self.items)[: self.limit]
            if self.limit is not None and self.items is not None
            else self.items
        )
        if items is None:
            items = read_hellaswag(self.path, limit=self.limit)
        hs = evaluate_hellaswag(
            model, tokenizer, items, batch_size=4 * batch_size, progress=progress
        )
        out: dict[str, Any] = dict(
            hellaswag_acc=hs.acc,
            hellaswag_acc_norm=hs.acc_norm,
            hellaswag_items=hs.items,
            hellaswag_acc_stderr=hs.acc_stderr,
            hellaswag_acc_norm_stderr=hs.acc_norm_stderr,
            hellaswag_seconds=hs.seconds,
            hellaswag_tokens_per_second=hs.tokens_per_second,
        )
        if per_item:
            out.update(
                hellaswag_correct=list(hs.correct), hellaswag_correct_norm=list(hs.correct_norm)
            )
        return out


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[EvalTask],
    *,
    batch_size: int = 8,
    progress: bool = True,
    per_item: bool = False,
) -> dict[str, Any]:
    """Run evaluation tasks on a prepared model; their figures as one flat JSON-ready dict.

    Parameters
    ----------
    model, tokenizer
        A prepared causal LM (see :func:`prepare_for_eval`) and its tokenizer.
    tasks : sequence of EvalTask
        Run in order: :class:`PerplexityTask`, :class:`HellaSwagTask`,
        :class:`llm_adapter.lmeval.HarnessTask`, or any entry of
        :data:`llm_adapter.eval_tasks.EVAL_TASKS`.
    batch_size : int
        Windows per pass for perplexity; four times as many sequences for
        HellaSwag; the harness's batch size.
    progress : bool
    per_item : bool
        Also return the per-window NLL sums, token counts and start offsets
        (``ppl_window_nll``, ``ppl_window_tokens``, ``ppl_window_starts``) and the
        per-item HellaSwag hits (``hellaswag_correct``, ``hellaswag_correct_norm``),
        for paired comparisons between models.

    Returns
    -------
    dict
        Each task's figures in the order of ``tasks``: ``ppl``, ``ppl_nll``,
        ``ppl_tokens``, ``ppl_seconds``, ``ppl_tokens_per_second``,
        ``ppl_window_rule``, ``ppl_window_seed``, ``ppl_window_starts_sha256``
        (of the start offsets as int64 bytes), ``hellaswag_acc``,
        ``hellaswag_acc_norm``, ``hellaswag_items``, ..., ``lm_eval``.
    """
    out: dict[str, Any] = {}
    for task in tasks:
        out.update(
            task.run(model, tokenizer, batch_size=batch_size, progress=progress, per_item=per_item)
        )
    return out
