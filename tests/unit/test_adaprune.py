"""AdaPrune: masks fixed and valid, best iterate kept, exact error bookkeeping, sequential/parallel, memory
budget, batch norm, sparse-model conversion, batch styles and error messages."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import nmsparse
from nmsparse.adaprune import AdaPruneConfig, AdaPruneReport, parse_memory
from nmsparse.errors import ConfigError, InputError
from nmsparse.oneshot.methods.adaprune import statistics_bytes
from nmsparse.prune import layer_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The settings before AdaPruneConfig (Adam, 1000 steps of 50 samples, first and last layer dense): the tests
#: written for them pin the Adam path's behaviour.
_ADAM_DEFAULTS = {"optimizer": "adam", "iterations": 1000, "batch_size": 50, "keep_first_last": True}


def _old(model: nn.Module, data, pattern: str, **overrides) -> AdaPruneReport:
    """``adaprune_`` with the pre-config defaults, overridden by keyword."""
    return nmsparse.adaprune_(model, data, AdaPruneConfig(pattern=pattern, **{**_ADAM_DEFAULTS, **overrides}))


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


def _data(seed: int = 1, batches: int = 4, rows: int = 64, features: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, features, generator=g) for _ in range(batches)]


def _layer_io(model: nn.Module, name: str, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated input and output of one module over the batches (direct recording, no AdaPrune code)."""
    module = dict(model.named_modules())[name]
    xs, ys = [], []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        xs.append(args[0].detach())
        ys.append(output.detach())

    handle = module.register_forward_hook(hook)
    with torch.no_grad():
        for b in batches:
            model(b)
    handle.remove()
    return torch.cat(xs), torch.cat(ys)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).square().mean())


# ------------------------------------------------------------------------------------------- core contract


@pytest.mark.parametrize("pattern", ["2:4", "4:8-T"])
def test_masks_fixed_valid_and_errors_drop(pattern):
    model, data = _mlp(), _data()
    dense = copy.deepcopy(model)
    expected = {
        name: layer_mask(module, nmsparse.NMPattern.parse(pattern), method="auto")
        for name, module in dense.named_modules()
        if name in ("0", "2")
    }
    reports = _old(model, data, pattern, keep_first_last=False, iterations=150, batch_size=None, exclude=["4"])
    assert [r.name for r in reports] == ["0", "2"]
    masks = nmsparse.get_masks(model)
    for name in ("0", "2"):
        # magnitude masks are chosen on the dense weights and never change during the optimisation
        assert torch.equal(masks[f"{name}.weight"], expected[name])  # keyed by the tensor's name
        module = dict(model.named_modules())[name]
        assert nmsparse.is_nm_sparse(module.weight, pattern)
        original = module.parametrizations.weight.original
        assert bool((original[~masks[f"{name}.weight"]] == 0).all())
    for r in reports:
        assert r.error_after < r.error_before
        assert 0 < r.best_iteration <= r.iterations == 150
        assert r.rows == 256 and r.stored_rows == 0


def test_plain_pattern_prunes_the_last_layer_unless_kept():
    reports = _old(_mlp(), _data(), "2:4", iterations=5, batch_size=None)  # keep_first_last=True
    assert [r.name for r in reports] == ["2"]
    reports = _old(_mlp(), _data(), "2:4", keep_first_last=False, iterations=5, batch_size=None)
    assert [r.name for r in reports] == ["0", "2", "4"]


def test_best_iterate_is_kept_when_adam_diverges():
    model, data = _mlp(), _data()
    reports = _old(model, data, "2:4", keep_first_last=False, iterations=30, lr=50.0, bias_lr=50.0, batch_size=None)
    for r in reports:
        assert r.error_after <= r.error_before
        assert r.best_iteration == 0  # a learning rate of 50 only makes things worse


@pytest.mark.parametrize("batch_size", [None, 16])
def test_reported_errors_match_direct_computation(batch_size):
    """Parallel mode: every layer is fitted on dense inputs to dense outputs; the report's errors are MSEs."""
    model, data = _mlp(), _data()
    dense = copy.deepcopy(model)
    reports = _old(model, data, "2:4", keep_first_last=False, iterations=40, sequential=False, batch_size=batch_size)
    for r in reports:
        x, y = _layer_io(dense, r.name, data)
        pruned = dict(model.named_modules())[r.name]
        assert _mse(pruned(x), y) == pytest.approx(r.error_after, rel=1e-4, abs=1e-9)
        assert r.error_dense == pytest.approx(0.0, abs=1e-6)
        assert r.target_power == pytest.approx(float(y.double().square().mean()), rel=1e-6)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_validation_share_picks_iterates_on_held_out_rows(batch_size):
    model, data = _mlp(), _data()
    reports = _old(model, data, "2:4", keep_first_last=False, iterations=60, batch_size=batch_size, validation=0.25)
    for r in reports:
        assert r.rows == 256  # errors are still reported over every row
        assert r.error_after < r.error_before
        assert r.best_iteration % 10 == 0 or r.best_iteration == 60  # ranked every 10 steps and at the end
        if batch_size is not None:
            assert 150 < r.stored_rows < 230  # held-out rows never reach the mini-batches
    for bad in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="validation"):
            _old(_mlp(), data, "2:4", validation=bad)


def test_sequential_feeds_pruned_inputs_and_targets_the_dense_model():
    model, data = _mlp(), _data()
    dense = copy.deepcopy(model)
    seq = _old(copy.deepcopy(model), data, "2:4", keep_first_last=False, iterations=60, batch_size=None)
    par = _old(
        copy.deepcopy(model), data, "2:4", keep_first_last=False, iterations=60, batch_size=None, sequential=False
    )
    loc = _old(copy.deepcopy(model), data, "2:4", keep_first_last=False, iterations=60, batch_size=None, target="layer")
    assert seq[0].error_before == pytest.approx(par[0].error_before)  # the first layer sees the same inputs
    assert seq[1].error_dense > 0  # its input comes from the pruned first layer: the dense weights miss now
    assert par[1].error_dense == pytest.approx(0.0, abs=1e-6)
    assert loc[1].error_dense == pytest.approx(0.0, abs=1e-6)  # fitted to its own dense output on that input
    # the sequential model's final layer error is measured against the dense model's output
    _, y_dense = _layer_io(dense, "4", data)
    assert seq[2].target_power == pytest.approx(float(y_dense.double().square().mean()), rel=1e-6)


def test_sequential_beats_magnitude_end_to_end():
    data = _data()
    dense = _mlp()
    with torch.no_grad():
        reference = torch.cat([dense(b) for b in data])

    def output_error(**kwargs) -> float:
        model = copy.deepcopy(dense)
        _old(model, data, "2:4", keep_first_last=False, batch_size=None, **kwargs)
        with torch.no_grad():
            return _mse(torch.cat([model(b) for b in data]), reference)

    magnitude = output_error(iterations=0, absorb_mean=False)
    assert output_error(iterations=200) < 0.5 * magnitude
    assert output_error(iterations=200, sequential=False) < magnitude


def test_absorb_mean_keeps_group_sums():
    model = _mlp()
    w = model[2].weight.detach().clone()
    _old(model, _data(), "2:4", keep_first_last=False, iterations=0)
    new = model[2].weight.detach()
    assert torch.allclose(new.reshape(-1, 4).sum(dim=1), w.reshape(-1, 4).sum(dim=1), atol=1e-5)
    assert nmsparse.is_nm_sparse(new, "2:4")


def test_activation_scores_use_input_norms():
    model, data = _mlp(), _data()
    x = torch.cat(data)
    norms = x.double().square().sum(dim=0).sqrt().float()
    expected = nmsparse.find_mask(model[0].weight.detach(), "2:4", scores=model[0].weight.detach().abs() * norms)
    _old(model, data, "2:4", keep_first_last=False, iterations=0, scores="activation")
    assert torch.equal(nmsparse.get_masks(model)["0.weight"], expected)


def test_pruned_model_squashes_and_round_trips():
    model = _mlp()
    _old(model, _data(), "2:4", keep_first_last=False, iterations=10, batch_size=None)
    fresh = nmsparse.load_pruned_state_dict_(_mlp(5), model.state_dict())
    x = torch.randn(3, 16)
    assert torch.allclose(fresh(x), model(x))
    nmsparse.squash_masks_(model)
    assert not nmsparse.is_pruned(model[0]) and nmsparse.is_nm_sparse(model[0].weight, "2:4")


# ------------------------------------------------------------------------------------------ memory budget


def test_memory_budget_subsamples_rows_but_statistics_cover_all():
    model, data = _mlp(), _data(batches=8)
    stats = statistics_bytes(32, 32, 1, True)
    row_bytes = 4 * (33 + 32)  # one stored row of [x 1] and y, float32
    solve = 4 * (32 * 32 + 8 * 32 * 32)  # one fit's float32 workspace
    dense_copy = sum(p.numel() * 4 for p in model.parameters())  # the dense model, for its targets
    budget = stats + solve + dense_copy + 100 * row_bytes  # room for 100 of the 512 rows
    reports = _old(
        model, data, "2:4", keep_first_last=False, iterations=20, batch_size=4, memory_budget=budget, include=["2"]
    )
    (r,) = reports
    assert r.rows == 512
    assert 0 < r.stored_rows <= 100
    assert reports.peak_tracked <= budget


def test_memory_budget_too_small_and_parsing():
    with pytest.raises(ConfigError, match="memory_budget"):
        _old(_mlp(), _data(), "2:4", keep_first_last=False, memory_budget=1000)
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("1.5GB") == 1_500_000_000
    for bad in ("lots", 0, -5, "3 parsecs", True):
        with pytest.raises(ConfigError):
            parse_memory(bad)


# ------------------------------------------------------------------------------------------------ convs / BN


class _ConvNet(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, stride=2, groups=groups, bias=False)
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.reflect(torch.relu(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("groups,pattern", [(1, "2:4"), (2, "4:8-T")])
def test_convolutions_are_fitted_exactly(groups, pattern):
    model = _ConvNet(groups)
    for _ in range(3):  # give the batch norm non-trivial statistics
        model.train()(torch.randn(8, 3, 8, 8))
    model.eval()
    dense = copy.deepcopy(model)
    g = torch.Generator().manual_seed(4)
    data = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    reports = _old(
        model,
        data,
        pattern,
        keep_first_last=False,
        iterations=30,
        sequential=False,
        batch_size=None,
        recalibrate_bn=False,
    )
    names = [r.name for r in reports]
    assert "conv" in names and "reflect" in names
    for r in reports:
        x, y = _layer_io(dense, r.name, data)
        module = dict(model.named_modules())[r.name]
        assert _mse(module(x), y) == pytest.approx(r.error_after, rel=1e-4, abs=1e-9)
        assert nmsparse.is_nm_sparse(module.weight, pattern)
        assert r.error_after < r.error_before


def test_batchnorm_is_reestimated_on_calibration_data():
    model = _ConvNet().eval()
    g = torch.Generator().manual_seed(4)
    data = [torch.randn(8, 3, 8, 8, generator=g) * 3 + 1 for _ in range(3)]
    _old(model, data, "2:4", keep_first_last=False, iterations=5, batch_size=None)
    assert not model.training
    with torch.no_grad():
        stem_out = torch.cat([model.stem(b) for b in data])
    mean = stem_out.mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-4)
    assert model.bn.momentum == 0.1  # restored
    before = model.bn.running_mean.clone()
    _old(model := _ConvNet().eval(), data, "2:4", keep_first_last=False, iterations=0, recalibrate_bn=False)
    assert torch.equal(model.bn.running_mean, torch.zeros(16)) and not torch.equal(before, torch.zeros(16))


# ----------------------------------------------------------------------------------------- sparse models


def test_unstructured_sparse_model_is_converted_on_its_survivors():
    model = _mlp()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=g) < 0.4)  # ~60% zeros, unstructured
            layer.weight.mul_(1e-3)  # tiny survivors: they must still outrank zeros
    alive = {n: (dict(model.named_modules())[n].weight != 0) for n in ("0", "2")}
    _old(model, _data(), "2:4", keep_first_last=False, iterations=0, scores="activation", absorb_mean=False)
    masks = nmsparse.get_masks(model)
    for name in ("0", "2"):
        kept_alive = (masks[f"{name}.weight"] & alive[name]).reshape(-1, 4).sum(dim=1)
        survivors = alive[name].reshape(-1, 4).sum(dim=1)
        assert torch.equal(kept_alive, survivors.clamp(max=2))  # every survivor kept while room remains


def test_torch_prune_and_existing_masks_are_baked_in_first():
    model = _mlp()
    torch_prune.l1_unstructured(model[0], "weight", amount=0.7)
    zeros = model[0].weight == 0
    nmsparse.prune_(model, "1:4", include=["2"])  # an nmsparse static mask on another layer
    alive_1_4 = model[2].weight != 0
    reports = _old(model, _data(), "2:4", keep_first_last=False, iterations=20, batch_size=None)
    assert [r.name for r in reports] == ["0", "2", "4"]
    assert not hasattr(model[0], "weight_orig")
    masks = nmsparse.get_masks(model)
    survivors = (~zeros).reshape(-1, 4).sum(dim=1)
    kept_alive = (masks["0.weight"] & ~zeros).reshape(-1, 4).sum(dim=1)
    assert torch.equal(kept_alive, survivors.clamp(max=2))
    assert bool(masks["2.weight"][alive_1_4].all())  # the 1:4 survivors are all inside the new 2:4 mask


# ------------------------------------------------------------------------------------- batch styles


class _KwModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embed(input_ids)) * attention_mask.unsqueeze(-1)
        return self.out(torch.relu(h))


def test_dict_batches_are_keyword_arguments_and_padding_is_ignored():
    g = torch.Generator().manual_seed(0)
    batches = []
    for lengths in ([5, 3, 1], [4, 4, 2]):
        ids = torch.randint(1, 50, (3, 5), generator=g)
        mask = (torch.arange(5) < torch.tensor(lengths).unsqueeze(1)).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    reports = _old(_KwModel(), batches, "2:4", keep_first_last=False, iterations=5, batch_size=None)
    assert [r.rows for r in reports] == [real_tokens, real_tokens]
    reports = _old(
        _KwModel(), batches, "2:4", keep_first_last=False, iterations=5, batch_size=None, ignore_padding=False
    )
    assert [r.rows for r in reports] == [30, 30]


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(8, 8)  # called twice per forward

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.shared(a) + self.shared(torch.relu(b))


def test_tuple_batches_and_modules_called_twice():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)) for _ in range(3)]
    (r,) = _old(_TwoInputs(), batches, "2:4", keep_first_last=False, iterations=20, batch_size=None)
    assert r.rows == 60  # 2 calls x 10 rows x 3 batches
    assert r.error_after < r.error_before


def test_one_shot_iterators_are_read_once():
    data = _data()
    reports = _old(_mlp(), iter(data), "2:4", keep_first_last=False, iterations=3)
    assert len(reports) == 3


# ------------------------------------------------------------------------------------------------ errors


def test_empty_calibration_set():
    with pytest.raises(InputError, match="calibration set is empty"):
        _old(_mlp(), [], "2:4")


def test_nothing_prunable():
    with pytest.raises(ConfigError, match="no layer of the model can take pattern 2:4"):
        _old(nn.Sequential(nn.Linear(6, 3), nn.ReLU()), [torch.randn(2, 6)], "2:4", keep_first_last=False)
    with pytest.raises(ConfigError, match="no layer of the model can take pattern 2:4"):
        _old(nn.Sequential(nn.ReLU()), [torch.randn(2, 6)], "2:4")


def test_wrong_shape_batch_is_named_and_model_left_untouched():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    data = _data()
    data.insert(2, torch.randn(4, 12))
    with pytest.raises(InputError, match=r"calibration batch 2 cannot be fed to the model as model\(batch\)"):
        _old(model, data, "2:4", keep_first_last=False)
    assert not nmsparse.get_masks(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scores": "random"}, "scores"),
        ({"target": "dense"}, "target"),
        ({"iterations": -1}, "iterations"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": float("nan")}, "lr"),
        ({"method": "best"}, "method"),
        ({"sequential": "yes"}, "sequential"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _old(_mlp(), _data(), "2:4", **kwargs)


def test_single_tensor_instead_of_batches():
    with pytest.raises(InputError, match="wrap one batch in a list"):
        _old(_mlp(), torch.randn(4, 16), "2:4")
