"""Static pruning of models: layer selection, NMMask gradients, squash, mask state dicts."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import nmsparse
from nmsparse import (
    NMMask,
    get_masks,
    is_pruned,
    load_pruned_state_dict_,
    prune_,
    select_layers,
    set_masks_,
    squash_masks_,
)
from nmsparse.errors import ConfigError, MaskMismatchError, ShapeError
from nmsparse.nn.state import raw_state_dict
from nmsparse.testing import ToyCNN, toy_mlp


def raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """nmsparse's raw layout of a pruned model's state (what its record is built from)."""
    with raw_state_dict():
        return model.state_dict()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d))}


def _masked_dense_copy(dense: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A plain copy of ``dense`` with every masked weight replaced by ``W * mask``."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for name, module in _layers(ref).items():
            if f"{name}.weight" in masks:
                module.weight.mul_(masks[f"{name}.weight"])
    return ref


# ------------------------------------------------------------------------------------------- selection


def test_select_layers_reasons_for_4_8_T():
    sel = select_layers(ToyCNN(), "4:8-T")
    assert list(sel.selected) == ["conv", "grouped", "narrow_groups", "conv1d", "fc"]
    assert set(sel.skipped) == {"stem", "depthwise", "head"}
    assert "size 27, not a multiple of m=8" in sel.skipped["stem"]
    assert "size 9" in sel.skipped["depthwise"] and "groups" in sel.skipped["depthwise"]
    assert "output dimension has size 3" in sel.skipped["head"]
    assert "head" in sel.describe() and "fc" in sel.describe()


def test_select_layers_grouped_conv_needs_out_per_group_divisible_by_m_for_T():
    # 16 outputs tile into 4x4 blocks, but in 4 groups of 4 rows they do not tile into 8x8 blocks.
    model = nn.ModuleDict({"g": nn.Conv2d(32, 16, 1, groups=4), "d": nn.Conv2d(32, 16, 1)})
    assert list(select_layers(model, "4:8").selected) == ["g", "d"]
    assert list(select_layers(model, "2:4-T").selected) == ["g", "d"]
    sel = select_layers(model, "4:8-T")
    assert list(sel.selected) == ["d"]
    assert "one of 4 groups" in sel.skipped["g"] and "output dimension has size 4" in sel.skipped["g"]


def test_include_exclude_keep_first_last():
    model = toy_mlp()  # Linear layers named "0", "2", "4"
    assert list(select_layers(model, "2:4", include=["2", "4"]).selected) == ["2", "4"]
    assert list(select_layers(model, "2:4", exclude=["[02]"]).selected) == ["4"]
    sel = select_layers(model, "2:4", keep_first_last=True)
    assert list(sel.selected) == ["2"]
    assert "keep_first_last" in sel.skipped["0"] and "keep_first_last" in sel.skipped["4"]
    sel = select_layers(model, "2:4", include="4")  # a lone string is one glob
    assert list(sel.selected) == ["4"] and "include" in sel.skipped["0"]

    prune_(model, "2:4", exclude=["0"], keep_first_last=True)
    assert [name for name, mod in _layers(model).items() if is_pruned(mod)] == ["2"]


def test_bad_selection_arguments():
    with pytest.raises(ConfigError, match="module_types"):
        select_layers(toy_mlp(), "2:4", module_types=(int,))
    with pytest.raises(ConfigError, match="include"):
        select_layers(toy_mlp(), "2:4", include=[3])


def test_nothing_prunable_raises_with_reason_per_layer():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    with pytest.raises(ConfigError) as info:
        prune_(model, "2:4")
    message = str(info.value)
    assert "- 0:" in message and "- 1:" in message and "size 6" in message and "size 5" in message
    assert not any(is_pruned(m) for m in model.modules())
    with pytest.raises(ConfigError, match="has no layer of the types considered"):
        prune_(nn.Sequential(nn.ReLU()), "2:4")
    with pytest.raises(ConfigError, match="keep_first_last"):
        prune_(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "2:4", keep_first_last=True)


def test_unfit_layers_are_logged_as_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nmsparse"):
        prune_(ToyCNN(), "4:8-T", method="greedy")
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "3 layer(s) left dense" in text
    for name in ("stem", "depthwise", "head"):
        assert f"- {name}:" in text


# ------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "pattern, method", [("2:4", "auto"), ("4:8-T", "greedy"), ("2:4-T", "exact"), ("4:8-T", "auto")]
)
def test_masks_valid_and_equal_to_find_mask_per_group(pattern, method):
    model = ToyCNN()
    dense = copy.deepcopy(model)
    prune_(model, pattern, method=method)
    masks = get_masks(model)
    expected = {f"{name}.weight" for name in select_layers(dense, pattern).selected}
    assert set(masks) == expected and len(expected) >= 4
    for key, mask in masks.items():
        name = key.removesuffix(".weight")
        module = _layers(model)[name]
        weight = _layers(dense)[name].weight.detach()
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        groups = module.groups if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
        rows = weight.shape[0] // groups
        # an nn.Conv1d [out, in, k] is masked as the Conv2d [out, in, 1, k]: groups along input channels
        view = (lambda t: t.unsqueeze(2)) if isinstance(module, nn.Conv1d) else (lambda t: t)
        for g in range(groups):  # each group is its own matrix
            part = slice(g * rows, (g + 1) * rows)
            assert nmsparse.is_nm_sparse(view(mask[part]), pattern)
            assert torch.equal(view(mask[part]), nmsparse.find_mask(view(weight[part]), pattern, method=method))
        # the effective weight is W * mask; the dense original is untouched
        assert torch.equal(module.weight, weight * mask)
        assert torch.equal(module.parametrizations.weight.original, weight)


def test_forward_equals_dense_forward_with_masked_weights():
    for model, x in ((ToyCNN(), torch.randn(2, 3, 8, 8)), (toy_mlp(), torch.randn(5, 32))):
        dense = copy.deepcopy(model)
        prune_(model, "2:4-T", method="greedy")
        torch.testing.assert_close(model(x), _masked_dense_copy(dense, get_masks(model))(x), rtol=0, atol=0)


def test_scores_override_magnitude_and_are_validated():
    model = toy_mlp()
    scores = {"2.weight": torch.rand(32, 64)}  # keyed by tensor name, as masks are
    prune_(model, "2:4", scores=scores)
    masks = get_masks(model)
    assert torch.equal(
        masks["2.weight"],
        nmsparse.find_mask(model[2].parametrizations.weight.original, "2:4", scores=scores["2.weight"]),
    )
    assert torch.equal(masks["0.weight"], nmsparse.find_mask(model[0].parametrizations.weight.original, "2:4"))
    with pytest.raises(ConfigError, match="fc9"):
        prune_(toy_mlp(), "2:4", scores={"fc9.weight": torch.rand(3, 3)})
    with pytest.raises(ConfigError, match=r"did you mean \['2.weight'\]"):
        prune_(toy_mlp(), "2:4", scores={"2": torch.rand(32, 64)})
    with pytest.raises(ShapeError, match="scores"):
        prune_(toy_mlp(), "2:4", scores={"0.weight": torch.rand(3, 3)})


def test_bad_method_raises_before_touching_the_model():
    model = toy_mlp()
    with pytest.raises(ConfigError, match="method"):
        prune_(model, "2:4", method="magic")
    with pytest.raises(ConfigError, match="topn"):
        prune_(model, "2:4-T", method="topn")
    assert not any(is_pruned(m) for m in model.modules())


def test_solver_failure_leaves_model_untouched(monkeypatch):
    import nmsparse.prune.static as static

    calls = []
    real = static.find_mask

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("solver exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(static, "find_mask", flaky)
    model = toy_mlp()
    with pytest.raises(RuntimeError, match="exploded"):
        prune_(model, "2:4")
    assert not any(is_pruned(m) for m in model.modules())


def test_pruning_keeps_parameter_objects_and_state_dict_keys():
    model = toy_mlp()
    before = [id(p) for p in model.parameters()]
    prune_(model, "2:4")
    assert sorted(id(p) for p in model.parameters()) == sorted(before)
    # the model's own state dict keeps the dense model's keys (effective weights); nmsparse's raw layout is
    # what its record is built from
    assert list(model.state_dict()) == list(toy_mlp().state_dict())
    keys = set(raw_state(model))
    assert {
        "0.parametrizations.weight.original",
        "0.parametrizations.weight.0.mask",
        "0.parametrizations.bias.original",
    } <= keys
    assert "0.weight" not in keys
    assert raw_state(model)["0.parametrizations.weight.0.mask"].dtype == torch.bool


def test_reprune_static_never_revives_pruned_weights():
    model = toy_mlp()
    prune_(model, "2:4")
    first = get_masks(model)
    prune_(model, "1:4")
    second = get_masks(model)
    for name in first:
        assert not bool((second[name] & ~first[name]).any())
        assert nmsparse.is_nm_sparse(second[name], "1:4")
        assert len(model[int(name.split(".")[0])].parametrizations.weight) == 1  # updated in place, not stacked


def test_dtype_change_keeps_bool_mask():
    model = prune_(toy_mlp(), "2:4").model.to(torch.float64)
    assert model[0].parametrizations.weight[0].mask.dtype == torch.bool
    assert model[0].weight.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_move_with_the_model_to_cuda():
    model = prune_(toy_mlp(), "2:4-T", method="greedy").model.to("cuda")
    assert model[0].parametrizations.weight[0].mask.device.type == "cuda"
    assert model(torch.randn(3, 32, device="cuda")).device.type == "cuda"


# ------------------------------------------------------------------------------------------- gradients


def test_static_gradient_is_zero_on_pruned_entries():
    model = toy_mlp()
    dense = copy.deepcopy(model)
    prune_(model, "2:4-T", method="greedy")
    masks = get_masks(model)
    ref = _masked_dense_copy(dense, masks)
    x = torch.randn(7, 32)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    for name, mask in masks.items():
        index = int(name.split(".")[0])
        grad = model[index].parametrizations.weight.original.grad
        assert bool((grad[~mask] == 0).all())
        torch.testing.assert_close(grad, ref[index].weight.grad * mask)


def test_straight_through_gradient_reaches_pruned_entries():
    model = toy_mlp()
    dense = copy.deepcopy(model)
    prune_(model, "2:4", straight_through=True)
    masks = get_masks(model)
    ref = _masked_dense_copy(dense, masks)
    x = torch.randn(7, 32)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    for name, mask in masks.items():
        index = int(name.split(".")[0])
        grad = model[index].parametrizations.weight.original.grad
        torch.testing.assert_close(grad, ref[index].weight.grad)  # dense: d loss / d (W * mask)
        assert bool((grad[~mask] != 0).any())


def test_sr_ste_decay_term():
    layer = nn.Linear(8, 4)
    weight = layer.weight.detach().clone()
    mask = nmsparse.find_mask(weight, "2:4")
    parametrize.register_parametrization(layer, "weight", NMMask(mask, straight_through=True, decay=0.25))
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    g = torch.ones(3, 4).t() @ x  # d sum(x W^T) / dW
    expected = g + 0.25 * (~mask) * weight
    torch.testing.assert_close(layer.parametrizations.weight.original.grad, expected)


def test_nmmask_validates_its_arguments():
    mask = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match="straight_through=True"):
        NMMask(mask, decay=1e-4)
    with pytest.raises(ConfigError, match="decay"):
        NMMask(mask, straight_through=True, decay=-1.0)
    with pytest.raises(MaskMismatchError, match="only 0 and 1"):
        NMMask(torch.full((4, 8), 2.0))
    assert NMMask(torch.ones(4, 8)).mask.dtype == torch.bool
    with pytest.raises(MaskMismatchError, match=r"\(4, 4\)"):
        NMMask(mask)(torch.randn(4, 4))


# ------------------------------------------------------------------------------------------- squash


def test_squash_gives_plain_modules_with_equal_outputs():
    model = ToyCNN()
    prune_(model, "4:8-T", method="greedy")
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    params_before = {id(p) for p in model.parameters()}
    masks = get_masks(model)
    squash_masks_(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model.fc) is nn.Linear and type(model.conv) is nn.Conv2d
    assert {id(p) for p in model.parameters()} == params_before
    assert "conv.weight" in model.state_dict() and not any("parametrizations" in k for k in model.state_dict())
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    for name, mask in masks.items():
        assert bool((_layers(model)[name.removesuffix(".weight")].weight[~mask] == 0).all())
    assert get_masks(model) == {}


def test_squash_refuses_foreign_parametrizations():
    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    model = prune_(toy_mlp(), "2:4").model
    parametrize.register_parametrization(model[0], "weight", Double())
    with pytest.raises(ConfigError, match=r"\['0'\]"):
        squash_masks_(model)
    assert is_pruned(model[2])  # nothing was squashed


# ------------------------------------------------------------------------------------------- state dicts


def test_raw_state_dict_round_trip_into_fresh_pruned_model():
    model = prune_(ToyCNN(), "4:8-T", method="greedy").model
    fresh = prune_(ToyCNN(), "4:8-T", method="greedy").model  # other weights, other masks
    assert any(not torch.equal(a, b) for a, b in zip(get_masks(model).values(), get_masks(fresh).values()))
    fresh.load_state_dict(raw_state(model))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    for (k1, m1), (k2, m2) in zip(get_masks(model).items(), get_masks(fresh).items()):
        assert k1 == k2 and torch.equal(m1, m2)


def test_load_pruned_state_dict_into_fresh_unpruned_model():
    model = prune_(ToyCNN(), "2:4", method="auto").model
    state = raw_state(model)
    fresh = ToyCNN()
    assert load_pruned_state_dict_(fresh, state) is fresh
    assert set(get_masks(fresh)) == set(get_masks(model))
    assert set(raw_state(fresh)) == set(state)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    # the loaded masks are static: pruned entries get no gradient
    fresh(x).sum().backward()
    mask = get_masks(fresh)["conv.weight"]
    assert bool((fresh.conv.parametrizations.weight.original.grad[~mask] == 0).all())


def test_checkpoint_with_mismatched_masks_is_refused_naming_every_entry():
    state = raw_state(prune_(toy_mlp(), "2:4").model)
    state["2.parametrizations.weight.0.mask"] = torch.ones(5, 5, dtype=torch.bool)  # wrong shape
    state["9.parametrizations.weight.0.mask"] = torch.ones(2, 2, dtype=torch.bool)  # no module 9
    state["1.parametrizations.weight.0.mask"] = torch.ones(2, 2, dtype=torch.bool)  # ReLU: no weight
    fresh = toy_mlp()
    before = copy.deepcopy(raw_state(fresh))
    with pytest.raises(MaskMismatchError) as info:
        load_pruned_state_dict_(fresh, state)
    message = str(info.value)
    assert "mask '2.weight' is (5, 5)" in message and "(32, 64)" in message
    assert "no layer '9' with a weight" in message and "no layer '1' with a weight" in message
    assert "3 entries" in message
    assert not any(is_pruned(m) for m in fresh.modules())
    assert all(torch.equal(v, raw_state(fresh)[k]) for k, v in before.items())


def test_load_pruned_state_dict_reports_missing_masks_and_other_keys():
    pruned = prune_(toy_mlp(), "2:4").model
    dense_state = toy_mlp().state_dict()
    with pytest.raises(MaskMismatchError, match=r"missing: mask '0.weight'"):
        load_pruned_state_dict_(pruned, dense_state)
    state = raw_state(prune_(toy_mlp(), "2:4", include=["0"]).model)
    state["extra.buffer"] = torch.zeros(1)
    fresh = toy_mlp()
    with pytest.raises(MaskMismatchError, match="unexpected: 'extra.buffer'"):
        load_pruned_state_dict_(fresh, state)
    assert not is_pruned(fresh[0])  # rolled back
    load_pruned_state_dict_(fresh, state, strict=False)
    assert is_pruned(fresh[0]) and not is_pruned(fresh[2])


def test_set_masks_replaces_in_place_and_lists_every_problem():
    model = prune_(toy_mlp(), "2:4-T", method="greedy").model
    buffer = model[0].parametrizations.weight[0].mask
    new = get_masks(prune_(toy_mlp(), "2:4-T", method="greedy").model)
    set_masks_(model, new)
    assert model[0].parametrizations.weight[0].mask is buffer
    assert all(torch.equal(get_masks(model)[k], v) for k, v in new.items())

    bad = {
        "0.weight": torch.ones(64, 32, dtype=torch.bool),  # breaks 2:4-T
        "2.weight": torch.ones(3, 3, dtype=torch.bool),  # wrong shape
        "7.weight": new["4.weight"],  # not a pruned layer; "4.weight" missing
        "0": new["0.weight"],
    }  # a module name, not a tensor name
    with pytest.raises(MaskMismatchError) as info:
        set_masks_(model, bad)
    message = str(info.value)
    for needle in (
        "wrong pattern: '0.weight'",
        "wrong shape: '2.weight'",
        "unexpected: '7.weight'",
        "missing: '4.weight'",
        "did you mean '0.weight'",
    ):
        assert needle in message
    assert all(torch.equal(get_masks(model)[k], v) for k, v in new.items())  # nothing changed
    set_masks_(model, {"4.weight": ~new["4.weight"] & new["4.weight"]}, strict=False)  # an all-pruned mask
    assert not bool(model[4].weight.any())


def test_loading_a_mask_that_breaks_the_layers_pattern_is_refused():
    model = prune_(toy_mlp(), "2:4-T", method="greedy").model
    state = copy.deepcopy(raw_state(model))
    state["0.parametrizations.weight.0.mask"][:] = True
    with pytest.raises(MaskMismatchError, match=r"wrong pattern: mask '0.weight' breaks 2:4-T"):
        load_pruned_state_dict_(model, state)
    assert nmsparse.is_nm_sparse(get_masks(model)["0.weight"], "2:4-T")


# ------------------------------------------------------------------------------------------- Conv1D, Conv1d


def test_gpt2_conv1d_layers_are_first_class_and_masked_along_their_input_dimension():
    # Regression (issue 9): select_layers/prune_ picked only GPT-2's tied lm_head; Conv1D weights are [in, out]
    pytest.importorskip("transformers")
    from nmsparse.testing import tiny_gpt2

    model = tiny_gpt2()
    ids = torch.randint(0, 64, (2, 8))
    dense_logits = model(ids).logits
    sel = select_layers(model, "4:8-T")
    assert list(sel.selected) == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]
    assert "tied" in sel.skipped["lm_head"] and "transformer.wte.weight" in sel.skipped["lm_head"]
    dense = {name: module.weight.detach().clone() for name, module in sel.selected.items()}
    prune_(model, "4:8-T", method="greedy")
    masks = get_masks(model)
    assert set(masks) == {f"{name}.weight" for name in dense}
    for name, weight in dense.items():
        mask = masks[f"{name}.weight"]
        assert mask.shape == weight.shape  # stored layout [in, out]
        # the product's matrix view [out, in] obeys the pattern: groups run along dim 0 of the stored weight
        assert torch.equal(mask.t(), nmsparse.find_mask(weight.t(), "4:8-T", method="greedy"))
        assert nmsparse.is_nm_sparse(mask.t(), "4:8-T")
    plain = nmsparse.prune_(tiny_gpt2(), "2:4", include=["*c_fc"]).model
    fc = get_masks(plain)["transformer.h.0.mlp.c_fc.weight"]  # [32, 128]
    assert bool((fc.t().reshape(128, 8, 4).sum(-1) == 2).all())  # 2 of every 4 inputs of each output
    squash_masks_(model)
    with torch.no_grad():
        reference = tiny_gpt2()
        for name in dense:
            reference.get_submodule(name).weight.mul_(masks[f"{name}.weight"])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert not torch.equal(model(ids).logits, dense_logits)


def test_gpt2_pruned_reload_and_parameter_order():
    pytest.importorskip("transformers")
    from nmsparse.io import load_pruned_state_dict_, pruned_state_dict
    from nmsparse.testing import tiny_gpt2

    model = tiny_gpt2()
    names = [name for name, _ in model.named_parameters()]
    before = [id(p) for p in model.parameters()]
    prune_(model, "2:4-T", method="greedy")
    assert [id(p) for p in model.parameters()] == before
    fresh = load_pruned_state_dict_(tiny_gpt2(seed=1), *pruned_state_dict(model))
    nm = fresh.transformer.h[0].attn.c_attn.parametrizations.weight[0]
    assert nm.transposed and str(nm.pattern) == "2:4-T"
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)
    squash_masks_(fresh)
    assert [name for name, _ in fresh.named_parameters()] == names


def test_dynamic_sparsifier_refreshes_conv1d_along_the_input_dimension():
    pytest.importorskip("transformers")
    from nmsparse.testing import tiny_gpt2

    model = tiny_gpt2()
    sparsifier = nmsparse.DynamicSparsifier(model, "4:8-T", initial_method="greedy", refresh_every=1)
    assert len(sparsifier.layers) == 4
    with torch.no_grad():
        for module in sparsifier.layers.values():
            module.parametrizations.weight.original.normal_()
    sparsifier.step()
    assert sparsifier.masks_valid()
    for name, module in sparsifier.layers.items():
        original = module.parametrizations.weight.original
        assert torch.equal(
            get_masks(model)[f"{name}.weight"].t(), nmsparse.find_mask(original.t(), "4:8-T", method="greedy")
        )


# ------------------------------------------------------------------------------------------- padding


def test_pad_masks_layers_that_do_not_fit_without_keeping_padded_entries():
    # Regression: layers that do not fit m (a 3-channel stem, odd sizes) could only be skipped
    model = ToyCNN()
    assert "stem" in select_layers(model, "4:8-T").skipped
    assert "pad=True" in select_layers(model, "4:8-T").skipped["stem"]
    sel = select_layers(model, "4:8-T", pad=True)
    assert {"stem", "head"} <= set(sel.selected)
    assert "not offered for grouped convs" in sel.skipped["depthwise"]
    assert sel.padded["stem"] == (16, 32) and sel.padded["head"] == (8, 16)
    dense = copy.deepcopy(model)
    report = prune_(model, "4:8-T", method="exact", pad=True)
    assert set(report.padded) == {"stem", "head"}
    assert set(select_layers(ToyCNN(), "2:4", pad=True).padded) == {"stem", "depthwise"}
    assert {layer.name: layer.padded_to for layer in report.pruned}["stem"] == (16, 32)
    masks = get_masks(model)
    from nmsparse.layout import to_matrix
    from nmsparse.prune._views import pad_view

    for name in ("stem", "head"):
        mask = masks[f"{name}.weight"]
        matrix = to_matrix(mask)
        rows, cols = matrix.shape
        padded = pad_view(matrix, nmsparse.NMPattern.parse("4:8-T"))
        assert nmsparse.is_nm_sparse(padded, "4:8-T")  # real rows and columns keep at most n per block
        assert padded[rows:].sum() == 0 and padded[:, cols:].sum() == 0
        assert mask.any()
    # the kept part is the optimum of the padded problem whose padded scores are 0
    stem = dense.stem.weight.detach()
    reference = nmsparse.find_mask(
        pad_view(to_matrix(stem), nmsparse.NMPattern.parse("4:8-T")), "4:8-T", method="exact"
    )[:16, :27]
    assert torch.equal(to_matrix(masks["stem.weight"]), reference)
    # checks after a reload know the layer was padded
    from nmsparse.io import load_pruned_state_dict_, pruned_state_dict

    fresh = load_pruned_state_dict_(ToyCNN(), *pruned_state_dict(model))
    assert fresh.stem.parametrizations.weight[0].padded
    set_masks_(fresh, get_masks(model))
    with pytest.raises(MaskMismatchError, match="wrong pattern"):
        set_masks_(fresh, {"stem.weight": torch.ones(16, 3, 3, 3, dtype=torch.bool)}, strict=False)
    with pytest.raises(ConfigError, match="pad must be a bool"):
        select_layers(model, "2:4", pad="yes")


def test_pad_with_plain_pattern_and_dynamic_refresh():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    with pytest.raises(ConfigError):
        prune_(copy.deepcopy(model), "2:4")
    sparsifier = nmsparse.DynamicSparsifier(
        model, "2:4", initial_method="topn", method="topn", pad=True, refresh_every=1
    )
    assert sorted(sparsifier.report.padded) == ["0", "1"]
    with torch.no_grad():
        model[0].parametrizations.weight.original.normal_()
    sparsifier.step()
    assert sparsifier.masks_valid()
    mask = get_masks(model)["0.weight"]  # 6 inputs: groups [0..3] and [4, 5 + 2 padded]
    assert bool((mask[:, :4].sum(1) == 2).all()) and bool((mask[:, 4:].sum(1) <= 2).all())


# ------------------------------------------------------------------------------------------- reports


def test_prune_report_lists_pruned_and_skipped_layers():
    # Regression: skip warnings went to a logger with only a NullHandler; nothing said what stayed dense
    import json

    from nmsparse.prune import PruneReport

    model = ToyCNN()
    report = prune_(model, "4:8-T", method="greedy")
    assert isinstance(report, PruneReport) and report.verb == "prune_" and report.method == "greedy"
    assert report.model is model  # the report holds the model, pruned in place
    assert [layer.name for layer in report.pruned] == ["conv", "grouped", "narrow_groups", "conv1d", "fc"]
    assert set(report.skipped) == {"stem", "depthwise", "head"} and not report.padded
    assert report.pruned[0].tensor == "conv.weight" and 0.5 < report.pruned[0].kept_magnitude < 1
    data = json.loads(json.dumps(report.to_dict()))  # the model stays out of the record
    assert "model" not in data and "model=" not in repr(report)
    assert data["pruned"][3]["layer_type"] == "Conv1d" and data["skipped"]["head"] == report.skipped["head"]
    text = report.describe()
    assert "5 layer(s) pruned to 4:8-T" in text and "- stem:" in text
    sparsifier = nmsparse.DynamicSparsifier(ToyCNN(), "4:8-T", initial_method="greedy")
    assert sparsifier.report.verb == "DynamicSparsifier" and "stem" in sparsifier.report.skipped
    assert sparsifier.report.model is sparsifier.model


def test_prune_report_names_the_fix_for_code_that_expects_the_model():
    report = prune_(toy_mlp(), "2:4")
    with pytest.raises(AttributeError, match=r"report\.model\.parameters"):
        report.parameters()
    with pytest.raises(TypeError, match=r"report\.model\[\.\.\.\]"):
        report[0]
    with pytest.raises(TypeError, match=r"report\.model\(x\)"):
        report(torch.randn(2, 32))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'$"):
        report.no_such_thing  # noqa: B018


def test_prune_progress_argument():
    import inspect

    assert inspect.signature(prune_).parameters["progress"].default is None
    prune_(toy_mlp(), "2:4", progress=False)


def test_keep_first_last_has_one_default_false():
    import inspect

    for fn in (prune_, select_layers, nmsparse.DynamicSparsifier.__init__):
        assert inspect.signature(fn).parameters["keep_first_last"].default is False
    model = toy_mlp()
    prune_(model, "2:4")
    assert all(is_pruned(model[i]) for i in (0, 2, 4))


def test_set_masks_applies_a_mask_mapping_to_an_unpruned_model():
    # Regression: a masks file could not be applied to a freshly built model through the public API
    source = toy_mlp()
    masks = {k: nmsparse.find_mask(v, "4:8-T") for k, v in source.state_dict().items() if k.endswith("weight")}
    model = toy_mlp()
    order = [id(p) for p in model.parameters()]
    set_masks_(model, masks, pattern="4:8-T")
    assert all(is_pruned(model[i]) for i in (0, 2, 4)) and [id(p) for p in model.parameters()] == order
    assert all(torch.equal(get_masks(model)[k], v) for k, v in masks.items())
    assert str(model[0].parametrizations.weight[0].pattern) == "4:8-T"
    with pytest.raises(MaskMismatchError, match="wrong pattern: '0.weight' was pruned with 4:8-T"):
        set_masks_(model, {"0.weight": torch.ones(64, 32, dtype=torch.bool)}, strict=False)
    fresh = toy_mlp()
    with pytest.raises(MaskMismatchError, match="must obey 2:4"):
        set_masks_(fresh, {"0.weight": torch.ones(64, 32, dtype=torch.bool)}, pattern="2:4")
    with pytest.raises(MaskMismatchError, match="'1.weight' is not the weight"):
        set_masks_(fresh, {"1.weight": torch.ones(1)})
    assert not any(is_pruned(m) for m in fresh.modules())


def test_nmmask_state_travels_as_a_small_tensor_and_survives_a_cast():
    model = prune_(toy_mlp(), "4:8-T", method="greedy").model
    state = raw_state(model)
    extra = state["0.parametrizations.weight.0._extra_state"]
    assert isinstance(extra, torch.Tensor) and extra.dtype == torch.uint8  # safetensors and weights_only keep it
    cast = {k: (v if v.dtype == torch.bool else v.double()) for k, v in state.items()}
    twin = prune_(toy_mlp(), "2:4").model
    twin.load_state_dict(cast)
    assert str(twin[0].parametrizations.weight[0].pattern) == "4:8-T"
    with pytest.raises(MaskMismatchError, match="JSON"):
        twin[0].parametrizations.weight[0].set_extra_state(torch.tensor([255, 0], dtype=torch.uint8))


def test_squashing_a_deep_copy_leaves_the_original_pruned():
    model = prune_(toy_mlp(), "2:4").model
    x = torch.randn(2, 32)
    expected = model(x)
    twin = squash_masks_(copy.deepcopy(model))
    assert not is_pruned(twin[0]) and is_pruned(model[0])
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # torch alone: AttributeError 'weight'
    torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)
    squash_masks_(model)
    assert type(model[0]) is nn.Linear
