"""Issue 16, silent wrong results: what a file claims is checked against the model, and a failed load changes
nothing."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.errors import InputError, MaskMismatchError
from nmsparse.io import MASK_PREFIX, load_masks, load_pruned_state_dict_, pruned_state_dict, save_masks


def _linear_file(settings: dict) -> tuple[dict, dict]:
    """A save_pruned record of one 8x8 Linear whose mask is 2:4 along dim 0 only (its transpose is 2:4)."""
    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    tensors, meta = pruned_state_dict(model)
    rows = torch.tensor([True, True, False, False] * 2).expand(8, 8)
    tensors[MASK_PREFIX + "0.weight"] = rows.t().contiguous()  # breaks 2:4 on the rows of an nn.Linear
    info = json.loads(meta["masks"])
    info["0.weight"].update(settings)
    meta["masks"] = json.dumps(info)
    return tensors, meta


@pytest.mark.parametrize("claim", [True, "false", "yes"])
def test_load_pruned_state_dict_checks_the_layout_claims_against_the_module(claim):
    # Regression: "transposed": true on an nn.Linear tested the mask on the wrong axis; the string "false" was true
    tensors, meta = _linear_file({"transposed": claim})
    fresh = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(MaskMismatchError, match="transposed"):
        load_pruned_state_dict_(fresh, tensors, meta)
    assert not nmsparse.is_pruned(fresh[0])


def test_load_pruned_state_dict_refuses_a_padded_claim_that_is_not_a_bool():
    tensors, meta = _linear_file({"transposed": False, "padded": "false"})
    with pytest.raises(MaskMismatchError, match="padded"):
        load_pruned_state_dict_(nn.Sequential(nn.Linear(8, 8)), tensors, meta)


def test_load_pruned_state_dict_masks_entry_not_an_object_is_a_mismatch():
    # Regression: a 'masks' entry that is not a JSON object raised a bare AttributeError
    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    tensors, meta = pruned_state_dict(model)
    meta["masks"] = json.dumps({"0.weight": "2:4"})
    with pytest.raises(MaskMismatchError, match="not a JSON object"):
        load_pruned_state_dict_(nn.Sequential(nn.Linear(8, 8)), tensors, meta)
    with pytest.raises(MaskMismatchError, match="not a JSON object"):
        nmsparse.io.dense_from_pruned(tensors, meta)


def test_export_run_masks_entry_not_an_object_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from nmsparse.cli.main import main

    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    tensors, meta = pruned_state_dict(model)
    meta["masks"] = json.dumps({"0.weight": [1, 2]})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "p.safetensors"), metadata=meta)
    assert main(["export", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "d.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a JSON object" in err


def test_load_pruned_state_dict_refuses_two_keys_for_one_mask():
    # Regression: a file with two keys for one mask loaded one of them without a word
    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    tensors, meta = pruned_state_dict(model)
    tensors["0.parametrizations.weight.0.mask"] = torch.ones(8, 8, dtype=torch.bool)
    tensors["0.parametrizations.weight.original"] = tensors.pop("0.weight")
    with pytest.raises(MaskMismatchError, match="duplicate"):
        load_pruned_state_dict_(nn.Sequential(nn.Linear(8, 8)), tensors, meta)


def test_sparse_linear_load_state_dict_keeps_the_saved_mode_and_decay():
    # Regression: the layer came back static with decay 0
    from nmsparse.nn import SparseLinear

    try:
        from nmsparse.nn.state import raw_state_dict
    except ImportError:  # before the dense-keys contract the raw layout was the default
        raw_state_dict = contextlib.nullcontext  # type: ignore[assignment]
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, pattern="2:4-T", mode="straight-through", decay=2e-4, backend="dense")
    with raw_state_dict():
        state = layer.state_dict()
    fresh = SparseLinear(16, 8, pattern="2:4-T", backend="dense")
    fresh.load_state_dict(state)
    assert fresh.mode == "straight-through" and fresh.decay == pytest.approx(2e-4)
    assert torch.equal(fresh.mask, layer.mask) and torch.equal(fresh.weight, layer.weight)
    # and back: a static record makes a straight-through layer static
    with raw_state_dict():
        static = SparseLinear(16, 8, pattern="2:4-T", backend="dense").state_dict()
    fresh.load_state_dict(static)
    assert fresh.mode == "static" and fresh.decay == 0.0


def test_load_masks_into_attaches_nothing_when_a_later_mask_breaks_its_pattern(tmp_path):
    # Regression: the masks before the broken one stayed attached
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from nmsparse.hf import load_masks_into_, save_pruned_pretrained
    from nmsparse.io import MASKS_FILE, read_metadata
    from nmsparse.testing import tiny_gpt2

    model = nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model
    folder = save_pruned_pretrained(model, tmp_path / "out", pattern="2:4-T")
    path = folder / MASKS_FILE
    masks, meta = load_file(str(path)), read_metadata(path)
    last = list(masks)[-1]
    masks[last] = torch.ones_like(masks[last])  # prunes nothing, so the zeros check passes; 2:4-T is broken
    save_file(masks, str(path), metadata=meta)
    fresh = transformers.AutoModelForCausalLM.from_pretrained(str(folder))  # zeros where the masks prune
    with pytest.raises(MaskMismatchError):
        load_masks_into_(fresh, folder)
    assert not any(nmsparse.is_pruned(m) for m in fresh.modules())


def test_load_masks_into_refuses_weights_kept_where_the_masks_prune(tmp_path):
    # the masks file must belong to the weights beside it: attaching would silently zero kept weights
    pytest.importorskip("transformers")
    from nmsparse.hf import load_masks_into_, save_pruned_pretrained
    from nmsparse.testing import tiny_gpt2

    folder = save_pruned_pretrained(nmsparse.prune_(tiny_gpt2(), "2:4", method="topn").model, tmp_path / "out")
    dense = tiny_gpt2()  # its own dense weights, not the folder's
    with pytest.raises(MaskMismatchError, match="non-zero where their masks prune"):
        load_masks_into_(dense, folder)
    assert not any(nmsparse.is_pruned(m) for m in dense.modules())


def test_the_old_module_path_of_nmsparse_hf_still_imports_for_one_release():
    import importlib
    import sys

    import nmsparse.hf

    sys.modules.pop("nmsparse.oneshot.hf", None)
    with pytest.warns(DeprecationWarning, match="moved to nmsparse.hf"):
        old = importlib.import_module("nmsparse.oneshot.hf")
    assert all(getattr(old, name) is getattr(nmsparse.hf, name) for name in nmsparse.hf.__all__)


def test_load_masks_into_invalid_nmsparse_json_is_an_input_error(tmp_path):
    # Regression: an invalid nmsparse.json raised a raw JSONDecodeError
    pytest.importorskip("transformers")
    from nmsparse.hf import load_masks_into_, save_pruned_pretrained
    from nmsparse.testing import tiny_gpt2

    folder = save_pruned_pretrained(nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model, tmp_path / "out")
    (folder / "nmsparse.json").write_text("{not json")
    with pytest.raises(InputError, match="nmsparse.json"):
        load_masks_into_(tiny_gpt2(), folder)


def test_find_mask_accepts_conv1d_weights():
    # Regression: the README says Conv1d weights work; find_mask refused 3-D tensors
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3)
    mask = nmsparse.find_mask(weight, "4:8-T")
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    assert torch.equal(mask, nmsparse.find_mask(weight.unsqueeze(2), "4:8-T").squeeze(2))
    plain = nmsparse.find_mask(weight, "2:4", scores=weight.abs())
    assert int(plain.sum()) == weight.numel() // 2


def test_set_masks_keeps_the_pattern_of_a_loaded_masks_file(tmp_path):
    # Regression: set_masks_(model, load_masks(path)) attached masks without their pattern
    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    save_masks(nmsparse.get_masks(model), tmp_path / "m.safetensors", pattern="2:4")
    fresh = nn.Sequential(nn.Linear(8, 8))
    nmsparse.set_masks_(fresh, load_masks(tmp_path / "m.safetensors"))
    assert str(fresh[0].parametrizations.weight[0].pattern) == "2:4"
    with pytest.raises(MaskMismatchError, match="2:4"):
        nmsparse.set_masks_(fresh, {"0.weight": torch.ones(8, 8, dtype=torch.bool)})


def test_prune_oneshot_relative_error_is_the_unsquared_ratio():
    # Regression: the per-layer "rel. error" was ||dY||^2 / ||Y||^2 under a header that did not say so
    from nmsparse.oneshot import prune_oneshot_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16, bias=False))
    dense = model[0].weight.detach().clone()
    calibration = [torch.randn(6, 16) for _ in range(2)]
    report = prune_oneshot_(model, calibration, "2:4", algorithm="wanda")
    x = torch.cat(calibration).double()
    pruned = model[0].weight.detach().double()
    expected = float((x @ (dense.double() - pruned).t()).norm() / (x @ dense.double().t()).norm())
    assert report.layers[0].relative_error == pytest.approx(expected, rel=1e-4)
