"""Calibration text: WikiText's detokenizer and the variant it is applied to.

The expected strings are written by hand from the rules of lm-evaluation-harness's
``wikitext`` task; the harness's own function is compared on the shared split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from llm_adapter import AdapterError
from llm_adapter.calibrate import calibrate
from llm_adapter.data import (
    detokenize_wikitext,
    is_tokenized_wikitext,
    resolve_detokenize,
    text_variant,
)
from llm_adapter.testing import random_neox


@pytest.mark.parametrize(
    ("tokenized", "expected"),
    [
        # number separators
        (
            "He had a guest @-@ starring role in 1 @,@ 000 films of 2 @.@ 5 hours",
            "He had a guest-starring role in 1,000 films of 2.5 hours",
        ),
        # punctuation followed by a space; a final " ." without one stays
        (
            "First , second ; third : fourth ! fifth ? sixth . end .",
            "First, second; third: fourth! fifth? sixth. end .",
        ),
        # brackets and quotes: the spaces inside each pair go
        (
            'a ( born 1970 ) and [ note ] and { x } as " Craig " here',
            'a (born 1970) and [note] and {x} as "Craig" here',
        ),
        # possessives: " 's" and a plural's "s '"
        ("Teddy 's Story and the players ' union", "Teddy's Story and the players' union"),
        # headings, line ends and line starts
        (
            " = Title = \n \n = = Career = = \n = = = Early = = = \n Text . \n",
            " = Title =\n\n== Career ==\n=== Early ===\nText.\n",
        ),
        # the degree sign and the harness's number placeholder
        ("at 25 \N{DEGREE SIGN} C in N years", "at 25\N{DEGREE SIGN}C in 1 years"),
        # <unk> is not restored
        ("Robert <unk> is an actor", "Robert <unk> is an actor"),
    ],
)
def test_detokenize_hand_written_lines(tokenized: str, expected: str) -> None:
    assert detokenize_wikitext(tokenized) == expected


def test_quotes_pair_within_an_article() -> None:
    # the first article has one stray quote: it must not pair with the next article's
    text = ' = A = \n One " two . \n = B = \n Say " hi " now . \n'
    assert detokenize_wikitext(text) == ' = A =\nOne " two.\n= B =\nSay "hi" now.\n'


def test_detection_and_variants() -> None:
    tokenized = " = T = \n The <unk> was 1 @,@ 000 km long . \n"
    raw = " = T = \n The Rhine was 1 @,@ 000 km long . \n"
    assert is_tokenized_wikitext(tokenized)
    assert not is_tokenized_wikitext(raw)  # the raw variant keeps the separators, no <unk>
    assert not is_tokenized_wikitext("plain <unk> text without separators")
    assert resolve_detokenize("auto", tokenized) is True
    assert resolve_detokenize("auto", raw) is False
    assert resolve_detokenize(True, raw) is True
    assert resolve_detokenize(False, tokenized) is False
    assert text_variant(tokenized, False) == "tokenized"
    assert text_variant(raw, False) == "raw"
    assert text_variant(raw, True) == "detokenized"
    with pytest.raises(AdapterError, match="detokenize = 'yes' is not one of"):
        resolve_detokenize("yes", raw)


@pytest.mark.data
def test_shared_files_detected_and_equal_to_the_harness(shared_data: Path) -> None:
    tokens = (shared_data / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
    raw_file = shared_data / "wikitext-2-raw" / "wiki.test.raw.crlf_noblank"
    raw = raw_file.read_text(encoding="utf-8")
    assert is_tokenized_wikitext(tokens)
    assert not is_tokenized_wikitext(raw)
    out = detokenize_wikitext(tokens)
    assert " @-@ " not in out and " , " not in out and "\n " not in out
    harness = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")
    # the harness detokenizes one article at a time: cut after the leading space of
    # each title line (" = Title = "; sections start " = = ")
    starts, offset = [], 0
    for line in tokens.split("\n"):
        if line.startswith(" = ") and not line.startswith(" = = "):
            starts.append(offset + 1)
        offset += len(line) + 1
    assert len(starts) == 60  # the validation split's 60 articles
    bounds = zip([0, *starts], [*starts, len(tokens)], strict=True)
    expected = "".join(harness.wikitext_detokenizer({"page": tokens[a:b]}) for a, b in bounds)
    assert out == expected


def _word_tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(124)} | {"-": 124, ",": 125, ".": 126, "[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # "w1 , w2" and "w1, w2": the same ids
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.mark.filterwarnings("ignore:.*calibration tokens are fewer:UserWarning")
def test_calibration_records_the_variant_and_keys_the_cache_by_it(tmp_path: Path) -> None:
    tokenizer = _word_tokenizer()
    rng = np.random.default_rng(0)
    lines = [" ".join(f"w{i}" for i in rng.integers(0, 124, 12)) + " , w1 . " for _ in range(40)]
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(lines))  # no <unk>, no separators: the raw variant
    model = random_neox()
    kw = {"text_path": path, "samples": 3, "seq_len": 40, "seed": 1, "cache_dir": tmp_path / "c"}
    plain = calibrate(model, tokenizer, "attention.dense", **kw)  # type: ignore[arg-type]
    assert plain.protocol["text_variant"] == "raw"
    assert plain.protocol["windows"] == 3 and plain.protocol["tokens"] == 120
    assert plain.protocol["seq_len"] == 40 and plain.protocol["seed"] == 1
    assert calibrate(model, tokenizer, "attention.dense", **kw).cached  # type: ignore[arg-type]
    # detokenizing removes only spaces before "," and ".": the same token windows,
    # yet another cache entry, recorded as detokenized
    forced = calibrate(model, tokenizer, "attention.dense", detokenize=True, **kw)  # type: ignore[arg-type]
    assert forced.windows is not None and plain.windows is not None
    assert np.array_equal(forced.windows.numpy(), plain.windows.numpy())
    assert not forced.cached
    assert forced.protocol["text_variant"] == "detokenized"
    # auto leaves the raw variant as it is (and finds the first entry)
    auto = calibrate(model, tokenizer, "attention.dense", detokenize="auto", **kw)  # type: ignore[arg-type]
    assert auto.cached and auto.protocol["text_variant"] == "raw"


@pytest.mark.filterwarnings("ignore:.*calibration tokens are fewer:UserWarning")
def test_auto_detokenizes_the_tokenized_variant(tmp_path: Path) -> None:
    tokenizer = _word_tokenizer()
    path = tmp_path / "calib.txt"
    path.write_text(" w1 <unk> w2 @-@ w3 , w4 . \n" * 40)
    model = random_neox()
    kw = {"text_path": path, "samples": 2, "seq_len": 16, "seed": 0}
    as_is = calibrate(model, tokenizer, "attention.dense", **kw)  # type: ignore[arg-type]
    auto = calibrate(model, tokenizer, "attention.dense", detokenize="auto", **kw)  # type: ignore[arg-type]
    assert as_is.protocol["text_variant"] == "tokenized"
    assert auto.protocol["text_variant"] == "detokenized"
    # each line is 10 ids either way; "@-@" is unknown (127), the "-" it becomes is 124,
    # and every 16-token window holds one of them
    assert as_is.windows is not None and auto.windows is not None
    assert 124 not in as_is.windows and bool((as_is.windows == 127).any())
    assert bool((auto.windows == 124).any(dim=1).all())
    with pytest.raises(AdapterError, match="detokenize = 'sometimes'"):
        calibrate(model, tokenizer, "attention.dense", detokenize="sometimes", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("flag", "variant"), [(None, "raw"), ("yes", "detokenized")])
def test_compress_cli_records_the_variant(
    tiny: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str | None,
    variant: str,
) -> None:
    import json

    from llm_adapter.cli import main

    args = [
        "compress", "--model", str(tiny["model"]), "--calib-text", str(tiny["text"]),
        "--calib-samples", "2", "--calib-seq-len", "64", "--device", "cpu",
        "--method", "svd-llm", "--out", str(tmp_path / "ck"), "--json", "--no-progress",
    ]  # fmt: skip
    if flag is not None:
        args += ["--calib-detokenize", flag]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"]["text_variant"] == variant
