"""Dynamic sparse training: refresh schedule, mask validity, optimizer wiring, SR-STE, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse import DynamicSparsifier, get_masks, is_pruned
from nmsparse.errors import ConfigError
from nmsparse.nn.state import raw_state_dict
from nmsparse.testing import toy_mlp


def toy_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),  # K = 27: stays dense
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()


def test_prunes_with_straight_through_masks_and_decay():
    model = toy_cnn()
    sparsifier = DynamicSparsifier(model, "4:8-T", initial_method="greedy", decay=3e-4)
    assert list(sparsifier.layers) == ["2", "4", "8"]
    assert not is_pruned(model[0])
    for module in sparsifier.layers.values():
        nm = module.parametrizations.weight[0]
        assert nm.straight_through and nm.decay == 3e-4 and str(nm.pattern) == "4:8-T"
    assert sparsifier.masks_valid()


def test_default_initial_masks_are_exact():
    model = toy_mlp()
    dense = {
        name: module.weight.detach().clone() for name, module in model.named_modules() if isinstance(module, nn.Linear)
    }
    sparsifier = DynamicSparsifier(model)  # "4:8-T", initial_method="exact"
    masks = get_masks(model)
    assert list(masks) == ["0.weight", "2.weight", "4.weight"]  # tensor names, like every mask mapping
    assert list(sparsifier.layers) == ["0", "2", "4"]  # module names
    for name, mask in masks.items():
        assert torch.equal(mask, nmsparse.find_mask(dense[name.removesuffix(".weight")], "4:8-T", method="exact"))


def test_refresh_happens_exactly_on_schedule_and_masks_stay_valid():
    model = toy_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sparsifier = DynamicSparsifier(model, "2:4-T", initial_method="greedy", refresh_every=3)
    x = torch.randn(16, 32)
    refreshed_at, changed = [], []
    for i in range(1, 11):
        train_step(model, opt, x)
        if sparsifier.step():
            refreshed_at.append(i)
            changed.append(sparsifier.last_changed)
            assert sparsifier.masks_valid()
            for mask in get_masks(model).values():
                assert nmsparse.is_nm_sparse(mask, "2:4-T")
    assert refreshed_at == [3, 6, 9]
    assert (sparsifier.steps, sparsifier.refreshes) == (10, 3)
    assert max(changed) > 0  # the masks really followed the weights


def test_refresh_recomputes_masks_from_the_dense_weights():
    model = toy_mlp()
    sparsifier = DynamicSparsifier(model, "4:8-T", initial_method="greedy", method="greedy-repair")
    with torch.no_grad():
        for module in sparsifier.layers.values():
            module.parametrizations.weight.original.normal_()
    sparsifier.refresh()
    for name, mask in get_masks(model).items():
        original = sparsifier.layers[name.removesuffix(".weight")].parametrizations.weight.original
        assert torch.equal(mask, nmsparse.find_mask(original, "4:8-T", method="greedy-repair"))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
)
def test_optimizer_keeps_updating_the_same_parameters(make_opt):
    model = toy_mlp()
    opt = make_opt(model.parameters())  # built before the sparsifier
    sparsifier = DynamicSparsifier(model, "2:4-T", initial_method="greedy", refresh_every=2)
    originals = [m.parametrizations.weight.original for m in sparsifier.layers.values()]
    buffers = [m.parametrizations.weight[0].mask for m in sparsifier.layers.values()]
    opt_params = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} == opt_params
    x = torch.randn(8, 32)
    for _ in range(6):
        before = [p.detach().clone() for p in originals]
        masks = [b.clone() for b in buffers]
        train_step(model, opt, x)
        for p, old, mask in zip(originals, before, masks):
            assert not torch.equal(p, old)
            assert bool((p[~mask] != old[~mask]).any())  # pruned weights keep learning (straight-through)
        sparsifier.step()
    assert sparsifier.refreshes == 3
    for module, p, b in zip(sparsifier.layers.values(), originals, buffers):
        assert module.parametrizations.weight.original is p  # never replaced
        assert module.parametrizations.weight[0].mask is b  # updated in place
    assert {id(p) for p in model.parameters()} == opt_params


def test_sr_ste_decay_pulls_pruned_weights_to_zero():
    model = nn.Sequential(nn.Linear(8, 8, bias=False))
    sparsifier = DynamicSparsifier(model, "2:4", decay=0.5, refresh_every=1000)
    w0 = model[0].parametrizations.weight.original.detach().clone()
    mask = get_masks(model)["0.weight"]
    model(torch.zeros(1, 8)).sum().backward()  # zero loss gradient: only the decay term is left
    grad = model[0].parametrizations.weight.original.grad
    torch.testing.assert_close(grad, 0.5 * w0 * ~mask)
    assert sparsifier.decay == 0.5


def test_refresh_time_is_recorded():
    model = toy_cnn()
    sparsifier = DynamicSparsifier(model, "4:8-T", initial_method="greedy", refresh_every=2)
    assert sparsifier.refresh_seconds == 0.0
    assert sparsifier.step() is False and sparsifier.refresh_seconds == 0.0
    assert sparsifier.step() is True
    first = sparsifier.refresh_seconds
    assert first > 0.0
    sparsifier.step()
    sparsifier.step()
    assert sparsifier.refresh_seconds > first and sparsifier.refreshes == 2


def test_state_dict_round_trip_resumes_the_schedule():
    model = toy_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sparsifier = DynamicSparsifier(model, "2:4-T", initial_method="greedy", refresh_every=4, decay=1e-3)
    x = torch.randn(8, 32)
    for _ in range(6):
        train_step(model, opt, x)
        sparsifier.step()
    state = sparsifier.state_dict()
    with raw_state_dict():  # nmsparse's record of the model: dense weights and masks
        model_state = model.state_dict()
    assert state["steps"] == 6 and state["refreshes"] == 1 and state["pattern"] == "2:4-T"

    fresh_model = toy_mlp()
    fresh = DynamicSparsifier(fresh_model, "2:4-T", initial_method="greedy", refresh_every=40, decay=0.0)
    fresh_model.load_state_dict(model_state)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert fresh_model[0].parametrizations.weight[0].decay == 1e-3  # config pushed to the masks
    for a, b in zip(get_masks(model).values(), get_masks(fresh_model).values()):
        assert torch.equal(a, b)
    assert [fresh.step(), fresh.step()] == [False, True]  # step 8 = the next multiple of 4


def test_load_state_dict_refuses_other_pattern_or_layers():
    state = DynamicSparsifier(toy_mlp(), "2:4-T", initial_method="greedy").state_dict()
    with pytest.raises(ConfigError, match="pattern 2:4-T"):
        DynamicSparsifier(toy_mlp(), "4:8-T", initial_method="greedy").load_state_dict(state)
    other = DynamicSparsifier(toy_mlp(), "2:4-T", initial_method="greedy", exclude=["4"])
    with pytest.raises(ConfigError, match=r"only in the state: \['4'\]"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match="lacks"):
        other.load_state_dict({"steps": 3})


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"refresh_every": 0}, "refresh_every"),
        ({"refresh_every": 2.5}, "refresh_every"),
        ({"decay": -1.0}, "decay"),
        ({"decay": float("nan")}, "decay"),
        ({"method": "topn"}, "topn"),
        ({"initial_method": "nope"}, "initial_method"),
    ],
)
def test_bad_config_is_refused_before_pruning(kwargs, needle):
    model = toy_mlp()
    with pytest.raises(ConfigError, match=needle):
        DynamicSparsifier(model, "2:4-T", **kwargs)
    assert not any(is_pruned(m) for m in model.modules())


def test_squashed_model_is_reported_clearly():
    model = toy_mlp()
    sparsifier = DynamicSparsifier(model, "2:4", refresh_every=1)
    nmsparse.squash_masks_(model)
    with pytest.raises(ConfigError, match="no mask any more"):
        sparsifier.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refresh_on_cuda_after_model_to():
    model = toy_mlp()
    sparsifier = DynamicSparsifier(model, "4:8-T", initial_method="greedy", refresh_every=1)
    model.to("cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt, torch.randn(4, 32, device="cuda"))
    assert sparsifier.step()
    assert all(m.device.type == "cuda" for m in get_masks(model).values())
    assert sparsifier.masks_valid()
