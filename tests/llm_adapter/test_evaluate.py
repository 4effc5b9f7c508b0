"""Evaluation: perplexity protocol, HellaSwag preprocessing and scoring, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import llm_adapter
import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter import evaluate as ev
from llm_adapter.cli import main

WIKI_TEST = Path("wikitext-2") / "wiki.test.tokens"
HELLASWAG = Path("hellaswag") / "hellaswag_val_full.txt.bz2"


def tiny_random_model(seed: int = 0, vocab: int = 4096, positions: int = 256) -> Any:
    """A 2-layer GPT-NeoX with random weights (seeded)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=positions,
    )
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture(scope="module")
def mini(shared_model: Path) -> tuple[Any, Any]:
    model, tokenizer = llm_adapter.load(shared_model, device="cpu")
    return ev.prepare_for_eval(model, "cpu"), tokenizer


@pytest.fixture(scope="module")
def mini_tokenizer(shared_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shared_model))


# ----------------------------------------------------------------------------- perplexity


@pytest.mark.data
@pytest.mark.slow
def test_perplexity_equals_plain_transformers_loss(
    mini: tuple[Any, Any], shared_data: Path
) -> None:
    """Non-overlapping windows: exp(mean over windows of model(w, labels=w).loss).

    Every window has seq_len - 1 predicted tokens, so the token mean equals the
    mean of the per-window losses. Tolerance 1e-6 relative: both sides run the
    same float32 model; only the batch shape (16 windows vs 1) changes the
    summation order inside the matmuls (~1e-7 relative on a loss of ~4 nats).
    """
    model, tokenizer = mini
    seq_len, n_windows = 128, 32
    text = ev.read_wikitext(shared_data / WIKI_TEST)
    res = ev.perplexity(
        model,
        tokenizer,
        text=text,
        seq_len=seq_len,
        batch_size=16,
        max_windows=n_windows,
        progress=False,
    )
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    losses = []
    with torch.no_grad():
        for w in range(n_windows):
            window = ids[w * seq_len : (w + 1) * seq_len].unsqueeze(0)
            losses.append(float(model(input_ids=window, labels=window).loss))
    reference = math.exp(sum(losses) / len(losses))
    assert res.windows == n_windows
    assert res.scored_tokens == n_windows * (seq_len - 1)
    assert res.perplexity == pytest.approx(reference, rel=1e-6)


def test_sliding_window_matches_the_transformers_guide_loop() -> None:
    """The sliding variant against the labels=-100 loop of the transformers perplexity
    guide, written independently here. Tolerance 1e-5 relative: float32 logits,
    the guide's loss is a mean that is multiplied back by the token count."""
    model = tiny_random_model(seed=1, vocab=512, positions=64)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (203,), generator=gen)
    seq_len, stride = 32, 12
    res = ev.perplexity(model, input_ids=ids, seq_len=seq_len, stride=stride, progress=False)

    total, count, prev_end = 0.0, 0, 0
    n = ids.numel()
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + seq_len, n)
            trg_len = end - prev_end
            inp = ids[begin:end].unsqueeze(0)
            labels = inp.clone()
            labels[:, :-trg_len] = -100
            valid = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=inp, labels=labels).loss) * valid
            count += valid
            prev_end = end
            if end == n:
                break
    assert res.scored_tokens == count == n - 1  # stride < seq_len: every token after the first
    assert res.nll == pytest.approx(total / count, rel=1e-5)


def test_stride_equal_to_seq_len_is_the_non_overlapping_protocol() -> None:
    """With stride == seq_len and a length that is a multiple of seq_len both variants
    score the same tokens with the same context (float32; 1e-6 relative)."""
    model = tiny_random_model(seed=2, vocab=512, positions=64)
    ids = torch.randint(0, 512, (5 * 32,), generator=torch.Generator().manual_seed(1))
    a = ev.perplexity(model, input_ids=ids, seq_len=32, progress=False)
    b = ev.perplexity(model, input_ids=ids, seq_len=32, stride=32, progress=False)
    assert a.scored_tokens == b.scored_tokens == 5 * 31
    assert b.perplexity == pytest.approx(a.perplexity, rel=1e-6)


def test_perplexity_rejects_bad_input() -> None:
    model = tiny_random_model(vocab=512, positions=64)
    ids = torch.arange(100) % 512
    with pytest.raises(AdapterError, match="max_position_embeddings=64"):
        ev.perplexity(model, input_ids=ids, seq_len=128)
    with pytest.raises(AdapterError, match="fewer than one window"):
        ev.perplexity(model, input_ids=ids[:10], seq_len=32)
    with pytest.raises(AdapterError, match="stride"):
        ev.perplexity(model, input_ids=ids, seq_len=32, stride=40)
    with pytest.raises(AdapterError, match="exactly one"):
        ev.perplexity(model, seq_len=32)


def test_hub_without_datasets_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(AdapterError, match="pip install datasets"):
        ev.read_wikitext(None)
    with pytest.raises(AdapterError, match="hellaswag PATH"):
        ev.read_hellaswag(None)


# ----------------------------------------------------------------------------- HellaSwag text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # worked by hand through the harness's four steps (strip; " [title]" -> ". ";
        # drop [..]; one pass of "  " -> " "), quirks included
        (
            "[header] How to clean a pan. [title] Fill with water. [step] Add soap.",
            " How to clean a pan.. Fill with water. Add soap.",
        ),
        ("  A man is sitting on a roof. He  ", "A man is sitting on a roof. He"),
        ("a   b", "a  b"),  # a single non-overlapping pass: three spaces become two
        ("keep [substeps] this", "keep this"),
        ("no markup at all.", "no markup at all."),
    ],
)
def test_preprocess_matches_the_harness(raw: str, expected: str) -> None:
    assert ev.preprocess(raw) == expected


def _jsonl(tmp_path: Path, docs: list[dict[str, Any]]) -> Path:
    path = tmp_path / "hs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_jsonl_query_is_the_harness_query(tmp_path: Path) -> None:
    docs = [
        {
            "activity_label": "Roof shingle removal",
            "ctx_a": "A man is sitting on a roof.",
            "ctx_b": "he",
            "endings": [" is using wrap.", "is ripping tiles off. ", "x [step] y", "z"],
            "label": "3",
        },
        {
            "activity_label": "Home and Garden",
            "ctx_a": "[header] How to clean a pan. [title] Fill with water.",
            "ctx_b": "",
            "endings": ["a", "b", "c", "d"],
            "label": 0,
        },
        {  # str.capitalize lower-cases the rest of ctx_b
            "activity_label": "Bowling",
            "ctx_a": "A woman bowls.",
            "ctx_b": "the man in Blue",
            "endings": ["a", "b", "c", "d"],
            "label": 1,
        },
    ]
    items = ev.read_hellaswag(_jsonl(tmp_path, docs))
    assert [i.query for i in items] == [
        "Roof shingle removal: A man is sitting on a roof. He",
        "Home and Garden: How to clean a pan.. Fill with water.",
        "Bowling: A woman bowls. The man in blue",
    ]
    assert items[0].choices == ("is using wrap.", "is ripping tiles off.", "x y", "z")
    assert [i.label for i in items] == [3, 0, 1]
    assert len(ev.read_hellaswag(_jsonl(tmp_path, docs), limit=2)) == 2


def test_text_format_restores_ctx_b_capitalisation(tmp_path: Path) -> None:
    lines = [
        "Roof shingle removal: A man is sitting on a roof. he",
        "3",
        "is using wrap.",
        "is ripping tiles off.",
        "holds a cube.",
        "starts pulling up roofing.",
        "Health: How to manage allergies. Use medication. Take it daily.",
        "0",
        "a",
        "b",
        "c",
        "d",
    ]
    path = tmp_path / "hs.txt"
    path.write_text("\n".join(lines) + "\n")
    items = ev.read_hellaswag(path)
    assert items[0].query == "Roof shingle removal: A man is sitting on a roof. He"
    assert items[1].query == lines[6]  # WikiHow: empty ctx_b, nothing to change
    assert items[0].label == 3 and items[1].label == 0
    assert items[0].choices[3] == "starts pulling up roofing."


@pytest.mark.data
def test_shared_file_reads_all_items(shared_data: Path) -> None:
    items = ev.read_hellaswag(shared_data / HELLASWAG)
    assert len(items) == 10042  # MANIFEST.md: all 10,042 validation items
    assert all(len(i.choices) == 4 and 0 <= i.label <= 3 for i in items)
    # the first item, whose hub record is ctx_a "A man is sitting on a roof.", ctx_b "he"
    assert items[0].query == "Roof shingle removal: A man is sitting on a roof. He"


def test_text_format_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("ctx\n7\na\nb\nc\nd\n")
    with pytest.raises(AdapterError, match="gold label '7'"):
        ev.read_hellaswag(path)
    path.write_text("ctx\n1\na\n")
    with pytest.raises(AdapterError, match="not a multiple of 6"):
        ev.read_hellaswag(path)


# ----------------------------------------------------------------------------- HellaSwag scoring


def test_batched_loglikelihoods_equal_one_at_a_time(mini_tokenizer: Any) -> None:
    """Right-padded batches give each continuation's summed log-probability as a single
    unpadded forward pass does (float32; 1e-4 absolute on sums of ~10 log-probs)."""
    model = tiny_random_model(seed=3)
    item = ev.HellaSwagItem(
        query="Roof shingle removal: A man is sitting on a roof. He",
        choices=("is using wrap.", "is ripping level tiles off the roof slowly.", "hi.", "ok"),
        label=1,
    )
    requests = [ev._encode_pair(mini_tokenizer, item.query, " " + c) for c in item.choices]
    batched, _ = ev._loglikelihoods(
        model, requests, batch_size=4, max_length=256, prefix_token=0, progress=False
    )
    for (ctx, cont), got in zip(requests, batched, strict=True):
        full = torch.tensor(ctx + cont).unsqueeze(0)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=full).logits[0].float(), dim=-1)
        want = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-4)
    # the continuation's tokens are what the whole string adds to the context's
    ctx, cont = requests[0]
    assert mini_tokenizer.decode(cont) == " is using wrap."


def test_acc_norm_divides_by_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """acc takes the largest summed log-likelihood, acc_norm the largest per character."""
    items = [ev.HellaSwagItem(query="q", choices=("a", "bbbbbbbbbb", "cc", "dd"), label=1)]
    fixed = [-2.0, -5.0, -8.0, -9.0]  # per char: -2, -0.5, -4, -4.5

    def fake(model: Any, requests: Any, **kw: Any) -> tuple[list[float], int]:
        return fixed, 0

    class Tok:
        eos_token_id = 0

        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [ord(c) for c in text]}

    monkeypatch.setattr(ev, "_loglikelihoods", fake)
    res = ev.evaluate_hellaswag(torch.nn.Linear(1, 1), Tok(), items, progress=False)
    assert (res.acc, res.acc_norm) == (0.0, 1.0)


@pytest.mark.data
@pytest.mark.slow
def test_random_weights_score_at_chance(mini_tokenizer: Any, shared_data: Path) -> None:
    """A random-weights model is at chance: |acc - 1/4| and |acc_norm - 1/4| within
    3.5 binomial standard deviations, sqrt(0.25 * 0.75 / 400) = 0.0217, i.e. 0.076
    (two-sided tail probability 5e-4 per metric for an unbiased scorer)."""
    model = tiny_random_model(seed=0)
    items = ev.read_hellaswag(shared_data / HELLASWAG, limit=400)
    res = ev.evaluate_hellaswag(model, mini_tokenizer, items, batch_size=64, progress=False)
    tol = 3.5 * math.sqrt(0.25 * 0.75 / 400)
    assert abs(res.acc - 0.25) < tol
    assert abs(res.acc_norm - 0.25) < tol
    assert res.items == 400


# ----------------------------------------------------------------------------- CLI


@pytest.mark.data
@pytest.mark.slow
def test_cli_evaluate_json(
    shared_model: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "evaluate", str(shared_model), "--wikitext", str(shared_data / WIKI_TEST),
        "--hellaswag", str(shared_data / HELLASWAG), "--seq-len", "128", "--max-windows", "4",
        "--limit", "3", "--device", "cpu", "--json", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ppl_windows"] == 4 and out["ppl_tokens"] == 4 * 127
    assert out["hellaswag_items"] == 3
    assert 1.0 < out["ppl"] < 4096.0  # between certainty and a uniform guess over the vocabulary
    assert 0.0 <= out["hellaswag_acc"] <= 1.0


def test_cli_evaluate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["evaluate", str(tmp_path), "--wikitext", str(tmp_path / "nope.txt")])
    assert status == 2
    assert "nope.txt is not a file" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_half_precision_weights_fp32_softmax() -> None:
    """On CUDA the weights become bf16/fp16; perplexity stays within 1% of float32 on
    the CPU (half-precision weights, float32 log-softmax)."""
    ids = torch.randint(0, 512, (4 * 32,), generator=torch.Generator().manual_seed(5))
    cpu = ev.perplexity(tiny_random_model(vocab=512, positions=64), input_ids=ids, seq_len=32)
    model = ev.prepare_for_eval(tiny_random_model(vocab=512, positions=64), "cuda")
    assert next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    gpu = ev.perplexity(model, input_ids=ids, seq_len=32, progress=False)
    assert gpu.perplexity == pytest.approx(cpu.perplexity, rel=1e-2)
