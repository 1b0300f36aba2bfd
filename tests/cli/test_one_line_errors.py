"""Issue 16, items 7 and 8: bad inputs and a full disk end in one line and exit 2, never a traceback."""

from __future__ import annotations

import json

import pytest
from torch import nn

import nmsparse
from nmsparse.cli.main import main
from nmsparse.errors import InputError
from nmsparse.io import save_pruned


def _one_error_line(capsys, prefix: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_read_config_file_non_utf8_yaml_is_an_input_error(tmp_path):
    # Regression: a non-UTF-8 YAML config raised UnicodeDecodeError
    from nmsparse.recipes.classify.config import read_config_file

    path = tmp_path / "bad.yaml"
    path.write_bytes(b"lr: 0.1\nnote: caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_config_file(path)


def test_read_config_file_refuses_duplicate_keys(tmp_path):
    # Regression: a key given twice kept the last value without a word
    from nmsparse.recipes.classify.config import read_config_file

    path = tmp_path / "dup.yaml"
    path.write_text("lr: 0.1\nepochs: 2\nlr: 0.5\n")
    with pytest.raises(InputError, match="duplicate key 'lr'"):
        read_config_file(path)
    path.write_text("base: &b {lr: 0.1}\nother:\n  <<: *b\n  epochs: 2\n")  # merges are not duplicates
    assert read_config_file(path)[0]["other"] == {"lr": 0.1, "epochs": 2}


def test_save_safetensors_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    # Regression: a full disk ended in a SafetensorError traceback with exit 1
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    model = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4").model
    save_pruned(model, tmp_path / "p.safetensors")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(["export", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "No space left" in _one_error_line(capsys, "nmsparse export: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]  # no temporary file left


@pytest.mark.parametrize("damage", ["no_model_type", "auto_map", "not_json"])
def test_build_hf_bad_model_folder_is_one_line(tmp_path, capsys, damage):
    # Regression: a bad --model hf: folder ended in a transformers traceback with exit 1
    pytest.importorskip("transformers")
    from nmsparse.testing import tiny_gpt2

    folder = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    if damage == "no_model_type":
        del config["model_type"]
        config.pop("architectures", None)
    elif damage == "auto_map":
        config.update(
            model_type="evil", architectures=["Evil"], auto_map={"AutoConfig": "configuration_evil.EvilConfig"}
        )
        (folder / "configuration_evil.py").write_text("raise SystemExit('remote code ran')\n")
    (folder / "config.json").write_text("{oops" if damage == "not_json" else json.dumps(config))
    save_pruned(nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model, tmp_path / "p.safetensors")
    capsys.readouterr()
    assert (
        main(["export", str(tmp_path / "p.safetensors"), "--model", f"hf:{folder}", "--out", str(tmp_path / "out")])
        == 2
    )
    assert str(folder) in _one_error_line(capsys, "nmsparse export: error:")
    assert not (tmp_path / "out").exists()
