"""Issue 16: a transformers folder whose weights do not fit its config is an error, never random weights."""

from __future__ import annotations

import json

import pytest

from nmsparse.errors import InputError

transformers = pytest.importorskip("transformers")


@pytest.fixture
def gpt2_folder(tmp_path):
    from nmsparse.testing import tiny_gpt2

    folder = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(str(folder), safe_serialization=True)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_load_causal_lm_refuses_a_config_with_more_layers_than_the_weights(gpt2_folder):
    # item 3: the missing layer came back randomly initialised and one-shot pruned it without a word
    from nmsparse.hf import load_causal_lm

    assert load_causal_lm(gpt2_folder) is not None
    _edit_config(gpt2_folder, n_layer=2)
    with pytest.raises(InputError, match=r"missing transformer\.h\.1\."):
        load_causal_lm(gpt2_folder)


def test_load_causal_lm_refuses_a_bert_folder(tmp_path):
    # item 3: a BERT encoder loads as BertLMHeadModel with a random language-model head
    from nmsparse.hf import load_causal_lm

    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        is_decoder=True,
    )
    transformers.BertModel(config).save_pretrained(str(tmp_path / "bert"), safe_serialization=True)
    with pytest.raises(InputError, match="do not fit"):
        load_causal_lm(tmp_path / "bert")


@pytest.mark.parametrize("damage", ["truncated", "no_model_type", "auto_map", "shape"])
def test_load_causal_lm_bad_folder_is_one_input_error(gpt2_folder, damage):
    # item 7: each of these ended in a transformers / safetensors traceback
    from nmsparse.hf import load_causal_lm

    weights = gpt2_folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "no_model_type":
        config = json.loads((gpt2_folder / "config.json").read_text())
        del config["model_type"]
        (gpt2_folder / "config.json").write_text(json.dumps(config))
    elif damage == "auto_map":
        _edit_config(gpt2_folder, model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
        (gpt2_folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    else:
        _edit_config(gpt2_folder, n_embd=48)
    with pytest.raises(InputError) as info:
        load_causal_lm(gpt2_folder)
    assert "\n" not in str(info.value) and str(gpt2_folder) in str(info.value)


@pytest.mark.parametrize("folder_kind", ["more_layers", "bert"])
def test_oneshot_run_refuses_weights_that_do_not_fit(tmp_path, capsys, gpt2_folder, folder_kind):
    # item 3 through the CLI: one line, exit 2, nothing written
    from nmsparse.cli.main import main

    folder = gpt2_folder
    if folder_kind == "more_layers":
        _edit_config(folder, n_layer=2)
    else:
        folder = tmp_path / "bert"
        config = transformers.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            is_decoder=True,
            architectures=["BertModel"],
        )
        transformers.BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    capsys.readouterr()
    code = main(["oneshot", "--model", f"hf:{folder}", "--pattern", "2:4", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
