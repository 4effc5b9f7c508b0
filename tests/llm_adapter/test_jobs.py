"""The library's entry points (``llm_adapter.jobs``) and how each surface spells an error.

One bad value, ``rank_ratio = 0.0``, through the three surfaces: the command
line names it ``--rank-ratio 0.0``, a sweep configuration
``points[2].rank_ratio``, the Python API carries the key ``rank_ratio``.
"""

from __future__ import annotations

import json
from pathlib import Path

import llm_adapter as la
import pytest
from llm_adapter.cli import main
from llm_adapter.errors import AdapterWarning, Spelling, mention, spelled
from llm_adapter.experiment import sweep as sw


def test_the_cli_spells_a_bad_value_as_its_option(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", str(tiny["model"]), "--method", "svd", "--rank-ratio", "0.0"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "got --rank-ratio 0.0" in err and "rank_ratio" not in err
    # a request field checked by the library is spelled as its option too
    argv = ["compress", str(tiny["model"]), "--method", "svd", "--calib-samples", "0"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "--calib-samples must be >= 1; got --calib-samples 0" in capsys.readouterr().err
    # the sweep names its results file by its own option
    config = tmp_path / "s.toml"
    config.write_text('model = "m"\n[[points]]\nmethod = "svd"\n')
    assert main(["sweep", str(config), "--no-baseline"]) == 2
    assert "(in the configuration or as --results)" in capsys.readouterr().err


def test_a_sweep_spells_a_bad_value_as_its_point_key() -> None:
    points = [{"method": "svd"}, {"method": "svd-llm"}, {"method": "svd", "rank_ratio": 0.0}]
    with pytest.raises(la.ConfigurationError, match=r"points\[2\]\.rank_ratio = 0\.0") as info:
        sw.expand_points({"points": points})
    assert (info.value.key, info.value.value) == ("rank_ratio", 0.0)
    # a method parameter checked by the method table: the point's key as well
    with pytest.raises(la.ConfigurationError, match=r"points\[1\]\.group_size = 0") as info:
        sw.expand_points({"points": [points[0], {"method": "basis-sharing", "group_size": 0}]})
    assert "--" not in str(info.value) and info.value.key == "group_size"


def test_the_python_api_carries_the_keyword() -> None:
    with pytest.raises(la.ConfigurationError) as info:
        la.CompressionConfig(method="svd", rank_ratio=0.0)
    exc = info.value
    assert (exc.key, exc.value, exc.reason) == ("rank_ratio", 0.0, "must be in (0, 1)")
    assert "got rank_ratio=0.0" in str(exc) and "--" not in str(exc)
    with pytest.raises(la.ConfigurationError) as info:
        la.CompressionConfig(method="bundle", lam=-1.0)
    assert info.value.key == "lam" and "lam=-1.0" in str(info.value)


def test_a_compress_request_is_checked_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("llm_adapter.checkpoint.load", no_load)
    config = la.CompressionConfig(method="svd")
    request = la.CompressRequest(model="m", out=tmp_path / "o", config=config, calib_samples=0)
    with pytest.raises(la.ConfigurationError, match="got calib_samples=0") as info:
        la.run_compress(request)
    assert info.value.key == "calib_samples"
    request = la.CompressRequest(model="m", out=tmp_path / "o", config=la.CompressionConfig())
    with pytest.raises(la.DataError, match="pass calib_text PATH or calib_dataset NAME"):
        la.run_compress(request)


def test_run_compress_writes_what_the_cli_writes(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The command line is the request and the job: the same checkpoint, byte for byte."""
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    argv = [
        "compress", str(tiny["model"]), "--method", "svd-llm", "--calib-text", str(tiny["text"]),
        "--calib-samples", "4", "--calib-seq-len", "64", "--device", "cpu", "--no-progress",
        "--out", str(cli_out),
    ]  # fmt: skip
    assert main(argv) == 0
    request = la.CompressRequest(
        model=str(tiny["model"]), out=api_out, config=la.CompressionConfig(method="svd-llm"),
        calib_text=str(tiny["text"]), calib_samples=4, calib_seq_len=64, device="cpu",
        progress=False,
    )  # fmt: skip
    report = la.run_compress(request)
    assert "save" in report.timings
    assert (cli_out / "model.safetensors").read_bytes() == (
        api_out / "model.safetensors"
    ).read_bytes()
    manifests = [json.loads((o / "compression.json").read_text()) for o in (cli_out, api_out)]
    for m in manifests:  # wall times aside
        m.pop("timings")
        for fam in m["families"].values():
            for key in [k for k in fam if k.startswith("seconds")]:
                del fam[key]
    assert manifests[0] == manifests[1]


def test_mentions_are_spelled_per_surface() -> None:
    text = f"use {mention('refit', 'left')} with {mention('update')}"
    assert spelled(text) == "use refit='left' with update"
    assert spelled(text, sw.PointSpelling("points[0]")) == (
        "use points[0].refit = 'left' with points[0].update"
    )
    from llm_adapter.cli import FLAGS

    assert spelled(text, FLAGS) == "use --refit left with --update"
    assert spelled(mention("overwrite", True), FLAGS) == "--overwrite"
    assert isinstance(FLAGS, Spelling)
    warning = AdapterWarning(f"more {mention('samples')}")
    assert str(warning) == "more samples" and warning.spelled(FLAGS) == "more --samples"
