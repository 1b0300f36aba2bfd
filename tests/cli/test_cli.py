import pytest
import torch

from nmsparse.cli.main import main
from nmsparse.io import load_masks, read_metadata


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    sd = {
        "conv.weight": torch.randn(16, 8, 3, 3),
        "conv.bias": torch.randn(16),
        "fc.weight": torch.randn(8, 64),
        "odd.weight": torch.randn(10, 12),
        "emb.weight": torch.randn(3, 5),
    }
    path = tmp_path / "model.pt"
    torch.save({"state_dict": sd}, path)
    return path


def test_mask_command_writes_masks_and_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "masks.safetensors"
    assert main(["mask", str(checkpoint), "--pattern", "4:8-T", "--method", "greedy-repair", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv.weight" in text and "16x8x3x3" in text and "kept |w|" in text
    assert "skipped 2 tensor(s)" in text and "odd.weight" in text and "emb.weight" in text
    masks, meta = load_masks(out), read_metadata(out)
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert meta["pattern"] == "4:8-T" and meta["method"] == "greedy-repair" and meta["format"] == "nmsparse/1"
    import nmsparse

    assert all(nmsparse.is_nm_sparse(m, "4:8-T") for m in masks.values())


@pytest.mark.parametrize(
    "argv, match",
    [
        (["mask", "{missing}", "--pattern", "2:4", "--out", "{out}"], "does not exist"),
        (["mask", "{ckpt}", "--pattern", "3:2", "--out", "{out}"], "accepted forms"),
        (["mask", "{ckpt}", "--pattern", "16:32-T", "--out", "{out}"], "nothing to prune"),
        (["mask", "{corrupt}", "--pattern", "2:4", "--out", "{out}"], "cannot be loaded"),
        (["mask", "{ckpt}", "--pattern", "2:4", "--out", "{tmp}/masks.pt"], "must end in .safetensors"),
    ],
)
def test_mask_command_bad_inputs_exit_2_with_one_line(checkpoint, tmp_path, capsys, argv, match):
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    values = {
        "missing": str(tmp_path / "nope.pt"),
        "out": str(tmp_path / "m.safetensors"),
        "ckpt": str(checkpoint),
        "corrupt": str(tmp_path / "corrupt.pt"),
        "tmp": str(tmp_path),
    }
    assert main([a.format(**values) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse mask: error:"), captured.err
    assert __import__("re").search(match, lines[0])
    assert "Traceback" not in captured.err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    "argv, what",
    [
        (["compare", "--task", "lm", "--out", "{tmp}/cmp"], "nmsparse compare"),
        (["oneshot", "--pattern", "2:4", "--out", "{tmp}/pruned"], "nmsparse oneshot"),
        (["mask", "{tmp}/nope.pt", "--pattern", "2:4", "--out", "{tmp}/m.safetensors"], "nmsparse mask"),
    ],
)
def test_single_process_commands_refuse_torchrun(tmp_path, capsys, monkeypatch, argv, what):
    # Under torchrun every process would run the whole command and write the same files.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{what.split(' --')[0]}: error: {what} runs in one process"), lines
    assert "WORLD_SIZE=2" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("world_size", [None, "1"])
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--task", "lm", "--parallel", "fsdp", "--out", "{tmp}/run"],
        ["train", "--parallel", "ddp", "--out", "{tmp}/run"],
    ],
)
def test_parallel_without_torchrun_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, world_size):
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse train: error: --parallel "), lines
    assert "torchrun --nproc_per_node N" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_classify_refuses_fsdp(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--parallel", "fsdp", "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--task classify runs data-parallel with DDP only" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(
            ["mask", str(tmp_path / "nope.pt"), "--pattern", "2:4", "--out", str(tmp_path / "m.safetensors"), "--debug"]
        )


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


# ------------------------------------------------------------------------------------------- faults 5, 7, 12


def _one_error_line(capsys, prefix="nmsparse mask: error:"):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    return lines[0]


def test_mask_file_applies_to_a_model_through_the_public_api(tmp_path, capsys):
    # Regression: the CLI wrote "0.weight" keys, set_masks_ wanted "0": a mask file could not be applied
    import nmsparse
    from nmsparse.testing import toy_mlp

    model = toy_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "model.pt")
    out = tmp_path / "masks.safetensors"
    assert main(["mask", str(tmp_path / "model.pt"), "--pattern", "4:8-T", "--out", str(out)]) == 0
    pruned = nmsparse.prune_(model, "4:8-T", method="greedy").model
    nmsparse.set_masks_(pruned, load_masks(out))  # strict: every pruned weight has its mask
    exact = {k: nmsparse.find_mask(v, "4:8-T", method="exact") for k, v in state.items() if k.endswith("weight")}
    assert all(torch.equal(nmsparse.get_masks(pruned)[k], v) for k, v in exact.items())


def test_mask_refuses_to_replace_its_input_or_any_existing_file(tmp_path, capsys):
    # Regression: `mask X --out X` replaced the weights with masks
    from safetensors.torch import save_file

    source = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.randn(8, 16)}, str(source))
    before = source.read_bytes()
    assert main(["mask", str(source), "--pattern", "2:4", "--out", str(source)]) == 2
    assert "--overwrite" in _one_error_line(capsys) and source.read_bytes() == before
    other = tmp_path / "masks.safetensors"
    other.write_bytes(b"keep me")
    assert main(["mask", str(source), "--pattern", "2:4", "--out", str(other)]) == 2
    assert "exists" in _one_error_line(capsys) and other.read_bytes() == b"keep me"
    assert main(["mask", str(source), "--pattern", "2:4", "--out", str(other), "--overwrite"]) == 0
    assert set(load_masks(other)) == {"fc.weight"}


def test_mask_skips_embeddings_unless_asked(tmp_path, capsys):
    # Regression: nmsparse mask masked embedding tables (any 2-D *weight)
    sd = {
        "embeddings.word_embeddings.weight": torch.randn(16, 8),
        "wte.weight": torch.randn(16, 8),
        "layer.0.dense.weight": torch.randn(8, 8),
    }
    torch.save(sd, tmp_path / "m.pt")
    out = tmp_path / "masks.safetensors"
    assert main(["mask", str(tmp_path / "m.pt"), "--pattern", "2:4", "--out", str(out)]) == 0
    assert set(load_masks(out)) == {"layer.0.dense.weight"}
    assert "--include-embeddings" in capsys.readouterr().out
    assert (
        main(
            [
                "mask",
                str(tmp_path / "m.pt"),
                "--pattern",
                "2:4",
                "--out",
                str(out),
                "--overwrite",
                "--include-embeddings",
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert set(load_masks(out)) == set(sd)


def test_mask_groups_gpt2_conv1d_along_the_input_dimension(tmp_path, capsys):
    # Regression (issue 9): nmsparse mask masked Conv1D weights [in, out] along the output dimension
    pytest.importorskip("transformers")
    import nmsparse
    from nmsparse.testing import tiny_gpt2

    model = tiny_gpt2()
    model.save_pretrained(str(tmp_path / "gpt2"), safe_serialization=True)
    out = tmp_path / "masks.safetensors"
    assert main(["mask", f"hf:{tmp_path / 'gpt2'}", "--pattern", "4:8-T", "--out", str(out)]) == 0
    masks = load_masks(out)
    assert set(masks) == {
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
    }
    state = model.state_dict()
    for key, mask in masks.items():
        assert torch.equal(mask.t(), nmsparse.find_mask(state[key].t(), "4:8-T", method="exact"))
    assert "transformer.h.0.mlp.c_fc.weight" in read_metadata(out)["transposed"]
    pruned = nmsparse.prune_(tiny_gpt2(), "4:8-T", method="greedy").model
    nmsparse.set_masks_(pruned, masks)  # the file applies to the model as is


# ------------------------------------------------------------------------------------------- export


def test_export_writes_plain_weights_that_load_state_dict_reads(tmp_path, capsys):
    from safetensors.torch import load_file

    import nmsparse
    from nmsparse.io import save_pruned
    from nmsparse.testing import toy_mlp

    model = nmsparse.prune_(toy_mlp(), "4:8-T", method="greedy").model
    run = tmp_path / "run"
    save_pruned(model, run / "model.safetensors")
    out = tmp_path / "dense.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    plain = toy_mlp()
    plain.load_state_dict(load_file(str(out)))  # strict, no parametrization keys
    x = torch.randn(3, 32)
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)
    assert read_metadata(out)["kind"] == "dense" and "4:8-T" in read_metadata(out)["masks"]
    masks = load_masks(tmp_path / "dense.masks.safetensors")
    assert all(torch.equal(masks[k], v) for k, v in nmsparse.get_masks(model).items())
    # the raw state dict of a pruned model (what nmsparse train wrote) exports the same way
    from safetensors.torch import save_file

    from nmsparse.nn.state import raw_state_dict

    with raw_state_dict():
        raw = model.state_dict()
    save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp_path / "raw.safetensors"))
    assert main(["export", str(tmp_path / "raw.safetensors"), "--out", str(tmp_path / "raw_dense.safetensors")]) == 0
    assert all(
        torch.equal(a, b)
        for a, b in zip(load_file(str(out)).values(), load_file(str(tmp_path / "raw_dense.safetensors")).values())
    )
    capsys.readouterr()
    before = out.read_bytes()
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "--overwrite" in _one_error_line(capsys, "nmsparse export: error:") and out.read_bytes() == before
    assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 0


def test_export_of_a_pruned_transformers_model_is_a_transformers_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import nmsparse
    from nmsparse.io import MASKS_FILE, save_pruned
    from nmsparse.testing import tiny_gpt2

    source = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(str(source), safe_serialization=True)
    (source / "tokenizer_config.json").write_text("{}")
    model = nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model
    save_pruned(model, tmp_path / "pruned.safetensors", metadata={"source": f"hf:{source}"})
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--model", f"hf:{source}", "--out", str(out)]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert (out / "tokenizer_config.json").is_file() and (out / "model.safetensors").is_file()
    info = __import__("json").loads((out / "nmsparse.json").read_text())
    assert info["format"] == "nmsparse/1" and info["masks"]["transformer.h.0.mlp.c_fc.weight"]["pattern"] == "2:4-T"
    masks = load_masks(out / MASKS_FILE)
    again = nmsparse.prune_(loaded, "2:4-T", method="greedy").model
    nmsparse.set_masks_(again, masks)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "pruned.safetensors"), "--model", f"hf:{source}", "--out", str(out)]) == 2
    assert "exists" in _one_error_line(capsys, "nmsparse export: error:")
