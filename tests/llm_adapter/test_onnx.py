"""ONNX export (llm_adapter.deploy): two MatMuls per low-rank map, shared bases stored once,
ONNX Runtime's logits equal to the PyTorch compressed model's.

Tolerance: float32 kernels of two runtimes sum in different orders, so the
logits agree to rounding, not bit for bit; the test allows 1e-4 of the
largest logit magnitude (the differences seen are about 1e-6 of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llm_adapter import CompressionConfig, calibrate, compress_model, load, save
from llm_adapter.deploy import export_onnx, onnx_initializer_bytes, onnx_logits
from llm_adapter.errors import AdapterError
from llm_adapter.lowrank import LowRankLinear

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


RTOL = 1e-4  # of the largest |logit|


def test_bad_output_name_fails_before_loading(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"must end in \.onnx"):
        export_onnx("no/such-model", tmp_path / "model.bin")
    with pytest.raises(AdapterError, match="does not exist; create it"):
        export_onnx("no/such-model", tmp_path / "absent" / "model.onnx")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(AdapterError, match="exists; pass overwrite=True"):
        export_onnx("no/such-model", tmp_path / "m.onnx")


def test_cli_onnx_refuses_a_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_adapter.cli import main

    out = tmp_path / "m.onnx"
    args = ["export", "no/such-model", "--format", "onnx", "--dtype", "float16", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype float16 does not apply to --format onnx" in err[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.data
def test_onnx_export_of_compressed_neox_mini(tmp_path: Path, shared_model: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model, tok = load(shared_model, device="cpu")
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.integers(0, vocab, size=(16, 64)))
    families = ["attention.dense", "mlp.dense_4h_to_h"]
    stats = calibrate(model, None, families, token_windows=windows)
    dense_onnx = export_onnx(model, tmp_path / "dense.onnx")
    # the bundle with tying k = 3 over 6 layers: two shared bases per family
    config = CompressionConfig(
        method="bundle", families=tuple(families), rank_ratio=0.25, lam=0.0, tying=3
    )
    report = compress_model(model, config, stats)
    ckpt = save(model, tok, report, tmp_path / "ckpt")
    path = export_onnx(ckpt, tmp_path / "compressed.onnx")

    # logits: other batch sizes and lengths than the export's example input
    reloaded, _ = load(ckpt, device="cpu")
    for shape in [(1, 23), (3, 40)]:
        ids = torch.from_numpy(rng.integers(0, vocab, size=shape))
        with torch.no_grad():
            ref = reloaded(input_ids=ids).logits.numpy()
        got = onnx_logits(path, ids)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()

    # each low-rank map is two MatMuls on stored factors; each shared basis stored once
    proto = onnx.load(str(path))
    arrays = [numpy_helper.to_array(init) for init in proto.graph.initializer]
    lowrank = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    shared = {id(m.left): m.left.detach().numpy() for m in lowrank}
    assert len(shared) == 2 * 2  # 2 families x 6 layers / k = 3
    for left in shared.values():
        copies = [a for a in arrays if a.shape == left.T.shape and np.array_equal(a, left.T)]
        assert len(copies) == 1
    for m in lowrank:
        right = m.right.detach().numpy()
        assert sum(a.shape == right.T.shape and np.array_equal(a, right.T) for a in arrays) == 1
    # nothing stored twice, transposed or not
    big = [a for a in arrays if a.ndim == 2 and a.size >= 1024]
    seen = set()
    for a in big:
        for b in (a, a.T):
            key = (b.shape, np.ascontiguousarray(b).tobytes())
            assert key not in seen
        seen.add((a.shape, np.ascontiguousarray(a).tobytes()))

    # the file keeps the savings: weights stored shrink by what compression removed
    saved = 4 * (
        report.families["attention.dense"].params_dense
        - report.families["attention.dense"].params_kept
        + report.families["mlp.dense_4h_to_h"].params_dense
        - report.families["mlp.dense_4h_to_h"].params_kept
    )
    assert onnx_initializer_bytes(dense_onnx) - onnx_initializer_bytes(path) == saved
    assert path.stat().st_size < dense_onnx.stat().st_size
