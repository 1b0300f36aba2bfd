"""The image-task check: a CNN trained dense on the built-in digits, pruned to 2:4-T by AdaPrune without any
fine-tuning, stays within 1.5 points of its test accuracy, far above masks alone."""

from __future__ import annotations

import copy

import pytest
import torch

import nmsparse
from nmsparse.adaprune import AdaPruneConfig

pytest.importorskip("sklearn", reason="the built-in digits come with scikit-learn (nmsparse[train])")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_digits_cnn_2_4_t_within_1_5_points():
    from nmsparse.recipes.classify import Trainer, build_data, load_config

    cfg = load_config(None, mode="dense", model="cnn", data="digits", epochs=8, baseline=False, device="cpu")
    data = build_data(cfg)
    trainer = Trainer(cfg, data, progress=False)
    trainer.fit()
    dense = trainer.model.eval()
    test_x, test_y = data.test.images, data.test.labels

    def accuracy(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((model.eval()(test_x).argmax(dim=1) == test_y).float().mean())

    dense_acc = accuracy(dense)
    assert dense_acc > 95.0
    index = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:256]
    calibration = list(data.train.images[index].split(64))

    masks_only = copy.deepcopy(dense)
    nmsparse.adaprune_(
        masks_only, calibration, AdaPruneConfig(pattern="2:4-T", iterations=0, absorb_mean=False, recalibrate_bn=False)
    )
    pruned = copy.deepcopy(dense)
    reports = nmsparse.adaprune_(pruned, calibration, AdaPruneConfig(pattern="2:4-T"))
    assert [r.name for r in reports] == ["conv2", "conv3"]  # conv1 (9 inputs) and fc (10 outputs) cannot take it
    assert all(nmsparse.is_nm_sparse(m, "2:4-T") for m in nmsparse.get_masks(pruned).values())
    assert dense_acc - accuracy(pruned) <= 1.5
    assert accuracy(pruned) - accuracy(masks_only) >= 5.0
