"""A sweep's saved checkpoints: keyed by what determines the compressed model, so a sweep
that evaluates the same points on other text reuses them; checkpoints saved by point key
(before compression keys existed) are still found; damaged ones are refused.  Also: a
refit point's row records each map's gate, which the report counts."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_adapter import AdapterError
from llm_adapter.experiment import sweep as sw

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


def _config(tiny: dict[str, Path], root: Path, name: str) -> dict[str, Any]:
    """Evaluation A: 2 perplexity windows of 16 tokens."""
    text = str(tiny["text"])
    return {
        "name": name,
        "model": str(tiny["model"]),
        "out": str(root / f"{name}.jsonl"),
        "device": "cpu",
        "cache_dir": str(root / "cache"),
        "checkpoints": str(root / "cks"),
        "baseline": False,
        "families": ["attention.dense"],
        "rank_ratios": [0.25],
        "calibration": {"text": text, "samples": 4, "seq_len": 16, "seed": 0},
        "heldout": {"text": text, "samples": 2, "seq_len": 16, "seed": 1},
        "evaluation": {"wikitext": text, "seq_len": 16, "max_windows": 2},
        "points": [{"method": "svd-llm"}, {"method": "bundle", "lam": 0.0, "tying": 3}],
    }


def _evaluation_b(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The same points and calibration; other perplexity windows and held-out windows."""
    other = copy.deepcopy(config)
    other.update(name=name, out=str(Path(config["out"]).with_name(f"{name}.jsonl")))
    other["evaluation"] = {**config["evaluation"], "seq_len": 32, "max_windows": 4}
    other["heldout"] = {**config["heldout"], "samples": 3}
    return other


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The methods of the points a sweep compresses (rather than reloads), in order."""
    calls: list[str] = []
    real = sw._compress_point

    def counted(model: Any, point: sw.SweepPoint, *args: Any, **kw: Any) -> Any:
        calls.append(point.method)
        return real(model, point, *args, **kw)

    monkeypatch.setattr(sw, "_compress_point", counted)
    return calls


def _run(config: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return sw.run_sweep(copy.deepcopy(config), progress=False, log=io.StringIO(), **kw)


def _dry_run(config: dict[str, Any]) -> str:
    log = io.StringIO()
    sw.run_sweep(copy.deepcopy(config), progress=False, log=log, dry_run=True)
    return log.getvalue()


def test_another_evaluation_reuses_the_compressed_models(
    tiny: dict[str, Path], tmp_path: Path, compressions: list[str]
) -> None:
    a = _config(tiny, tmp_path, "a")
    first = _run(a)
    assert compressions == ["svd-llm", "bundle"] and not any(r["reused_checkpoint"] for r in first)
    ckeys = [r["checkpoint_key"] for r in first]
    assert sorted(p.name for p in (tmp_path / "cks").iterdir()) == sorted(ckeys)

    b = _evaluation_b(a, "b")
    assert "(reuses the checkpoint" in _dry_run(b)
    compressions.clear()
    second = _run(b)
    assert compressions == []  # nothing compressed: both models reloaded
    assert all(r["reused_checkpoint"] for r in second)
    assert [r["checkpoint_key"] for r in second] == ckeys
    assert {r["key"] for r in second}.isdisjoint(r["key"] for r in first)  # other rows
    assert [r["ppl_windows"] for r in second] == [4, 4]

    # the same evaluation of freshly compressed models gives the same numbers
    fresh = _evaluation_b(a, "c")
    del fresh["checkpoints"]
    third = _run(fresh)
    assert compressions == ["svd-llm", "bundle"]
    assert [r["key"] for r in third] == [r["key"] for r in second]  # checkpoints: not keyed
    for a_row, reused, new in zip(first, second, third, strict=True):
        assert reused["ppl"] == pytest.approx(new["ppl"], rel=1e-6)
        assert reused["ppl"] != pytest.approx(a_row["ppl"], rel=1e-6)  # other windows
        assert reused["frobenius_fraction"] == new["frobenius_fraction"]
        assert reused["activation_fraction_heldout"] == pytest.approx(
            new["activation_fraction_heldout"], rel=1e-6
        )
    assert sorted(p.name for p in (tmp_path / "cks").iterdir()) == sorted(ckeys)


def test_another_calibration_seed_compresses_again(
    tiny: dict[str, Path], tmp_path: Path, compressions: list[str]
) -> None:
    a = _config(tiny, tmp_path, "a")
    a["points"] = [{"method": "svd-llm"}]
    first = _run(a)
    b = _evaluation_b(a, "b")
    b["calibration"] = {**a["calibration"], "seed": 1}
    assert "(reuses the checkpoint" not in _dry_run(b)
    second = _run(b)
    assert compressions == ["svd-llm", "svd-llm"] and not second[0]["reused_checkpoint"]
    assert second[0]["checkpoint_key"] != first[0]["checkpoint_key"]
    assert len(list((tmp_path / "cks").iterdir())) == 2


def test_a_checkpoint_saved_by_point_key_is_reused(
    tiny: dict[str, Path], tmp_path: Path, compressions: list[str]
) -> None:
    """Sweeps saved a point's checkpoint under its point key before compression keys existed:
    the same configuration still finds it there; one with another evaluation does not."""
    a = _config(tiny, tmp_path, "a")
    a["points"] = [{"method": "svd-llm"}]
    (row,) = _run(a)
    cks = tmp_path / "cks"
    (cks / row["checkpoint_key"]).rename(cks / row["key"])  # the old layout
    Path(a["out"]).unlink()  # forget the row, keep the compressed model
    assert f"(reuses the checkpoint {cks / row['key']})" in _dry_run(a)
    compressions.clear()
    (again,) = _run(a)
    assert compressions == [] and again["reused_checkpoint"]
    assert again["key"] == row["key"] and again["ppl"] == pytest.approx(row["ppl"], rel=1e-6)
    assert sorted(p.name for p in cks.iterdir()) == [row["key"]]  # read where it is

    (other,) = _run(_evaluation_b(a, "b"))  # its point key names another directory
    assert compressions == ["svd-llm"] and not other["reused_checkpoint"]
    assert sorted(p.name for p in cks.iterdir()) == sorted([row["key"], row["checkpoint_key"]])


@pytest.mark.parametrize("layout", ["compression key", "point key"])
def test_a_damaged_checkpoint_is_refused_before_the_run(
    tiny: dict[str, Path], tmp_path: Path, compressions: list[str], layout: str
) -> None:
    a = _config(tiny, tmp_path, "a")
    a["points"] = [{"method": "svd-llm"}]
    (row,) = _run(a)
    ck = tmp_path / "cks" / row["checkpoint_key"]
    if layout == "point key":
        ck = ck.rename(ck.with_name(row["key"]))
        Path(a["out"]).unlink()
        config = a
    else:
        config = _evaluation_b(a, "b")
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    compressions.clear()
    for dry_run in (True, False):
        with pytest.raises(AdapterError, match="cannot be reused") as err:
            _run(config, dry_run=dry_run)
        assert str(ck) in str(err.value)
    assert compressions == []
    assert not Path(config["out"]).exists() or Path(config["out"]).read_text() == ""


def test_points_sharing_a_compression_key_are_saved_once(
    tiny: dict[str, Path],
    tmp_path: Path,
    compressions: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two points of one sweep with one compressed model (none today: every point differs
    in what :meth:`SweepPoint.describe` records): the first saves it, the second reloads it."""
    monkeypatch.setattr(sw, "compression_key", lambda point, protocol: "0123456789abcdef")
    a = _config(tiny, tmp_path, "a")
    rows = _run(a)
    assert compressions == ["svd-llm"]
    assert [r["reused_checkpoint"] for r in rows] == [False, True]
    assert [p.name for p in (tmp_path / "cks").iterdir()] == ["0123456789abcdef"]


def _points_and_protocol(name: str) -> tuple[list[sw.SweepPoint], dict[str, Any]]:
    config = sw.load_config(REPO / "experiments" / name)
    return sw.expand_points(config), sw.sweep_protocol(config)


def test_the_headline_points_are_compressed_as_in_the_loss_aware_sweep() -> None:
    """experiments/smollm2_headline.toml evaluates points of smollm2_loss_aware.toml and
    smollm2_refit.toml on more text: every compressed point has a compression key of
    those sweeps, and no point key (its rows are its own)."""
    headline, h_protocol = _points_and_protocol("smollm2_headline.toml")
    loss_aware, l_protocol = _points_and_protocol("smollm2_loss_aware.toml")
    refits, r_protocol = _points_and_protocol("smollm2_refit.toml")
    assert r_protocol == l_protocol  # the refit rows go beside the loss-aware ones
    loss_aware += refits
    h_paths = sw.load_config(REPO / "experiments" / "smollm2_headline.toml")["paths"]
    l_paths = sw.load_config(REPO / "experiments" / "smollm2_loss_aware.toml")["paths"]
    for name in (h_protocol["model"], h_protocol["calibration"]["dataset"]):
        assert h_paths[name] == l_paths[name]  # both read the same local files
    compressed = [p for p in headline if p.method != "dense"]
    assert len(compressed) == 18
    ckeys = {sw.compression_key(p, l_protocol) for p in loss_aware}
    assert {sw.compression_key(p, h_protocol) for p in compressed} <= ckeys
    keys = {sw.point_key(p, l_protocol) for p in loss_aware}
    assert keys.isdisjoint(sw.point_key(p, h_protocol) for p in headline)


def test_the_gpu_headline_evaluates_the_headline_models_at_2048_tokens_on_everything() -> None:
    """experiments/smollm2_headline_gpu.toml: the headline's points with its calibration
    (so the same compression keys: a checkpoints directory serves both), evaluated on
    windows of 2048 tokens over the whole split and all of HellaSwag, in float32."""
    gpu, g_protocol = _points_and_protocol("smollm2_headline_gpu.toml")
    cpu, c_protocol = _points_and_protocol("smollm2_headline.toml")
    assert [p.describe() for p in gpu] == [p.describe() for p in cpu]
    assert [sw.compression_key(p, g_protocol) for p in gpu if p.method != "dense"] == [
        sw.compression_key(p, c_protocol) for p in cpu if p.method != "dense"
    ]
    g_keys = {sw.point_key(p, g_protocol) for p in gpu}
    assert g_keys.isdisjoint(sw.point_key(p, c_protocol) for p in cpu)  # rows apart
    config = sw.load_config(REPO / "experiments" / "smollm2_headline_gpu.toml")
    evaluation = config["evaluation"]
    assert evaluation["seq_len"] == 2048
    assert "max_windows" not in evaluation and "limit" not in evaluation
    assert config["device"] == "cuda" and config["dtype"] == "float32"
    assert config["out"] != sw.load_config(REPO / "experiments" / "smollm2_headline.toml")["out"]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
@pytest.mark.skipif(
    not (REPO.parent / "shared" / "data").is_dir(), reason="../shared/data is absent"
)
def test_the_gpu_headline_stops_in_one_line_without_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CUDA the GPU headline refuses before loading anything and writes no file
    (its [paths] are read from the repository root, as the command in its header runs)."""
    from llm_adapter.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "rows.jsonl"
    config = (REPO / "experiments" / "smollm2_headline_gpu.toml").read_text()
    assert 'out = "experiments/results/smollm2_headline_gpu.jsonl"' in config
    cfg = tmp_path / "gpu.toml"
    cfg.write_text(config.replace("experiments/results/smollm2_headline_gpu.jsonl", str(out)))
    assert main(["sweep", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "llm-adapter: error: device 'cuda' asked for but CUDA is not available; use --device cpu"
    ]
    assert not out.exists()


def test_refit_rows_record_each_maps_gate_and_the_report_counts_them(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A refit point's row keeps, per layer, whether the refit was kept and its ridge; the
    report counts the maps that kept it (against the per-layer record itself)."""
    from llm_adapter.experiment.report import write_report

    config = _config(tiny, tmp_path, "refit")
    config.pop("checkpoints")
    config["points"] = [{"method": "svd-llm", "refit": "left"}, {"method": "svd-llm"}]
    rows = _run(config)
    refit = next(r for r in rows if r.get("refit") == "left")
    plain = next(r for r in rows if r is not refit)
    layers = refit["per_layer"]["attention.dense"]
    assert len(layers["refit_kept"]) == len(layers["frobenius_fraction"]) == 3
    assert all(isinstance(g, bool) for g in layers["refit_kept"])
    assert len(layers["refit_ridge"]) == 3
    assert "refit_kept" not in plain["per_layer"]["attention.dense"]
    out = tmp_path / "report"
    write_report(config["out"], out)
    text = (out / "results.md").read_text()
    kept = sum(layers["refit_kept"])
    assert f": kept by {kept} of 3 factored maps\n" in text
    assert text.count(" maps\n") == 1  # the plain SVD-LLM row has no line
