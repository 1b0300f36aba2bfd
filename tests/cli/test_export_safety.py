"""Issue 16, data loss: ``nmsparse export`` and the folder writer never delete or overwrite what they did not write."""

from __future__ import annotations

import json
import os

import pytest

import nmsparse
from nmsparse.cli.main import main
from nmsparse.errors import OverwriteError
from nmsparse.io import MASKS_FILE, save_pretrained_dense, save_pruned
from nmsparse.testing import toy_mlp


def _one_error_line(capsys, prefix: str = "nmsparse export: error:") -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    return lines[0]


@pytest.fixture
def gpt2_source(tmp_path, capsys):
    pytest.importorskip("transformers")
    from nmsparse.testing import tiny_gpt2

    source = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(str(source), safe_serialization=True)
    (source / "tokenizer_config.json").write_text("{}")
    (source / "private.txt").write_text("not a tokenizer file")
    model = nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model
    capsys.readouterr()  # save_pretrained's progress bar
    return source, model


def test_export_run_refuses_a_masks_side_file_over_the_checkpoint(tmp_path, capsys):
    # Regression: the side file of --out a.safetensors is a.masks.safetensors, the checkpoint being exported
    model = nmsparse.prune_(toy_mlp(), "4:8", method="greedy").model
    source = tmp_path / "a.masks.safetensors"
    save_pruned(model, source)
    before = source.read_bytes()
    assert main(["export", str(source), "--out", str(tmp_path / "a.safetensors"), "--overwrite"]) == 2
    assert "the checkpoint itself" in _one_error_line(capsys)
    assert source.read_bytes() == before and not (tmp_path / "a.safetensors").exists()


def test_export_run_never_replaces_the_folder_holding_the_checkpoint(tmp_path, capsys, gpt2_source):
    # Regression: --out run --overwrite replaced the whole run folder, checkpoint and all
    source, model = gpt2_source
    run = tmp_path / "run"
    save_pruned(model, run / "model.safetensors", metadata={"source": f"hf:{source}"})
    (run / "notes.txt").write_text("mine")
    before = sorted(p.name for p in run.iterdir())
    for out in (run, source, tmp_path):
        assert (
            main(
                ["export", str(run / "model.safetensors"), "--model", f"hf:{source}", "--out", str(out), "--overwrite"]
            )
            == 2
        )
        assert "choose another output" in _one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == before and (source / "private.txt").is_file()


def test_save_pretrained_dense_refuses_to_replace_a_folder_it_did_not_write(tmp_path, gpt2_source):
    # Regression: overwrite=True replaces only a folder that nmsparse wrote, never one with the caller's files
    _, model = gpt2_source
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="not a folder nmsparse wrote"):
        save_pretrained_dense(model, folder, overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"
    save_pretrained_dense(model, tmp_path / "ours")
    save_pretrained_dense(model, tmp_path / "ours", overwrite=True)  # its own output is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_run_out_dot_leaves_no_old_folder(tmp_path, capsys, monkeypatch, gpt2_source):
    # Regression: --out . left an empty ..old-* folder beside it
    source, model = gpt2_source
    save_pruned(model, tmp_path / "pruned.safetensors")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--model", f"hf:{source}", "--out", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(out)
    assert (
        main(["export", str(tmp_path / "pruned.safetensors"), "--model", f"hf:{source}", "--out", ".", "--overwrite"])
        == 2
    )
    assert "current directory" in _one_error_line(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")] and (out / MASKS_FILE).is_file()


def test_export_run_reads_no_folder_named_by_the_checkpoint_metadata(tmp_path, capsys, gpt2_source):
    # Regression: the checkpoint's own metadata chose the folder whose every file export copied
    source, model = gpt2_source
    save_pruned(model, tmp_path / "pruned.safetensors", metadata={"source": f"hf:{source}"})
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--out", str(out)]) == 2
    assert "--model hf:FOLDER" in _one_error_line(capsys) and not out.exists()
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--model", f"hf:{source}", "--out", str(out)]) == 0
    assert (out / "tokenizer_config.json").is_file() and not (out / "private.txt").exists()
    # plain weights need no model folder at all
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--out", str(tmp_path / "plain.safetensors")]) == 0


def test_write_pretrained_folder_gives_files_the_umask_mode(tmp_path, gpt2_source):
    # Regression: model.safetensors was 0600 (safetensors' own writer) in every folder nmsparse wrote
    _, model = gpt2_source
    old = os.umask(0o022)
    try:
        folder = save_pretrained_dense(model, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert json.loads((folder / "nmsparse.json").read_text())["format"] == "nmsparse/1"
