"""Loss-aware allocation end to end on the shared trained GPT-NeoX (neox-mini).

``svd-llm`` with ``--allocate fisher|gradient|type|sensitivity|sum|normalised``
(``--select rank|components``, ``--protect``, ``--rank-floor``, ``--max-deviation``;
``--update`` or ``--refit`` after the Fisher ranks): components chosen under the
uniform ranks' parameter budget over all four families, maps allowed to stay
dense.  Checked: the budget (the same parameter count as uniform SVD-LLM, within
0.5%), break-even (no factored map stores as much as its dense form), dense
maps untouched (bit for bit), factored maps equal to ``U_K U_K^T W`` of
SVD-LLM's components, the save/load round trip (identical logits), a sane
perplexity, the gradient scores against an independent autograd gradient, and
the bad combinations, which fail in one line before any work.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import grassbundle as gb
import llm_adapter as la
import numpy as np
import pytest
import torch
from llm_adapter.cli import main
from llm_adapter.evaluate import perplexity, tokenize_for_eval
from llm_adapter.lowrank import LowRankLinear
from llm_adapter.models import family_module_names, family_modules, family_weights
from llm_adapter.scoring import (
    component_bases,
    gradient_scores,
    sensitivity_component_scores,
    sensitivity_scores,
)

pytestmark = [pytest.mark.data]

SAMPLES, CALIB_LEN = 4, 128
PPL_LEN, PPL_WINDOWS = 128, 4
PPL_FACTOR = 3.0  # a sane compressed perplexity: below 3x the dense model's
RATIO = 0.5  # families' kept fraction of parameters
BUDGET_TOL = 0.005  # the "same parameter count within 0.5%"

CASES: dict[str, dict[str, Any]] = {
    "fisher-rank": {"allocate": "fisher"},
    "fisher-components": {"allocate": "fisher", "select": "components"},
    "gradient": {"allocate": "gradient"},
    "type": {"allocate": "type"},
    "fisher-bounded": {"allocate": "fisher", "max_deviation": 0.2, "rank_floor": 0.1},
    "sensitivity": {"allocate": "sensitivity", "probe_windows": 1},
    # the energy allocations of SVD-LLM's truncation select through the same path
    # Zero Sum SVD's schedule: two stages, the gradients scored again in between
    "fisher-staged": {"allocate": "fisher", "stages": 2},
    "sum": {"allocate": "sum"},
    "normalised": {"allocate": "normalised"},
}


@pytest.fixture(scope="module")
def setup(shared_model: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    model, tok = la.load(shared_model, device="cpu", dtype="float64")
    cache = tmp_path_factory.mktemp("cache")
    stats = la.calibrate(
        model, tok, "all", text_path=shared_data / "wikitext-2" / "wiki.valid.tokens",
        samples=SAMPLES, seq_len=CALIB_LEN, seed=0, cache_dir=cache,
    )  # fmt: skip
    text = (shared_data / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")
    ids = tokenize_for_eval(tok, text[:30_000])[: PPL_WINDOWS * PPL_LEN]
    ppl = perplexity(model, input_ids=ids, seq_len=PPL_LEN, progress=False).perplexity
    fams = stats.families
    bases = component_bases(model, fams, stats)
    scores = gradient_scores(model, fams, stats, bases, cache_dir=cache)
    sensitivity = sensitivity_scores(model, fams, stats, bases, stats.windows[:1])
    uniform = copy.deepcopy(model)
    report = la.compress_model(
        uniform, la.CompressionConfig(method="svd-llm", param_ratio=RATIO, families="all"), stats
    )
    kept = sum(r.params_kept for r in report.families.values())
    return {
        "model": model, "tok": tok, "stats": stats, "ids": ids, "ppl": ppl, "bases": bases,
        "scores": scores, "sensitivity": sensitivity, "uniform_kept": kept, "cache": cache,
        "root": tmp_path_factory,
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(setup: Any) -> dict[str, Any]:
    out = {}
    for key, kw in CASES.items():
        model = copy.deepcopy(setup["model"])
        config = la.CompressionConfig(method="svd-llm", param_ratio=RATIO, families="all", **kw)
        report = la.compress_model(
            model, config, setup["stats"], bases=setup["bases"], scores=setup["scores"],
            sensitivity=setup["sensitivity"],
        )  # fmt: skip
        out[key] = (model, report)
    return out


@pytest.mark.parametrize("key", list(CASES))
def test_budget_break_even_and_layers(setup: Any, runs: Any, key: str) -> None:
    model, report = runs[key]
    dense_model = setup["model"]
    kept = sum(r.params_kept for r in report.families.values())
    assert kept <= setup["uniform_kept"]
    assert kept >= (1 - BUDGET_TOL) * setup["uniform_kept"]
    counted = 0
    for f, fr in report.families.items():
        W = family_weights(dense_model, f)
        C = setup["stats"].covariance(f)
        ranks = fr.ranks or [fr.rank] * fr.layers
        dense = fr.dense or [False] * fr.layers
        for l, (name, module) in enumerate(
            zip(family_module_names(model, f), family_modules(model, f), strict=True)
        ):
            m, n = W.shape[1:]
            if dense[l]:
                assert isinstance(module, torch.nn.Linear)
                assert name not in fr.modules
                orig = family_modules(dense_model, f)[l]
                assert torch.equal(module.weight, orig.weight)  # type: ignore[arg-type]
                counted += m * n
                continue
            assert isinstance(module, LowRankLinear)
            r = module.rank
            assert r == ranks[l]
            assert r * (m + n) < m * n  # below break-even, else dense is cheaper
            counted += r * (m + n)
            # the factored map projects W on r of SVD-LLM's components, computed here
            # by eigh of W C W^T: its left factor's span is an invariant subspace of M
            U = module.left.detach().numpy()
            M = W[l] @ C[l] @ W[l].T
            np.testing.assert_allclose(U.T @ U, np.eye(r), atol=1e-8)
            MU = M @ U
            np.testing.assert_allclose(MU, U @ (U.T @ MU), atol=1e-7 * np.abs(M).max())
            np.testing.assert_allclose(
                (module.left @ module.right).detach().numpy(), U @ U.T @ W[l], atol=1e-10
            )
        if key == "fisher-bounded":
            even = m * n / (m + n)
            uniform = math.floor(RATIO * even) / even
            for r, d in zip(ranks, dense, strict=True):
                assert d is False
                assert abs(r / even - uniform) <= 0.2 + 1e-12
                assert r >= math.ceil(0.1 * even)
    assert counted == kept


@pytest.mark.parametrize("key", ["fisher-rank", "type"])
def test_save_reload_and_perplexity(setup: Any, runs: Any, key: str, tmp_path: Path) -> None:
    model, report = runs[key]
    la.save(model, setup["tok"], report, tmp_path / key)
    back, _ = la.load(tmp_path / key, device="cpu", dtype="float64")
    batch = setup["ids"][None, :64]
    with torch.no_grad():
        assert torch.equal(model(batch).logits, back(batch).logits)
    ppl = perplexity(back, input_ids=setup["ids"], seq_len=PPL_LEN, progress=False).perplexity
    assert math.isfinite(ppl) and ppl < PPL_FACTOR * setup["ppl"]


def test_components_mode_keeps_the_top_fisher_scores(setup: Any, runs: Any) -> None:
    """In components mode a factored map keeps components no equal-sized set outscores."""
    _, report = runs["fisher-components"]
    model = runs["fisher-components"][0]
    for f in report.families:
        second = setup["scores"].second[f]
        for l, module in enumerate(family_modules(model, f)):
            if not isinstance(module, LowRankLinear):
                continue
            r = module.rank
            top = np.sort(second[l])[::-1][:r].sum()
            U = setup["bases"].bases[f][l]
            # which components are kept: the overlap of the left factor with each u_i
            overlap = ((U.T @ module.left.detach().numpy()) ** 2).sum(axis=1)
            kept = overlap > 0.5
            assert kept.sum() == r
            assert second[l][kept].sum() >= top * (1 - 1e-12)


def test_gradient_scores_match_an_independent_gradient(setup: Any) -> None:
    """first = -u_i^T G W^T u_i of the mean loss gradient, G taken here by autograd per
    window in float64 and projected by grassbundle.removal_gradients; second is the mean
    of the squares of the per-window values; a second call reads the cache."""
    model, stats = setup["model"], setup["stats"]
    f = "attention.dense"
    bases = component_bases(model, (f,), stats)
    windows = stats.windows[:2]
    got = gradient_scores(model, (f,), stats, bases, windows)
    probe = copy.deepcopy(model)
    W = family_weights(model, f)
    rows = []
    for b in range(2):
        probe.zero_grad()
        for p in probe.parameters():
            p.requires_grad_(True)
        ids = windows[b : b + 1]
        probe(input_ids=ids, labels=ids).loss.backward()
        G = np.stack([m.weight.grad.numpy() for m in family_modules(probe, f)])  # type: ignore[union-attr]
        rows.append([gb.removal_gradients(W[l], bases.bases[f][l], G[l]) for l in range(len(W))])
    per_window = np.array(rows)  # (B, L, R)
    scale = np.abs(per_window).max()
    np.testing.assert_allclose(got.first[f], per_window.mean(0), atol=1e-9 * scale)
    np.testing.assert_allclose(got.second[f], (per_window**2).mean(0), atol=1e-9 * scale**2)
    again = gradient_scores(model, (f,), stats, bases, windows, cache_dir=setup["cache"])
    assert again.seconds > 0  # computed and written
    cached = gradient_scores(model, (f,), stats, bases, windows, cache_dir=setup["cache"])
    assert cached.seconds == 0.0
    np.testing.assert_array_equal(cached.second[f], again.second[f])


def test_cli_protect_keeps_first_and_last_layers_dense(
    shared_model: Path, shared_data: Path, setup: Any, tmp_path: Path
) -> None:
    out = tmp_path / "ck"
    rc = main([
        "compress", str(shared_model), "--method", "svd-llm", "--allocate", "fisher",
        "--protect", "1", "--families", "attention.dense,mlp.dense_4h_to_h",
        "--param-ratio", "0.5",
        "--calib-text", str(shared_data / "wikitext-2" / "wiki.valid.tokens"),
        "--calib-samples", str(SAMPLES), "--calib-seq-len", str(CALIB_LEN),
        "--cache-dir", str(setup["cache"]), "--device", "cpu", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    manifest = la.read_manifest(out)
    assert manifest["config"]["allocate"] == "fisher" and manifest["config"]["protect"] == 1
    for fr in manifest["families"].values():
        assert fr["dense"][0] and fr["dense"][-1]
        assert len(fr["modules"]) == fr["layers"] - sum(fr["dense"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--method", "residual", "--allocate", "fisher"], "use --method svd-llm"),
        (
            ["--method", "svd-llm", "--update", "--allocate", "fisher", "--select", "components"],
            "--select rank",
        ),
        (["--method", "svd-llm", "--select", "components"], "--allocate"),
        (["--method", "svd-llm", "--allocate", "type", "--stages", "2"], "--stages"),
        (["--method", "svd-llm", "--allocate", "sum", "--protect", "1"], "loss-aware"),
        (["--method", "svd-llm", "--allocate", "fisher", "--protect", "-1"], "--protect -1"),
    ],
)
def test_bad_combinations_fail_in_one_line(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
    needle: str,
) -> None:  # fmt: skip
    rc = main(["compress", str(tiny["model"]), *argv, "--calib-text", str(tiny["text"]),
               "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "x").exists()


def test_sensitivity_probe_is_the_loss_of_one_truncated_map(setup: Any) -> None:
    """One probe recomputed here: a copy of the model with one map replaced by its rank-r
    SVD-LLM truncation (U from eigh of W C W^T), its mean next-token loss from the
    log-softmax of its logits, minus the dense one; and the probed model is restored bit for bit."""
    model, stats, sens = setup["model"], setup["stats"], setup["sensitivity"]
    f, l, k = "attention.dense", 2, 1
    r = int(sens.ranks[f][k])
    W = family_weights(model, f)[l]
    C = stats.covariance(f)[l]
    mu, V = np.linalg.eigh(W @ C @ W.T)
    U = V[:, np.argsort(mu)[::-1][:r]]
    probe = copy.deepcopy(model)
    module = family_modules(probe, f)[l]
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(U @ U.T @ W))  # type: ignore[operator]
    ids = stats.windows[:1]

    def nll(m: Any) -> float:  # mean next-token cross-entropy in float64, from the logits
        with torch.no_grad():
            logp = torch.log_softmax(m(input_ids=ids).logits[0, :-1].double(), dim=-1)
        return float(-logp.gather(1, ids[0, 1:, None]).mean())

    got = nll(probe) - nll(model)
    assert sens.losses[f][l, k] == pytest.approx(got, rel=1e-6, abs=1e-9)
    for name in stats.families:  # the probed model is the dense one again
        for a, b in zip(family_modules(model, name), family_modules(probe, name), strict=True):
            if b is not module:
                assert torch.equal(a.weight, b.weight)  # type: ignore[arg-type]
    assert torch.equal(
        family_modules(model, f)[l].weight,  # type: ignore[arg-type]
        family_modules(setup["model"], f)[l].weight,  # type: ignore[arg-type]
    )


def test_sensitivity_component_scores_interpolate_the_curve() -> None:
    """Probes at ranks 2 and 4 of R = 6 with losses 3.0 and 1.0 (0 at full rank):
    slopes (3 - 1) / 2 = 1 on components 3-4 and (1 - 0) / 2 = 0.5 on 5-6; the first two
    take the first slope; so the tail sums are 3, 2, 1, 0.5, 0 at ranks 2..6."""
    s = sensitivity_component_scores(np.array([3.0, 1.0]), np.array([2, 4]), 6)
    np.testing.assert_allclose(s, [1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    tails = [s[r:].sum() for r in range(2, 7)]
    np.testing.assert_allclose(tails, [3.0, 2.0, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("step", [{"update": True}, {"refit": "left", "target": "local"}])
def test_fisher_ranks_with_a_sequential_step(
    setup: Any, runs: Any, step: dict[str, Any], tmp_path: Path
) -> None:
    """Fisher ranks followed by SVD-LLM's update (or the left refit): the same ranks and
    dense maps as the Fisher selection alone, the dense maps untouched, the factored maps
    moved off the plain truncation U U^T W by the update, the same parameter count, and a
    checkpoint that reloads with identical logits."""
    base_model, base = runs["fisher-rank"]
    model = copy.deepcopy(setup["model"])
    config = la.CompressionConfig(
        method="svd-llm", param_ratio=RATIO, families="all", allocate="fisher", **step
    )
    report = la.compress_model(
        model, config, setup["stats"], bases=setup["bases"], scores=setup["scores"]
    )
    moved = 0
    for f, fr in report.families.items():
        ref = base.families[f]
        assert (fr.ranks or [fr.rank] * fr.layers) == (ref.ranks or [ref.rank] * ref.layers)
        assert fr.dense == ref.dense
        assert fr.params_kept == ref.params_kept
        for l, (mod, plain) in enumerate(
            zip(family_modules(model, f), family_modules(base_model, f), strict=True)
        ):
            if (fr.dense or [False] * fr.layers)[l]:
                orig = family_modules(setup["model"], f)[l]
                assert type(mod) is torch.nn.Linear
                assert torch.equal(mod.weight, orig.weight)  # type: ignore[arg-type]
                continue
            assert isinstance(mod, LowRankLinear) and isinstance(plain, LowRankLinear)
            a = (mod.left @ mod.right).detach().numpy()
            b = (plain.left @ plain.right).detach().numpy()
            moved += int(np.linalg.norm(a - b) > 1e-6 * np.linalg.norm(b))
    assert moved > 0
    la.save(model, setup["tok"], report, tmp_path / "ck")
    back, _ = la.load(tmp_path / "ck", device="cpu", dtype="float64")
    batch = setup["ids"][None, :64]
    with torch.no_grad():
        assert torch.equal(model(batch).logits, back(batch).logits)


def test_stages_score_again_on_the_compressed_model(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stages=3 the gradients are taken twice more, each time on a model whose factored
    maps are projections of the original weights (rank at most the previous stage's), and
    the final model meets the same budget."""
    import llm_adapter.scoring as scoring

    real = scoring.gradient_scores
    seen: list[int] = []

    def spy(model: Any, families: Any, *args: Any, **kwargs: Any) -> Any:
        moved = 0
        for f in families:
            W0 = family_weights(setup["model"], f)
            W = family_weights(model, f)
            for l in range(len(W)):
                if not np.array_equal(W[l], W0[l]):
                    moved += 1
                    # a projection of the original map onto some of its components
                    r = np.linalg.matrix_rank(W[l], tol=1e-8 * np.linalg.norm(W0[l], 2))
                    assert r < min(W0[l].shape)
        seen.append(moved)
        return real(model, families, *args, **kwargs)

    monkeypatch.setattr(scoring, "gradient_scores", spy)
    model = copy.deepcopy(setup["model"])
    config = la.CompressionConfig(
        method="svd-llm", param_ratio=RATIO, families="all", allocate="fisher", stages=3
    )
    report = la.compress_model(
        model, config, setup["stats"], bases=setup["bases"], scores=setup["scores"]
    )
    assert len(seen) == 2 and seen[0] > 0 and seen[1] >= seen[0]
    kept = sum(r.params_kept for r in report.families.values())
    assert (1 - BUDGET_TOL) * setup["uniform_kept"] <= kept <= setup["uniform_kept"]
