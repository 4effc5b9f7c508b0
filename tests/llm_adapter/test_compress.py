"""Compression on tiny random GPT-NeoX models: ranks, methods, write-back, errors."""

from __future__ import annotations

import math
from pathlib import Path

import grassbundle.bundle as gbb
import numpy as np
import pytest
import torch
from llm_adapter import (
    AdapterError,
    CompressionConfig,
    LowRankLinear,
    calibrate,
    compress_model,
    count_unique_parameters,
    family_modules,
    family_weights,
    rank_for,
)
from llm_adapter.methods import ENERGY_ALLOCATIONS, METHOD_TABLE
from llm_adapter.testing import random_neox


def _model(dtype: torch.dtype = torch.float64, layers: int = 4) -> torch.nn.Module:
    return random_neox(num_hidden_layers=layers, dtype=dtype, seed=1)


def _stats(model: torch.nn.Module, families: str = "all"):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.integers(0, 128, size=(8, 32)))  # 256 tokens > n = 128
    return calibrate(model, None, families, token_windows=windows)


def _dense(mod: LowRankLinear) -> np.ndarray:
    return (mod.left @ mod.right).detach().double().numpy()


def _projector(U: np.ndarray) -> np.ndarray:
    Q, _ = np.linalg.qr(U)
    return Q @ Q.T


# ---------------------------------------------------------------- ranks


def test_rank_ratio_rounds_half_up() -> None:
    for ratio, d in [(0.25, 8), (0.2, 6), (0.3, 10), (0.5, 16)]:  # D = 32: 8, 6.4, 9.6, 16
        assert rank_for(CompressionConfig(method="svd", rank_ratio=ratio), 32, 32, 4) == d
    assert rank_for(CompressionConfig(method="svd", rank_ratio=0.25), 96, 32, 4) == 24  # D = m


def test_param_ratio_formulas() -> None:
    # SVD-LLM: floor(p m n / (m + n)) per layer
    assert rank_for(CompressionConfig(method="svd-llm", param_ratio=0.4), 32, 128, 4) == math.floor(
        0.4 * 32 * 128 / 160
    )
    # tied groups of k: the shared U (m x d) counted once
    cfg = CompressionConfig(method="bundle", param_ratio=0.4, tying=2)
    assert rank_for(cfg, 32, 32, 4) == math.floor(0.4 * 2 * 32 * 32 / (32 + 2 * 32))
    # input-side sharing: the shared right factor (d x n) counted once
    cfg = CompressionConfig(method="basis-sharing", param_ratio=0.4, group_size=3)
    assert rank_for(cfg, 32, 128, 4) == math.floor(0.4 * 3 * 32 * 128 / (128 + 3 * 32))


def test_rank_out_of_range_is_named() -> None:
    with pytest.raises(AdapterError, match=r"gives rank d = 0 .* need 1 <= d < D = 32"):
        rank_for(CompressionConfig(method="svd", rank_ratio=0.01), 32, 32, 4)
    with pytest.raises(AdapterError, match=r"gives rank d = 32"):
        rank_for(CompressionConfig(method="svd", rank_ratio=0.99), 32, 32, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"method": "pca"},
            "unknown method 'pca'; valid methods: svd, svd-llm, basis-sharing, bundle",
        ),
        ({"families": ("attention.out",)}, "unknown family 'attention.out'"),
        ({"metric": "kl"}, "unknown metric 'kl'"),
        ({"rank_ratio": 0.0}, r"rank_ratio=0\.0"),
        ({"rank_ratio": 1.0}, r"rank_ratio=1\.0"),
        ({"param_ratio": 1.5}, r"param_ratio=1\.5"),
        ({"lam": -1.0}, r"lam=-1\.0"),
        ({"tying": 0}, r"tying=0"),
        ({"coupling": 1.0, "method": "svd"}, "coupling applies to method bundle only"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict[str, object], match: str) -> None:
    """The Python API names a value by its keyword (the command line by its option)."""
    with pytest.raises(AdapterError, match=match):
        CompressionConfig(**{"method": "bundle", **kwargs})  # type: ignore[arg-type]


def test_tying_larger_than_layers() -> None:
    model = _model(layers=3)
    with pytest.raises(AdapterError, match="tying degree 4 exceeds the number of layers L = 3"):
        compress_model(model, CompressionConfig(method="bundle", tying=4))
    with pytest.raises(AdapterError, match="group size 5 exceeds the number of layers L = 3"):
        compress_model(
            model, CompressionConfig(method="basis-sharing", group_size=5), _stats(model)
        )


def test_methods_needing_calibration() -> None:
    with pytest.raises(AdapterError, match="method 'svd-llm' needs calibration statistics"):
        compress_model(_model(), CompressionConfig(method="svd-llm"))


def test_non_finite_weights() -> None:
    model = _model()
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[3, 3] = float("inf")
    with pytest.raises(AdapterError, match=r"non-finite weights .* layers \[1\]"):
        compress_model(model, CompressionConfig(method="svd"))


# ---------------------------------------------------------------- methods


def test_svd_is_truncated_svd() -> None:
    model = _model()
    W = family_weights(model, "attention.dense")
    report = compress_model(model, CompressionConfig(method="svd", rank_ratio=0.25))
    assert report.families["attention.dense"].activation_error is None  # no stats given
    for l, mod in enumerate(family_modules(model, "attention.dense")):
        assert isinstance(mod, LowRankLinear) and mod.rank == 8
        U, s, Vt = np.linalg.svd(W[l])
        ref = (U[:, :8] * s[:8]) @ Vt[:8]
        # float64 model: eigh vs SVD routes agree to roundoff of ||W|| (~1e-14)
        np.testing.assert_allclose(_dense(mod), ref, atol=1e-11 * np.abs(W[l]).max())
        # Eckart-Young: the reported energy is the tail of the spectrum
        np.testing.assert_allclose(
            report.families["attention.dense"].frobenius_error[l], np.sum(s[8:] ** 2), rtol=1e-10
        )


def test_svd_llm_is_anchor_and_activation_optimal() -> None:
    model = _model()
    stats = _stats(model, "attention.dense")
    W = family_weights(model, "attention.dense")
    C = stats.covariance("attention.dense")
    report = compress_model(model, CompressionConfig(method="svd-llm"), stats)
    fam = report.families["attention.dense"]
    for l, mod in enumerate(family_modules(model, "attention.dense")):
        M = W[l] @ C[l] @ W[l].T
        mu, V = np.linalg.eigh(M)
        P = V[:, -8:] @ V[:, -8:].T
        np.testing.assert_allclose(_dense(mod), P @ W[l], atol=1e-10 * np.abs(W[l]).max())
        # Ky Fan: activation energy = sum of the m - d smallest eigenvalues of M
        np.testing.assert_allclose(fam.activation_error[l], mu[:-8].sum(), rtol=1e-8)  # type: ignore[index]
        np.testing.assert_allclose(fam.activation_fraction[l], mu[:-8].sum() / mu.sum(), rtol=1e-8)  # type: ignore[index]


def test_bundle_corners() -> None:
    """lam = 0 untied = SVD; lam = inf untied = SVD-LLM; activation metric untied = SVD-LLM."""
    base = _model()
    stats = _stats(base, "attention.dense")

    def weights(config: CompressionConfig) -> list[np.ndarray]:
        m = _model()
        compress_model(m, config, stats)
        return [_dense(mod) for mod in family_modules(m, "attention.dense")]

    svd = weights(CompressionConfig(method="svd"))
    svdllm = weights(CompressionConfig(method="svd-llm"))
    for a, b in zip(weights(CompressionConfig(method="bundle", lam=0.0)), svd, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for a, b in zip(weights(CompressionConfig(method="bundle", lam=math.inf)), svdllm, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    act = weights(CompressionConfig(method="bundle", metric="activation", lam=0.0))
    for a, b in zip(act, svdllm, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_tied_bundle_shares_one_parameter_and_counts() -> None:
    model = _model()
    before = count_unique_parameters(model)
    stats = _stats(model, "attention.dense")
    cfg = CompressionConfig(method="bundle", lam=0.5, tying=3, rank_ratio=0.25)
    report = compress_model(model, cfg, stats)
    fam = report.families["attention.dense"]
    mods = family_modules(model, "attention.dense")
    assert fam.groups == [0, 0, 0, 1]
    assert mods[0].left is mods[1].left is mods[2].left
    assert mods[3].left is not mods[0].left
    assert all(m.right is not mods[0].right for m in mods[1:])
    # 2 shared 32x8 bases + 4 right factors 8x32
    assert fam.params_kept == 2 * 32 * 8 + 4 * 8 * 32
    assert fam.params_dense == 4 * 32 * 32
    assert before - count_unique_parameters(model) == fam.params_dense - fam.params_kept
    assert fam.param_ratio == pytest.approx(fam.params_kept / fam.params_dense)
    assert fam.rank_ratio == 0.25 and fam.D == 32
    # errors equal grassbundle's energies for the same section
    W = family_weights(_model(), "attention.dense")
    problem = gbb.BundleProblem(W, stats.covariance("attention.dense"), rank=8)
    section = gbb.solve(problem, 0.5, 3)
    np.testing.assert_allclose(fam.frobenius_fraction, section.frobenius_error, rtol=1e-12)
    np.testing.assert_allclose(fam.activation_fraction, section.activation_error, rtol=1e-12)  # type: ignore[arg-type]
    # and the written-back weights are P_U W with that section's bases
    for l, mod in enumerate(mods):
        U = section.basis(l)
        np.testing.assert_allclose(_dense(mod), U @ U.T @ W[l], atol=1e-12)
        E = W[l] - _dense(mod)
        np.testing.assert_allclose(fam.frobenius_error[l], np.sum(E * E), rtol=1e-9)


def test_basis_sharing_shares_the_input_side() -> None:
    model = _model()
    stats = _stats(model, "mlp.dense_4h_to_h")
    cfg = CompressionConfig(method="basis-sharing", group_size=2, families=("mlp.dense_4h_to_h",))
    report = compress_model(model, cfg, stats)
    fam = report.families["mlp.dense_4h_to_h"]
    mods = family_modules(model, "mlp.dense_4h_to_h")
    assert fam.shared == "right" and fam.rank == 8  # D = m = 32
    assert mods[0].right is mods[1].right and mods[2].right is mods[3].right
    assert mods[0].right is not mods[2].right
    assert fam.params_kept == 2 * 8 * 128 + 4 * 32 * 8
    C = stats.covariance("mlp.dense_4h_to_h")
    W = family_weights(_model(), "mlp.dense_4h_to_h")
    for l, mod in enumerate(mods):
        E = W[l] - _dense(mod)
        np.testing.assert_allclose(fam.activation_error[l], np.trace(E @ C[l] @ E.T), rtol=1e-8)  # type: ignore[index]


@pytest.mark.filterwarnings("ignore:rank d = .* no smaller than the dense maps:UserWarning")
def test_all_families_and_bias_kept() -> None:
    model = _model(dtype=torch.float32)
    biases = [m.bias for m in family_modules(model, "mlp.dense_h_to_4h")]
    stats = _stats(model)
    report = compress_model(model, CompressionConfig(method="svd-llm", families="all"), stats)
    assert tuple(report.families) == (
        "attention.query_key_value",
        "attention.dense",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    )
    assert report.families["attention.query_key_value"].rank == 24  # 0.25 * 96
    for b, m in zip(biases, family_modules(model, "mlp.dense_h_to_4h"), strict=True):
        assert m.bias is b
    assert set(report.timings) >= {"calibration", "factorisation", "write_back"}
    table = report.summary_table()
    assert "mlp.dense_4h_to_h" in table and "d/D" in table
    assert report.to_dict()["config"]["families"] == list(report.families)


def test_half_precision_write_back_keeps_dtype() -> None:
    model = _model(dtype=torch.bfloat16)
    stats = _stats(model, "attention.dense")
    compress_model(model, CompressionConfig(method="bundle", tying=2, lam=1.0), stats)
    mod = family_modules(model, "attention.dense")[0]
    assert mod.left.dtype == torch.bfloat16 and mod.right.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(input_ids=torch.arange(10)[None]).logits
    assert torch.isfinite(out).all()


def test_already_compressed_family_is_refused() -> None:
    model = _model()
    compress_model(model, CompressionConfig(method="svd"))
    with pytest.raises(AdapterError, match="already compressed"):
        compress_model(model, CompressionConfig(method="svd"))


def test_soft_coupling_uses_grassbundle_coupling() -> None:
    from grassbundle.coupling import solve_coupled

    model = _model()
    stats = _stats(model, "attention.dense")
    W = family_weights(model, "attention.dense")
    cfg = CompressionConfig(method="bundle", lam=0.5, coupling=2.0)
    report = compress_model(model, cfg, stats)
    fam = report.families["attention.dense"]
    assert fam.groups == [0, 1, 2, 3]  # untied: one basis per layer
    problem = gbb.BundleProblem(W, stats.covariance("attention.dense"), rank=8)
    ref = solve_coupled(problem, 0.5, 2.0)
    energies = problem.layer_energies(ref.bases)
    np.testing.assert_allclose(fam.frobenius_error, energies["frobenius"], rtol=1e-10)
    for l, mod in enumerate(family_modules(model, "attention.dense")):
        np.testing.assert_allclose(_dense(mod), _projector(ref.bases[l]) @ W[l], atol=1e-12)
    # coupling pulls adjacent subspaces together compared with mu = 0
    free = gbb.solve(problem, 0.5, 1).layer_bases

    def spread(B: np.ndarray) -> float:
        return sum(np.linalg.norm(_projector(B[l]) - _projector(B[l + 1])) for l in range(3))

    assert spread(ref.bases) < spread(free)


def test_soft_coupling_needs_finite_lam() -> None:
    with pytest.raises(AdapterError, match="finite anchor strength"):
        CompressionConfig(method="bundle", lam=math.inf, coupling=1.0)
    with pytest.raises(AdapterError, match="use tying=1 with coupling"):
        CompressionConfig(method="bundle", tying=2, coupling=1.0)


def test_no_saving_warns() -> None:
    # attention.query_key_value is 96 x 32: d = 24 keeps 24 * 128 = 3072 = 96 * 32 weights
    model = _model()
    with pytest.warns(UserWarning, match="no smaller than the dense maps"):
        compress_model(
            model, CompressionConfig(method="svd", families=("attention.query_key_value",))
        )


def test_rank_above_input_dimension() -> None:
    # attention.query_key_value is 96 x 32: d/D = 0.5 gives d = 48 > n = 32
    cfg = CompressionConfig(method="svd", rank_ratio=0.5, families=("attention.query_key_value",))
    model = _model()
    with pytest.raises(AdapterError, match=r"rank d = 48 exceeds the input dimension n = 32"):
        compress_model(model, cfg)
    # nothing was written back
    assert isinstance(family_modules(model, "attention.query_key_value")[0], torch.nn.Linear)


@pytest.mark.parametrize("allocate", ["sum", "normalised"])
def test_tied_allocation_over_groups(allocate: str, tmp_path: Path) -> None:
    """The activation corner tied in groups of 2 with allocated ranks: one rank per group,
    the same parameter budget as uniform ranks, no worse on the corner's own objective
    (the allocation is exact here: a dynamic programme over a small budget), and a
    checkpoint that reloads bit-identically."""
    from llm_adapter import load, save

    model = _model(layers=5)
    stats = _stats(model, "attention.dense")
    W = family_weights(model, "attention.dense")
    omega = 1.0 / np.einsum("lij,lij->l", W, W)  # the bundle's layer weights
    out = {}
    for mode in ("none", allocate):
        m = _model(layers=5)
        config = CompressionConfig(
            method="bundle", tying=2, metric="activation", allocate=mode, rank_ratio=0.25
        )
        out[mode] = (m, compress_model(m, config, stats))
    (m, report), (_, uni_report) = out[allocate], out["none"]
    fam, uni = report.families["attention.dense"], uni_report.families["attention.dense"]
    ranks = fam.ranks or [fam.rank] * 5
    assert fam.groups == [0, 0, 1, 1, 2]
    assert ranks[0] == ranks[1] and ranks[2] == ranks[3]
    mods = family_modules(m, "attention.dense")
    assert mods[0].left is mods[1].left and mods[2].left is mods[3].left
    assert [mod.rank for mod in mods] == ranks
    assert 0.9 * uni.params_kept < fam.params_kept <= uni.params_kept
    if allocate == "sum":  # the corner's objective: sum_l omega_l tr(E_l C_l E_l^T)
        J = float(np.dot(omega, fam.activation_error))
        J_uniform = float(np.dot(omega, uni.activation_error))
        assert J <= J_uniform * (1 + 1e-9)
    save(m, None, report, tmp_path / "ck")
    loaded, _ = load(tmp_path / "ck", device="cpu")
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, loaded(input_ids=ids).logits)


def _skewed_model() -> torch.nn.Module:
    """Layer 0's attention.dense full-rank with a flat spectrum and a large norm; the other
    layers' of rank 2: activation energy wants layer 0 whole."""
    model = _model(layers=4)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for l, mod in enumerate(family_modules(model, "attention.dense")):
            if l == 0:
                Q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
                W = 10.0 * Q
            else:
                W = 0.1 * rng.standard_normal((32, 2)) @ rng.standard_normal((2, 32))
            mod.weight.copy_(torch.from_numpy(W))
    return model


#: every method that allocates ranks layer by layer from the energies
LAYER_ALLOCATING = [
    m.name
    for m in METHOD_TABLE.values()
    if set(ENERGY_ALLOCATIONS) <= set(m.allocations) and not m.allocates_groups
]


@pytest.mark.parametrize("method", LAYER_ALLOCATING)
@pytest.mark.parametrize("allocate", ENERGY_ALLOCATIONS)
def test_energy_allocation_keeps_maps_dense(method: str, allocate: str, tmp_path: Path) -> None:
    """The energy allocations price ranks at m + n and a dense map at m n (32 x 32: the
    break-even rank is 16): under the uniform ranks' budget (rank 8, 4 x 8 x 64 = 2048)
    layer 0, whose flat spectrum holds almost all the energy, stays an nn.Linear with its
    weights untouched and errors 0, the others keep their two components, the parameters
    counted are the ones stored, within the budget, and the checkpoint reloads
    bit-identically."""
    from llm_adapter import load, save

    fam_name = "attention.dense"
    model = _skewed_model()
    W0 = family_weights(model, fam_name)
    stats = _stats(model, fam_name)
    config = CompressionConfig(
        method=method, allocate=allocate, rank_ratio=0.25, families=(fam_name,)
    )
    report = compress_model(model, config, stats, windows=stats.windows)
    fam = report.families[fam_name]
    assert fam.dense == [True, False, False, False]
    assert fam.ranks is not None and fam.ranks[0] == 32 and min(fam.ranks[1:]) >= 2
    mods = family_modules(model, fam_name)
    assert type(mods[0]) is torch.nn.Linear
    assert np.array_equal(mods[0].weight.detach().numpy(), W0[0])
    assert all(isinstance(mod, LowRankLinear) for mod in mods[1:])
    assert fam.frobenius_error[0] == 0.0
    stored = sum(p.numel() for mod in mods for p in mod.parameters() if p.dim() == 2)
    assert fam.params_kept == stored <= 4 * 8 * 64
    if method == "svd-llm":  # the rank-2 layers are reproduced: errors at roundoff
        assert max(fam.frobenius_fraction[1:]) < 1e-10
    save(model, None, report, tmp_path / "ck")
    loaded, _ = load(tmp_path / "ck", device="cpu")
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
