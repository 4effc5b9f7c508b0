"""Each registered method owns its parameters as a frozen dataclass (``Method.Params``).

For every method of :data:`llm_adapter.methods.METHOD_TABLE`: the dataclass has
exactly the method's parameters as fields, with the defaults of
:data:`llm_adapter.methods.PARAMS`; a keyword that is no parameter, or one of
another method, is a :class:`llm_adapter.ConfigurationError` carrying the key;
building it from a mapping and flattening it again gives what
:func:`llm_adapter.methods.check_params` gives; an instance is frozen; and
:attr:`llm_adapter.CompressionConfig.method_params` holds the values set.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from typing import Any

import llm_adapter as la
import llm_adapter.methods as methods
import pytest
from llm_adapter.errors import AdapterError, ConfigurationError
from llm_adapter.methods import (
    METHOD_TABLE,
    PARAMS,
    Method,
    MethodParams,
    check_params,
    get_method,
    register_method,
)
from llm_adapter.testing import other_value

NAMES = list(METHOD_TABLE)


def _alone(name: str, key: str) -> dict[str, Any] | None:
    """``{key: a value away from its default}`` where the method accepts it alone."""
    given = {key: other_value(key)}
    try:
        check_params(name, given)
    except ConfigurationError:
        return None
    return given


def _givens(name: str) -> list[dict[str, Any]]:
    """Mappings to build the method's parameters from: none set, every parameter at its
    default (as :class:`~llm_adapter.CompressionConfig` gives them), each parameter the
    method accepts alone away from its default, and values that need converting."""
    entry = METHOD_TABLE[name]
    out: list[dict[str, Any]] = [{}, {key: p.default for key, p in PARAMS.items()}]
    out += [g for key in entry.params if (g := _alone(name, key)) is not None]
    # numbers as the command line and the sweep files give them, converted by Param.check
    out.append({key: str(PARAMS[key].default) for key in entry.params if key in ("lam",)})
    out.append({key: 1.0 for key in entry.params if key in ("tying", "group_size")})
    return out


# the combinations of svd-llm's and the bundle's checks, written out
SVD_LLM = [
    {"refit": "left", "ridge": 0.1},
    {"refit": "both", "target": "joint", "mix": 0.25, "ridge": "auto", "gate": "off"},
    {"refit": "sigma", "target": "local", "ridge": "AUTO"},
    {"update": True, "allocate": "sum"},
    {"allocate": "fisher", "select": "components", "protect": 1, "max_deviation": "inf"},
    {"allocate": "gradient", "stages": 3, "rank_floor": 0.1},
    {"allocate": "sensitivity", "probe_windows": 3},
]
BUNDLE = [
    {"lam": "inf", "tying": 4, "metric": "activation"},
    {"lam": 1.5, "coupling": 0.5},
    {"lam": 0, "metric": "activation", "allocate": "normalised", "tying": 2},
]


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [(name, given) for name in NAMES for given in _givens(name)]
    cases += [("svd-llm", g) for g in SVD_LLM if "svd-llm" in METHOD_TABLE]
    cases += [("bundle", g) for g in BUNDLE if "bundle" in METHOD_TABLE]
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_the_dataclass_has_exactly_the_method_parameters(name: str) -> None:
    entry = get_method(name)
    cls = entry.Params
    assert dataclasses.is_dataclass(cls) and issubclass(cls, MethodParams)
    assert cls.__name__.endswith("Params") and cls.method is entry
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == list(entry.params)
    for f in fields:
        assert f.default == PARAMS[f.name].default, f.name
        assert type(f.default) is type(PARAMS[f.name].default), f.name
    defaults = cls()
    for key in entry.params:
        assert getattr(defaults, key) == PARAMS[key].default
    for key in set(PARAMS) - set(entry.params):
        assert not hasattr(defaults, key), key


def test_the_dataclasses_are_named_after_their_methods() -> None:
    names = {
        "svd": "SvdParams",
        "svd-llm": "SvdLlmParams",
        "basis-sharing": "BasisSharingParams",
        "bundle": "BundleParams",
        "residual": "ResidualParams",
    }
    for method, cls in names.items():
        assert get_method(method).Params.__name__ == cls
    assert dataclasses.fields(get_method("svd").Params) == ()


@pytest.mark.parametrize("name", NAMES)
def test_unknown_and_foreign_fields_are_rejected(name: str) -> None:
    entry = get_method(name)
    with pytest.raises(ConfigurationError, match="unknown parameter") as info:
        entry.Params(no_such_parameter=1)
    assert (info.value.key, info.value.value) == ("no_such_parameter", 1)
    assert info.value.reason == "unknown parameter"
    with pytest.raises(ConfigurationError, match="unknown parameter") as info:
        entry.parameters({"no_such_parameter": 1})
    assert info.value.key == "no_such_parameter"
    for key in set(PARAMS) - set(entry.params):
        # a field of another method: refused by the dataclass even at its default
        for value in (PARAMS[key].default, other_value(key)):
            with pytest.raises(ConfigurationError, match="applies to method") as info:
                entry.Params(**{key: value})
            assert (info.value.key, info.value.value) == (key, value)
            assert info.value.reason.startswith("applies to method")
            assert isinstance(info.value, AdapterError)
        # from a flat mapping, as check_params: only away from its default
        with pytest.raises(ConfigurationError, match="applies to method") as info:
            entry.parameters({key: other_value(key)})
        assert info.value.key == key


def test_the_errors_are_those_of_check_params() -> None:
    """Same class, key, value, reason and message for bad values, both ways."""
    bad = [  # the method, the parameters given, the key the error carries
        ("bundle", {"tying": 0}, "tying"),
        ("bundle", {"lam": "x"}, "lam"),
        ("bundle", {"metric": "nope"}, "metric"),
        ("bundle", {"lam": math.inf, "coupling": 0.5}, None),
        ("basis-sharing", {"group_size": 1.5}, "group_size"),
        ("svd-llm", {"refit": "left", "update": True}, None),
        ("svd-llm", {"ridge": 0.1}, None),
        ("svd-llm", {"refit": "left", "ridge": -1.0}, "ridge"),
        ("svd-llm", {"allocate": "fisher", "select": "components", "refit": "left"}, None),
        ("residual", {"allocate": "fisher"}, None),
    ]
    for name, given, key in bad:
        entry = get_method(name)
        with pytest.raises(ConfigurationError) as expected:
            check_params(name, given)
        assert expected.value.key == key, (name, given)
        if key is not None:
            assert expected.value.value == given[key] and expected.value.reason
        with pytest.raises(ConfigurationError) as own:
            entry.Params(**given)
        with pytest.raises(ConfigurationError) as flat:
            entry.parameters(given)
        for got in (own.value, flat.value):
            assert type(got) is type(expected.value), (name, given)
            assert (got.key, got.value, got.reason) == (
                expected.value.key,
                expected.value.value,
                expected.value.reason,
            ), (name, given)
            assert str(got) == str(expected.value)


def test_the_dataclass_checks_as_check_params() -> None:
    """``SvdLlmParams(refit="left", ridge=0.1)`` holds what check_params gives."""
    entry = get_method("svd-llm")
    params = entry.Params(refit="left", ridge=0.1)
    assert (params.refit, params.ridge, params.gate) == ("left", 0.1, "heldout")
    assert entry.flat(params) == check_params("svd-llm", {"refit": "left", "ridge": 0.1})
    bundle = get_method("bundle").Params(lam="inf", tying=2.0)
    assert bundle.lam == math.inf and bundle.tying == 2 and type(bundle.tying) is int


@pytest.mark.parametrize(("name", "given"), _cases())
def test_flat_of_parameters_is_check_params(name: str, given: dict[str, Any]) -> None:
    entry = get_method(name)
    expected = check_params(name, given)
    params = entry.parameters(given)
    assert type(params) is entry.Params
    flat = entry.flat(params)
    assert flat == expected
    assert list(flat) == list(PARAMS)
    assert [type(v) for v in flat.values()] == [type(v) for v in expected.values()]
    for key, value in flat.items():  # given: checked and converted; the others: defaults
        want = PARAMS[key].check(given[key]) if key in given else PARAMS[key].default
        assert value == want and type(value) is type(want), key
    # the dataclass from its own fields is the same instance
    own = {k: v for k, v in given.items() if k in entry.params}
    assert entry.Params(**own) == params


def test_flat_refuses_another_method_parameters() -> None:
    with pytest.raises(TypeError):
        get_method("svd").flat(get_method("bundle").Params())


@pytest.mark.parametrize("name", NAMES)
def test_an_instance_is_frozen(name: str) -> None:
    entry = get_method(name)
    params = entry.Params()
    for key in [*entry.params, "no_such_parameter"]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, key, PARAMS[key].default if key in PARAMS else 1)
    assert hash(params) == hash(entry.Params())
    assert pickle.loads(pickle.dumps(params)) == params
    assert copy.deepcopy(params) == params


def test_replace_checks_again() -> None:
    params = get_method("svd-llm").Params(refit="left")
    assert dataclasses.replace(params, gate="off").gate == "off"
    with pytest.raises(ConfigurationError) as info:
        dataclasses.replace(params, refit="none", gate="off")  # gate shapes a refit
    assert "refit" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_compression_config_method_params(name: str) -> None:
    entry = get_method(name)
    for given in _givens(name)[2:]:
        config = la.CompressionConfig(method=name, **given)
        params = config.method_params
        assert type(params) is entry.Params
        for key, value in given.items():
            if key in entry.params:
                assert getattr(params, key) == getattr(config, key)
                if not isinstance(value, str):
                    assert getattr(params, key) == value
        assert entry.flat(params) == config.params
    assert la.CompressionConfig(method=name).method_params == entry.Params()


def test_compression_config_method_params_values() -> None:
    config = la.CompressionConfig(method="svd-llm", refit="both", target="joint", mix=0.25)
    params = config.method_params
    assert (params.refit, params.target, params.mix, params.ridge) == (
        "both",
        "joint",
        0.25,
        "auto",
    )
    bundle = la.CompressionConfig(method="bundle", lam="inf", tying=3).method_params
    assert (bundle.lam, bundle.tying, bundle.metric) == (math.inf, 3, "weight")
    assert not hasattr(bundle, "group_size")
    assert la.CompressionConfig(method="basis-sharing", group_size=4).method_params.group_size == 4


def test_a_registered_method_gets_its_dataclass() -> None:
    method = Method("test-only x", "X", ("lam", "ridge"), "a method of this test",
                    lambda p: False)  # fmt: skip
    register_method(method)
    try:
        assert method.Params.__name__ == "TestOnlyXParams"
        assert [(f.name, f.default) for f in dataclasses.fields(method.Params)] == [
            ("lam", 0.0),
            ("ridge", "auto"),
        ]
        assert method.Params(lam=2, ridge="1e-3") == method.parameters({"lam": 2.0, "ridge": 1e-3})
        with pytest.raises(ConfigurationError) as info:
            method.Params(tying=1)
        assert info.value.key == "tying"
    finally:
        METHOD_TABLE.pop(method.name)
        methods.METHODS = tuple(METHOD_TABLE)
