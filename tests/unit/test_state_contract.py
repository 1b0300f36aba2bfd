"""Masked models keep the dense model's contract: the ecosystem's own save and load calls just work.

After every nmsparse verb that attaches masks, ``model.state_dict()`` has exactly the dense model's keys, holding
the effective weights. So ``save_pretrained`` -> ``from_pretrained`` (a plain transformers model, no nmsparse
involved) reports no missing or unexpected key and gives identical logits, and ``torch.save`` -> strict
``load_state_dict`` into a dense model works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse import AdaPruneConfig
from nmsparse.nn.state import raw_state_dict
from nmsparse.testing import tiny_gpt2 as _tiny_gpt2
from nmsparse.testing import tiny_llama

transformers = pytest.importorskip("transformers")


def tiny_gpt2() -> nn.Module:
    return _tiny_gpt2(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)


def _tokens(seed: int = 0, batches: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 16), generator=generator) for _ in range(batches)]


def _dynamic(model: nn.Module, tmp_path: Path) -> None:
    sparsifier = nmsparse.DynamicSparsifier(model, "4:8-T", include=["*layers.*", "*.h.*"], refresh_every=2, decay=1e-2)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for batch in _tokens(1, 3):  # pruned entries keep learning: the dense values differ from the effective ones
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsifier.step()
    model.eval()


def _set_masks(model: nn.Module, tmp_path: Path) -> None:
    donor = nmsparse.prune_(copy.deepcopy(model), "2:4", include=["*layers.*", "*.h.*"]).model
    nmsparse.set_masks_(model, nmsparse.get_masks(donor))


def _load_pruned(model: nn.Module, tmp_path: Path) -> None:
    donor = nmsparse.prune_(copy.deepcopy(model), "4:8-T", include=["*layers.*", "*.h.*"]).model
    nmsparse.load_pruned_(model, nmsparse.save_pruned(donor, tmp_path / "pruned.safetensors"))


VERBS: dict[str, Callable[[nn.Module, Path], object]] = {
    "prune_": lambda model, _: nmsparse.prune_(model, "2:4-T", include=["*layers.*", "*.h.*"]),
    "set_masks_": _set_masks,
    "load_pruned_": _load_pruned,
    "DynamicSparsifier": _dynamic,
    "adaprune_": lambda model, _: nmsparse.adaprune_(
        model, _tokens(), AdaPruneConfig(pattern="4:8-T", include=["*layers.*", "*.h.*"], iterations=5)
    ),
    "prune_oneshot_": lambda model, _: nmsparse.prune_oneshot_(
        model, _tokens(), "2:4-T", algorithm="sparsegpt", progress=False
    ),
}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_save_pretrained_after_every_verb_reloads_as_a_plain_model(
    tmp_path: Path, build: Callable[[], nn.Module], verb: str
) -> None:
    model = build()
    dense_keys = list(model.state_dict())
    VERBS[verb](model, tmp_path)
    assert nmsparse.get_masks(model), "the verb attached no mask"
    assert list(model.state_dict()) == dense_keys
    x = _tokens(2, 1)[0]
    with torch.no_grad():
        expected = model(x).logits

    model.save_pretrained(tmp_path / "folder")
    reloaded, info = type(model).from_pretrained(tmp_path / "folder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x).logits, expected, rtol=0, atol=0)

    torch.save(model.state_dict(), tmp_path / "state.pt")
    dense = build()
    dense.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # strict
    with torch.no_grad():
        torch.testing.assert_close(dense(x).logits, expected, rtol=0, atol=0)


def test_effective_weights_are_zero_where_pruned_and_the_raw_layout_keeps_the_dense_values() -> None:
    model = tiny_llama()
    _dynamic(model, Path("."))
    state = model.state_dict()
    for fqn, mask in nmsparse.get_masks(model).items():
        assert bool((state[fqn][~mask] == 0).all())
    with raw_state_dict():
        raw = model.state_dict()
    original = raw["model.layers.0.mlp.up_proj.parametrizations.weight.original"]
    mask = nmsparse.get_masks(model)["model.layers.0.mlp.up_proj.weight"]
    assert bool((original[~mask] != 0).any())  # straight-through: the pruned entries' dense values are kept


def test_loading_the_plain_state_keeps_masks_and_straight_through_dense_values() -> None:
    model = tiny_llama()
    _dynamic(model, Path("."))
    layer = model.model.layers[0].mlp.up_proj
    dense_before = layer.parametrizations.weight.original.detach().clone()
    model.load_state_dict(model.state_dict())  # effective weights: the pruned entries' dense values stay
    assert torch.equal(layer.parametrizations.weight.original, dense_before)
    other = torch.randn_like(dense_before)
    state = model.state_dict()
    state["model.layers.0.mlp.up_proj.weight"] = other  # a dense weight: it replaces the dense values
    model.load_state_dict(state)
    assert torch.equal(layer.parametrizations.weight.original, other)


def test_loading_weights_that_break_a_static_mask_warns() -> None:
    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    with pytest.warns(UserWarning, match="static mask prunes"):
        model.load_state_dict(nn.Sequential(nn.Linear(8, 8)).state_dict())


def test_static_masks_come_back_from_a_plain_folders_zeros(tmp_path: Path) -> None:
    model = nmsparse.prune_(tiny_llama(), "4:8-T", include=["*layers.*"]).model
    model.save_pretrained(tmp_path / "folder")
    reloaded = nmsparse.prune_(
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "folder"), "4:8-T", include=["*layers.*"]
    ).model
    for fqn, mask in nmsparse.get_masks(model).items():
        assert torch.equal(nmsparse.get_masks(reloaded)[fqn], mask), fqn


def test_peft_lora_on_a_pruned_model_saves_an_adapter_that_loads_onto_the_plain_folder(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = nmsparse.prune_(tiny_llama(), "2:4-T", include=["*layers.*"]).model
    masks = [v.clone() for v in nmsparse.get_masks(model).values()]
    model.save_pretrained(tmp_path / "base")  # the pruned base, as a plain folder
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for batch in _tokens(3, 3):
        loss = lora(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = list(nmsparse.get_masks(lora).values())  # PEFT renamed the layers (...q_proj.base_layer)
    assert len(after) == len(masks) and all(torch.equal(a, b) for a, b in zip(after, masks))
    x = _tokens(4, 1)[0]
    with torch.no_grad():
        expected = lora.eval()(x).logits
    lora.save_pretrained(tmp_path / "adapter")
    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")  # no nmsparse involved
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, expected)
