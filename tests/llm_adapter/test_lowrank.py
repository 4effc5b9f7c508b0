"""The low-rank module: forward, shapes, and real parameter sharing."""

from __future__ import annotations

import pytest
import torch
from llm_adapter import LowRankLinear, count_unique_parameters
from torch import nn


def _param(*shape: int, seed: int) -> nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64), requires_grad=False)


def test_forward_is_left_right_plus_bias() -> None:
    left, right, bias = _param(5, 2, seed=0), _param(2, 4, seed=1), _param(5, seed=2)
    mod = LowRankLinear(left, right, bias, shared="left")
    x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = x @ (left @ right).T + bias
    # two float64 matmuls in a different association order: roundoff ~1e-15
    torch.testing.assert_close(mod(x), expected, rtol=1e-12, atol=1e-12)
    assert (mod.in_features, mod.out_features, mod.rank) == (4, 5, 2)
    torch.testing.assert_close(mod.weight(), left @ right)


def test_no_bias() -> None:
    mod = LowRankLinear(_param(3, 1, seed=0), _param(1, 2, seed=1))
    x = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(mod(x), (mod.left @ mod.right) @ x)


def test_shared_factor_is_one_parameter() -> None:
    shared = _param(6, 2, seed=0)
    mods = nn.ModuleList(
        [LowRankLinear(shared, _param(2, 3, seed=i), None, shared="left") for i in range(3)]
    )
    assert all(m.left is shared for m in mods)
    # 6*2 once, plus three 2x3 right factors
    assert count_unique_parameters(mods) == 12 + 3 * 6
    with torch.no_grad():
        shared.mul_(2.0)
    torch.testing.assert_close(mods[2].weight(), 2.0 * (mods[0].left / 2.0) @ mods[2].right)


def test_empty_has_shapes() -> None:
    mod = LowRankLinear.empty(8, 5, 3, bias=True, shared="right", dtype=torch.bfloat16)
    assert mod.left.shape == (8, 3) and mod.right.shape == (3, 5)
    assert mod.bias is not None and mod.bias.shape == (8,)
    assert mod.left.dtype == torch.bfloat16
    assert "rank=3" in repr(mod)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"shapes \(m, d\) and \(d, n\)"):
        LowRankLinear(_param(4, 2, seed=0), _param(3, 5, seed=1))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        LowRankLinear(_param(4, 2, seed=0), _param(2, 5, seed=1), _param(5, seed=2))
