"""lm-evaluation-harness bridge: the harness's HellaSwag agrees with the project's
scorer item by item, local data for any task, and offline hub tasks fail in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (make installs it)")

from llm_adapter import AdapterError, load
from llm_adapter.assets import TINY_MODEL
from llm_adapter.cli import main
from llm_adapter.evaluate import (
    _encode_pair,
    _loglikelihoods,
    evaluate_hellaswag,
    read_hellaswag,
)
from llm_adapter.lmeval import (
    check_tasks,
    hellaswag_records,
    parse_task_data,
    run_tasks,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

WORDS = (
    "the man woman dog ball runs jumps holds a red blue small large into over "
    "water field street kitchen slowly quickly then and picks throws cuts opens"
).split()


def _synthetic_hellaswag(path: Path, n: int, seed: int = 0) -> None:
    """Original-format records (lower-case ctx_b, so the harness's capitalize() matters)."""
    rng = np.random.default_rng(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    with open(path, "w") as fh:
        for i in range(n):
            doc = {
                "activity_label": f"Activity {i % 3}",
                "ctx_a": sentence(6).capitalize() + ".",
                "ctx_b": sentence(3),
                "endings": [sentence(int(rng.integers(3, 8))) + "." for _ in range(4)],
                "label": str(int(rng.integers(0, 4))),
            }
            fh.write(json.dumps(doc) + "\n")


def _project_scores(model: Any, tok: Any, items: list[Any]) -> tuple[list[float], Any]:
    requests = [_encode_pair(tok, it.query, " " + c) for it in items for c in it.choices]
    prefix = tok.eos_token_id if tok.eos_token_id is not None else 0
    lls, _ = _loglikelihoods(
        model, requests, batch_size=16, max_length=None, prefix_token=int(prefix), progress=False
    )
    return lls, evaluate_hellaswag(model, tok, items, batch_size=16, progress=False)


def _agree_item_by_item(model: Any, tok: Any, data: Path, n: int) -> None:
    """Per-choice log-likelihoods agree to float32 rounding (float64 weights, but the
    project's scorer takes its log-softmax in float32: ~1e-7 relative), and per-item
    acc / acc_norm are equal wherever the decision is not a near-tie (a margin under
    1e-3 would let that rounding pick the winner)."""
    items = read_hellaswag(data, limit=n)
    lls, project = _project_scores(model, tok, items)
    res = run_tasks(
        model, tok, "hellaswag", task_data={"hellaswag": data}, limit=n, batch_size=16, samples=True
    )
    docs = sorted(res["samples"]["hellaswag"], key=lambda s: s["doc_id"])
    assert len(docs) == len(items) == n
    decided = 0
    for i, (item, doc) in enumerate(zip(items, docs, strict=True)):
        assert doc["doc"]["query"] == item.query, i
        assert list(doc["doc"]["choices"]) == list(item.choices), i
        assert int(doc["doc"]["gold"]) == item.label
        harness_ll = [float(r[0][0]) for r in doc["resps"]]
        ours = lls[4 * i : 4 * i + 4]
        np.testing.assert_allclose(harness_ll, ours, rtol=1e-6, atol=1e-5, err_msg=f"item {i}")
        for values, key, hit in (
            (ours, "acc", project.correct[i]),
            ([v / len(c) for v, c in zip(ours, item.choices, strict=True)], "acc_norm", None),
        ):
            top = sorted(values, reverse=True)
            if top[0] - top[1] < 1e-3:
                continue
            decided += 1
            if hit is not None:
                assert float(doc[key]) == float(hit), (i, key)
            else:
                assert float(doc[key]) == float(project.correct_norm[i]), (i, key)
    assert decided >= n  # at least half of the 2n decisions are clear
    row = res["tasks"]["hellaswag"]
    assert row["n"] == n and row["source"].startswith("local")
    assert row["acc"] == pytest.approx(project.acc, abs=1.5 / n)
    assert row["acc_stderr"] == pytest.approx(np.sqrt(row["acc"] * (1 - row["acc"]) / (n - 1)))


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The shipped tiny model, compressed (SVD-LLM on two families), saved and reloaded
    by llm_adapter.load: the harness runs on the low-rank modules as they are."""
    from llm_adapter import CompressionConfig, calibrate, compress_model, load, save
    from llm_adapter.lowrank import LowRankLinear

    model, tok = load(TINY_MODEL, device="cpu")
    model.to(torch.float64)
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 4096, size=(16, 64)))
    families = ("attention.dense", "mlp.dense_4h_to_h")
    stats = calibrate(model, None, families, token_windows=windows)
    config = CompressionConfig(method="svd-llm", rank_ratio=0.25, families=families)
    report = compress_model(model, config, stats)
    path = save(model, tok, report, tmp_path_factory.mktemp("lmeval") / "ck")
    loaded, tok = load(path, device="cpu")
    assert sum(isinstance(m, LowRankLinear) for m in loaded.modules()) == 8
    return loaded, tok


def test_harness_hellaswag_agrees_with_project_scorer(tmp_path: Path, tiny64: Any) -> None:
    data = tmp_path / "hs.jsonl"
    _synthetic_hellaswag(data, 16)
    _agree_item_by_item(*tiny64, data, 16)


@pytest.mark.data
@pytest.mark.slow
def test_harness_agrees_on_shared_hellaswag_slice(shared_data: Path, shared_model: Path) -> None:
    model, tok = load(shared_model, device="cpu")
    data = shared_data / "hellaswag" / "hellaswag_val_full.txt.bz2"
    _agree_item_by_item(model.to(torch.float64), tok, data, 24)


@pytest.mark.data
def test_text_format_records_rebuild_the_project_query(shared_data: Path) -> None:
    data = shared_data / "hellaswag" / "hellaswag_val_full.txt.bz2"
    from lm_eval.tasks.hellaswag.utils import preprocess

    records = hellaswag_records(data, limit=50)
    items = read_hellaswag(data, limit=50)
    for rec, item in zip(records, items, strict=True):
        ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
        assert preprocess(rec["activity_label"] + ": " + ctx) == item.query


def test_any_task_reads_a_local_file(tmp_path: Path, tiny64: Any) -> None:
    data = tmp_path / "arc_easy_test.jsonl"
    rng = np.random.default_rng(1)
    with open(data, "w") as fh:
        for i in range(6):
            labels = ["A", "B", "C", "D"]
            doc = {
                "id": f"q{i}",
                "question": " ".join(rng.choice(WORDS, size=7)) + "?",
                "choices": {
                    "text": [" ".join(rng.choice(WORDS, size=2)) for _ in labels],
                    "label": labels,
                },
                "answerKey": labels[i % 4],
            }
            fh.write(json.dumps(doc) + "\n")
    res = run_tasks(*tiny64, ["arc_easy"], task_data={"arc_easy": data}, batch_size=8)
    row = res["tasks"]["arc_easy"]
    assert row["n"] == 6 and row["source"] == f"local {data}"
    assert 0.0 <= row["acc"] <= 1.0 and row["acc_stderr"] > 0
    assert res["harness"].startswith("lm-eval ")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)


@pytest.mark.usefixtures("offline")
def test_hub_task_offline_fails_in_one_line_before_loading(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AdapterError, match=r"arc_easy.*HF_HUB_OFFLINE.*task_data arc_easy="):
        check_tasks("arc_easy")

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("llm_adapter.checkpoint.load", no_load)
    assert main(["evaluate", str(TINY_MODEL), "--tasks", "hellaswag,piqa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-adapter: error: task 'hellaswag'") and "\n" not in err
    assert main(["evaluate", str(TINY_MODEL), "--tasks", "hellaswg"]) == 2
    assert "did you mean hellaswag" in capsys.readouterr().err


def test_bad_task_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AdapterError, match="expected TASK=PATH"):
        parse_task_data(["hellaswag"])
    with pytest.raises(AdapterError, match="is not a file"):
        parse_task_data([f"hellaswag={tmp_path / 'none.jsonl'}"])
    f = tmp_path / "x.jsonl"
    f.write_text("")
    with pytest.raises(AdapterError, match="not in tasks"):
        check_tasks("hellaswag", {"piqa": f})
    assert main(["evaluate", str(TINY_MODEL), "--task-data", f"hellaswag={f}"]) == 2
    assert "go with --tasks" in capsys.readouterr().err


def test_cli_tasks_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hs.jsonl"
    _synthetic_hellaswag(data, 6, seed=2)
    argv = [
        "evaluate",
        str(TINY_MODEL),
        "--tasks",
        "hellaswag",
        "--task-data",
        f"hellaswag={data}",
        "--device",
        "cpu",
        "--json",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["lm_eval"]["tasks"]["hellaswag"]
    assert set(row) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "source"}
    assert row["n"] == 6 and "ppl" not in out
