"""Perplexity windows spread over the whole text: the documented seeded choice, the
same for every model, and per-window figures aligned with the windows chosen."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter import evaluate as ev
from llm_adapter.cli import main

SEQ = 16
N_ALL = 40  # windows in the text


def _model(seed: int = 0) -> Any:
    """A 2-layer GPT-NeoX with random weights (seeded), 64 positions."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    # N_ALL whole windows and a tail of 5 tokens that no window uses
    return torch.randint(0, 256, (N_ALL * SEQ + 5,), generator=torch.Generator().manual_seed(0))


def test_spread_is_the_documented_choice_and_aligned(ids: torch.Tensor) -> None:
    model = _model()
    res = ev.perplexity(
        model, input_ids=ids, seq_len=SEQ, max_windows=6, windows="spread", window_seed=3,
        batch_size=4, progress=False,
    )  # fmt: skip
    chosen = np.sort(np.random.default_rng(3).choice(N_ALL, size=6, replace=False))
    assert res.window_starts == tuple(int(i) * SEQ for i in chosen)
    assert res.window_rule == "spread" and res.window_seed == 3
    assert res.windows == 6 and res.scored_tokens == 6 * (SEQ - 1)
    # each window's NLL is that window's, scored alone (float32 logits in batches of 4
    # against batches of 1: 1e-5 relative)
    for start, nll in zip(res.window_starts, res.window_nll, strict=True):
        alone = ev.perplexity(
            model, input_ids=ids[start : start + SEQ], seq_len=SEQ, progress=False
        )
        assert nll == pytest.approx(alone.window_nll[0], rel=1e-5)
    # the choice depends on the text's length, the count and the seed only: another model
    # is scored on the same windows
    other = ev.perplexity(
        _model(seed=1), input_ids=ids, seq_len=SEQ, max_windows=6, windows="spread",
        window_seed=3, progress=False,
    )  # fmt: skip
    assert other.window_starts == res.window_starts
    again = ev.perplexity(
        model, input_ids=ids, seq_len=SEQ, max_windows=6, windows="spread", window_seed=4,
        progress=False,
    )  # fmt: skip
    assert again.window_starts != res.window_starts


def test_first_keeps_the_first_windows(ids: torch.Tensor) -> None:
    model = _model()
    res = ev.perplexity(model, input_ids=ids, seq_len=SEQ, max_windows=3, progress=False)
    assert res.window_starts == (0, SEQ, 2 * SEQ)
    assert res.window_rule == "first" and res.window_seed is None
    # asking for as many windows as there are (or more) spreads over all of them
    every = ev.perplexity(
        model, input_ids=ids, seq_len=SEQ, max_windows=N_ALL + 3, windows="spread",
        progress=False,
    )  # fmt: skip
    assert every.window_starts == tuple(range(0, N_ALL * SEQ, SEQ))


def test_sliding_window_starts_are_its_begins(ids: torch.Tensor) -> None:
    res = ev.perplexity(
        _model(), input_ids=ids[:100], seq_len=SEQ, stride=8, max_windows=5, progress=False
    )
    assert res.window_starts == (0, 8, 16, 24, 32)
    assert len(res.window_nll) == len(res.window_starts)


def test_bad_window_settings_are_one_line_errors(ids: torch.Tensor) -> None:
    model = _model()
    with pytest.raises(AdapterError, match="windows='middle' is not one of first, spread"):
        ev.perplexity(model, input_ids=ids, seq_len=SEQ, windows="middle")
    with pytest.raises(AdapterError, match="window_seed=-1 must be an int >= 0"):
        ev.perplexity(model, input_ids=ids, seq_len=SEQ, windows="spread", window_seed=-1)
    with pytest.raises(AdapterError, match="drop stride"):
        ev.perplexity(model, input_ids=ids, seq_len=SEQ, stride=8, windows="spread")


def test_evaluate_model_records_the_windows(ids: torch.Tensor) -> None:
    task = ev.PerplexityTask(
        input_ids=ids, seq_len=SEQ, max_windows=5, windows="spread", window_seed=7
    )
    out = ev.evaluate_model(_model(), None, [task], per_item=True, progress=False)
    chosen = np.sort(np.random.default_rng(7).choice(N_ALL, size=5, replace=False))
    starts = [int(i) * SEQ for i in chosen]
    assert out["ppl_window_starts"] == starts
    assert len(out["ppl_window_nll"]) == 5
    assert out["ppl_window_rule"] == "spread" and out["ppl_window_seed"] == 7
    digest = hashlib.sha256(np.array(starts, dtype=np.int64).tobytes()).hexdigest()
    assert out["ppl_window_starts_sha256"] == digest


def test_cli_rejects_spread_with_stride_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a b c\n")
    argv = ["evaluate", str(tmp_path / "no-model"), "--wikitext", str(text),
            "--windows", "spread", "--stride", "4"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--windows spread chooses among non-overlapping windows" in err
    assert len(err.splitlines()) == 1
    assert main([*argv[:4], "--window-seed", "-2"]) == 2
    assert "--window-seed must be >= 0" in capsys.readouterr().err


def test_evaluation_tasks_are_one_registry(ids: torch.Tensor) -> None:
    """Perplexity, HellaSwag and the harness are entries of one registry, run by one call."""
    from llm_adapter.eval_tasks import EVAL_TASKS, make_task
    from llm_adapter.lmeval import HarnessTask

    assert EVAL_TASKS == {
        "wikitext": ev.PerplexityTask,
        "hellaswag": ev.HellaSwagTask,
        "lm_eval": HarnessTask,
    }
    task = make_task("wikitext", input_ids=ids, seq_len=SEQ, max_windows=3)
    assert isinstance(task, ev.PerplexityTask) and task.max_windows == 3
    model = _model()
    out = ev.evaluate_model(model, None, [task, task], progress=False)
    direct = ev.perplexity(model, input_ids=ids, seq_len=SEQ, max_windows=3, progress=False)
    assert out["ppl"] == direct.perplexity and out["ppl_windows"] == 3
    assert "ppl_window_nll" not in out  # per_item off
    assert ev.evaluate_model(model, None, [], progress=False) == {}
    with pytest.raises(AdapterError, match="no evaluation task 'mmlu'; registered: hellaswag"):
        make_task("mmlu")
