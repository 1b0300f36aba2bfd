"""AdaPrune's default fit (conjugate gradients on the exact quadratic), fit_layer on its own, the config, and the
report of what was left dense."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.adaprune import AdaPruneConfig, AdaPruneReport, LayerStatistics, fit_layer
from nmsparse.errors import ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


def _data(seed: int = 1, batches: int = 4, rows: int = 64, features: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, features, generator=g) for _ in range(batches)]


def _least_squares(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, bias: bool) -> torch.Tensor:
    """Reference twin of the CG fit: the exact masked least-squares solution, one output row at a time."""
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1) if bias else x
    out = torch.zeros(mask.shape[0], a.shape[1], dtype=torch.float64)
    for i in range(mask.shape[0]):
        keep = torch.cat([mask[i], torch.ones(1, dtype=torch.bool)]) if bias else mask[i]
        solution = torch.linalg.lstsq(a[:, keep].double(), y[:, i : i + 1].double()).solution
        out[i, keep] = solution[:, 0]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_cg_reaches_the_masked_least_squares_solution(bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, 16, bias=bias)
    x = torch.randn(300, 24) @ torch.randn(24, 24) * 0.5  # correlated inputs
    y = x @ torch.randn(24, 16) + 0.1 * torch.randn(300, 16)  # a target the layer cannot match exactly
    stats = LayerStatistics(24, 16, bias=bias)
    for chunk_x, chunk_y in zip(x.split(70), y.split(70)):
        stats.add(chunk_x, chunk_y)
    mask = nmsparse.find_mask(layer.weight.detach(), "4:8")  # (a -T mask would compile numba's solver: slow)
    config = AdaPruneConfig(pattern="4:8", iterations=200, damping=0.0)
    fit = fit_layer(layer.weight.detach(), mask, stats, config, bias=layer.bias.detach() if bias else None)
    reference = _least_squares(x, y, mask, bias)
    assert torch.allclose(fit.weight.double(), reference[:, :24], atol=2e-3, rtol=1e-3)
    if bias:
        assert torch.allclose(fit.bias.double(), reference[:, 24], atol=2e-3, rtol=1e-3)
    assert bool((fit.weight[~mask] == 0).all())
    exact = stats.error(reference.float().reshape(1, 16, -1))
    assert fit.error_after == pytest.approx(exact, rel=1e-3)
    assert fit.error_after < fit.error_before
    assert fit.iterations < 200  # converged and stopped early


def test_damping_pulls_towards_the_masked_start_and_never_loses_to_it():
    torch.manual_seed(1)
    layer = nn.Linear(16, 8)
    x = torch.randn(64, 16)
    stats = LayerStatistics(16, 8, bias=True)
    stats.add(x, layer(x).detach() + 0.3 * torch.randn(64, 8))
    mask = nmsparse.find_mask(layer.weight.detach(), "2:4")
    fits = {
        d: fit_layer(
            layer.weight.detach(), mask, stats, AdaPruneConfig(pattern="2:4", damping=d), bias=layer.bias.detach()
        )
        for d in (0.0, 0.1, 10.0)
    }
    start = fits[0.0].error_before
    moved = {d: float((f.weight - layer.weight.detach() * mask).norm()) for d, f in fits.items()}
    assert moved[0.0] > moved[0.1] > moved[10.0]
    assert fits[0.0].error_after <= fits[0.1].error_after <= fits[10.0].error_after <= start


def test_fit_layer_on_gram_statistics_alone():
    """One-shot pruning's use: the target is the layer's own dense output, so G and W give every statistic."""
    torch.manual_seed(2)
    weight = torch.randn(8, 16)
    x = torch.randn(128, 16)
    gram = (x.T @ x).double()
    stats = LayerStatistics(16, 8, bias=False)
    stats.gram[0] = gram
    stats.cross[0] = gram @ weight.double().T
    stats.yy = ((weight.double() @ gram) * weight.double()).sum()
    stats.rows = 128
    direct = LayerStatistics(16, 8, bias=False)
    direct.add(x, x @ weight.T)
    mask = nmsparse.find_mask(weight, "2:4")
    config = AdaPruneConfig(pattern="2:4")
    a, b = fit_layer(weight, mask, stats, config), fit_layer(weight, mask, direct, config)
    assert torch.allclose(a.weight, b.weight, atol=1e-4) and a.error_after == pytest.approx(b.error_after, rel=1e-3)


def test_fit_layer_checks_shapes():
    stats = LayerStatistics(16, 8, bias=True)
    stats.add(torch.randn(4, 16), torch.randn(4, 8))
    weight, mask = torch.randn(8, 16), torch.ones(8, 16, dtype=torch.bool)
    config = AdaPruneConfig(pattern="2:4")
    with pytest.raises(ShapeError, match="mask shape"):
        fit_layer(weight, mask[:, :8], stats, config, bias=torch.zeros(8))
    with pytest.raises(ShapeError, match="does not match statistics"):
        fit_layer(torch.randn(8, 8), mask[:, :8], stats, config, bias=torch.zeros(8))
    with pytest.raises(ShapeError, match="bias"):
        fit_layer(weight, mask, stats, config)
    with pytest.raises(ShapeError, match=r"expected rows \[R, 1, 16\]"):
        stats.add(torch.randn(4, 12), torch.randn(4, 8))


def test_cg_beats_the_paper_adam_in_fewer_steps():
    data = _data()
    dense = _mlp()
    with torch.no_grad():
        reference = torch.cat([dense(b) for b in data])

    def output_error(config: AdaPruneConfig) -> float:
        model = copy.deepcopy(dense)
        nmsparse.adaprune_(model, data, config)
        with torch.no_grad():
            return float((torch.cat([model(b) for b in data]) - reference).square().mean())

    cg = output_error(AdaPruneConfig(pattern="2:4", damping=0.0))  # 50 steps
    adam = output_error(AdaPruneConfig(pattern="2:4", optimizer="adam", iterations=200))
    masks_only = output_error(AdaPruneConfig(pattern="2:4", iterations=0, absorb_mean=False))
    assert cg < adam < masks_only
    assert output_error(AdaPruneConfig(pattern="2:4")) < 0.5 * masks_only  # the default (damping 0.1)


# ------------------------------------------------------------------------------------------------ report


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.odd = nn.Linear(6, 16)  # 6 inputs: no 2:4
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 8)
        self.unused = nn.Linear(16, 16)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.relu(self.odd(x)))))


def test_report_names_every_layer_left_dense_and_why():
    """Issue 7 fault 12: layers left dense were invisible."""
    data = [torch.randn(32, 6) for _ in range(2)]
    report = nmsparse.adaprune_(_Mixed(), data, "2:4")
    assert isinstance(report, AdaPruneReport)
    assert report.pruned == ["body", "head"] and [r.name for r in report] == report.pruned and len(report) == 2
    assert set(report.skipped) == {"odd", "unused"}
    assert "6" in report.skipped["odd"] and report.skipped["unused"] == "never ran on the calibration data"
    assert "2 layer(s) pruned to 2:4, 2 left dense" in report.describe()
    record = report.as_dict()
    assert record["skipped"] == report.skipped and record["config"]["pattern"] == "2:4"
    report = nmsparse.adaprune_(_Mixed(), data, AdaPruneConfig(pattern="2:4", exclude=["head"]))
    assert report.pruned == ["body"] and "exclude" in report.skipped["head"]


def test_keep_first_last_defaults_to_false():
    """One default everywhere (issue 7 fault 12): AdaPrune prunes the first and last layers unless told."""
    assert AdaPruneConfig(pattern="2:4").keep_first_last is False
    assert nmsparse.adaprune_(_mlp(), _data(), "2:4").pruned == ["0", "2", "4"]
    report = nmsparse.adaprune_(_mlp(), _data(), AdaPruneConfig(pattern="2:4", keep_first_last=True))
    assert report.pruned == ["2"] and all("keep_first_last" in why for why in report.skipped.values())


# ------------------------------------------------------------------------------------------------ config


def test_config_is_frozen_validated_and_round_trips():
    config = AdaPruneConfig(pattern="4:8-t", include=["encoder.*"], memory_budget=1 << 20)
    assert config.pattern == "4:8-T" and config.include == ("encoder.*",) and config.memory_bytes == 1 << 20
    assert AdaPruneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AttributeError):
        config.iterations = 3  # type: ignore[misc]
    assert config.replace(iterations=3).iterations == 3
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        AdaPruneConfig.from_dict({"pattern": "2:4", "iteratons": 3})
    with pytest.raises(ConfigError, match="quote it"):
        AdaPruneConfig(pattern=124)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="topn"):
        AdaPruneConfig(pattern="2:4-T", method="topn")
    with pytest.raises(ConfigError, match="AdaPruneConfig or a pattern string"):
        nmsparse.adaprune_(_mlp(), _data(), {"pattern": "2:4"})  # type: ignore[arg-type]


def test_old_names_stay_importable():
    from nmsparse import AdaPruneLayerReport, adaprune_, recalibrate_batchnorm_
    from nmsparse.adaprune import AdaPruneLayerReport as layer_report
    from nmsparse.nn.batchnorm import recalibrate_batchnorm_ as recalibrate

    assert AdaPruneLayerReport is layer_report and recalibrate_batchnorm_ is recalibrate
    assert adaprune_ is nmsparse.adaprune.adaprune_
