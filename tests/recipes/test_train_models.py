"""Models built in code, unstructured magnitude masks, mask checksums and checkpoint helpers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import nmsparse
from nmsparse.errors import ConfigError
from nmsparse.nn.state import raw_state_dict
from nmsparse.recipes.classify import (
    UnstructuredSparsifier,
    build_model,
    check_masks_identical,
    magnitude_mask,
    mask_checksum,
)
from nmsparse.recipes.classify.checkpoint import capture_rng_state, read_model_metadata, restore_rng_state, save_model
from nmsparse.recipes.distributed import DistContext
from nmsparse.recipes.rundir import pack_state, unpack_state


@pytest.mark.parametrize(("name", "channels", "size"), [("cnn", 1, 8), ("cnn", 3, 32), ("mlp", 1, 8)])
def test_small_models_forward(name: str, channels: int, size: int) -> None:
    model = build_model(name, in_channels=channels, num_classes=7, image_size=size, width=8)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 7)


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnets_match_torchvision_parameter_counts(name: str, params: int) -> None:
    # torchvision's resnet18 / resnet50 at 1000 classes hold exactly these many parameters.
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, in_channels=3, num_classes=1000, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == params
    assert "layer4.1.conv2.weight" in model.state_dict() and "fc.weight" in model.state_dict()


def test_resnet50_recipe_layers() -> None:
    """4:8-T with keep_first_last: every conv but conv1 is pruned, the fc stays dense."""
    with torch.device("meta"):
        model = build_model("resnet50", in_channels=3, num_classes=1000, image_size=224)
    selection = nmsparse.select_layers(model, "4:8-T", keep_first_last=True)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(selection.selected) == sorted(c for c in convs if c != "conv1")
    assert set(selection.skipped) == {"conv1", "fc"} and len(selection.selected) == 52


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_model("vgg", in_channels=3, num_classes=10, image_size=32)


# --------------------------------------------------------------------------------------------- unstructured


def test_magnitude_mask_keeps_exactly_the_largest_with_low_index_ties() -> None:
    weight = torch.tensor([[1.0, -1.0, 0.5, 1.0]])
    assert magnitude_mask(weight, 0.5).tolist() == [[True, True, False, False]]
    w = torch.randn(16, 24)
    mask = magnitude_mask(w, 0.5)
    assert int(mask.sum()) == 16 * 12
    assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max())


def test_unstructured_sparsifier_refreshes_and_restores() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 3))
    sparsifier = UnstructuredSparsifier(model, density=0.5, refresh_every=2, decay=0.0)
    assert list(sparsifier.layers) == ["0", "2"] and "3" in sparsifier.skipped
    assert sparsifier.masks_valid() and int((model[0].weight == 0).sum()) >= 128
    with torch.no_grad():
        model[0].parametrizations.weight.original.copy_(torch.arange(256.0).reshape(16, 16))
    assert not sparsifier.step() and sparsifier.step()  # refresh on the 2nd step
    assert torch.equal(model[0].parametrizations.weight[0].mask.flatten(), torch.arange(256) >= 128)
    fresh = UnstructuredSparsifier(
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 3))
    )
    fresh.load_state_dict(sparsifier.state_dict())
    assert (fresh.steps, fresh.refreshes) == (2, 1)
    with pytest.raises(ConfigError):
        fresh.load_state_dict({"kind": "nm"})


def test_static_unstructured_never_refreshes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    sparsifier = UnstructuredSparsifier(model, dynamic=False, refresh_every=1)
    assert not any(sparsifier.step() for _ in range(3)) and sparsifier.refreshes == 0


# ------------------------------------------------------------------------------------------------ checksums


def _pruned_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    a = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8)), "2:4").model
    b = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8)), "2:4").model
    with raw_state_dict():  # masks travel in nmsparse's raw layout, not in the plain state dict
        b.load_state_dict(a.state_dict())
    return a, b


def test_mask_checksum_detects_a_single_moved_entry() -> None:
    a, b = _pruned_pair()
    assert mask_checksum(a) == mask_checksum(b)
    mask = b[1].parametrizations.weight[0].mask
    row = mask[3].clone()
    mask[3] = row.roll(1)  # same count, different positions
    checksum_a, kept_a = mask_checksum(a)
    checksum_b, kept_b = mask_checksum(b)
    assert kept_a == kept_b and checksum_a != checksum_b


def test_check_masks_identical_single_process_returns_checksum() -> None:
    a, _ = _pruned_pair()
    assert check_masks_identical(a, DistContext(), where="test") == mask_checksum(a)[0]


# ------------------------------------------------------------------------------------------------ checkpoints


def test_rng_state_round_trip(tmp_path: Path) -> None:
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    tensors, skeleton = pack_state({"rng": [state]})  # how checkpoints store it (no pickle)
    restore_rng_state(unpack_state(tensors, json.loads(json.dumps(skeleton)))["rng"][0])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_save_model_is_atomic_and_carries_metadata(tmp_path: Path) -> None:
    model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 8)), "2:4").model
    path = save_model(tmp_path / "m.safetensors", model, metadata={"model": "toy", "epoch": 3})
    assert read_model_metadata(path)["model"] == "toy" and read_model_metadata(path)["epoch"] == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind
    fresh = nmsparse.load_pruned_state_dict_(
        torch.nn.Sequential(torch.nn.Linear(8, 8)), nmsparse.io.load_state_dict(path)
    )
    assert torch.equal(fresh[0].weight, model[0].weight)
