"""The calibration contract: every registered one-shot algorithm goes through the same checks.

A new layer method (``nmsparse.oneshot.register_method``) is tested by registering it. For each algorithm, on
Linear, ``Conv1D`` (stored ``[in, out]``) and Conv2d layers, in a model with repeated blocks and in one without,
sequential and parallel, for plain and ``-T`` patterns:

* every selected layer carries a valid mask of its pattern (exactly ``n``, checked on the matrix view here,
  independently of ``apply_mask_``'s own check) and its weights are zero where the mask is ``False``;
* the report names every pruned layer once, holds the model and the algorithm, counts the calibration rows, and
  its working memory stays within the budget it planned, which stays within the budget given;
* the same call on the same model gives the same masks;
* a squashed model has the dense model's state-dict keys, and the pruned masks survive a state-dict round trip;
* a budget too small for the plan is refused before the model changes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.errors import ConfigError
from nmsparse.layout import to_matrix
from nmsparse.oneshot import OneShotConfig, list_algorithms, prune_oneshot_
from nmsparse.prune import set_masks_
from nmsparse.testing import assert_valid_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A few iterations keep the fitting algorithms quick; other options stay at their defaults.
QUICK = {"adaprune": {"iterations": 3}}


class Conv1D(nn.Module):
    """transformers' ``Conv1D`` (GPT-2's linear, weight stored ``[in, out]``), without importing transformers."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = Conv1D(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.down(torch.relu(self.up(x)))


class _Stack(nn.Module):
    """Repeated blocks (found by the engine) of Linear and Conv1D layers, with a dense embedding and head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(2))
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class _ConvNet(nn.Module):
    """No repeated blocks: the whole model is one block; Conv2d (grouped too) and Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _model(kind: str) -> tuple[nn.Module, list[torch.Tensor], list[str]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "blocks":
        data = [torch.randn(2, 6, 8, generator=g) for _ in range(3)]
        names = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn", "up", "down")]
        return _Stack().eval(), data, names
    data = [torch.randn(2, 4, 6, 6, generator=g) for _ in range(3)]
    return _ConvNet().eval(), data, ["stem", "conv", "fc"]


def _matrix(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    return mask.T if "Conv1D" in type(module).__name__ else mask  # (a parametrized class: ParametrizedConv1D)


def _config(algorithm: str, **kwargs: object) -> OneShotConfig:
    return OneShotConfig(algorithm=algorithm, options=QUICK.get(algorithm), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", list_algorithms())
@pytest.mark.parametrize("kind", ["blocks", "convs"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4-T"])
@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "parallel"])
def test_masks_report_and_memory(algorithm, kind, pattern, sequential):
    if kind == "convs" and pattern.endswith("-T"):
        pattern = "2:4"  # the grouped conv has 4 outputs per group: only plain patterns fit every layer
    model, data, names = _model(kind)
    dense = copy.deepcopy(model)
    report = prune_oneshot_(model, data, pattern, config=_config(algorithm, sequential=sequential))
    assert report.model is model and report.algorithm == algorithm and report.pattern == pattern
    assert sorted(report.pruned) == sorted(names) and len(set(report.pruned)) == len(names)
    modules = dict(model.named_modules())
    masks = {k.removesuffix(".weight"): v for k, v in nmsparse.get_masks(model).items()}
    assert sorted(masks) == sorted(names)
    for name, mask in masks.items():
        module = modules[name]
        matrix = _matrix(module, mask)
        assert_valid_mask(matrix, pattern, exact_n=True)
        weight = module.parametrizations.weight.original.detach()
        assert bool((weight[~mask] == 0).all()), name
    for layer in report:
        assert layer.tokens > 0 and math.isfinite(layer.relative_error) and layer.relative_error >= 0
        assert layer.shape == tuple(to_matrix(_matrix(modules[layer.name], masks[layer.name])).shape)
    assert 0 < report.peak_tracked <= report.memory_estimate <= report.memory_budget
    again = copy.deepcopy(dense)
    prune_oneshot_(again, data, pattern, config=_config(algorithm, sequential=sequential))
    assert all(torch.equal(a, b) for a, b in zip(nmsparse.get_masks(again).values(), masks.values()))


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_state_dict_round_trip_and_dense_keys(algorithm):
    model, data, _ = _model("blocks")
    keys = set(model.state_dict())
    prune_oneshot_(model, data, "2:4-T", config=_config(algorithm))
    fresh, _, _ = _model("blocks")
    set_masks_(fresh, nmsparse.get_masks(model))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))
    nmsparse.squash_masks_(model)
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_budget_too_small_is_refused_before_any_change(algorithm):
    model, data, _ = _model("blocks")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="memory_budget.*nothing was changed"):
        prune_oneshot_(model, data, "2:4", config=_config(algorithm, memory_budget=4096))
    assert not nmsparse.get_masks(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_options_are_validated_by_the_methods_table(algorithm):
    with pytest.raises(ConfigError, match="unknown setting 'no_such_option'"):
        OneShotConfig(algorithm=algorithm, options={"no_such_option": 1})


@pytest.mark.parametrize("algorithm", ["sparsegpt", "wanda"])
@pytest.mark.parametrize(("kind", "pattern"), [("blocks", "2:4"), ("blocks", "4:8-T"), ("convs", "2:4")])
def test_refit_on_every_layer_kind(algorithm, kind, pattern):
    """The ``refit`` option keeps the contract on Linear, Conv1D and Conv2d, and lowers the reported error."""
    model, data, names = _model(kind)
    plain = prune_oneshot_(copy.deepcopy(model), data, pattern, config=_config(algorithm))
    report = prune_oneshot_(model, data, pattern, config=OneShotConfig(algorithm=algorithm, options={"refit": 10}))
    modules = dict(model.named_modules())
    for name, mask in nmsparse.get_masks(model).items():
        module = modules[name.removesuffix(".weight")]
        assert_valid_mask(_matrix(module, mask), pattern, exact_n=True)
        assert bool((module.parametrizations.weight.original.detach()[~mask] == 0).all()), name
    assert sorted(report.pruned) == sorted(names)
    assert 0 < report.peak_tracked <= report.memory_estimate <= report.memory_budget
    assert report.mean_relative_error < plain.mean_relative_error
