"""The contract every registered method and every registered architecture keeps.

One set of checks over :data:`llm_adapter.methods.METHOD_TABLE` (and the worked
example of ``docs/architecture.rst``, ``examples/asvd_method.py``, registered
for this module only) instead of hand-kept method lists:

* the budget is met: a ``param_ratio`` run keeps at most that fraction of the
  family's weights, at the rank the method's own rule gives;
* the manifest round-trips (``CompressionReport.from_dict``, ``compression.json``);
* the saved checkpoint reloads bit-identical (every tensor, the logits);
* the calibration need is what grassbundle accepts: ``C = None`` is refused
  by :func:`grassbundle.factorise` exactly where the method needs calibration,
  and :func:`llm_adapter.compress_model` without statistics likewise;
* a parameter the method does not take is rejected (and an unknown one);
* the method owns its parameter dataclass (``Method.Params``): exactly its
  parameters, at their defaults, and no other.

Every architecture of :data:`llm_adapter.models.ARCHITECTURES` compresses its
every family within the budget and reloads bit-identical.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grassbundle as gb
import llm_adapter as la
import llm_adapter.methods as methods
import pytest
import torch
from llm_adapter.compress import CompressionReport
from llm_adapter.errors import AdapterError
from llm_adapter.methods import ALLOCATIONS, METHOD_TABLE, PARAMS, check_params
from llm_adapter.models import ARCHITECTURES, family_weights
from llm_adapter.testing import other_value, random_model, random_neox

pytestmark = pytest.mark.usefixtures("one_thread", "example_method")

#: the module (``grassbundle.factorise`` the attribute is the function)
gb_factorise = importlib.import_module("grassbundle.factorise")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "asvd_method.py"
FAMILY = "attention.dense"
RATIO = 0.5
#: the shipped methods and the worked example
NAMES = [*METHOD_TABLE, "asvd"]


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("asvd_method", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_method() -> Iterator[None]:
    """The docs' worked example registered (its one registration call) while the module runs."""
    _example().register()
    try:
        yield
    finally:
        METHOD_TABLE.pop("asvd", None)
        methods.METHODS = tuple(METHOD_TABLE)
        gb.FACTORISERS.pop("asvd", None)
        gb_factorise.METHODS = tuple(gb.FACTORISERS)


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """A random 4-layer GPT-NeoX and its calibration statistics on seeded token windows."""
    model = random_neox(num_hidden_layers=4, hidden_size=32, seed=1)
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = la.calibrate(model, None, FAMILY, token_windows=windows)
    return {"model": model, "stats": stats}


_RUNS: dict[str, dict[str, Any]] = {}


def _run(name: str, setup: dict[str, Any], root: Path) -> dict[str, Any]:
    """``name`` at ``param_ratio = 0.5`` with its defaults, saved once per module."""
    if name not in _RUNS:
        model = copy.deepcopy(setup["model"])
        config = la.CompressionConfig(method=name, families=(FAMILY,), param_ratio=RATIO)
        report = la.compress_model(model, config, setup["stats"])
        out = la.save(model, None, report, root / name)
        _RUNS[name] = {"model": model, "config": config, "report": report, "dir": Path(out)}
    return _RUNS[name]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("contract")
    _RUNS.clear()


def test_the_table_is_consistent() -> None:
    """Every method names a known factoriser and its options, known allocations; one reference."""
    assert [m.name for m in METHOD_TABLE.values() if m.reference] == ["svd-llm"]
    for m in METHOD_TABLE.values():
        assert set(m.allocations) <= set(ALLOCATIONS)
        assert set(m.options) <= set(m.params)
        assert m.group is None or m.group in m.params
        if m.factoriser is None:
            assert m.fit(check_params(m.name, {})) is not None, m.name
        else:
            assert m.factoriser in gb.FACTORISERS
            assert set(m.options) <= set(gb.FACTORISERS[m.factoriser].options), m.name


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_met(name: str, setup: dict[str, Any], root: Path) -> None:
    run = _run(name, setup, root)
    entry = METHOD_TABLE[name]
    for fam in run["report"].families.values():
        assert fam.params_kept <= RATIO * fam.params_dense
        assert fam.param_ratio == fam.params_kept / fam.params_dense
        d, _ = entry.rank_for_params(RATIO, fam.m, fam.n, fam.layers, run["config"].params)
        assert fam.rank == d


@pytest.mark.parametrize("name", NAMES)
def test_manifest_round_trip(name: str, setup: dict[str, Any], root: Path) -> None:
    run = _run(name, setup, root)
    body = json.loads(json.dumps(run["report"].to_dict()))
    assert CompressionReport.from_dict(body).to_dict() == body
    on_disk = la.read_manifest(run["dir"])
    on_disk = on_disk.to_dict() if hasattr(on_disk, "to_dict") else on_disk
    for key in ("method", "config", "families"):
        assert on_disk[key] == body[key]
    assert body["config"]["method"] == name


@pytest.mark.parametrize("name", NAMES)
def test_reload_is_bit_identical(name: str, setup: dict[str, Any], root: Path) -> None:
    run = _run(name, setup, root)
    loaded, _ = la.load(run["dir"], device="cpu")
    before, after = run["model"].state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key
    ids = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.equal(run["model"](ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("name", NAMES)
def test_calibration_need_matches_grassbundle(name: str, setup: dict[str, Any]) -> None:
    entry = METHOD_TABLE[name]
    config = la.CompressionConfig(method=name, families=(FAMILY,), param_ratio=RATIO)
    needs = entry.needs_calibration(config.params)
    assert config.needs_calibration == needs
    if entry.factoriser is not None:
        W = family_weights(setup["model"], FAMILY)
        L, m, n = W.shape
        d, _ = entry.rank_for_params(RATIO, m, n, L, config.params)
        options = entry.factorise_options(config.params)
        assert (
            gb.FACTORISERS[entry.factoriser].needs_covariance(
                {**gb.FACTORISERS[entry.factoriser].options, **options}
            )
            == needs
        )
        if needs:
            with pytest.raises(ValueError, match="needs the input covariances"):
                gb.factorise(W, None, entry.factoriser, d, **options)
        else:
            gb.factorise(W, None, entry.factoriser, d, **options)
    model = copy.deepcopy(setup["model"])
    if needs:
        with pytest.raises(AdapterError, match="needs calibration statistics"):
            la.compress_model(model, config, None)
    else:
        la.compress_model(model, config, None)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_it_does_not_take_are_rejected(name: str) -> None:
    entry = METHOD_TABLE[name]
    for key in PARAMS:
        if key in entry.params:
            continue
        with pytest.raises(AdapterError, match="applies to method"):
            la.CompressionConfig(method=name, **{key: other_value(key)})
        # at its default a parameter is no choice, and is accepted
        la.CompressionConfig(method=name, **{key: PARAMS[key].default})
    with pytest.raises(AdapterError, match="unknown parameter"):
        check_params(name, {"no_such_parameter": 1})
    with pytest.raises(TypeError):
        la.CompressionConfig(method=name, no_such_parameter=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", NAMES)
def test_the_method_owns_its_parameter_dataclass(name: str) -> None:
    entry = METHOD_TABLE[name]
    fields = dataclasses.fields(entry.Params)
    assert [(f.name, f.default) for f in fields] == [(k, PARAMS[k].default) for k in entry.params]
    assert entry.flat(entry.Params()) == check_params(name, {})
    assert la.CompressionConfig(method=name).method_params == entry.Params()
    for key in PARAMS:
        if key not in entry.params:
            with pytest.raises(la.ConfigurationError, match="applies to method") as info:
                entry.Params(**{key: PARAMS[key].default})
            assert info.value.key == key
    with pytest.raises(la.ConfigurationError, match="unknown parameter"):
        entry.Params(no_such_parameter=1)


def test_the_example_is_a_method_everywhere() -> None:
    """The example's registration reaches the sweep's point names and the CLI's table."""
    assert "asvd" in methods.METHODS and "asvd" in gb_factorise.METHODS
    assert METHOD_TABLE["asvd"].describe_point({}) == "asvd"
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method(METHOD_TABLE["asvd"])


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture(model_type: str, tmp_path: Path) -> None:
    """Every family of every architecture: within the budget, bit-identical after reload."""
    try:
        model = random_model(model_type, num_hidden_layers=2, seed=2)
    except (ImportError, ValueError, KeyError) as exc:  # not in this transformers
        pytest.skip(f"{model_type}: {exc}")
    config = la.CompressionConfig(method="svd", families="all", param_ratio=RATIO)
    report = la.compress_model(model, config)
    assert report.families
    for fam in report.families.values():
        assert fam.params_kept <= RATIO * fam.params_dense
        assert len(fam.modules) == fam.layers
    out = la.save(model, None, report, tmp_path / "ckpt")
    loaded, _ = la.load(out, device="cpu")
    before, after = model.state_dict(), loaded.state_dict()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key


@pytest.mark.parametrize(
    ("kwargs", "key", "value"),
    [
        ({"method": "bundle", "tying": 0}, "tying", 0),
        ({"method": "bundle", "lam": "x"}, "lam", "x"),
        ({"method": "svd", "group_size": 3}, "group_size", 3),
        ({"method": "nope"}, "method", "nope"),
        ({"method": "svd", "rank_ratio": 0.0}, "rank_ratio", 0.0),
        ({"method": "svd", "families": ("nope",)}, "families", "nope"),
    ],
)
def test_configuration_errors_carry_key_and_value(
    kwargs: dict[str, Any], key: str, value: Any
) -> None:
    with pytest.raises(la.ConfigurationError) as info:
        la.CompressionConfig(**kwargs)
    assert (info.value.key, info.value.value) == (key, value)
    assert info.value.reason
    assert isinstance(info.value, AdapterError)
