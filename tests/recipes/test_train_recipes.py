"""Every shipped ResNet recipe loads and trains a step or two on tiny synthetic images (data overridden)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import nmsparse
from nmsparse.recipes.classify import Trainer, build_data, build_model, load_config
from nmsparse.recipes.classify.checkpoint import save_model

# Overrides that shrink a recipe to a smoke test: 32x32 fake images, 4 classes, batch 4, no workers, and
# 2 steps for ResNet-18, 1 for ResNet-50 (every step of it reads and writes ~25M weights several times).
TINY = dict(
    data="fake",
    image_size=32,
    num_classes=4,
    fake_samples=8,
    batch_size=4,
    eval_batch_size=8,
    epochs=1,
    num_workers=0,
    device="cpu",
)
STEPS = {"resnet18": 2, "resnet50": 1}


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_dynamic_recipe_smoke(model: str) -> None:
    steps = STEPS[model]
    cfg = load_config(f"{model}_imagenet_4x8t_dynamic", **TINY, steps_per_epoch=steps, refresh_every=steps)
    trainer = Trainer(cfg, progress=False)
    convs = [n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert trainer.sparse_layers == [c for c in convs if c != "conv1"]  # every conv but the 147-input stem
    assert set(trainer.dense_layers) == {"conv1", "fc"}
    result = trainer.fit()
    assert result.steps == steps and result.refreshes == 1 and result.mask_valid
    assert math.isfinite(result.history[-1]["train_loss"])
    assert all(nmsparse.is_nm_sparse(trainer.model.get_submodule(n).weight, "4:8-T") for n in trainer.sparse_layers)


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_static_recipe_smoke(model: str, tmp_path: Path) -> None:
    steps = STEPS[model]
    data = build_data(load_config(f"{model}_imagenet_4x8t_static", **TINY, init="unused"))
    torch.manual_seed(1)
    dense = build_model(model, in_channels=3, num_classes=4, image_size=32)
    init = save_model(tmp_path / "dense.safetensors", dense, metadata={"model": model})
    cfg = load_config(f"{model}_imagenet_4x8t_static", **TINY, steps_per_epoch=steps, init=str(init))
    trainer = Trainer(cfg, data, progress=False)
    before = nmsparse.get_masks(trainer.model)
    expected = nmsparse.find_mask(dense.layer1[0].conv2.weight, "4:8-T", method="exact")
    assert torch.equal(before["layer1.0.conv2.weight"], expected)  # exact masks of the init weights (tensor names)
    result = trainer.fit()
    assert result.steps == steps and result.refreshes == 0 and result.mask_valid
    after = nmsparse.get_masks(trainer.model)
    assert all(torch.equal(before[name], after[name]) for name in before)  # masks fixed while fine-tuning
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # step schedule, before epoch 30
