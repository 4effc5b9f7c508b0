"""Sweeps: point expansion, keys, the results file, resumability, flag overrides."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from llm_adapter import AdapterError
from llm_adapter.cli import sweep as sweep_cli
from llm_adapter.experiment import sweep as sw


def test_expand_points_crosses_lists_and_keeps_only_relevant_params() -> None:
    config = {
        "families": ["attention.dense", "mlp.dense_4h_to_h"],
        "rank_ratios": [0.25, 0.5],
        "points": [
            {"method": "svd-llm", "lam": 0.0},  # lam at its default: allowed, left out
            {"method": "bundle", "lam": [0.0, "inf"], "tying": [1, 2, 6]},
            {"method": "bundle", "lam": 0.0, "tying": 1},  # a duplicate of one above
        ],
    }
    points = sw.expand_points(config)
    assert points[0].method == "dense" and points[0].families == ()
    assert len(points) == 1 + 2 * 2 + 2 * 3 * 2 * 2  # dense, svd-llm, bundle product
    svdllm = [p for p in points if p.method == "svd-llm"]
    assert all(p.params == {} for p in svdllm)
    lams = {p.params["lam"] for p in points if p.method == "bundle"}
    assert lams == {0.0, math.inf}
    assert sw.point_label(points[-1]) == "bundle lam=inf k=6 weight"
    assert points[-1].describe()["lam"] == "inf"  # JSON has no infinity


def test_expand_points_errors_name_the_problem() -> None:
    with pytest.raises(AdapterError, match="unknown method 'svdd'"):
        sw.expand_points({"points": [{"method": "svdd"}]})
    with pytest.raises(AdapterError, match="has no method"):
        sw.expand_points({"points": [{"lam": 1.0}]})
    with pytest.raises(AdapterError, match="not a number"):
        sw.expand_points({"points": [{"method": "bundle", "lam": "big"}]})
    # a parameter the method does not take is an error, named as the configuration spells it
    with pytest.raises(
        AdapterError, match=r"points\[0\]\.lam applies to points\[0\]\.method bundle only"
    ):
        sw.expand_points({"points": [{"method": "svd-llm", "lam": 3.0}]})
    with pytest.raises(AdapterError, match=r"unknown key\(s\) \['lamda'\]"):
        sw.check_config({"points": [{"method": "bundle", "lamda": 1.0}]})
    with pytest.raises(AdapterError, match=r"\[evaluation\]"):
        sw.check_config({"evaluation": {"limt": 3}})


def test_point_keys_depend_on_point_and_protocol() -> None:
    a, b = sw.expand_points({"baseline": False, "points": [{"method": "bundle", "lam": [0, 1]}]})
    proto = {"evaluation": {"limit": 10}}
    assert sw.point_key(a, proto) == sw.point_key(a, json.loads(json.dumps(proto)))
    assert sw.point_key(a, proto) != sw.point_key(b, proto)
    assert sw.point_key(a, proto) != sw.point_key(a, {"evaluation": {"limit": 11}})


def test_results_file_drops_a_line_cut_off_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    sw.append_row(path, {"key": "a", "x": 1.0})
    sw.append_row(path, {"key": "b", "lam": math.inf})
    with open(path, "a") as fh:
        fh.write('{"key": "c", "x"')  # a write interrupted mid-line
    assert [r["key"] for r in sw.read_results(path)] == ["a", "b"]
    assert path.read_text().endswith('"x"')  # untouched without repair
    assert [r["key"] for r in sw.read_results(path, repair=True)] == ["a", "b"]
    assert path.read_text().endswith("}\n")
    assert sw.read_results(path)[1]["lam"] == "inf"


def test_a_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(AdapterError, match="line 2 is not JSON"):
        sw.read_results(path)


def test_yaml_and_toml_configs_agree(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(
        'model = "m"\nout = "o.jsonl"\n[evaluation]\nlimit = 5\n'
        '[[points]]\nmethod = "bundle"\nlam = [0.0, inf]\ntying = [1, 2]\n'
    )
    yaml = tmp_path / "s.yaml"
    yaml.write_text(
        "model: m\nout: o.jsonl\nevaluation: {limit: 5}\n"
        "points:\n  - {method: bundle, lam: [0.0, inf], tying: [1, 2]}\n"
    )
    a, b = sw.load_config(toml), sw.load_config(yaml)
    assert sw.expand_points(a) == sw.expand_points(b)
    with pytest.raises(AdapterError, match=r"use \.toml or \.yaml"):
        sw.load_config(_touch(tmp_path / "s.ini"))


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {k: None for k in sweep_cli._OVERRIDES}
    base.update(methods=None, lam=None, tying=None, metric=None, coupling=None, group_size=None)
    base.update(no_hellaswag=False, no_baseline=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_flags_override_only_where_given_and_say_so() -> None:
    config = {
        "model": "m",
        "evaluation": {"limit": 500, "seq_len": 128},
        "points": [{"method": "svd"}],
    }
    log = io.StringIO()
    new = sweep_cli.apply_overrides(config, _args(limit=20), log)
    assert new["evaluation"] == {"limit": 20, "seq_len": 128}
    assert config["evaluation"]["limit"] == 500  # the loaded configuration is not mutated
    assert "--limit 20 overrides evaluation.limit = 500" in log.getvalue()
    assert log.getvalue().count("overrides") == 1
    args = _args(methods="svd-llm,bundle", lam="0,inf")
    new = sweep_cli.apply_overrides(config, args, io.StringIO())
    assert new["points"] == [{"method": "svd-llm"}, {"method": "bundle", "lam": [0.0, math.inf]}]


def test_refit_flags_keep_their_words_and_name_the_point() -> None:
    """--ridge takes 'auto' beside numbers; a bad value names --ridge, not another flag;
    refit points are labelled by what differs from the defaults."""
    config = {"model": "m", "points": [{"method": "svd"}]}
    args = _args(methods="svd-llm", refit="left", target="local", ridge="auto,0.1")
    new = sweep_cli.apply_overrides(config, args, io.StringIO())
    assert new["points"] == [
        {"method": "svd-llm", "refit": ["left"], "target": ["local"], "ridge": ["auto", 0.1]}
    ]
    with pytest.raises(AdapterError, match=r"^--ridge big is not a number"):
        sweep_cli.apply_overrides(config, _args(methods="svd-llm", ridge="big"), io.StringIO())
    labels = [sw.point_label(p) for p in sw.expand_points(new) if p.method != "dense"]
    assert labels == [
        "svd-llm refit=left target=local",
        "svd-llm refit=left target=local ridge=0.1",
    ]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory, shared_model: Path) -> dict[str, Any]:
    """A random 3-layer GPT-NeoX with the shared tokenizer, and small text files."""
    from llm_adapter.testing import random_neox
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("sweep")
    model = random_neox(hidden_size=32, num_hidden_layers=3, vocab_size=4096, seed=0)
    model.save_pretrained(str(root / "model"))
    AutoTokenizer.from_pretrained(str(shared_model)).save_pretrained(str(root / "model"))
    text = " ".join(f"The {w} sat on the mat near river number {i} ." for i, w in
                    enumerate(["cat", "dog", "man", "bird", "fish", "horse"] * 40))  # fmt: skip
    (root / "text.txt").write_text(text)
    items = []
    for i in range(3):
        items += [
            f"Label {i}: A person walks. he",
            str(i % 4),
            "runs.",
            "sits down.",
            "eats.",
            "x.",
        ]
    (root / "hs.txt").write_text("\n".join(items) + "\n")
    return {"root": root}


def _config(root: Path, out: Path) -> dict[str, Any]:
    return {
        "name": "tiny",
        "model": str(root / "model"),
        "out": str(out),
        "device": "cpu",
        "cache_dir": str(root / "cache"),
        "families": ["attention.dense"],
        "rank_ratios": [0.25],
        "calibration": {"text": str(root / "text.txt"), "samples": 8, "seq_len": 32, "seed": 0},
        "heldout": {"text": str(root / "text.txt"), "samples": 4, "seq_len": 32, "seed": 1},
        "evaluation": {
            "wikitext": str(root / "text.txt"),
            "seq_len": 32,
            "max_windows": 4,
            "hellaswag": str(root / "hs.txt"),
            "limit": 2,
        },
        "points": [
            {"method": "svd"},
            {"method": "svd-llm"},
            {"method": "bundle", "lam": 0.0, "tying": [1, 3]},
        ],
    }


@pytest.mark.data
@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(
    tiny_setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A point raises after two compressed rows were written; the rerun computes only
    the missing points and the file holds each key exactly once."""
    import llm_adapter.compress as compress

    out = tmp_path / "r.jsonl"
    config = _config(tiny_setup["root"], out)
    real = compress.compress_model
    calls: list[str] = []

    def flaky(model: Any, cc: Any, stats: Any = None, **kw: Any) -> Any:
        calls.append(cc.method)
        if len(calls) == 3:
            raise RuntimeError("simulated kill")
        return real(model, cc, stats, **kw)

    monkeypatch.setattr(compress, "compress_model", flaky)
    with pytest.raises(RuntimeError, match="simulated kill"):
        sw.run_sweep(config, progress=False, log=io.StringIO())
    first = sw.read_results(out)
    assert [r["label"] for r in first] == ["dense", "svd", "svd-llm"]
    with open(out, "a") as fh:  # and the kill cut a line in half
        fh.write('{"key": "dead')

    calls.clear()
    monkeypatch.setattr(
        compress, "compress_model", lambda *a, **k: (calls.append("x"), real(*a, **k))[1]
    )
    new = sw.run_sweep(config, progress=False, log=io.StringIO())
    assert len(calls) == 2 and len(new) == 2
    rows = sw.read_results(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 5
    assert [r["label"] for r in rows[3:]] == ["bundle lam=0 k=1 weight", "bundle lam=0 k=3 weight"]
    # a third run has nothing left to do
    assert sw.run_sweep(config, progress=False, log=io.StringIO()) == []

    by = {r["label"]: r for r in rows}
    # the untied lambda = 0 bundle corner is plain SVD (same frame; 1e-9: float64 eigensolvers)
    svd, k1 = by["svd"], by["bundle lam=0 k=1 weight"]
    assert k1["frobenius_fraction"] == pytest.approx(svd["frobenius_fraction"], rel=1e-9)
    # Eckart-Young: SVD has the smallest Frobenius error, SVD-LLM the smallest calibration
    # activation error of all per-layer sections (1e-12 slack for float64 rounding)
    assert svd["frobenius_fraction"] <= by["svd-llm"]["frobenius_fraction"] + 1e-12
    assert by["svd-llm"]["activation_fraction"] <= svd["activation_fraction"] + 1e-12
    row = by["bundle lam=0 k=3 weight"]
    for key in ("ppl", "hellaswag_acc", "hellaswag_acc_norm", "activation_fraction_heldout",
                "params_kept", "model_params", "timings"):  # fmt: skip
        assert row[key] is not None
    assert row["hellaswag_items"] == 2 and row["ppl_windows"] == 4
    assert row["model_params"] < by["dense"]["model_params"]
    assert row["rank"] == {"attention.dense": 8}  # round(0.25 * 32)


@pytest.mark.data
@pytest.mark.slow
def test_checkpoints_are_reused_on_rerun(tiny_setup: dict[str, Any], tmp_path: Path) -> None:
    config = _config(tiny_setup["root"], tmp_path / "r.jsonl")
    config.update(baseline=False, checkpoints=str(tmp_path / "ck"))
    config["points"] = [{"method": "bundle", "lam": 0.0, "tying": 3}]
    first = sw.run_sweep(config, progress=False, log=io.StringIO())
    (tmp_path / "r.jsonl").unlink()  # forget the row, keep the compressed model
    second = sw.run_sweep(config, progress=False, log=io.StringIO())
    assert not first[0]["reused_checkpoint"] and second[0]["reused_checkpoint"]
    # the reloaded model measures the same (float32 weights written and read back exactly)
    assert second[0]["ppl"] == pytest.approx(first[0]["ppl"], rel=1e-6)
    assert second[0]["frobenius_fraction"] == first[0]["frobenius_fraction"]


def test_cli_dry_run_lists_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_adapter.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        f'model = "m"\nout = "{tmp_path / "o.jsonl"}"\n[[points]]\nmethod = "bundle"\n'
        "lam = [0.0, 1.0]\n"
    )
    assert main(["sweep", str(cfg), "--dry-run", "--limit", "7"]) == 0
    err = capsys.readouterr().err
    assert "--limit 7 overrides evaluation.limit = '<unset>'" in err
    assert "3 points, 0 done" in err and err.count("[todo]") == 3


@pytest.mark.parametrize("name", ["neox_mini.toml", "neox_mini_all.toml", "pythia.toml"])
def test_experiment_configs_parse(name: str) -> None:
    """The shipped experiment configurations are valid and expand to the documented grid."""
    path = Path(__file__).resolve().parents[2] / "experiments" / name
    config = sw.load_config(path)
    points = sw.expand_points(config)
    methods = {p.method for p in points}
    assert {"svd", "svd-llm", "basis-sharing", "bundle"} <= methods
    assert ("dense" in methods) == config.get("baseline", True)
    assert all(p.rank_ratio == 0.25 for p in points if p.method != "dense")
    keys = [sw.point_key(p, {"x": 1}) for p in points]
    assert len(set(keys)) == len(keys)
