"""The LM recipe's decoder: shapes, causal masking, and export to a transformers GPT-2 with identical logits."""

from __future__ import annotations

import json
import os

import pytest
import torch

import nmsparse
from nmsparse.errors import ConfigError, InputError, OverwriteError, ShapeError
from nmsparse.recipes.lm.model import GPT, SPARSE_LAYERS, GPTConfig, from_hf_gpt2, load_hf, save_hf, to_hf_gpt2

TINY = dict(vocab_size=256, context=16, d_model=32, n_layer=2, n_head=4)


def _model(**changes: object) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **changes}))
    with torch.no_grad():  # non-trivial biases and LayerNorm parameters, so every tensor of the export matters
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def test_forward_shape_and_context_limit() -> None:
    model = _model()
    idx = torch.randint(0, 256, (3, 16))
    assert model(idx).shape == (3, 16, 256)
    with pytest.raises(ShapeError, match="longer than the context 16"):
        model(torch.randint(0, 256, (1, 17)))


def test_config_rejects_heads_that_do_not_divide_width() -> None:
    with pytest.raises(ConfigError, match="multiple of n_head"):
        GPTConfig(d_model=30, n_head=4)


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    model = _model()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3  # and the later positions do see the change


def test_block_linears_are_the_sparse_layers_embeddings_and_head_stay_dense() -> None:
    model = _model()
    nmsparse.prune_(model, "2:4-T", method="exact", include=list(SPARSE_LAYERS))  # torch enumeration: no compile
    pruned = sorted(name for name, m in model.named_modules() if nmsparse.is_pruned(m))
    assert pruned == sorted(
        f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )


@pytest.mark.parametrize("tie", [False, True])
def test_hf_export_gives_identical_logits(tie: bool) -> None:
    model = _model(tie_embeddings=tie)
    idx = torch.randint(0, 256, (3, 16))
    hf = to_hf_gpt2(model)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
    # GPT-2's Conv1D stores [in, out]: the fused qkv of block 0 is the transpose of our Linear's weight.
    assert torch.equal(hf.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight.t())


def test_masked_model_exports_its_zeros() -> None:
    model = _model()
    nmsparse.prune_(model, "2:4-T", method="exact", include=list(SPARSE_LAYERS))
    idx = torch.randint(0, 256, (2, 16))
    hf = to_hf_gpt2(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
    weight = hf.transformer.h[1].mlp.c_fc.weight  # [in, out]
    assert nmsparse.is_nm_sparse(weight.t() != 0, "2:4-T")


def test_save_hf_folder_loads_with_automodel_and_round_trips(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = _model()
    folder = save_hf(model, tmp_path / "lm", metadata={"corpus_sha256": "abc"})
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["nmsparse"] == {"corpus_sha256": "abc"}
    idx = torch.randint(0, 256, (2, 16))
    loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
        assert torch.equal(load_hf(folder)(idx), model(idx))
    with pytest.raises(OverwriteError, match="exists"):
        save_hf(model, folder)
    save_hf(_model(d_model=16), folder, overwrite=True)
    assert load_hf(folder).config.d_model == 16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_save_hf_folder_mode_follows_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        folder = save_hf(_model(), tmp_path / "lm")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750


def test_from_hf_rejects_other_models_and_variants() -> None:
    with pytest.raises(InputError, match="GPT-2"):
        from_hf_gpt2(torch.nn.Linear(2, 2))
    hf = to_hf_gpt2(_model())
    hf.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(InputError, match="does not reproduce"):
        from_hf_gpt2(hf)
