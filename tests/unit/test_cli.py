import pytest
import torch

from nmsparse.cli.main import main
from nmsparse.io import load_masks


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    sd = {"conv.weight": torch.randn(16, 8, 3, 3), "conv.bias": torch.randn(16), "fc.weight": torch.randn(8, 64),
          "odd.weight": torch.randn(10, 12), "emb.weight": torch.randn(3, 5)}
    path = tmp_path / "model.pt"
    torch.save({"state_dict": sd}, path)
    return path


def test_mask_command_writes_masks_and_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "masks.safetensors"
    assert main(["mask", str(checkpoint), "--pattern", "4:8-T", "--method", "greedy-repair", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv.weight" in text and "16x8x3x3" in text and "kept |w|" in text
    assert "skipped 2 tensor(s)" in text and "odd.weight" in text and "emb.weight" in text
    masks, meta = load_masks(out)
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert meta["pattern"] == "4:8-T" and meta["method"] == "greedy-repair"
    import nmsparse

    assert all(nmsparse.is_nm_sparse(m, "4:8-T") for m in masks.values())


@pytest.mark.parametrize("argv, match", [
    (["mask", "{missing}", "--pattern", "2:4", "--out", "{out}"], "does not exist"),
    (["mask", "{ckpt}", "--pattern", "3:2", "--out", "{out}"], "accepted forms"),
    (["mask", "{ckpt}", "--pattern", "16:32-T", "--out", "{out}"], "nothing to prune"),
    (["mask", "{corrupt}", "--pattern", "2:4", "--out", "{out}"], "cannot be loaded"),
    (["mask", "{ckpt}", "--pattern", "2:4", "--out", "{tmp}/masks.pt"], "must end in .safetensors"),
])
def test_mask_command_bad_inputs_exit_2_with_one_line(checkpoint, tmp_path, capsys, argv, match):
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    values = {"missing": str(tmp_path / "nope.pt"), "out": str(tmp_path / "m.safetensors"), "ckpt": str(checkpoint),
              "corrupt": str(tmp_path / "corrupt.pt"), "tmp": str(tmp_path)}
    assert main([a.format(**values) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse mask: error:"), captured.err
    assert __import__("re").search(match, lines[0])
    assert "Traceback" not in captured.err
    assert not (tmp_path / "m.safetensors").exists()


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(["mask", str(tmp_path / "nope.pt"), "--pattern", "2:4", "--out", str(tmp_path / "m.safetensors"),
              "--debug"])


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "cuda" in text and "exact" in text


def test_demo_small(capsys):
    assert main(["demo", "--runs", "2:4:topn", "2:4-T:greedy"]) == 0
    text = capsys.readouterr().out
    assert "2:4-T" in text and "greedy" in text and "1,593,344" in text


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "nmsparse", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("nmsparse ")
